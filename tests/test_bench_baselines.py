"""The benchmark's baselines make the engine's decisions (benchmarks/baselines.py).

`benchmarks/bench.py` compares the engine with three baselines that compile the guideline's
criteria themselves and choose every transition with their own guards over their own facts:
the floor (a plain dict table), python-statemachine and pytransitions, and then decide the
actions (what to do next) with the same guards. Its claim "results equal" rests on these tests:
on synthetic patients, the bundled examples and two courses that take a route through a state,
every baseline is in the engine's state and lists the engine's actions after every event; a
baseline with one wrong guard, or one that ignores the actions, is caught; an event the engine
only records keeps the previous actions, and the trace tells those events exactly; and the
guard compiler gives, on hand-built facts, the values the guideline's definitions give
(reasoned here, not read from the engine).
"""

from __future__ import annotations

import importlib.util
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from iechs import Engine, Timeline, load_guideline, load_timeline, parse_timeline
from iechs.decision import Decision
from iechs.engine import Episode
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


@pytest.mark.parametrize("machine", _machines())
def test_every_baseline_lists_the_engine_actions_after_every_event(machine: Any) -> None:
    """After every event each baseline lists the codes of the engine's actions (`measure`
    aside, in order), and a `measure` action exactly where the engine lists one: 0 mismatches.
    (The bench lets the engine list a `measure` action a baseline does not, for a treatment
    waiting for confirmation; with this guideline that happens only on a line, where
    `monitor-response`, code measure and no criteria, lists one anyway.) The sample lists
    every action code of the guideline and a `measure` action at some events and not at
    others, so a baseline that got one of them wrong would show."""
    baseline = machine(PLAN)
    for timeline, steps in TRACES:
        episode = baseline.start(timeline.patient)
        for i, step in enumerate(steps):
            episode.step(step)
            assert (episode.actions, episode.measure) == (step.actions, step.measure), (
                timeline.patient.id,
                i,
                step,
            )
    listed = {c for _, steps in TRACES for s in steps for c in s.actions}
    codes = {a.code for a in GUIDELINE.actions.values()} - {b.MEASURE}
    assert listed == codes
    assert {s.measure for _, steps in TRACES for s in steps} == {True, False}


def test_a_wrong_guard_is_caught() -> None:
    """The check has teeth: a floor whose `response_achieved` transition always holds leaves
    every line at the first data event, and disagrees with the engine."""
    plan = b.Plan(GUIDELINE)
    for (state, event), candidates in plan.table.items():
        if event == "reassess" and candidates[0][0] == "resolved":
            plan.table[(state, event)] = [("resolved", (lambda f: True,), ())]
    wrong = sum(b.mismatches(b.Floor(plan).start(t.patient), steps) for t, steps in TRACES)
    assert wrong > 0


def test_a_floor_without_actions_is_caught() -> None:
    """The actions are checked: the state-only floor is in the engine's state after every event
    (as the first floor was) but lists no actions, and `mismatches` counts that."""
    state_only = b.Floor(PLAN, actions=False)
    for t, steps in TRACES:
        assert b.mismatches(state_only.start(t.patient), steps, actions=False) == 0
    wrong = sum(b.mismatches(state_only.start(t.patient), steps) for t, steps in TRACES)
    assert wrong > 0


# --- the actions on hand-built steps ------------------------------------------------------------

LINE_1 = "first_line_steroids"


def hand_steps(*events: dict[str, Any] | list[dict[str, Any]], decided: bool = True) -> list[Any]:
    """The events of a hand-built course as steps that send no machine event (the state is
    set by hand) and are decided (or only recorded); the engine's part is left empty."""
    timeline = parse_timeline(doc("hand-actions", *events), GUIDELINE)
    return [
        b.Step(e, getattr(e, "indication", None), (), LINE_1, decided, (), False)
        for e in timeline.events
    ]


def floor_on_first_line(line_start_hours: float) -> Any:
    """A floor episode put by hand in `first_line_steroids`, the line started at the given hour."""
    episode = b.Floor(PLAN).start(Patient(id="hand-actions", infusion_at=T0))
    episode.state = LINE_1
    episode.facts.line_start = line_start_hours * HOUR
    return episode


