"""`iechs report`: what the guideline said over a cohort, for quality and safety officers.

    iechs report RESULTS.jsonl --html report.html      # the results of `iechs replay-cohort`
    iechs report COHORT --html report.html             # a cohort, replayed here (--guideline)
    iechs report RESULTS.jsonl --format json [--out F] # the same aggregates as JSON
    python -m iechs.cohort_report --screenshot docs/report.png  # the README's screenshot

Input: the results of `iechs replay-cohort` (JSON Lines of `iechs.summary/1` summaries, see
`iechs.outcomes`; its error lines `{"source", "error"}` are counted and listed), or a cohort:
a folder of timeline `.json` files, a `.jsonl` file of timelines, or one timeline `.json`
(native or FHIR Bundles), replayed here with `--guideline`. A file is told by its content: a
results file's first non-blank line is a summary (or an error line) of replay-cohort.

Output: one self-contained HTML page (plotly.js inlined: it works offline and requests nothing
beyond the file itself; see `iechs.cohort_report_html`), or the same aggregates as JSON with
sorted keys. The same input gives the same bytes: nothing reads the clock, every id is fixed.

Definitions (the page and the JSON print them too, from `DEFINITIONS`):

- *Time to first-line treatment*: per patient, treatment is indicated at the `from` of the
  earliest drug action the guideline asked for in the diagnosis state (`suspected`). The first
  line started is the next state entered after that moment: the entry that follows the entry
  into `suspected` the action was asked in. The time is that entry's time minus the action's
  `from`, in hours, counted when that next state is a treatment line (a state with a line
  number in the guideline); otherwise (ruled out, closed, or the course ends still suspected)
  the patient counts as *indicated, no line started*.
- *Time on a line*: per entry into a treatment line state, from that entry to the next state
  entry of the same course, in hours; an entry with no later one is *ongoing* at the end of the
  course and left out of the distribution.
- *Week*: the ISO week (Monday to Sunday, UTC) of an alert's or a deviation's event time,
  named by its Monday.
- *Action not followed*: a drug action asked for and never given while it was asked for
  (`followed: false` in the summary).
- Quartiles: linear interpolation between closest ranks (the value at rank (n-1)p, counting
  from 0, of the sorted values; numpy's default, `statistics.quantiles(method="inclusive")`).

Bad input (a missing file, a results line that is not JSON or not a summary, a cohort item that
is not a valid timeline) is exit 2 with the file, the line and the JSON path. A cohort item that
fails is listed in the report like a results error line, and the command still exits 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from ._attrs_code import install

install()  # the classes below take their methods' code from the cache (`iechs._attrs_code`)

if TYPE_CHECKING:
    from .cohort_summaries import Cohort, Occurrence, Summary
    from .model import Guideline

__all__ = [
    "DEFINITIONS",
    "HELP",
    "REPORT_FORMAT",
    "StateInfo",
    "aggregate",
    "configure",
    "demo_cohort",
    "histogram",
    "quantile",
    "run",
    "screenshot",
    "time_to_first_line",
    "to_json",
]

HELP = "cohort report for quality and safety: one offline HTML page (or JSON aggregates)"

#: the `format` of the JSON aggregates; bumped when a field changes meaning.
REPORT_FORMAT = "iechs.cohort-report/1"

DEFINITIONS: dict[str, str] = {
    "time_to_first_line": (
        "Treatment is indicated at the start (from) of the earliest drug action the guideline "
        "asked for in the diagnosis state (suspected). The first line started is the next state "
        "entered after that moment: the entry that follows the entry into suspected the action "
        "was asked in. Time to first-line treatment = that entry's time - the action's start, "
        "in hours; counted when that next state is a treatment line, otherwise (ruled out, "
        "closed, or still suspected at the end) the patient is 'indicated, no line started'."
    ),
    "time_on_line": (
        "Per entry into a treatment line state: from that entry to the next state entry of the "
        "same course, in hours. An entry with no later one is 'ongoing' at the end of the course "
        "and left out of the distribution."
    ),
    "week": (
        "The ISO week (Monday to Sunday, UTC) of the alert's or deviation's event time, named "
        "by its Monday."
    ),
    "action_not_followed": (
        "A drug action the guideline asked for and that was never given while it was asked for "
        "(followed: false in the replay summary)."
    ),
    "quartiles": (
        "Median and quartiles by linear interpolation between closest ranks: the value at rank "
        "(n-1)p of the sorted values, counting from 0."
    ),
}

#: histogram bin widths in hours, smallest first: the smallest that gives at most `_MAX_BINS`.
_BIN_WIDTHS = (0.25, 0.5, 1, 2, 3, 4, 6, 8, 12, 24, 48, 72, 168, 336, 720, 2160, 8760)
_MAX_BINS = 12
_IL6_MONOTHERAPY = "il6_monotherapy"

#: the bundled screenshot: the example timelines and this synthetic cohort.
DEMO_SEED, DEMO_PATIENTS = 7, 200


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        help="results of replay-cohort (.jsonl), or a cohort: a folder of timeline .json "
        "files, a .jsonl of timelines, or one timeline .json",
    )
    parser.add_argument(
        "--guideline",
        help="guideline YAML (default: bundled iec-hs.yaml): replays a cohort; names the "
        "states, their order and which are treatment lines",
    )
    parser.add_argument("--format", choices=("html", "json"), default="html")
    parser.add_argument(
        "--html", metavar="FILE", help="the HTML page (default with --format html: report.html)"
    )
    parser.add_argument("--out", metavar="FILE", help="the JSON aggregates (default: stdout)")


# --- aggregates ---------------------------------------------------------------------------------


@attrs.frozen
class StateInfo:
    """What the report needs of the guideline: the states in order, phases, line numbers."""

    order: tuple[str, ...]
    phase: Mapping[str, str]
    line: Mapping[str, int]
    guideline: Mapping[str, str] = attrs.field(factory=dict)

    @classmethod
    def of(cls, g: Guideline) -> StateInfo:
        return cls(
            tuple(g.states),
            {sid: s.phase for sid, s in g.states.items()},
            {sid: s.line for sid, s in g.states.items() if s.line is not None},
            {"id": g.guideline.id, "version": g.guideline.version},
        )

    def states(self, summaries: Iterable[Summary]) -> tuple[str, ...]:
        """The guideline's states, then any other state met in the summaries (as met)."""
        seen = dict.fromkeys(self.order)
        for s in summaries:
            seen.update(dict.fromkeys(s.path))
        return tuple(seen)


