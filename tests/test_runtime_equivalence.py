"""The compiled table runtime makes exactly the statechart's decisions (differential test).

The statechart (python-statemachine) is the reference semantics; the table runtime exists for
batch replay. Random timelines go through both; every decision must serialise identically.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from iechs import Engine, load_guideline, load_timeline, parse_timeline

GUIDELINE = load_guideline()
REFERENCE = Engine(GUIDELINE, runtime="statechart")
TABLE = Engine(GUIDELINE, runtime="table")
ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 2, 1, 9, tzinfo=UTC)

LAB_UNITS = {"ferritin": "ng/mL", "ldh": "U/L", "ast": "U/L", "alt": "U/L", "fibrinogen": "mg/dL"}
LAB_VALUES = {
    "ferritin": [250, 900, 4000, 12000, 40000],
    "ldh": [200, 450, 1200],
    "ast": [30, 150, 400],
    "alt": [25, 120, 350],
    "fibrinogen": [350, 160, 120],
}


@st.composite
def event_doc(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(
        st.sampled_from(
            [
                "observation",
                "observation",
                "observation",
                "assessment",
                "finding",
                "treatment",
                "treatment",
                "response",
            ]
        )
    )
    if kind == "observation":
        code = draw(st.sampled_from(sorted(LAB_UNITS)))
        return {
            "kind": kind,
            "code": code,
            "value": draw(st.sampled_from(LAB_VALUES[code])),
            "unit": LAB_UNITS[code],
        }
    if kind == "assessment":
        return {
            "kind": kind,
            "crs_grade": draw(st.integers(0, 3)),
            "icans_grade": draw(st.integers(0, 2)),
            "infection": draw(st.sampled_from(["none", "none", "suspected"])),
            "antimicrobials": draw(st.booleans()),
        }
    if kind == "finding":
        return {
            "kind": kind,
            "code": draw(st.sampled_from(["hemophagocytosis", "pulmonary_edema"])),
            "present": draw(st.booleans()),
            "grade": draw(st.integers(1, 4)),
        }
    if kind == "treatment":
        doc = {
            "kind": kind,
            "drug": draw(
                st.sampled_from(
                    [
                        "dexamethasone",
                        "anakinra",
                        "ruxolitinib",
                        "etoposide",
                        "tocilizumab",
                        "meropenem",
                    ]
                )
            ),
        }
        indication = draw(st.sampled_from([None, "iec_hs", "iec_hs", "crs"]))
        if indication is not None:
            doc["indication"] = indication
        return doc
    return {
        "kind": kind,
        "assessment": draw(st.sampled_from(["improving", "stable", "worsening", "resolved"])),
    }


#: An IEC-HS onset (CRS resolved, ferritin and LDH rising, AST > 5x ULN): random courses that
#: start with it reach the treatment lines, so both runtimes are compared there too.
ONSET: list[dict[str, Any]] = [
    {
        "kind": "assessment",
        "crs_grade": 0,
        "icans_grade": 0,
        "infection": "none",
        "antimicrobials": False,
    },
    {"kind": "observation", "code": "ferritin", "value": 4000, "unit": "ng/mL"},
    {"kind": "observation", "code": "ldh", "value": 450, "unit": "U/L"},
    {"kind": "observation", "code": "ferritin", "value": 12000, "unit": "ng/mL"},
    {"kind": "observation", "code": "ldh", "value": 1200, "unit": "U/L"},
    {"kind": "observation", "code": "ast", "value": 400, "unit": "U/L"},
]


def _treat(drug: str) -> dict[str, Any]:
    return {"kind": "treatment", "drug": drug, "indication": "iec_hs"}


WORSE: dict[str, Any] = {"kind": "response", "assessment": "worsening"}
#: After the onset: each rung starts the next line (worsening allows escalation at once).
LADDER: list[list[dict[str, Any]]] = [
    [_treat("dexamethasone")],
    [WORSE, _treat("anakinra")],
    [WORSE, _treat("ruxolitinib")],
    [WORSE, _treat("etoposide")],
]


@st.composite
def timelines(draw: st.DrawFn) -> dict[str, Any]:
    docs = draw(st.lists(event_doc(), min_size=1, max_size=40))
    # A coherent prefix (one hour apart) takes a share of the courses deep into the lines.
    depth = draw(st.integers(0, len(LADDER) + 1))
    prefix = ONSET + [doc for step in LADDER[: max(depth - 1, 0)] for doc in step]
    prefix = prefix if depth else []
    gaps = [1] * len(prefix) + draw(
        st.lists(st.integers(0, 30), min_size=len(docs), max_size=len(docs))
    )
    at, events = T0 + timedelta(days=draw(st.integers(0, 16))), []
    for doc, gap in zip(prefix + docs, gaps, strict=True):
        at += timedelta(hours=gap)
        events.append({"at": at.strftime("%Y-%m-%dT%H:%M:%SZ"), **doc})
    if draw(st.booleans()):
        events.append(
            {
                "at": (at + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "kind": "close",
                "reason": "follow_up_complete",
            }
        )
    return {
        "patient": {
            "id": "D1",
            "infusion_at": T0.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "baseline": {"ferritin": {"value": 300, "unit": "ng/mL"}},
        },
        "events": events,
    }


def decisions_json(engine: Engine, doc: dict[str, Any]) -> str:
    episode = engine.run(parse_timeline(doc, GUIDELINE))
    return json.dumps([d.to_json() for d in episode.decisions], sort_keys=True)


@given(timelines())
def test_table_runtime_makes_the_statecharts_decisions(doc: dict[str, Any]) -> None:
    assert decisions_json(TABLE, doc) == decisions_json(REFERENCE, doc)


def test_examples_agree_and_move() -> None:
    moved = 0
    for path in sorted((ROOT / "examples").glob("*.json")):
        timeline = load_timeline(path, GUIDELINE)
        a = [d.to_json() for d in REFERENCE.run(timeline).decisions]
        b = [d.to_json() for d in TABLE.run(timeline).decisions]
        assert a == b, path.name
        moved += sum(1 for d in a if d["from"] not in (None, d["to"]))
    assert moved > 10  # the examples exercise real transitions, not only self-loops
