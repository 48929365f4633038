"""Engine behaviour: steps, explanations, deviations, timing duties, save/restore, determinism."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from iechs import Engine, EpisodeError, Guideline, Tri, load_timeline, parse_event, run_to_json
from iechs.criteria import Evaluation, Facts, derived_risk_factors
from iechs.timeline import Patient, Product, parse_patient

ROOT = Path(__file__).resolve().parents[1]
DAY14 = ROOT / "examples" / "day14-steroid-response.json"
T0 = datetime(2026, 1, 1, 10, tzinfo=UTC)


def at(hours: float) -> str:
    return (T0 + timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")


def patient(g: Guideline, **extra: Any) -> Patient:
    doc = {
        "id": "P1",
        "infusion_at": at(0),
        "baseline": {"ferritin": {"value": 500, "unit": "ng/mL"}},
    }
    doc.update(extra)
    return parse_patient(doc, g)


def ev(g: Guideline, hours: float, kind: str, **fields: Any) -> Any:
    return parse_event({"at": at(hours), "kind": kind, **fields}, g)


def iec_hs_onset(engine: Engine, start: float = 14 * 24) -> Any:
    """An episode that reaches `suspected` with IEC-HS criteria met (hines: ferritin, AST)."""
    g = engine.guideline
    episode = engine.start(patient(g))
    h = start
    episode.step(
        ev(g, h, "assessment", crs_grade=0, icans_grade=0, infection="none", antimicrobials=False)
    )
    for dh, ferritin, ldh in ((0, 9000, 300), (24, 25000, 700)):
        episode.step(ev(g, h + dh, "observation", code="ferritin", value=ferritin, unit="ng/mL"))
        episode.step(ev(g, h + dh, "observation", code="ldh", value=ldh, unit="U/L"))
    episode.step(ev(g, h + 24, "observation", code="ast", value=300, unit="U/L"))
    episode.step(ev(g, h + 24, "observation", code="fibrinogen", value=120, unit="mg/dL"))
    assert episode.state == "suspected"
    return episode


def test_start_decision_is_step_zero(engine: Engine) -> None:
    episode = engine.start(patient(engine.guideline))
    (d,) = episode.decisions
    assert (d.step, d.source, d.target, d.event["kind"]) == (0, None, "surveillance", "start")
    assert d.alerts == ()


def test_guards_explain_values_read(engine: Engine) -> None:
    episode = iec_hs_onset(engine)
    g = engine.guideline
    d = episode.step(
        ev(
            g,
            14 * 24 + 26,
            "treatment",
            drug="Dexamethasone",
            dose=10,
            unit="mg",
            route="IV",
            indication="iec_hs",
        )
    )
    assert (d.source, d.target) == ("suspected", "first_line_steroids")
    assert d.machine_event == "give_corticosteroid"
    (guard,) = d.guards
    assert (guard.result, guard.when) == ("TRUE", ("iec_hs_identified", "infection_gate_open"))
    verdicts = {v.name: v for v in d.criteria}
    ast = verdicts["ast_above_5x_uln"]
    assert ast.value is Tri.TRUE
    assert [(r.what, r.value) for r in ast.reads] == [("ast", 300.0), ("ast_uln", 40.0)]
    # the baseline (500 ng/mL) is above the ULN (300), so the ratio is to the baseline
    ferritin = verdicts["ferritin_raised"]
    assert ferritin.detail == "ferritin 25000 > 2 x abnormal baseline 500 ng/mL"
    assert [(r.what, r.value) for r in ferritin.reads] == [
        ("ferritin", 25000.0),
        ("baseline ferritin (abnormal at infusion)", 500.0),
    ]
    assert "fibrinogen_below_150" not in verdicts  # AST > 5x ULN already decided the organ test
    assert d.transition_cite == ("seed-summary", "seed-news-2026", "hines-2023")
    assert [r.id for r in d.recommendations][:3] == [
        "corticosteroids-first-line",
        "dexamethasone-high-dose",
        "methylprednisolone-equivalent",
    ]


def test_each_criterion_is_evaluated_once_per_step(engine: Engine) -> None:
    episode = iec_hs_onset(engine)
    (d,) = [d for d in episode.decisions if d.changed]  # surveillance -> suspected
    names = [v.name for v in d.criteria]
    assert len(names) == len(set(names))
    assert "ferritin_raised" in names  # shared by two branches of screening_trigger


def test_combinators_stop_once_decided(engine: Engine) -> None:
    episode = iec_hs_onset(engine)
    d = episode.decisions[-1]  # in suspected; ferritin rising, so "ruled out" is FALSE early
    verdicts = {v.name: v for v in d.criteria}
    ruled_out = verdicts["iec_hs_ruled_out"]
    assert ruled_out.value is Tri.FALSE
    assert ruled_out.explanation == "all of: ferritin_falling=FALSE, 1 more not needed"
    assert "not_iec_hs_identified" not in verdicts


def test_off_guideline_treatment_is_a_deviation_not_a_transition(engine: Engine) -> None:
    episode = iec_hs_onset(engine)
    g = engine.guideline
    d = episode.step(ev(g, 14 * 24 + 26, "treatment", drug="ruxolitinib", indication="iec_hs"))
    assert d.target == "suspected"
    assert d.source == "suspected"
    assert [a.code for a in d.alerts] == ["off_guideline_therapy"]
    (dev,) = d.deviations
    assert dev.drug_class == "jak_inhibitor"
    assert "skips a line" in dev.reason


def test_indication_is_inferred_and_explained(engine: Engine) -> None:
    g = engine.guideline
    episode = engine.start(patient(g))
    episode.step(ev(g, 100, "assessment", crs_grade=2, icans_grade=0))
    d = episode.step(ev(g, 101, "treatment", drug="tocilizumab", dose=8, unit="mg/kg"))
    assert d.inferred is not None
    assert d.inferred["indication"] == "crs"
    assert d.alerts == ()
    assert d.deviations == ()


def test_escalation_waits_for_min_time_unless_worsening(engine: Engine) -> None:
    g = engine.guideline
    episode = iec_hs_onset(engine)
    t = 14 * 24 + 26
    episode.step(ev(g, t, "treatment", drug="dexamethasone", indication="iec_hs"))
    episode.step(ev(g, t + 10, "response", assessment="stable"))
    early = episode.step(ev(g, t + 11, "treatment", drug="anakinra", indication="iec_hs"))
    assert early.target == "first_line_steroids"
    assert [a.code for a in early.alerts] == ["off_guideline_therapy"]
    worse = episode.step(ev(g, t + 12, "response", assessment="worsening"))
    assert [a.code for a in worse.alerts] == ["escalation_due"]
    d = episode.step(ev(g, t + 13, "treatment", drug="anakinra", indication="iec_hs"))
    assert (d.source, d.target) == ("first_line_steroids", "second_line_anakinra")


def test_advance_reports_overdue_reassessment_once(engine: Engine) -> None:
    g = engine.guideline
    episode = iec_hs_onset(engine)
    entered = episode.facts.line_started_at
    first = episode.advance(entered + timedelta(hours=11))
    assert first.alerts == ()
    late = episode.advance(entered + timedelta(hours=13))
    assert [a.code for a in late.alerts] == ["reassessment_overdue"]
    again = episode.advance(entered + timedelta(hours=14))
    assert again.alerts == ()
    assert episode.state == "suspected"
    # a reassessment restarts the clock
    episode.step(ev(g, 14 * 24 + 24 + 15, "assessment", infection="none"))
    assert episode.advance(entered + timedelta(hours=26)).alerts == ()


def test_events_out_of_order_are_refused(engine: Engine) -> None:
    g = engine.guideline
    episode = engine.start(patient(g))
    episode.step(ev(g, 10, "assessment", crs_grade=1))
    with pytest.raises(EpisodeError, match="earlier than the previous event"):
        episode.step(ev(g, 9, "assessment", crs_grade=1))


def test_closed_episode_refuses_events(engine: Engine) -> None:
    g = engine.guideline
    episode = engine.start(patient(g))
    assert episode.step(ev(g, 5, "close", reason="transfer")).target == "closed"
    with pytest.raises(EpisodeError, match="closed"):
        episode.step(ev(g, 6, "assessment", crs_grade=0))


def test_observation_before_infusion_is_baseline(engine: Engine) -> None:
    g = engine.guideline
    episode = engine.start(parse_patient({"id": "P2", "infusion_at": at(0)}, g))
    d = episode.step(ev(g, -24, "observation", code="ferritin", value=1.2, unit="ug/L"))
    assert d.target == "surveillance"
    assert d.alerts == ()
    assert episode.facts.baseline["ferritin"][1] == 1.2


def test_snapshot_restore_makes_the_same_decisions(engine: Engine) -> None:
    """Cut a retrospective run anywhere: the snapshot keeps what each step knew to follow it
    (`later`), so the restored episode decides exactly as the uninterrupted `Engine.run`."""
    timeline = load_timeline(DAY14, engine.guideline)
    whole = engine.run(timeline)
    events = timeline.events
    assert any(d.later for d in whole.decisions)  # the lookahead matters in this timeline
    for cut in range(len(events) + 1):
        first = engine.start(timeline.patient)
        for i in range(cut):
            first.step(events[i], later=engine.later(events, i))
        saved = json.loads(json.dumps(first.snapshot()))
        restored = engine.restore(saved)
        for i in range(cut, len(events)):
            restored.step(events[i], later=engine.later(events, i))
        assert [d.to_json() for d in restored.decisions] == [d.to_json() for d in whole.decisions]


def test_restore_refuses_another_guideline(engine: Engine) -> None:
    snap = engine.start(patient(engine.guideline)).snapshot()
    snap["guideline"]["sha256"] = "0" * 64
    with pytest.raises(EpisodeError, match="restore it with the guideline it was saved with"):
        engine.restore(snap)


def test_restore_detects_a_tampered_state(engine: Engine) -> None:
    snap = iec_hs_onset(engine).snapshot()
    snap["state"] = "salvage"
    with pytest.raises(EpisodeError, match="ends in 'suspected'"):
        engine.restore(snap)


def test_run_output_is_deterministic(engine: Engine, guideline: Guideline) -> None:
    def render(e: Engine) -> str:
        ep = e.run(load_timeline(DAY14, e.guideline))
        return json.dumps(run_to_json(e.identity, "x", ep.decisions), sort_keys=True)

    assert render(engine) == render(Engine(guideline))


def test_product_implies_risk_factors(guideline: Guideline) -> None:
    p = patient(
        guideline,
        product={"costimulatory_domain": "CD28", "target": "CD19/CD22"},
        risk_factors=["tet2_mutation"],
    )
    assert derived_risk_factors(p, guideline.risk_factors) == (
        "cd22_target",
        "cd28_costimulation",
        "tet2_mutation",
    )
    assert derived_risk_factors(p) == ("tet2_mutation",)  # the guideline says what implies what
    assert Product(target="CD19").target == "CD19"


def test_unknown_never_acts_as_false(guideline: Guideline) -> None:
    facts = Facts(patient(guideline), guideline.risk_factors)
    facts.now = T0 + timedelta(days=14)
    e = Evaluation(guideline, facts)
    assert e("fibrinogen_below_150").value is Tri.UNKNOWN
    assert e("fibrinogen_below_150").missing == ("fibrinogen",)
    # any(FALSE, FALSE, UNKNOWN) stays UNKNOWN and names what to measure
    facts.add_observation("ast", facts.now, 50)
    facts.add_observation("alt", facts.now, 50)
    e = Evaluation(guideline, facts)
    organ = e("hines_organ_feature")
    assert organ.value is Tri.UNKNOWN
    assert organ.missing == ("fibrinogen",)
    assert e("hines_identification").value is Tri.UNKNOWN
    # all(UNKNOWN, FALSE, UNKNOWN) is FALSE: active, escalating CRS decides it
    facts.add_grade("crs", facts.now, 3)
    e = Evaluation(guideline, facts)
    assert e("ferritin_raised").value is Tri.UNKNOWN
    assert e("crs_resolving_or_absent").value is Tri.FALSE
    assert e("hines_identification").value is Tri.FALSE
    assert e("hines_identification").missing == ()


def test_stale_values_are_unknown(guideline: Guideline) -> None:
    facts = Facts(patient(guideline), guideline.risk_factors)
    facts.add_observation("fibrinogen", T0 + timedelta(hours=1), 100)
    facts.now = T0 + timedelta(hours=2)
    assert Evaluation(guideline, facts)("fibrinogen_below_150").value is Tri.TRUE
    facts.now = T0 + timedelta(hours=1 + 48.5)
    assert Evaluation(guideline, facts)("fibrinogen_below_150").value is Tri.UNKNOWN


def test_count_of_is_three_valued(guideline: Guideline) -> None:
    facts = Facts(patient(guideline), guideline.risk_factors)
    facts.now = T0 + timedelta(days=3)
    facts.findings["hemophagocytosis"] = (facts.now, True, None)
    facts.findings["pulmonary_edema"] = (facts.now, True, None)  # present, grade unknown
    e = Evaluation(guideline, facts)
    count = e("organ_toxicity_count_2")
    assert count.value is Tri.UNKNOWN
    assert count.missing == ("grade of pulmonary_edema",)
    facts.findings["pulmonary_edema"] = (facts.now, True, 3)
    assert Evaluation(guideline, facts)("organ_toxicity_count_2").value is Tri.TRUE


def test_crs_below_its_peak_reads_the_highest_grade_so_far(guideline: Guideline) -> None:
    """CRS is 'resolving' when the latest grade is below the highest grade seen so far
    (hines-2023: IEC-HS surfaces as CRS resolves). A clinician reading grades 1, 3, 2 calls it
    resolving (2 is below the peak 3); a later grade 4 is a new peak (not below it); grade 0
    then is below the peak 4 again. The peak is the highest of all grades, however many came
    between (the engine keeps it as grades arrive)."""
    facts = Facts(patient(guideline), guideline.risk_factors)
    readings: list[Tri] = []
    for hours, grade in [(24, 1), (48, 3), (72, 2), (96, 2), (120, 4), (144, 0)]:
        facts.now = T0 + timedelta(hours=hours)
        facts.add_grade("crs", facts.now, grade)
        readings.append(Evaluation(guideline, facts)("crs_below_peak").value)
    assert readings == [Tri.FALSE, Tri.FALSE, Tri.TRUE, Tri.TRUE, Tri.FALSE, Tri.TRUE]
    assert facts.peaks == {"crs": 4}
    # a copy keeps its own peak: grades added to it do not raise the original's
    fork = facts.copy()
    fork.add_grade("crs", facts.now, 5)
    assert (facts.peaks, fork.peaks) == ({"crs": 4}, {"crs": 5})