def quantile(ordered: Sequence[float], p: float) -> float:
    """The p-quantile of sorted values, by linear interpolation between closest ranks."""
    h = (len(ordered) - 1) * p
    lo = math.floor(h)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (h - lo) * (ordered[hi] - ordered[lo])


def _hours(t: timedelta) -> float:
    return t.total_seconds() / 3600


def _distribution(values: Iterable[float]) -> dict[str, Any]:
    ordered = sorted(values)
    if not ordered:
        return {"n": 0, "min": None, "q1": None, "median": None, "q3": None, "max": None}
    return {
        "n": len(ordered),
        "min": round(ordered[0], 3),
        "q1": round(quantile(ordered, 0.25), 3),
        "median": round(quantile(ordered, 0.5), 3),
        "q3": round(quantile(ordered, 0.75), 3),
        "max": round(ordered[-1], 3),
    }


def histogram(values: Sequence[float]) -> dict[str, Any]:
    """Equal bins from a multiple of the width: the smallest width of `_BIN_WIDTHS` giving at
    most `_MAX_BINS` bins. A value on an edge falls in the bin that starts there."""
    if not values:
        return {"bin_hours": None, "bins": []}
    low, high = min(values), max(values)
    width: float = _BIN_WIDTHS[-1]
    for w in _BIN_WIDTHS:
        if math.floor(high / w) - math.floor(low / w) + 1 <= _MAX_BINS:
            width = w
            break
    first = math.floor(low / width)
    counts = Counter(math.floor(v / width) - first for v in values)
    n = math.floor(high / width) - first + 1
    return {
        "bin_hours": width,
        "bins": [
            {"from": (first + k) * width, "to": (first + k + 1) * width, "count": counts[k]}
            for k in range(n)
        ],
    }


