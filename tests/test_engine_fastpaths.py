"""The engine's hot-path constructors build what the documented constructors build, and
`Episode.fork` copies an episode that then goes its own way."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import attrs

from iechs import Engine, load_guideline, parse_timeline
from iechs.criteria import Facts
from iechs.decision import Action, Alert, Decision, Deviation, GuardResult, make_decision
from iechs.engine import Episode


def test_make_decision_equals_the_keyword_constructor_field_by_field() -> None:
    """Every field of `Decision` is set by `make_decision`, to what the keyword form sets: a
    field added to `Decision` but not to the fast path fails here (unset slot or mismatch)."""
    at = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    values: dict[str, object] = {
        "step": 3,
        "at": at,
        "event": {"kind": "close", "at": "2026-01-02T03:04:00Z"},
        "source": "suspected",
        "target": "closed",
        "machine_event": "close",
        "transition_label": "close",
        "transition_cite": ("c1",),
        "inferred": {"indication": "x", "reason": "y"},
        "guards": (GuardResult("a", "b", "reassess", "l", "TRUE", ("w",), ()),),
        "criteria": (),
        "recommendations": (),
        "alerts": (Alert("missing_data", at, "m"),),
        "deviations": (Deviation("d", None, "r", "off_guideline_therapy"),),
        "via": ("suspected",),
        "actions": (Action("measure", "t", ()),),
        "notes": ("n",),
        "later": ({"kind": "close"},),
    }
    fields = [a.alias or a.name for a in attrs.fields(Decision)]
    assert sorted(fields) == sorted(values), "make_decision must learn the new field"
    slow = Decision(**values)  # type: ignore[arg-type]
    fast = make_decision(*(values[f] for f in fields))  # type: ignore[arg-type]
    for a in attrs.fields(Decision):
        assert getattr(fast, a.name) == getattr(slow, a.name), a.name
    assert fast == slow
    assert fast.to_json() == slow.to_json()


# --- Episode.fork ----------------------------------------------------------------------------

ENGINE = Engine(load_guideline(), runtime="table")
EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.json"))


def rendered(episode: Episode) -> str:
    return json.dumps([d.to_json() for d in episode.decisions] + [episode.snapshot()])


def test_a_fork_goes_its_own_way_and_the_original_is_untouched() -> None:
    """For every example course: fork half way, step the fork to the end, and the original
    still renders as it did at the fork; then step the original to the end too: both equal a
    run of the whole course in one go (a fork is the episode, not an approximation of it)."""
    assert len(EXAMPLES) > 5
    for path in EXAMPLES:
        timeline = parse_timeline(json.loads(path.read_text()), ENGINE.guideline)
        events = timeline.events
        whole = rendered(ENGINE.run(timeline))
        half = len(events) // 2
        original = ENGINE.start(timeline.patient)
        for i in range(half):
            original.step(events[i], later=ENGINE.later(events, i))
        at_fork = rendered(original)
        fork = original.fork()
        for i in range(half, len(events)):
            fork.step(events[i], later=ENGINE.later(events, i))
        assert rendered(original) == at_fork, path.name
        assert rendered(fork) == whole, path.name
        for i in range(half, len(events)):
            original.step(events[i], later=ENGINE.later(events, i))
        assert rendered(original) == whole, path.name


def _mutable(value: object) -> bool:
    return isinstance(value, list | dict | set)


def test_a_fork_owns_every_container_of_the_episode_and_its_facts() -> None:
    """Every list, dict and set held by an episode or its facts is the fork's own (a field
    added later and not copied by `fork` fails here); therapies are copied too."""
    path = next(p for p in EXAMPLES if "anakinra" in p.name)
    timeline = parse_timeline(json.loads(path.read_text()), ENGINE.guideline)
    original = ENGINE.run(timeline)
    assert original.facts.therapies, "the course must have therapies"
    fork = original.fork()
    for one, two in ((original, fork), (original.facts, fork.facts)):
        assert set(vars(one)) == set(vars(two))
        for name, value in vars(one).items():
            if _mutable(value):
                assert getattr(two, name) is not value, name
                assert getattr(two, name) == value, name
    for key, therapy in original.facts.therapies.items():
        copied = fork.facts.therapies[key]
        assert copied is not therapy
        assert copied == therapy
        assert copied.raised is not therapy.raised
    for code, (times, values) in original.facts.series.items():
        assert fork.facts.series[code][0] is not times
        assert fork.facts.series[code][1] is not values
    for kind, items in original.facts.grades.items():
        assert fork.facts.grades[kind] is not items
    assert isinstance(fork.facts, Facts)
