"""`iechs export [GUIDELINE] [--out DIR] [--schema DIR]`: the compiled machine as
python-statemachine's native statechart (YAML, JSON) and as W3C SCXML."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import write_file

__all__ = ["HELP", "configure", "run"]

HELP = "export the compiled machine: native statechart YAML/JSON and W3C SCXML"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("guideline", nargs="?", help="guideline YAML (default: bundled iec-hs)")
    parser.add_argument(
        "--out", default="statemachine", help="output folder (default: statemachine/)"
    )
    parser.add_argument(
        "--schema",
        metavar="DIR",
        help="first validate the SCXML against the W3C schema (scxml.xsd) in DIR; "
        "exit 1 if it is invalid",
    )


def run(args: argparse.Namespace) -> int:
    from ...loader import load_guideline
    from ..artefacts import export_files
    from ..exports import scxml_problems

    g = load_guideline(args.guideline)
    files = export_files(g)
    if args.schema:
        scxml = files[f"{g.guideline.id}.scxml"]
        problems = scxml_problems(scxml, Path(args.schema))
        if problems:
            sys.stderr.write("iechs export: the SCXML does not validate:\n")
            sys.stderr.write("".join(f"  {p}\n" for p in problems))
            return 1
    out = Path(args.out)
    for file, data in files.items():
        write_file(out / file, data)
        sys.stdout.write(f"wrote {out / file}\n")
    return 0