def _week(at: datetime) -> str:
    return (at - timedelta(days=at.weekday())).date().isoformat()


def time_to_first_line(s: Summary, info: StateInfo) -> tuple[bool, float | None]:
    """(treatment indicated, hours to the first line started or None): see `DEFINITIONS`."""
    asked = [a for a in s.actions if info.phase.get(a.state) == "diagnosis"]
    if not asked:
        return False, None
    first = min(asked, key=lambda a: a.start)
    entries = [i for i, e in enumerate(s.entered) if e.state == first.state and e.at <= first.start]
    if not entries or entries[-1] + 1 >= len(s.entered):
        return True, None
    started = s.entered[entries[-1] + 1]
    if started.state not in info.line:
        return True, None
    return True, _hours(started.at - first.start)


def _by_week(events: Iterable[Occurrence]) -> dict[str, dict[str, int]]:
    weeks: dict[str, Counter[str]] = defaultdict(Counter)
    for o in events:
        weeks[o.code][_week(o.at)] += 1
    return {code: dict(sorted(c.items())) for code, c in sorted(weeks.items())}


def _by_code(per_patient: Iterable[Sequence[Occurrence]]) -> dict[str, dict[str, int]]:
    events: Counter[str] = Counter()
    patients: Counter[str] = Counter()
    for occurrences in per_patient:
        events.update(o.code for o in occurrences)
        patients.update({o.code for o in occurrences})
    return {c: {"events": events[c], "patients": patients[c]} for c in sorted(events)}


