"""The engine's hot-path constructors build what the documented constructors build."""

from __future__ import annotations

from datetime import UTC, datetime

import attrs

from iechs.decision import Action, Alert, Decision, Deviation, GuardResult, make_decision


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