def test_the_floor_adds_anakinra_on_worsening_unless_it_runs() -> None:
    """In `first_line_steroids` the guideline lists, in order: `antimicrobials-first`
    (start_antimicrobials, when infection is untreated), `anakinra-now` (add_anakinra, when
    escalation is indicated: no response after the minimum time on the line, or `worsening`,
    unless anakinra is running), `reassess` (no criteria) and `monitor-response` (code measure,
    no criteria). With infection assessed as none and no antimicrobials, and a response
    charted `worsening` after the line started: add_anakinra and reassess, and a `measure`
    action. Once anakinra has been given (running within the continuity time), its `unless`
    holds: reassess only."""
    episode = floor_on_first_line(80)
    for step in hand_steps(
        assess(90, crs=1), {"at": at(100), "kind": "response", "assessment": "worsening"}
    ):
        episode.step(step)
    assert (episode.state, episode.actions, episode.measure) == (
        LINE_1,
        ("add_anakinra", "reassess"),
        True,
    )
    (dose,) = hand_steps(give(101, "anakinra"))
    episode.step(dose)
    assert (episode.actions, episode.measure) == (("reassess",), True)


def test_recorded_only_events_keep_the_previous_actions() -> None:
    """An event the engine only records decides nothing: the `worsening` response above,
    recorded only, leaves the actions as they were (reassess); the next decided event lists
    add_anakinra. The engine does the same: every recorded-only step of the traces repeats the
    step before it (or the start's actions)."""
    episode = floor_on_first_line(80)
    (assessment,) = hand_steps(assess(90, crs=1))
    episode.step(assessment)
    assert episode.actions == ("reassess",)
    (response,) = hand_steps(
        {"at": at(100), "kind": "response", "assessment": "worsening"}, decided=False
    )
    episode.step(response)
    assert episode.actions == ("reassess",)
    (again,) = hand_steps(assess(100.5, crs=1))
    episode.step(again)
    assert episode.actions == ("add_anakinra", "reassess")
    for timeline, steps in TRACES:
        start = ENGINE.start(timeline.patient).decisions[0]
        codes = tuple(a.code for a in start.actions if a.code != b.MEASURE)
        before = (codes, len(codes) != len(start.actions))
        for s in steps:
            if not s.decided:
                assert (s.actions, s.measure) == before
            before = (s.actions, s.measure)
    assert any(not s.decided for _, steps in TRACES for s in steps)


def test_decided_is_what_the_engine_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    """`Step.decided` (taken from the decision) is false exactly for the decisions the engine
    made with `Episode._unchanged` (recorded only), on the traces above and on two cases the
    decision's fields alone would misread: a dose for another indication in `resolved`, which
    is decided but sends no machine event and evaluates no criterion, and a dose before the
    infusion, only recorded."""
    recorded: dict[int, Decision] = {}  # kept alive: an id is not reused
    unchanged = Episode._unchanged

    def spy(self: Episode, *args: Any, **kwargs: Any) -> Decision:
        decision = unchanged(self, *args, **kwargs)
        recorded[id(decision)] = decision
        return decision

    monkeypatch.setattr(Episode, "_unchanged", spy)
    course = recurrence_through_suspected()
    course["events"] += [give(-2, "dexamethasone", "other"), give(400, "paracetamol", "other")]
    course["events"].sort(key=lambda e: str(e["at"]))
    checked = [*timelines(), parse_timeline(course, GUIDELINE)]
    for timeline in checked:
        episode = ENGINE.run(timeline)
        steps = b.trace_of(
            PLAN, timeline.events, episode.decisions[1:], timeline.patient.infusion_at
        )
        for step, d in zip(steps, episode.decisions[1:], strict=True):
            assert step.decided is (id(d) not in recorded), (timeline.patient.id, d.step)
    paracetamol = [
        s
        for s, d in zip(steps, episode.decisions[1:], strict=True)
        if getattr(s.event, "drug", None) == "paracetamol"
    ]
    assert [(s.decided, s.target, s.hops) for s in paracetamol] == [(True, "resolved", ())]


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
