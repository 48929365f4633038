"""`iechs diagram [GUIDELINE] [--out DIR] [--timeline T]`: the state diagram as DOT, SVG, PNG
and Mermaid; with a timeline, that patient's path numbered on it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..model import DIAGRAM_FORMATS
from . import write_file

__all__ = ["HELP", "configure", "run"]

HELP = "draw the state diagram (DOT, SVG, PNG, Mermaid), or one patient's path on it"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("guideline", nargs="?", help="guideline YAML (default: bundled iec-hs)")
    parser.add_argument("--out", default="diagrams", help="output folder (default: diagrams/)")
    parser.add_argument(
        "--timeline", help="a patient timeline (JSON): highlight and number the path it takes"
    )
    parser.add_argument(
        "--format",
        action="append",
        choices=DIAGRAM_FORMATS,
        help="write only this format (repeatable; default: all four)",
    )
    parser.add_argument(
        "--name", help="file name without extension (default: the guideline id, or the timeline's)"
    )


def run(args: argparse.Namespace) -> int:
    from ...loader import load_guideline
    from ..artefacts import diagram_files, path_diagram
    from ..extract import diagram_of

    g = load_guideline(args.guideline)
    if args.timeline:
        diagram = path_diagram(g, Path(args.timeline))
        name = args.name or Path(args.timeline).stem
    else:
        diagram = diagram_of(g)
        name = args.name or g.guideline.id
    formats = [f for f in DIAGRAM_FORMATS if f in (args.format or DIAGRAM_FORMATS)]
    out = Path(args.out)
    for file, data in diagram_files(diagram, name, formats).items():
        write_file(out / file, data)
        sys.stdout.write(f"wrote {out / file}\n")
    return 0