def aggregate(cohort: Cohort, info: StateInfo) -> dict[str, Any]:
    """Everything the report shows, as JSON-ready data (see `DEFINITIONS`)."""
    summaries = cohort.summaries
    states = info.states(summaries)
    rank = {s: i for i, s in enumerate(states)}

    transitions: Counter[tuple[str, str]] = Counter()
    entering: Counter[str] = Counter()
    on_line: dict[str, list[float]] = {s: [] for s in states if s in info.line}
    ongoing: Counter[str] = Counter()
    first_line: list[float] = []
    indicated = 0
    asked: Counter[tuple[str, str]] = Counter()
    missed: Counter[tuple[str, str]] = Counter()
    missed_patients: Counter[tuple[str, str]] = Counter()
    patients: list[dict[str, Any]] = []
    for number, s in enumerate(summaries, 1):
        transitions.update(zip(s.path, s.path[1:], strict=False))
        entering.update(set(s.path))
        for i, e in enumerate(s.entered):
            if e.state in info.line:
                if i + 1 < len(s.entered):
                    on_line[e.state].append(_hours(s.entered[i + 1].at - e.at))
                else:
                    ongoing[e.state] += 1
        was_indicated, hours = time_to_first_line(s, info)
        indicated += was_indicated
        if hours is not None:
            first_line.append(hours)
        not_followed = [a for a in s.actions if not a.followed]
        asked.update((a.code, a.drug) for a in s.actions)
        missed.update((a.code, a.drug) for a in not_followed)
        missed_patients.update({(a.code, a.drug) for a in not_followed})
        patients.append(
            {
                "anchor": f"patient-{number}",
                "source": s.source,
                "patient": s.patient,
                "final_state": s.final_state,
                "path": list(s.path),
                "alerts": len(s.alerts),
                "deviations": len(s.deviation_events),
                "il6_monotherapy": sum(d.code == _IL6_MONOTHERAPY for d in s.deviation_events),
                "time_to_first_line_hours": None if hours is None else round(hours, 3),
                "actions_not_followed": [
                    {
                        "code": a.code,
                        "drug": a.drug,
                        "state": a.state,
                        "from": _time(a.start),
                        "until": None if a.until is None else _time(a.until),
                    }
                    for a in not_followed
                ],
            }
        )

    def with_any(key: str) -> int:
        return sum(1 for p in patients if p[key])

    return {
        "format": REPORT_FORMAT,
        "source": cohort.name,
        "replayed": cohort.replayed,
        "guideline": dict(info.guideline),
        "definitions": DEFINITIONS,
        "states": [{"id": s, "phase": info.phase.get(s), "line": info.line.get(s)} for s in states],
        "counts": {
            "patients": len(summaries),
            "errors": len(cohort.errors),
            "alerts": sum(p["alerts"] for p in patients),
            "patients_with_alerts": with_any("alerts"),
            "deviations": sum(p["deviations"] for p in patients),
            "patients_with_deviations": with_any("deviations"),
            "il6_monotherapy": sum(p["il6_monotherapy"] for p in patients),
            "patients_with_il6_monotherapy": with_any("il6_monotherapy"),
            "actions_asked": sum(asked.values()),
            "actions_not_followed": sum(missed.values()),
            "patients_with_actions_not_followed": with_any("actions_not_followed"),
            "patients_treated": sum(
                1 for s in summaries if any(state in info.line for state in s.path)
            ),
        },
        "final_states": dict(Counter(s.final_state or "none" for s in summaries)),
        "patients_entering": {s: entering[s] for s in states if entering[s]},
        "transitions": [
            {"from": a, "to": b, "count": n}
            for (a, b), n in sorted(
                transitions.items(), key=lambda t: (rank[t[0][0]], rank[t[0][1]])
            )
        ],
        "time_to_first_line": {
            "unit": "hours",
            "indicated": indicated,
            "started": len(first_line),
            "not_started": indicated - len(first_line),
            **_distribution(first_line),
            "histogram": histogram(first_line),
        },
        "time_on_line": {
            state: {
                "line": info.line[state],
                "unit": "hours",
                "entries": len(values) + ongoing[state],
                "ongoing": ongoing[state],
                **_distribution(values),
            }
            for state, values in on_line.items()
        },
        "alerts_by_code": _by_code(s.alerts for s in summaries),
        "deviations_by_code": _by_code(s.deviation_events for s in summaries),
        "alerts_by_week": _by_week(o for s in summaries for o in s.alerts),
        "deviations_by_week": _by_week(o for s in summaries for o in s.deviation_events),
        "actions_not_followed": [
            {
                "code": code,
                "drug": drug,
                "asked": n,
                "not_followed": missed[(code, drug)],
                "patients_not_followed": missed_patients[(code, drug)],
            }
            for (code, drug), n in sorted(asked.items())
        ],
        "patients": patients,
        "errors": [{"source": e.source, "error": e.error} for e in cohort.errors],
    }


def _time(t: datetime) -> str:
    from .timeline import format_time  # noqa: PLC0415

    return format_time(t)


