"""The benchmark's baselines make the engine's decisions (benchmarks/baselines.py).

`benchmarks/bench.py` compares the engine with three baselines that compile the guideline's
criteria themselves and choose every transition with their own guards over their own facts:
the floor (a plain dict table), python-statemachine and pytransitions. Its claim "results
equal" rests on these tests: on synthetic patients, the bundled examples and two courses that
take a route through a state, every baseline is in the engine's state after every event; a
baseline with one wrong guard is caught; and the guard compiler gives, on hand-built facts, the
values the guideline's definitions give (reasoned here, not read from the engine).
"""

from __future__ import annotations

import importlib.util
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from iechs import Engine, Timeline, load_guideline, load_timeline, parse_timeline
from iechs.synthetic import synthetic_cohort
from iechs.timeline import Patient

ROOT = Path(__file__).resolve().parents[1]
GUIDELINE = load_guideline()
ENGINE = Engine(GUIDELINE, runtime="table")
T0 = datetime(2026, 3, 2, 8, tzinfo=UTC)


def _load_baselines() -> Any:
    """benchmarks/baselines.py, loaded from its file (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "_bench_baselines", ROOT / "benchmarks" / "baselines.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # NamedTuple classes look their module up
    spec.loader.exec_module(module)
    return module


b = _load_baselines()
PLAN = b.Plan(GUIDELINE)


def _machines() -> list[Any]:
    machines = [pytest.param(b.Floor, id="floor"), pytest.param(b.PsmBaseline, id="psm")]
    try:
        import transitions  # noqa: F401  (the `bench` extra)
    except ImportError:
        machines.append(
            pytest.param(
                None, id="pytransitions", marks=pytest.mark.skip(reason="pytransitions absent")
            )
        )
    else:
        machines.append(pytest.param(b.TransitionsBaseline, id="pytransitions"))
    return machines


# --- timelines ----------------------------------------------------------------------------------


def at(hours: float) -> str:
    return (T0 + timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")


def labs(hours: float, **values: float) -> list[dict[str, Any]]:
    units = {"ferritin": "ng/mL", "ldh": "U/L", "ast": "U/L", "alt": "U/L", "fibrinogen": "mg/dL"}
    return [
        {"at": at(hours), "kind": "observation", "code": c, "value": v, "unit": units[c]}
        for c, v in values.items()
    ]


def assess(hours: float, crs: int = 0, icans: int = 0) -> dict[str, Any]:
    return {
        "at": at(hours),
        "kind": "assessment",
        "crs_grade": crs,
        "icans_grade": icans,
        "infection": "none",
        "antimicrobials": False,
    }


def give(hours: float, drug: str, indication: str | None = "iec_hs") -> dict[str, Any]:
    ev: dict[str, Any] = {"at": at(hours), "kind": "treatment", "drug": drug, "dose": 10}
    ev["unit"] = "mg"
    if indication is not None:
        ev["indication"] = indication
    return ev


def doc(pid: str, *events: dict[str, Any] | list[dict[str, Any]]) -> dict[str, Any]:
    flat: list[dict[str, Any]] = []
    for e in events:
        flat.extend(e if isinstance(e, list) else [e])
    flat.sort(key=lambda e: str(e["at"]))
    return {
        "patient": {
            "id": pid,
            "infusion_at": at(0),
            "baseline": {"ferritin": {"value": 250, "unit": "ng/mL"}},
        },
        "events": flat,
    }


def icans_steroid_then_anakinra() -> dict[str, Any]:
    """Dexamethasone for ICANS, then IEC-HS and anakinra: the steroid counts as first line, so
    the anakinra step passes through `first_line_steroids` (a route whose first hop is the
    steroid's event, its line starting with the steroid)."""
    return doc(
        "route-counted",
        assess(140, crs=1, icans=2),
        [give(h, "dexamethasone", "icans") for h in (146, 170, 194, 218)],
        assess(170, crs=1, icans=2),
        assess(194, icans=1),
        labs(200, ferritin=4000, ldh=400, ast=90, alt=80, fibrinogen=220),
        assess(218, icans=1),
        assess(225, icans=1),
        labs(226, ferritin=9000, ldh=700, ast=380, alt=300, fibrinogen=130),
        {"at": at(232), "kind": "response", "assessment": "worsening"},
        give(234, "anakinra"),
        assess(237, icans=1),
    )


def recurrence_through_suspected() -> dict[str, Any]:
    """Treated and resolved; six days later ferritin 48,000 with AST 410 and fibrinogen 100, but
    the CRS grade is stale (no assessment for six days), so recurrence is UNKNOWN and the state
    stays `resolved`; dexamethasone then goes through `suspected` (a `reassess` route hop whose
    guard is UNKNOWN) into first line."""
    return doc(
        "route-recurrence",
        assess(96, crs=2),
        assess(200),
        assess(289),
        labs(290, ferritin=7000, ldh=380, ast=120, alt=100, fibrinogen=200),
        assess(313),
        labs(314, ferritin=21000, ldh=640, ast=330, alt=280, fibrinogen=120),
        [give(h, "dexamethasone") for h in range(316, 359, 6)],
        assess(324),
        labs(338, ferritin=24000, ldh=700, ast=360, alt=300, fibrinogen=130),
        {"at": at(340), "kind": "response", "assessment": "stable"},
        labs(361, ferritin=15000, ldh=450, ast=220, alt=190, fibrinogen=150),
        {"at": at(362), "kind": "response", "assessment": "improving"},
        assess(385),
        labs(386, ferritin=9000, ldh=300, ast=110, alt=90, fibrinogen=190),
        labs(530, ferritin=48000, ldh=720, ast=410, alt=350, fibrinogen=100),
        give(532, "dexamethasone"),
        assess(546),
    )


def timelines() -> list[Timeline]:
    """20 synthetic patients, the bundled examples and the two route courses."""
    out = []
    for d in synthetic_cohort(20, 7):
        d.pop("course")
        out.append(parse_timeline(d, GUIDELINE))
    out += [load_timeline(p, GUIDELINE) for p in sorted((ROOT / "examples").glob("*.json"))]
    out += [
        parse_timeline(icans_steroid_then_anakinra(), GUIDELINE),
        parse_timeline(recurrence_through_suspected(), GUIDELINE),
    ]
    return out


TRACES = [(t, b.engine_trace(ENGINE, PLAN, t)) for t in timelines()]


# --- the same decisions -------------------------------------------------------------------------


def test_the_traces_take_both_kinds_of_route() -> None:
    """The courses above exercise what is hardest to get right: a `reassess` hop through
    `suspected` (line start: now) and a therapy for another indication counted as a line
    (line start: when that therapy started)."""
    routes = [s.hops for _, steps in TRACES for s in steps if len(s.hops) > 1]
    assert any(h[0].event == "reassess" and h[0].through for h in routes)
    assert any(h[0].line_from is not None for h in routes)
    # and the ordinary kinds: facts that send nothing, treatments, data, closing
    kinds = {s.hops[0].event if s.hops else None for _, steps in TRACES for s in steps}
    assert {None, "reassess", "close", "give_corticosteroid"} <= kinds


@pytest.mark.parametrize("machine", _machines())
def test_every_baseline_is_in_the_engine_state_after_every_event(machine: Any) -> None:
    baseline = machine(PLAN)
    for timeline, steps in TRACES:
        episode = baseline.start(timeline.patient)
        for i, step in enumerate(steps):
            episode.step(step)
            assert episode.state == step.target, (timeline.patient.id, i, step)


def test_a_wrong_guard_is_caught() -> None:
    """The check has teeth: a floor whose `response_achieved` transition always holds leaves
    every line at the first data event, and disagrees with the engine."""
    plan = b.Plan(GUIDELINE)
    for (state, event), candidates in plan.table.items():
        if event == "reassess" and candidates[0][0] == "resolved":
            plan.table[(state, event)] = [("resolved", (lambda f: True,), ())]
    wrong = sum(b.mismatches(b.Floor(plan).start(t.patient), steps) for t, steps in TRACES)
    assert wrong > 0


# --- the guard compiler on hand-built facts -----------------------------------------------------

CRITERIA = b.compile_criteria(GUIDELINE)
HOUR = 3600.0


def facts() -> Any:
    """Facts of a patient infused at T0 with nothing recorded, the clock at 100 h."""
    f = b.Facts(Patient(id="hand", infusion_at=T0), ())
    f.now = 100 * HOUR
    return f


def test_threshold_fresh_stale_and_missing() -> None:
    """`ferritin_above_10000`: ferritin > 10,000 ng/mL, read from the latest value no older
    than `lab_validity_hours` (48 h). At 100 h: 12,000 drawn at 90 h is fresh and above the
    limit, TRUE; 9,000 is below, FALSE; 12,000 drawn at 40 h is 60 h old, stale, UNKNOWN
    (never FALSE); no value at all is UNKNOWN."""
    above = CRITERIA["ferritin_above_10000"]
    f = facts()
    assert above(f) is None
    f.series["ferritin"] = ([90 * HOUR], [12000.0])
    assert above(f) is True
    f.series["ferritin"] = ([90 * HOUR], [9000.0])
    assert above(f) is False
    f.series["ferritin"] = ([40 * HOUR], [12000.0])
    assert above(f) is None


def test_ratio_against_an_abnormal_baseline() -> None:
    """`ferritin_raised`: ferritin > 2 x ULN (300 ng/mL), or > 2 x the value at infusion when
    that value was itself above the ULN. 700 ng/mL is > 600: TRUE with a normal baseline
    (250); with a baseline of 400 (abnormal) the limit is 800: FALSE."""
    raised = CRITERIA["ferritin_raised"]
    f = facts()
    f.series["ferritin"] = ([99 * HOUR], [700.0])
    f.baseline["ferritin"] = (0.0, 250.0)
    assert raised(f) is True
    f.baseline["ferritin"] = (0.0, 400.0)
    assert raised(f) is False


def test_trend_reads_the_value_before_the_latest() -> None:
    """`ferritin_falling`: the latest fresh value against the one before it, falling by more
    than 10 % of the earlier one. 10,000 -> 8,000 falls 20 %: TRUE; 10,000 -> 9,500 is within
    the band: FALSE; a single value: UNKNOWN."""
    falling = CRITERIA["ferritin_falling"]
    f = facts()
    f.series["ferritin"] = ([95 * HOUR], [10000.0])
    assert falling(f) is None
    f.series["ferritin"] = ([20 * HOUR, 95 * HOUR], [10000.0, 8000.0])
    assert falling(f) is True
    f.series["ferritin"] = ([20 * HOUR, 95 * HOUR], [10000.0, 9500.0])
    assert falling(f) is False


def test_infection_gate_is_kleene() -> None:
    """`infection_gate_open` = not (infection suspected or confirmed, and no antimicrobials
    started). Infection never assessed and no antimicrobials: the inner `all_of` is UNKNOWN and
    TRUE, so UNKNOWN, and its negation UNKNOWN; antimicrobials recorded make the inner FALSE
    whatever the infection, so the gate is open, TRUE; infection confirmed without them: FALSE."""
    gate = CRITERIA["infection_gate_open"]
    f = facts()
    assert gate(f) is None
    f.antimicrobials = (90 * HOUR, True)
    assert gate(f) is True
    f.antimicrobials = (90 * HOUR, False)
    f.infection = (90 * HOUR, "confirmed")
    assert gate(f) is False


def test_response_counts_only_after_the_line_started() -> None:
    """`clinical_response_reported`: the latest response since the current line started is
    improving or resolved. "improving" at 80 h on a line started at 80 h belongs to the order
    set that started the line: UNKNOWN; on a line started at 50 h: TRUE. `worsening` has
    `unrecorded: false`: with no response on the line it is FALSE, not UNKNOWN."""
    reported = CRITERIA["clinical_response_reported"]
    worsening = CRITERIA["worsening"]
    f = facts()
    f.response = (80 * HOUR, "improving")
    f.line_start = 80 * HOUR
    assert reported(f) is None
    assert worsening(f) is False
    f.line_start = 50 * HOUR
    assert reported(f) is True
    assert worsening(f) is False


def test_time_on_line_and_grade_validity() -> None:
    """`min_time_on_line_elapsed`: at least 24 h on the line: 30 h is, 20 h is not.
    `crs_active` (CRS grade >= 1) reads a grade no older than 72 h: grade 2 at 90 h is TRUE;
    the same grade at 20 h (80 h old) is UNKNOWN."""
    elapsed = CRITERIA["min_time_on_line_elapsed"]
    crs_active = CRITERIA["crs_active"]
    f = facts()
    f.line_start = 70 * HOUR
    assert elapsed(f) is True
    f.line_start = 80 * HOUR
    assert elapsed(f) is False
    f.grades["crs"].append((90 * HOUR, 2))
    f.peak["crs"] = 2
    assert crs_active(f) is True
    f.grades["crs"][:] = [(20 * HOUR, 2)]
    assert crs_active(f) is None
