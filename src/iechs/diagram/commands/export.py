"""`iechs export [GUIDELINE] [--out DIR] [--format F ...] [--schema DIR]`: the compiled machine
as python-statemachine's native statechart (YAML, JSON), as W3C SCXML for python-statemachine
(`datamodel="python"`) and as W3C SCXML for other interpreters (`datamodel="ecmascript"`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import write_file

__all__ = ["HELP", "configure", "run"]

HELP = "export the compiled machine: native statechart YAML/JSON and W3C SCXML"
#: the choices of --format, as in `iechs.diagram.artefacts.EXPORT_FORMATS` (a test keeps them
#: equal); listed here so that `--help` loads no exporter.
FORMATS = ("yaml", "json", "scxml", "scxml-ecmascript")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("guideline", nargs="?", help="guideline YAML (default: bundled iec-hs)")
    parser.add_argument(
        "--out", default="statemachine", help="output folder (default: statemachine/)"
    )
    parser.add_argument(
        "--format",
        action="append",
        choices=FORMATS,
        dest="formats",
        metavar="FORMAT",
        help="what to write, repeatable (default: all): yaml, json (python-statemachine's "
        "native statechart), scxml (SCXML, datamodel python: python-statemachine), "
        "scxml-ecmascript (SCXML, datamodel ecmascript: other SCXML interpreters, e.g. SCION; "
        "written as ID.ecmascript.scxml)",
    )
    parser.add_argument(
        "--schema",
        metavar="DIR",
        help="first validate each SCXML against the W3C schema (scxml.xsd) in DIR; "
        "exit 1 if one is invalid",
    )


def run(args: argparse.Namespace) -> int:
    from ...loader import load_guideline
    from ..artefacts import export_files
    from ..exports import scxml_problems

    g = load_guideline(args.guideline)
    formats = [f for f in FORMATS if not args.formats or f in args.formats]
    files = export_files(g, formats)
    if args.schema:
        for file, data in files.items():
            if not file.endswith(".scxml"):
                continue
            problems = scxml_problems(data, Path(args.schema))
            if problems:
                sys.stderr.write(f"iechs export: the SCXML {file} does not validate:\n")
                sys.stderr.write("".join(f"  {p}\n" for p in problems))
                return 1
    out = Path(args.out)
    for file, data in files.items():
        write_file(out / file, data)
        sys.stdout.write(f"wrote {out / file}\n")
    return 0
