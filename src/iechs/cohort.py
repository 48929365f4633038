"""`iechs replay-cohort`: replay the guideline over many patient histories, on every core or on
a Dask cluster.

Input: a folder of timeline `.json` files (in name order) or a `.jsonl` file (one timeline per
line); each timeline is native or a FHIR Bundle. Output: one result per patient, in input order
(the summary of `iechs.outcomes`: path, state entries, alerts, deviations, drug actions and
whether they were followed; bad input is an `error` result), so the file is deterministic:

- `--out results.jsonl` (the default): one JSON line per patient. Resumable: results already in
  the file are kept and skipped; a line cut short by an interruption is dropped and redone.
- `--out results.parquet`: the same results as a Parquet table (`parquet_schema`): one row per
  patient, times as UTC timestamps, lists of structs. Written to `results.parquet.partial` and
  renamed when complete; never resumed: an existing file is refused unless `--force`.

Executors give the same bytes. `local` (the default): this process (`--workers 1`) or a pool of
forked processes; neither Dask nor pyarrow is imported unless used. `dask`: a Dask distributed
cluster (`--scheduler tcp://host:8786`, else a `LocalCluster` of `--workers` processes), in
`iechs.cohort_dask`: this process reads the input and writes the output, workers replay
partitions of `--partition-size` timelines with the guideline shipped to them (never its path).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Generator, Iterator
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from .engine import Engine
    from .model import Guideline
    from .timeline import Timeline

__all__ = [
    "HELP",
    "PARTITION_SIZE",
    "PROGRESS_EVERY",
    "ROW_GROUP_ROWS",
    "Encoded",
    "configure",
    "iter_cohort",
    "parquet_schema",
    "replay_encoded",
    "replay_one",
    "replay_with",
    "run",
    "timeline_of",
]

HELP = "replay the guideline over a cohort of timelines (all cores or a Dask cluster, resumable)"

#: timelines per Dask task: big enough that scheduling costs little (a task is 2-3 s of replay
#: on one core), small enough that the work spreads evenly and the progress bar moves.
PARTITION_SIZE = 256
#: Parquet rows per row group: a fixed number, so that the file is the same whatever the executor.
ROW_GROUP_ROWS = 8192

Summary = dict[str, Any]

_ENGINE: Any = None  # the local executor's engine (this process, or each forked worker)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="a folder of timeline .json files, or a .jsonl file")
    parser.add_argument("--guideline", help="guideline YAML (default: bundled iec-hs.yaml)")
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes, local or in a Dask LocalCluster (default: all cores)",
    )
    parser.add_argument(
        "--out",
        default="results.jsonl",
        help="results file: .jsonl (JSON Lines, resumable) or .parquet (default: results.jsonl)",
    )
    parser.add_argument(
        "--runtime",
        choices=("table", "statechart"),
        default="table",
        help="table (fast, proven equal) or statechart (the reference)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--executor",
        choices=("local", "dask"),
        default="local",
        help="local processes (default) or a Dask distributed cluster (pip install "
        "'iechs[cluster]')",
    )
    parser.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="dask: a running scheduler, e.g. tcp://host:8786 (default: a LocalCluster of "
        "--workers processes)",
    )
    parser.add_argument(
        "--partition-size",
        type=int,
        default=PARTITION_SIZE,
        metavar="N",
        help=f"dask: timelines per task (default {PARTITION_SIZE})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="dask: how long to wait for the scheduler and a first worker (default 30)",
    )
    parser.add_argument(
        "--force", action="store_true", help="parquet: overwrite an existing results file"
    )


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
    """Parse one cohort item (native timeline or FHIR Bundle); bad input is an `IechsError`.

    A valid native timeline takes the fast path (`fast_timeline`: msgspec); anything else, the
    slow path that gives the Timeline or names each problem (the same Timeline either way)."""
    from .timeline import fast_timeline

    timeline = fast_timeline(text, guideline, key)
    if timeline is not None:
        return timeline
    from .jsonio import loads
    from .timeline import parse_timeline

    data = loads(
        text, key, lines=False
    )  # bounded: depth, integer size, finite numbers (exit 2 otherwise)
    if isinstance(data, dict) and data.get("resourceType") == "Bundle":
        from .fhir.input import bundle_to_timeline

        return bundle_to_timeline(data, guideline, key)
    return parse_timeline(data, guideline, key)


def replay_with(engine: Engine, item: tuple[str, str]) -> Summary:
    """Replay one (key, JSON text) item with `engine`; bad input is an `error` result."""
    from .errors import IechsError
    from .outcomes import summarise

    key, text = item
    try:
        timeline = timeline_of(key, text, engine.guideline)
        episode = engine.run(timeline)
    except IechsError as exc:
        return {"source": key, "error": exc.render()}
    return summarise(key, timeline.patient.id, episode.decisions)


def replay_one(item: tuple[str, str]) -> Summary:
    """Replay one timeline; bad input becomes an `error` result, never an exception."""
    return replay_with(_ENGINE, item)


def replay_encoded(item: tuple[str, str]) -> Encoded:
    """`replay_one`, its result already a JSON line: a worker encodes it, the writer writes it
    (a text crosses between processes faster than the dict, and the work is shared out)."""
    result = replay_one(item)
    return Encoded(_line(result), "error" in result)


class Encoded(NamedTuple):
    """One result as its JSON line (`_line`), and whether it is an `error` result."""

    line: str
    error: bool


#: `json.dumps(result, sort_keys=True, separators=(",", ":"))`, without making an encoder
#: for each line.
_ENCODE = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode


def _line(result: Summary) -> str:
    return _ENCODE(result) + "\n"


# --- writers -----------------------------------------------------------------------------------


class _JsonLines:
    """Appends JSON lines (resume keeps what is there)."""

    def __init__(self, out: Path) -> None:
        self.fh = out.open("a", encoding="utf-8")

    def write(self, result: Summary | Encoded) -> None:
        self.fh.write(result.line if isinstance(result, Encoded) else _line(result))

    def close(self, complete: bool) -> None:
        self.fh.close()


def parquet_schema() -> Any:
    """The Parquet table's schema (`pyarrow.Schema`), one row per patient, in input order.

    `source`, `patient`, `final_state`, `error` (set on bad input; then every other column but
    `source` is null) and `deviations` as in the JSON line; `path` a list of state ids;
    `entered`, `alerts`, `deviation_events` and `actions` lists of structs with the JSON line's
    fields, each time a UTC timestamp (`until` and `given_at` null where the JSON line has
    none). The summary format (`iechs.summary/1`) is the schema's `iechs.format` metadata.
    Timestamps are in milliseconds, the unit Parquet stores (the values are whole seconds)."""
    import pyarrow as pa  # type: ignore[import-untyped]

    from .outcomes import SUMMARY_FORMAT

    return _arrow_schema(pa.timestamp("ms", tz="UTC")).with_metadata(
        {"iechs.format": SUMMARY_FORMAT}
    )


def _arrow_schema(time: Any) -> Any:
    import pyarrow as pa

    text = pa.string()

    def records(*fields: tuple[str, Any]) -> Any:
        return pa.list_(pa.field("element", pa.struct(list(fields))))  # Parquet's name

    return pa.schema(
        [
            pa.field("source", text, nullable=False),
            ("patient", text),
            ("final_state", text),
            ("error", text),
            ("path", pa.list_(pa.field("element", text))),
            ("entered", records(("state", text), ("at", time))),
            ("alerts", records(("code", text), ("at", time))),
            ("deviations", pa.int32()),
            ("deviation_events", records(("code", text), ("drug", text), ("at", time))),
            (
                "actions",
                records(
                    ("code", text),
                    ("drug", text),
                    ("state", text),
                    ("from", time),
                    ("until", time),
                    ("given_at", time),
                    ("followed", pa.bool_()),
                ),
            ),
        ]
    )


class _Parquet:
    """Writes row groups of `ROW_GROUP_ROWS` to `OUT.partial`, renamed to OUT when complete."""

    def __init__(self, out: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq  # type: ignore[import-untyped]

        self.out = out
        self.partial = out.with_name(out.name + ".partial")
        self.pa: Any = pa
        self.schema = parquet_schema()
        self.as_text = _arrow_schema(pa.string())  # times as ISO text, cast per row group
        self.writer = pq.ParquetWriter(self.partial, self.schema, compression="zstd")
        self.rows: list[Summary] = []

    def write(self, result: Summary | Encoded) -> None:
        assert not isinstance(result, Encoded)  # a Parquet table is written from the results
        self.rows.append(result)
        if len(self.rows) == ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self.rows:
            table = self.pa.Table.from_pylist(self.rows, schema=self.as_text)
            self.writer.write_table(table.cast(self.schema), row_group_size=ROW_GROUP_ROWS)
            self.rows = []

    def close(self, complete: bool) -> None:
        if complete:
            self._flush()
        self.writer.close()
        if complete:
            self.partial.replace(self.out)
        else:
            self.partial.unlink(missing_ok=True)


def _writer(out: Path, force: bool) -> tuple[_JsonLines | _Parquet, set[str]]:
    """The writer for `out` (by its suffix) and the keys already done there (resume)."""
    from .errors import IechsError, Problem
    from .extras import require

    if out.suffix.lower() == ".parquet":
        if out.exists() and not force:
            raise IechsError(
                [
                    Problem(
                        "already exists: a Parquet file is written whole, never resumed (use "
                        "--force to overwrite it, or a .jsonl file to resume)",
                        "--out",
                    )
                ],
                str(out),
            )
        require("parquet")  # pyarrow: `pip install 'iechs[parquet]'`
        return _Parquet(out), set()
    try:
        done = _done(out)
    except (ValueError, KeyError, TypeError):  # not JSON, beyond the bounds, not results
        raise IechsError(
            [Problem("not a results file of replay-cohort (cannot resume)")], str(out)
        ) from None
    return _JsonLines(out), done


def _done(out: Path) -> set[str]:
    """Keys already replayed; drops a last line cut short by an interruption."""
    if not out.exists():
        return set()
    raw = out.read_bytes()
    keep = raw if raw.endswith(b"\n") or not raw else raw[: raw.rfind(b"\n") + 1]
    from .jsonio import parse

    keys: set[str] = set()
    for line in keep.splitlines():
        keys.add(parse(line)["source"])
    if keep != raw:
        out.write_bytes(keep)
    return keys


# --- the command -------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from .errors import IechsError, Problem

    source = Path(args.source)
    if not source.exists():
        raise IechsError([Problem("no such file or folder")], str(source))
    if args.workers < 1:
        raise IechsError([Problem("--workers is at least 1")], str(source))
    if args.partition_size < 1:
        raise IechsError([Problem("--partition-size is at least 1")], str(source))
    if not args.timeout > 0:
        raise IechsError([Problem("--timeout is a number of seconds above 0")], str(source))
    if args.scheduler is not None and args.executor != "dask":
        raise IechsError([Problem("--scheduler needs --executor dask")], str(source))
    if args.executor == "dask":
        from .extras import require

        require("cluster")  # dask, distributed: `pip install 'iechs[cluster]'`
    out = Path(args.out)
    # Load the guideline once here, so that a bad guideline fails before any worker starts.
    _init_worker(args.guideline, args.runtime)
    writer, done = _writer(out, args.force)
    todo = (item for item in iter_cohort(source) if item[0] not in done)
    total = _count(source)
    errors = 0
    complete = False
    encoded = isinstance(writer, _JsonLines)  # workers send JSON lines, not results
    try:
        with (
            Progress(disable=args.no_progress, transient=True) as progress,
            closing(_executor(args, todo, encoded)) as batches,
        ):
            task = progress.add_task("replaying", total=total, completed=len(done))
            # where the bar is not shown (a log, a pipe), a line every PROGRESS_EVERY s
            shown = progress.console.is_terminal or progress.console.is_jupyter
            lines = _ProgressLines(total, len(done), disabled=args.no_progress or shown)
            for results in batches:
                for result in results:
                    errors += result.error if isinstance(result, Encoded) else "error" in result
                    writer.write(result)
                progress.advance(task, len(results))
                lines.advance(len(results))
        complete = True
    finally:
        writer.close(complete)
    replayed = total - len(done)
    print(
        f"{replayed} replayed, {len(done)} already in {out}, {errors} with bad input",
        file=sys.stderr,
    )
    return 2 if errors else 0


class _ProgressLines:
    """Progress where there is no terminal for a bar: a line on stderr every `PROGRESS_EVERY`
    seconds (none for a run shorter than that)."""

    def __init__(self, total: int, done: int, *, disabled: bool) -> None:
        self.total, self.done, self.disabled = total, done, disabled
        self.start = self.last = time.monotonic()

    def advance(self, n: int) -> None:
        self.done += n
        if self.disabled or (now := time.monotonic()) - self.last < PROGRESS_EVERY:
            return
        self.last = now
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        print(
            f"replaying: {self.done} of {self.total} timelines{share}, {now - self.start:.0f} s",
            file=sys.stderr,
            flush=True,
        )


#: seconds between two progress lines when stderr is not a terminal.
PROGRESS_EVERY = 10.0


def _executor(
    args: argparse.Namespace, todo: Iterator[tuple[str, str]], encoded: bool = False
) -> Generator[list[Summary] | list[Encoded], None, None]:
    """Results in input order, in batches (one per partition, or one result at a time);
    `encoded`: each as its JSON line (`Encoded`), from the local executor."""
    if args.executor == "dask":
        from .cohort_dask import replay

        yield from replay(args, _ENGINE.guideline, todo)
        return
    if args.workers == 1:
        for item in todo:
            yield [replay_encoded(item)] if encoded else [replay_one(item)]
        return
    import multiprocessing

    pool = multiprocessing.get_context("fork").Pool(
        args.workers, _init_worker, (args.guideline, args.runtime)
    )
    try:
        if encoded:
            for line in pool.imap(replay_encoded, todo, chunksize=32):
                yield [line]
        else:
            for result in pool.imap(replay_one, todo, chunksize=32):
                yield [result]
    finally:
        pool.terminate()
        pool.join()
