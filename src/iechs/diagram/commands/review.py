"""`iechs review [GUIDELINE] [--out FILE] [--since OLD] [--screenshot PNG]`: the review page
for guideline authors, one self-contained HTML file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import write_file

__all__ = ["HELP", "configure", "run"]

HELP = "write the review page (HTML): diagram, actions, rules, guards, unverified, what changed"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("guideline", nargs="?", help="guideline YAML (default: bundled iec-hs)")
    parser.add_argument(
        "--out", default="diagrams/review.html", help="output file (default: diagrams/review.html)"
    )
    parser.add_argument("--since", metavar="OLD", help="an older guideline: show what changed")
    parser.add_argument(
        "--screenshot",
        metavar="PNG",
        help="also save a screenshot of the page (needs Playwright and Debian's chromium)",
    )


def run(args: argparse.Namespace) -> int:
    from ...loader import load_guideline
    from ..artefacts import review_page, screenshot_state
    from ..browser import screenshot

    g = load_guideline(args.guideline)
    since = load_guideline(args.since) if args.since else None
    out = Path(args.out)
    write_file(out, review_page(g, since))
    sys.stdout.write(f"wrote {out}\n")
    if args.screenshot:
        screenshot(out, Path(args.screenshot), screenshot_state(g))
        sys.stdout.write(f"wrote {args.screenshot}\n")
    return 0
