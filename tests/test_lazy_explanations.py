"""Explanations built late say what was true at the step (differential test).

The engine decides on values only and builds a decision's explanation (criteria details,
readings, what is missing) and its event JSON when the decision is first rendered. The facts
keep changing after the step, so a late explanation that read them would describe a later
moment. Two runs of the same course must therefore render identically: one renders every
decision right after its step (before any later fact arrives), the other renders them all at
the end, after the whole course. The courses are the examples and a seeded synthetic cohort,
stepped prospectively with time advanced between events, under both runtimes.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from iechs import Engine, load_guideline
from iechs.timeline import Timeline
from sibling import load

golden = load("golden_runs")
GUIDELINE = load_guideline()
COURSES = list(golden.courses())


def rendered(decisions: list) -> list[str]:  # type: ignore[type-arg]
    return [json.dumps(d.to_json(), sort_keys=True) for d in decisions]


def stepped(engine: Engine, timeline: Timeline, *, render_each: bool) -> list[str]:
    ep = engine.start(timeline.patient)
    out = rendered(ep.decisions) if render_each else []
    for i, event in enumerate(timeline.events):
        if ep.closed:
            break
        if ep.decisions and event.at > ep.decisions[-1].at + timedelta(hours=6):
            d = ep.advance(event.at - timedelta(hours=1))
            if render_each:
                out += rendered([d])
        d = ep.step(event, later=engine.later(timeline.events, i))
        if render_each:
            out += rendered([d])
            json.dumps(ep.inputs)  # the recorded inputs, rendered as they come, too
    if not render_each:
        out = rendered(ep.decisions)
    return [*out, json.dumps(ep.snapshot(), sort_keys=True)]


@pytest.mark.parametrize("runtime", ["table", "statechart"])
def test_late_explanations_equal_immediate_ones(runtime: str) -> None:
    engine = Engine(GUIDELINE, runtime=runtime)  # type: ignore[arg-type]
    for name, timeline in COURSES[:60]:
        early = stepped(engine, timeline, render_each=True)
        late = stepped(engine, timeline, render_each=False)
        assert len(early) == len(late), name
        for i, (a, b) in enumerate(zip(early, late, strict=True)):
            assert a == b, f"{name}: step {i} differs when rendered late"
