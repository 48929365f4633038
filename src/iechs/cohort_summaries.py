"""The per-patient summaries of a cohort, read back for cohort tools (`iechs report`).

Two sources: the results file of `iechs replay-cohort` (JSON Lines of `iechs.summary/1`
summaries, see `iechs.outcomes`, and error lines `{"source", "error"}`), or a cohort replayed
in this process (a folder of timeline `.json` files, a `.jsonl` file of timelines, or one
timeline `.json`; native or FHIR Bundles). `read_source` tells them apart by content: a results
file's first non-blank line is a summary or an error line of replay-cohort.

A summary line that is not JSON, or not a summary, is an `IechsError` naming the file, the line
and the JSON path (`results.jsonl:3: $.entered[1].at: not an ISO 8601 timestamp: 'x'`). A cohort
item that is not a valid timeline becomes a `ReplayError`, as in `replay-cohort`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Generator, Iterable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from .jsonio import JSONBoundError, parse

if TYPE_CHECKING:
    import cattrs

    from .model import Guideline

__all__ = [
    "Cohort",
    "DrugAction",
    "Entry",
    "Occurrence",
    "ReplayError",
    "Summary",
    "read_cohort",
    "read_results",
    "read_source",
    "replay",
    "summary_of",
]


@attrs.frozen
class Entry:
    """An entry into a state."""

    state: str
    at: datetime


@attrs.frozen
class Occurrence:
    """An alert or a deviation: its code and the time of the event that raised it."""

    code: str
    at: datetime
    drug: str | None = None


@attrs.frozen(kw_only=True)
class DrugAction:
    """A drug the guideline asked for, from `start` (`from` in JSON) until given or no longer
    asked for."""

    code: str
    drug: str
    state: str
    start: datetime
    until: datetime | None = None
    given_at: datetime | None = None
    followed: bool


@attrs.frozen(kw_only=True)
class Summary:
    """One replayed course: a line of `replay-cohort` (`iechs.outcomes.summarise`)."""

    source: str
    patient: str
    final_state: str | None
    path: tuple[str, ...]
    entered: tuple[Entry, ...]
    alerts: tuple[Occurrence, ...]
    deviation_events: tuple[Occurrence, ...]
    actions: tuple[DrugAction, ...]


@attrs.frozen
class ReplayError:
    """A cohort item that could not be replayed (bad input), with the message saying why."""

    source: str
    error: str


@attrs.frozen
class Cohort:
    """What a report is made from: the summaries, the items that failed, and where from."""

    name: str
    summaries: tuple[Summary, ...]
    errors: tuple[ReplayError, ...] = ()
    #: replayed here from timelines (not read from a results file)
    replayed: bool = False


def _converter() -> cattrs.Converter:
    import cattrs  # noqa: PLC0415 - keeps `iechs --help` light
    from cattrs.gen import make_dict_structure_fn, override  # noqa: PLC0415

    from .timeline import parse_time  # noqa: PLC0415

    conv = cattrs.Converter()

    def strict(kind: type, label: str) -> Any:
        def hook(value: Any, _: Any) -> Any:
            if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
                return value
            raise ValueError(f"expected {label}, got {json.dumps(value)[:40]}")

        return hook

    conv.register_structure_hook(str, strict(str, "text"))
    conv.register_structure_hook(bool, strict(bool, "true or false"))
    conv.register_structure_hook(datetime, lambda v, _: parse_time(v))
    conv.register_structure_hook(
        DrugAction, make_dict_structure_fn(DrugAction, conv, start=override(rename="from"))
    )
    return conv


def summary_of(data: Any, conv: cattrs.Converter | None = None) -> Summary:
    """A summary line (already parsed JSON); a bad one raises `IechsError` with JSON paths."""
    from .errors import IechsError, Problem, structuring_problems  # noqa: PLC0415
    from .outcomes import SUMMARY_FORMAT  # noqa: PLC0415

    if not isinstance(data, dict):
        raise IechsError([Problem("expected a JSON object (a summary of replay-cohort)")])
    if data.get("format") != SUMMARY_FORMAT:
        got = json.dumps(data.get("format"))
        raise IechsError([Problem(f"expected format {SUMMARY_FORMAT!r}, got {got}", "$.format")])
    try:
        summary: Summary = (conv or _converter()).structure(data, Summary)
    except Exception as exc:  # cattrs groups every structuring error; transform_error reads them
        raise IechsError(structuring_problems(exc, "$", _json_path)) from None
    return summary


def _json_path(path: str) -> str:
    """The JSON name of a renamed field in a path: `$.actions[2].start` -> `$.actions[2].from`."""
    return re.sub(r"(\$\.actions\[\d+\])\.start\b", r"\1.from", path)


def _lines(path: Path) -> Generator[tuple[int, str], None, None]:
    """(line number, text) of each non-blank line of a text file; unreadable is bad input."""
    from .errors import IechsError, Problem  # noqa: PLC0415

    try:
        with path.open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if line.strip():
                    yield number, line
    except UnicodeDecodeError:
        raise IechsError([Problem("not UTF-8 text")], str(path)) from None
    except OSError as exc:
        raise IechsError([Problem(f"cannot read the file: {exc.strerror}")], str(path)) from None


def _is_results_line(data: Any) -> bool:
    if not isinstance(data, dict):
        return False
    fmt = data.get("format")
    return (isinstance(fmt, str) and fmt.startswith("iechs.summary/")) or (
        "error" in data and "source" in data and "patient" not in data
    )


def read_results(path: Path) -> Cohort:
    """The summaries and error lines of a results file of `iechs replay-cohort`."""
    from .errors import IechsError, Problem  # noqa: PLC0415

    conv = _converter()
    summaries: list[Summary] = []
    errors: list[ReplayError] = []
    for number, line in _lines(path):
        try:
            data = parse(line)
        except json.JSONDecodeError as exc:
            problem = Problem(f"not valid JSON: {exc.msg} (column {exc.colno})", "$", number)
            raise IechsError([problem], str(path)) from None
        except JSONBoundError as exc:
            raise IechsError([Problem(exc.reason, exc.path, number)], str(path)) from None
        try:
            if isinstance(data, dict) and "error" in data and "format" not in data:
                source, error = data.get("source"), data.get("error")
                if not isinstance(source, str) or not isinstance(error, str):
                    raise IechsError([Problem("an error line has text source and error")])
                errors.append(ReplayError(source, error))
            else:
                summaries.append(summary_of(data, conv))
        except IechsError as exc:
            problems = [attrs.evolve(p, line=number) for p in exc.problems]
            raise IechsError(problems, str(path)) from None
    return Cohort(path.name, tuple(summaries), tuple(errors))


def read_cohort(source: Path, guideline: Guideline) -> Cohort:
    """Replay a cohort (folder, `.jsonl`, or one timeline `.json`) in this process.

    An item that is not a valid timeline becomes a `ReplayError` (its message names the item:
    the file, or `name:line` of a JSON Lines file, and the JSON path), as in `replay-cohort`.
    """
    from .cohort import iter_cohort  # noqa: PLC0415
    from .errors import IechsError, Problem  # noqa: PLC0415

    if source.is_file() and source.suffix == ".json":
        try:
            items: Iterable[tuple[str, str]] = [(source.name, source.read_text(encoding="utf-8"))]
        except (OSError, UnicodeDecodeError):
            raise IechsError([Problem("cannot read the file as UTF-8 text")], str(source)) from None
    else:
        items = (
            iter_cohort(source)
            if source.is_dir()
            else ((f"{source.name}:{n}", line) for n, line in _lines(source))
        )
    return replay(source.name, items, guideline)


def replay(name: str, items: Iterable[tuple[str, str]], guideline: Guideline) -> Cohort:
    """Replay `(key, JSON text)` items (as `iechs.cohort.iter_cohort` yields them) and
    summarise each course with `iechs.outcomes.summarise`, as `replay-cohort` does."""
    from .cohort import timeline_of  # noqa: PLC0415
    from .engine import Engine  # noqa: PLC0415
    from .errors import IechsError  # noqa: PLC0415
    from .outcomes import summarise  # noqa: PLC0415

    engine = Engine(guideline)
    conv = _converter()
    summaries: list[Summary] = []
    errors: list[ReplayError] = []
    for key, text in items:
        try:
            timeline = timeline_of(key, text, guideline)
            decisions = engine.run(timeline).decisions
        except IechsError as exc:
            errors.append(ReplayError(key, exc.render()))
            continue
        summaries.append(summary_of(summarise(key, timeline.patient.id, decisions), conv))
    return Cohort(name, tuple(summaries), tuple(errors), replayed=True)


def read_source(source: Path, guideline: Guideline) -> Cohort:
    """A results file, told by its first non-blank line, or else a cohort replayed here."""
    from .errors import IechsError, Problem  # noqa: PLC0415

    if not source.exists():
        raise IechsError([Problem("no such file or folder")], str(source))
    if source.is_dir():
        return read_cohort(source, guideline)
    lines = _lines(source)
    first = next(lines, None)
    lines.close()
    if first is None:
        raise IechsError(
            [Problem("empty: neither results of replay-cohort nor timelines")], str(source)
        )
    try:
        data = parse(first[1])
    except ValueError:  # not JSON, or beyond the bounds: read as a cohort, which says why
        data = None
    return read_results(source) if _is_results_line(data) else read_cohort(source, guideline)
