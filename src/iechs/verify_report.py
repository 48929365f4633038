"""`iechs verify` as text for people: each property proved or failed, and for a failure the
shortest counterexample, what the engine did with it, and the timeline that reproduces it.

Written line by line to a text stream, never through a renderer that wraps: a line of a
counterexample (a sentence, a JSON event) is never broken in the middle, whatever the terminal's
width, so it can be read and copied as it is.
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from .model import Guideline
from .verify import Counterexample, Report

__all__ = ["print_verification", "render_counterexample", "render_timeline"]


def render_timeline(timeline: dict[str, Any], indent: str = "") -> list[str]:
    """A timeline as JSON, one event per line (valid JSON as a whole)."""

    def dump(x: Any) -> str:
        return json.dumps(x, ensure_ascii=False)

    events = timeline.get("events", [])
    lines = [f'{indent}{{"patient": {dump(timeline.get("patient", {}))},', f'{indent} "events": [']
    for i, ev in enumerate(events):
        lines.append(f"{indent}  {dump(ev)}{',' if i < len(events) - 1 else ''}")
    lines.append(f"{indent} ]}}")
    return lines


def render_counterexample(c: Counterexample, guideline_file: str = "GUIDELINE") -> list[str]:
    origin = "" if c.contract else " (added by the guideline)"
    lines = [f"  FAILED {c.property}{origin}: {c.description}", f"    problem: {c.problem}"]
    if c.steps:
        what = "shortest counterexample" if c.shows else "where it happens: a shortest path"
        lines.append(f"    {what} ({len(c.steps)} step(s)):")
        for i, s in enumerate(c.steps, 1):
            lines.append(f"      {i}. {s.describe()}")
            if s.values:
                lines.append("         with " + "; ".join(s.values))
    if c.replay is not None:
        lines.append(f"    replay: {c.replay.detail}")
    if c.timeline is not None:
        lines.append(
            "    timeline (save it as a .json file and run "
            f"`iechs run FILE --guideline {guideline_file}`):"
        )
        lines += render_timeline(c.timeline, "      ")
    return lines


def print_verification(
    g: Guideline, report: Report, seconds: float, out: TextIO | None = None
) -> None:
    """The report, line by line; `seconds` is the proof's time (with the replays)."""
    out = out or sys.stdout
    meta = g.guideline
    contract = report.contract
    lines = [
        f"{g.file}: {meta.id} {meta.version} against contract {contract['id']} "
        f"{contract['version']}",
        f"  explored {report.abstract_states} abstract states (state x lines entered), "
        f"{report.edges} enabled transitions; {report.queries} satisfiability queries deciding "
        f"{report.valuations} valuations of the criteria",
    ]
    for o in report.outcomes:
        if o.proved:
            origin = "" if o.contract else " (added by the guideline)"
            lines.append(f"  PROVED {o.property}{origin}: {o.description}")
            if o.witnessed is not None:
                mark = "" if o.witnessed.reproduced else "NOT ALL REPRODUCED: "
                lines.append(f"    witnessed: {mark}{o.witnessed.detail}")
    for c in report.counterexamples:
        lines += render_counterexample(c, g.file or "GUIDELINE")
    total = len(report.outcomes)
    lines.append(
        f"{len(report.proved)} of {total} properties proved in {seconds:.3f} s"
        + ("" if report.ok else f"; {total - len(report.proved)} violated")
    )
    out.write("\n".join(lines) + "\n")
