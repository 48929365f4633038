"""`iechs diff OLD NEW [--format text|json]`: what changed between two guideline versions or
profiles (states, line order, transitions, guards, thresholds, doses, actions, rules, indication
rules, order sets, citations, verified flags, quotes, the contract)."""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["HELP", "configure", "run"]

HELP = "what changed between two guideline versions or profiles (text or JSON)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("old", help="the older guideline or profile (YAML)")
    parser.add_argument("new", help="the newer guideline or profile (YAML)")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument(
        "--exit-code", action="store_true", help="exit 1 when there are changes (as git diff)"
    )


def run(args: argparse.Namespace) -> int:
    from ...loader import load_guideline
    from ..diff import diff_guidelines, diff_to_json, diff_to_text

    old, new = load_guideline(args.old), load_guideline(args.new)
    changes = diff_guidelines(old, new)
    if args.format == "json":
        doc = diff_to_json(old, new, changes)
        sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(diff_to_text(old, new, changes))
    return 1 if args.exit_code and changes else 0
