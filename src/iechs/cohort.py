"""`iechs replay-cohort`: replay the guideline over many patient histories, on every core.

Input: a folder of timeline `.json` files (in name order) or a `.jsonl` file (one timeline per
line); each timeline is native or a FHIR Bundle. Output: one JSON line per patient, in input
order (the summary of `iechs.outcomes`: path, state entries, alerts, deviations, drug actions
and whether they were followed), so the file is deterministic. Resumable: results already in
`--out` are kept and skipped; a line cut short by an interruption is dropped and redone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .model import Guideline
    from .timeline import Timeline

__all__ = ["HELP", "configure", "iter_cohort", "replay_one", "run", "timeline_of"]

HELP = "replay the guideline over a cohort of timelines (all cores, resumable)"

_ENGINE: Any = None


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="a folder of timeline .json files, or a .jsonl file")
    parser.add_argument("--guideline", help="guideline YAML (default: bundled iec-hs.yaml)")
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes (default: all cores)",
    )
    parser.add_argument("--out", default="results.jsonl", help="results file (JSON Lines)")
    parser.add_argument(
        "--runtime",
        choices=("table", "statechart"),
        default="table",
        help="table (fast, proven equal) or statechart (the reference)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def iter_cohort(source: Path) -> Iterator[tuple[str, str]]:
    """(key, JSON text) per timeline: the file name, or `name:line` in a JSON Lines file."""
    if source.is_dir():
        for path in sorted(source.glob("*.json")):
            yield path.name, path.read_text(encoding="utf-8")
        return
    with source.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                yield f"{source.name}:{number}", line


def _count(source: Path) -> int:
    if source.is_dir():
        return sum(1 for _ in source.glob("*.json"))
    with source.open("rb") as fh:
        return sum(1 for line in fh if line.strip())


def _init_worker(guideline: str | None, runtime: str) -> None:
    global _ENGINE  # one engine per worker process, built once  # noqa: PLW0603
    from .engine import Engine
    from .loader import load_guideline

    _ENGINE = Engine(load_guideline(guideline), runtime=runtime)  # type: ignore[arg-type]


def timeline_of(key: str, text: str, guideline: Guideline) -> Timeline:
    """Parse one cohort item (native timeline or FHIR Bundle); bad input is an `IechsError`."""
    from .errors import IechsError, Problem
    from .timeline import parse_timeline

    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise IechsError(
            [Problem(f"not valid JSON: {exc.msg} (column {exc.colno})", "$")], key
        ) from None
    if isinstance(data, dict) and data.get("resourceType") == "Bundle":
        from .fhir.input import bundle_to_timeline

        return bundle_to_timeline(data, guideline, key)
    return parse_timeline(data, guideline, key)


def replay_one(item: tuple[str, str]) -> dict[str, Any]:
    """Replay one timeline; bad input becomes an `error` result, never an exception."""
    from .errors import IechsError
    from .outcomes import summarise

    key, text = item
    try:
        timeline = timeline_of(key, text, _ENGINE.guideline)
        episode = _ENGINE.run(timeline)
    except IechsError as exc:
        return {"source": key, "error": exc.render()}
    return summarise(key, timeline.patient.id, episode.decisions)


def _done(out: Path) -> set[str]:
    """Keys already replayed; drops a last line cut short by an interruption."""
    if not out.exists():
        return set()
    raw = out.read_bytes()
    keep = raw if raw.endswith(b"\n") or not raw else raw[: raw.rfind(b"\n") + 1]
    keys: set[str] = set()
    for line in keep.splitlines():
        keys.add(json.loads(line)["source"])
    if keep != raw:
        out.write_bytes(keep)
    return keys


def run(args: argparse.Namespace) -> int:
    import multiprocessing

    from rich.progress import Progress

    from .errors import IechsError, Problem

    source = Path(args.source)
    if not source.exists():
        raise IechsError([Problem("no such file or folder")], str(source))
    if args.workers < 1:
        raise IechsError([Problem("--workers is at least 1")], str(source))
    out = Path(args.out)
    try:
        done = _done(out)
    except (json.JSONDecodeError, KeyError, TypeError):
        raise IechsError(
            [Problem("not a results file of replay-cohort (cannot resume)")], str(out)
        ) from None
    todo = (item for item in iter_cohort(source) if item[0] not in done)
    total = _count(source)
    errors = 0
    # Load the guideline once here, so that a bad guideline fails before any worker starts.
    _init_worker(args.guideline, args.runtime)
    with (
        out.open("a", encoding="utf-8") as fh,
        Progress(disable=args.no_progress, transient=True) as progress,
    ):
        task = progress.add_task("replaying", total=total, completed=len(done))
        if args.workers == 1:
            results: Iterator[dict[str, Any]] = map(replay_one, todo)
            pool = None
        else:
            pool = multiprocessing.get_context("fork").Pool(
                args.workers, _init_worker, (args.guideline, args.runtime)
            )
            results = pool.imap(replay_one, todo, chunksize=32)
        try:
            for result in results:
                errors += "error" in result
                fh.write(json.dumps(result, sort_keys=True, separators=(",", ":")) + "\n")
                progress.advance(task)
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
    replayed = total - len(done)
    print(
        f"{replayed} replayed, {len(done)} already in {out}, {errors} with bad input",
        file=sys.stderr,
    )
    return 2 if errors else 0