def to_json(report: Mapping[str, Any]) -> str:
    """The aggregates as JSON text: sorted keys, two-space indents, a final newline."""
    return json.dumps(report, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


# --- the command ----------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from .extras import require  # noqa: PLC0415

    html_wanted = args.format == "html" or bool(args.html)
    if html_wanted:
        require("report")  # plotly: `pip install 'iechs[report]'`
    from .cohort_summaries import read_source  # noqa: PLC0415
    from .diagram.commands import write_file  # noqa: PLC0415
    from .loader import load_guideline  # noqa: PLC0415

    guideline = load_guideline(args.guideline)
    info = StateInfo.of(guideline)
    cohort = read_source(Path(args.source), guideline)
    report = aggregate(cohort, info)
    if args.format == "json":
        text = to_json(report)
        if args.out:
            write_file(Path(args.out), text.encode("utf-8"))
        else:
            sys.stdout.write(text)
    if html_wanted:
        from .cohort_report_html import render_html  # noqa: PLC0415

        html = Path(args.html or "report.html")
        write_file(html, render_html(report, cohort.summaries, info))
        sys.stderr.write(f"wrote {html}\n")
    for e in cohort.errors:
        sys.stderr.write(f"iechs report: {e.error}\n")
    sys.stderr.write(f"{len(cohort.summaries)} patients, {len(cohort.errors)} with bad input\n")
    # A cohort item that failed is bad input (as in replay-cohort); error lines of a results
    # file were bad input of the replay, already reported by it.
    return 2 if cohort.errors and cohort.replayed else 0


# --- the committed screenshot ---------------------------------------------------------------------


def demo_cohort(guideline: Guideline) -> Cohort:
    """The bundled example timelines, then a synthetic cohort (`DEMO_PATIENTS`, `DEMO_SEED`)."""
    from .cli import examples_dir  # noqa: PLC0415
    from .cohort import iter_cohort  # noqa: PLC0415
    from .cohort_summaries import Cohort, replay  # noqa: PLC0415
    from .synthetic import synthetic_cohort  # noqa: PLC0415

    def synthetic() -> Iterator[tuple[str, str]]:
        for number, doc in enumerate(synthetic_cohort(DEMO_PATIENTS, DEMO_SEED), 1):
            doc.pop("course")
            yield f"synthetic.jsonl:{number}", json.dumps(doc, sort_keys=True)

    examples = replay("examples", iter_cohort(examples_dir()), guideline)
    synth = replay("synthetic", synthetic(), guideline)
    return Cohort(
        f"examples/ and a synthetic cohort ({DEMO_PATIENTS} patients, seed {DEMO_SEED})",
        examples.summaries + synth.summaries,
        examples.errors + synth.errors,
        replayed=True,
    )


def screenshot(html: Path, png: Path, viewport: Mapping[str, int] | None = None) -> None:
    """A screenshot of the top of the report page `html` (summary counts and patient flow)."""
    from .errors import IechsError, Problem  # noqa: PLC0415

    try:
        from playwright.sync_api import sync_playwright  # noqa: PLC0415 (a dev dependency)
    except ImportError:
        raise IechsError(
            [Problem("a screenshot needs Playwright: pip install -e '.[dev]'")]
        ) from None
    from .diagram.browser import launch  # noqa: PLC0415

    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(viewport=dict(viewport or {"width": 1280, "height": 1400}))  # type: ignore[arg-type]
            page.goto(html.resolve().as_uri())
            page.wait_for_selector("#chart-flow .sankey-link")
            page.wait_for_timeout(800)  # plotly's sankey fades its links in
            png.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(png))
        finally:
            browser.close()


def _main(argv: Sequence[str] | None = None) -> int:
    """`python -m iechs.cohort_report --screenshot docs/report.png [--html docs/report.html]`:
    the report of the bundled examples and a synthetic cohort, and its screenshot."""
    from .cohort_report_html import render_html  # noqa: PLC0415
    from .diagram.commands import write_file  # noqa: PLC0415
    from .errors import IechsError  # noqa: PLC0415
    from .loader import load_guideline  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="python -m iechs.cohort_report")
    parser.add_argument("--screenshot", metavar="PNG", default="docs/report.png")
    parser.add_argument("--html", metavar="FILE", help="also keep the page (it is ~5 MB)")
    args = parser.parse_args(argv)
    png = Path(args.screenshot)
    try:
        guideline = load_guideline(None)
        cohort = demo_cohort(guideline)
        info = StateInfo.of(guideline)
        page = render_html(aggregate(cohort, info), cohort.summaries, info)
        with tempfile.TemporaryDirectory() as folder:
            html = Path(args.html) if args.html else Path(folder) / "report.html"
            write_file(html, page)
            screenshot(html, png)
    except IechsError as exc:
        sys.stderr.write(f"{exc.render()}\n")
        return 2
    sys.stdout.write(f"wrote {png}" + (f" and {args.html}" if args.html else "") + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main())
