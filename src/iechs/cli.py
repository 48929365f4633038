"""The `iechs` command line.

Exit codes: 0 success; 1 a check found a problem; 2 bad input (a clear message, no traceback).
Heavy modules are imported inside the commands so that `iechs --help` starts fast.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["examples_dir", "main"]

EXIT_OK, EXIT_PROBLEM, EXIT_BAD_INPUT = 0, 1, 2

#: Commands defined in their own modules: name -> module. Each such module defines `HELP` (one
#: line), `configure(parser)` and `run(args) -> int`, and imports anything heavy inside `run`.
#: A module is imported only when its command runs (or asks for its own `--help`): `iechs
#: --help` lists it with `COMMAND_HELP`.
EXTERNAL_COMMANDS: dict[str, str] = {
    "audit": "iechs.audit.cli",
    "diagram": "iechs.diagram.commands.diagram",
    "review": "iechs.diagram.commands.review",
    "export": "iechs.diagram.commands.export",
    "diff": "iechs.diagram.commands.diff",
    "replay-cohort": "iechs.cohort",
    "report": "iechs.cohort_report",
    "compare": "iechs.compare",
    "synth": "iechs.synthetic",
    "serve": "iechs.service.commands",
}
#: The one-line help of each command module, as its `HELP` says (a test holds them equal).
COMMAND_HELP: dict[str, str] = {
    "audit": "verify, replay, show, export and checkpoint the tamper-evident transition log",
    "diagram": "draw the state diagram (DOT, SVG, PNG, Mermaid), or one patient's path on it",
    "review": "write the review page (HTML): diagram, actions, rules, guards, unverified, "
    "what changed",
    "export": "export the compiled machine: native statechart YAML/JSON and W3C SCXML",
    "diff": "what changed between two guideline versions or profiles (text or JSON)",
    "replay-cohort": "replay the guideline over a cohort of timelines (all cores or a Dask "
    "cluster, resumable)",
    "report": "cohort report for quality and safety: one offline HTML page (or JSON aggregates)",
    "compare": "what a guideline edit changes for a cohort: paths, alerts, actions, deviations",
    "synth": "write a reproducible synthetic cohort (JSON Lines) for benchmarks and tests",
    "serve": "serve CDS Hooks (patient-view, order-sign, feedback) over an audit store",
}


def examples_dir() -> Path:
    """The bundled example timelines (checkout's `examples/`, else the wheel's copy)."""
    here = Path(__file__).resolve()
    checkout = here.parents[2] / "examples"
    if checkout.is_dir() and (here.parents[2] / "pyproject.toml").is_file():
        return checkout
    return here.parent / "examples"


def _parser(
    configure: Collection[str] | None = None, *, only: str | None = None
) -> argparse.ArgumentParser:
    """The command line's parser. `configure`: the external commands whose modules are imported
    to add their arguments (default: all); the others are listed with their help only. `only`:
    a known command, the only one the parser gets (it parses that command's line as the full
    parser does; making every other command's parser is most of the parser's cost)."""
    from ._version import __version__

    parser = argparse.ArgumentParser(
        prog="iechs",
        description="IEC-HS management after CAR-T therapy: a cited guideline run as a "
        "verified state machine.",
    )
    parser.add_argument("--version", action="version", version=f"iechs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, add in _BUILT_IN.items():
        if only is None or name == only:
            add(sub)
    for name, module_name in EXTERNAL_COMMANDS.items():
        if only is not None and name != only:
            continue
        p = sub.add_parser(name, help=COMMAND_HELP[name])
        if configure is None or name in configure:
            importlib.import_module(module_name).configure(p)
    return parser


def _add_validate(sub: Any) -> None:
    p = sub.add_parser("validate", help="load and check a guideline (default: the bundled one)")
    p.add_argument("guideline", nargs="?", help="guideline YAML (default: bundled iec-hs.yaml)")
    p.add_argument(
        "--unverified", action="store_true", help="list every statement still verified: false"
    )
    p.add_argument(
        "--baseline",
        metavar="OLD",
        help="the guideline before the edit (a file, or a git revision such as "
        "HEAD~1:guideline/iec-hs.yaml): warn when the version was not raised and when a "
        "verified: true statement changed",
    )
    p.add_argument("--strict", action="store_true", help="exit 1 when there are author warnings")


def _add_run(sub: Any) -> None:
    p = sub.add_parser("run", help="run a patient timeline through the engine")
    p.add_argument("timeline", help="timeline JSON file")
    p.add_argument("--guideline", help="guideline YAML (default: bundled iec-hs.yaml)")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument(
        "--store",
        metavar="LOG",
        help="record the decisions and the episode in an audit store (PATH.db or "
        "postgresql://...); a stored episode is continued",
    )
    p.add_argument(
        "--runtime",
        choices=("statechart", "table"),
        default="statechart",
        help="statechart (python-statemachine, the reference; default) or table (the same "
        "decisions, byte for byte, without loading python-statemachine: a faster start)",
    )


def _add_verify(sub: Any) -> None:
    p = sub.add_parser("verify", help="prove the guideline's safety properties over every path")
    p.add_argument("guideline", nargs="?", help="guideline YAML (default: bundled iec-hs.yaml)")
    p.add_argument("--format", choices=("text", "json"), default="text")


def _add_demo(sub: Any) -> None:
    p = sub.add_parser("demo", help="run the bundled example timelines")
    p.add_argument("--guideline", help="guideline YAML (default: bundled iec-hs.yaml)")
    p.add_argument("--format", choices=("text", "json"), default="text")


#: the commands defined here, in the order `iechs --help` lists them (then the external ones).
_BUILT_IN: dict[str, Callable[[Any], None]] = {
    "validate": _add_validate,
    "run": _add_run,
    "verify": _add_verify,
    "demo": _add_demo,
}


def _command_in(argv: Sequence[str]) -> str | None:
    """The command a command line names: its first argument that is not an option (the
    top-level options, --help and --version, take no value)."""
    for arg in argv:
        if arg == "--":
            continue
        if not arg.startswith("-"):
            return arg
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command_in(argv)
    known = command in _BUILT_IN or command in EXTERNAL_COMMANDS
    args = _parser({command} if command else (), only=command if known else None).parse_args(argv)
    if args.command in EXTERNAL_COMMANDS and args.command != command:  # pragma: no cover
        args = _parser().parse_args(argv)  # never expected: parse with every command's arguments
    from .errors import IechsError

    try:
        if args.command in EXTERNAL_COMMANDS:
            run: Any = importlib.import_module(EXTERNAL_COMMANDS[args.command]).run
            return int(run(args))
        handler = {"validate": _validate, "run": _run, "demo": _demo, "verify": _verify}[
            args.command
        ]
        return handler(args)
    except IechsError as exc:
        print(f"iechs {args.command}: {exc.render()}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # e.g. `iechs run x.json | head`: the reader has read enough
        # Python flushes stdout once more at exit, which would fail again (exit 1, a "problem"
        # to a script): what is left goes nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _engine(guideline: str | None, runtime: str = "statechart") -> Engine:
    from .engine import Engine
    from .loader import load_guideline

    return Engine(load_guideline(guideline), runtime=runtime)  # type: ignore[arg-type]


def _validate(args: argparse.Namespace) -> int:
    """Errors exit 2; author warnings (`iechs.authoring`) print, and exit 1 with --strict."""
    import tempfile

    from .authoring import author_warnings, print_warnings, source_map
    from .errors import GuidelineError
    from .loader import default_guideline_path, load_guideline
    from .quotes import check_quotes
    from .report import print_unverified, print_validation
    from .revisions import guideline_at

    engine = _engine(args.guideline)  # loading checks; compiling runs the chart's validations
    # Quotes: each is found in a cited source's text, kept relative to the guideline's folder.
    path = Path(args.guideline) if args.guideline else default_guideline_path()
    file = engine.guideline.file
    # The YAML line of each place, in the file that sets it (a profile, or its base).
    where = source_map(path, file)
    if problems := check_quotes(engine.guideline, path.parent):
        raise GuidelineError([where.problem(p) for p in problems], file)
    baseline = None
    if args.baseline:  # only compared, so not held to today's checks
        with tempfile.TemporaryDirectory() as tmp, guideline_at(args.baseline, Path(tmp)) as old:
            baseline = load_guideline(old, shown=args.baseline, check=False)
    warnings = author_warnings(engine.guideline, baseline, where)
    print_validation(engine.guideline)
    print_warnings(warnings, file, strict=args.strict)
    if args.unverified:
        print_unverified(engine.guideline)
    return EXIT_PROBLEM if warnings and args.strict else EXIT_OK


def _run_one(engine: Engine, path: Path, *, as_json: bool = True) -> tuple[str, Any]:
    """Run one timeline: its patient, its decisions and its JSON document (without
    `as_json`, only what the text report prints of it: the parts of the input ignored)."""
    from .decision import run_to_json
    from .timeline import load_timeline

    timeline = load_timeline(path, engine.guideline)
    episode = engine.run(timeline)
    doc: dict[str, Any] = {}
    if as_json:
        doc = run_to_json(engine.identity, timeline.patient.id, episode.decisions)
    if timeline.ignored:  # parts of a FHIR Bundle not used: reported, never silently dropped
        doc["ignored"] = [{"path": p.path, "message": p.message} for p in timeline.ignored]
    return timeline.patient.id, (episode.decisions, doc)


def _dump(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False) + "\n")


def _run(args: argparse.Namespace) -> int:
    engine = _engine(args.guideline, args.runtime)
    if args.store:  # record in an audit store; an episode already there is continued
        from .audit.recorder import run_recorded

        patient, (decisions, doc) = run_recorded(engine, Path(args.timeline), args.store)
    else:
        patient, (decisions, doc) = _run_one(
            engine, Path(args.timeline), as_json=args.format == "json"
        )
    if args.format == "json":
        _dump(doc)
    else:
        from .report import print_run  # only for text

        print_run(f"{args.timeline} — patient {patient}", decisions)
        for item in doc.get("ignored", []):
            print(f"ignored {item['path']}: {item['message']}")
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    import time

    from .loader import load_guideline
    from .verify import verify

    # Shape and citations are properties here: reported with counterexamples, not as bad input.
    guideline = load_guideline(args.guideline, structural=False)
    started = time.perf_counter()  # measures the proof; never an input to it
    report = verify(guideline)
    seconds = time.perf_counter() - started
    if args.format == "json":
        _dump({**report.to_json(), "seconds": round(seconds, 3)})
    else:
        from .verify_report import print_verification

        print_verification(guideline, report, seconds)
    return EXIT_OK if report.ok else EXIT_PROBLEM


def _demo(args: argparse.Namespace) -> int:
    from .report import print_run

    engine = _engine(args.guideline)
    files = sorted(examples_dir().glob("*.json"))
    docs = {}
    for path in files:
        patient, (decisions, doc) = _run_one(engine, path, as_json=args.format == "json")
        if args.format == "json":
            docs[path.name] = doc
        else:
            print_run(f"{path.name} — patient {patient}", decisions)
    if args.format == "json":
        _dump(docs)
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
