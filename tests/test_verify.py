"""The verifier: proofs against the contract on the bundled guideline, its profiles and a
guideline from another domain; each defective fixture rejected for the right property, with a
counterexample replayed through the engine; profiles that weaken a property refused."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest

from iechs import Guideline, GuidelineError, load_guideline
from iechs.cli import main
from iechs.contract import contract_for
from iechs.verify import verify
from iechs.verify_domains import ObsData, Solver, conj, neg
from iechs.verify_report import print_verification

ROOT = Path(__file__).resolve().parents[1]
DEFECTIVE = ROOT / "tests" / "fixtures" / "defective"
OTHER = ROOT / "tests" / "fixtures" / "other-domain" / "agvhd.yaml"
PROFILES = sorted((ROOT / "guideline" / "profiles").glob("*.yaml"))

#: fixture -> the contract properties it must break (exactly these)
EXPECTED: dict[str, set[str]] = {
    "antimicrobials-read-inverted.yaml": {"infection_gate"},
    "gate-ignores-suspected.yaml": {"infection_gate"},
    "steroid-for-infection-is-antimicrobial.yaml": {"infection_gate"},
    "escalation-min-time-zero.yaml": {"escalation_after_min_time"},
    "stable-counts-as-worsening.yaml": {"escalation_after_min_time"},
    "worsening-unrecorded-unknown.yaml": {"escalation_after_min_time"},
    "escalation-guard-without-time.yaml": {"escalation_after_min_time"},
    "reassessment-120h.yaml": {"parameters_in_range"},
    "min-escalation-6h.yaml": {"parameters_in_range"},
    "lab-validity-two-weeks.yaml": {"parameters_in_range"},
    "tocilizumab-as-corticosteroid.yaml": {"drug_classes_pinned", "il6_never_a_line"},
    "il6-class-made-a-line.yaml": {"il6_never_a_line"},
    "steroid-not-immunosuppressive.yaml": {"drug_classes_pinned"},
    "il6-recommended-alone.yaml": {"il6_only_with_corticosteroid"},
    "rule-severity-downgraded.yaml": {"alert_severities_pinned"},
    "uncited-rule.yaml": {"citations"},
    "dead-transition.yaml": {"no_dead_transitions"},
    "trend-inside-band.yaml": {"determinism"},
    "close-to-resolved.yaml": {"close_reaches_closed"},
    "recurrence-removed.yaml": {"recurrence_reaches_suspected"},
    "line-from-resolved.yaml": {"recurrence_reaches_suspected"},
    "line-skipped.yaml": {"line_order"},
    "salvage-declared-first.yaml": {"line_order"},
    "ruled-out-removed.yaml": {"ruled_out_returns"},
    "no-response-exit.yaml": {"response_reaches_resolved"},
    "first-line-not-offered.yaml": {"first_line_offered"},
    "salvage-unreachable.yaml": {"no_trap_states", "no_dead_transitions"},
}
#: profiles refused at load (exit 2): fixture -> (what the message names, YAML line)
REFUSED: dict[str, tuple[str, int]] = {
    "profile-nulls-property.yaml": ("steroids_before_anakinra", 7),
    "profile-narrows-property.yaml": ("steroids_before_anakinra", 7),
    "profile-properties-null.yaml": ("properties: null", 6),
    "profile-redefines-contract-property.yaml": ("infection_gate", 8),
    "profile-changes-contract.yaml": ("cannot change the contract", 7),
    # a NaN never reaches the verifier: guideline numbers are finite (bad input, exit 2)
    "nan-window.yaml": ("expected a finite number, got nan", 9),
}
#: the behavioural properties: a violation is a run, reproduced by the engine
BEHAVIOURAL = {
    "infection_gate",
    "escalation_after_min_time",
    "il6_never_a_line",
    "determinism",
    "close_reaches_closed",
    "line_order",
}


def contract_ids(g: Guideline) -> list[str]:
    return list(contract_for(g).properties)


GOOD_BASE = ROOT / "tests" / "fixtures" / "contract" / "good-base.yaml"


def test_the_good_base_of_the_fixtures_proves_the_contract() -> None:
    """Each defective fixture is this base plus one defect."""
    report = verify(load_guideline(GOOD_BASE, structural=False), witnesses=False)
    assert report.ok, [c.problem for c in report.counterexamples]


def test_bundled_guideline_proves_the_contract(guideline: Guideline) -> None:
    report = verify(guideline)
    # fails until guideline/iec-hs.yaml has the edits of tests/fixtures/contract/good-base.yaml
    assert report.ok, [c.problem for c in report.counterexamples]
    assert list(report.proved) == contract_ids(guideline)
    witnessed = {o.property: o.witnessed for o in report.outcomes if o.witnessed is not None}
    assert set(witnessed) == {
        "first_line_offered",
        "ruled_out_returns",
        "response_reaches_resolved",
        "recurrence_reaches_suspected",
        "no_dead_transitions",
    }
    assert all(w.reproduced for w in witnessed.values()), witnessed
    assert len(report.proved) >= 17
    assert report.contract["id"] == "iec-hs-safety"
    assert report.abstract_states >= len(guideline.states)


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_profiles_prove_the_contract(profile: Path) -> None:
    g = load_guideline(profile, structural=False)
    report = verify(g)
    assert report.ok, [c.problem for c in report.counterexamples]
    assert set(contract_ids(g)) <= set(report.proved)


def test_astct_profile_declares_anakinra_a_first_line() -> None:
    (profile,) = [p for p in PROFILES if p.name == "astct-2023.yaml"]
    g = load_guideline(profile)
    c = contract_for(g)
    assert set(c.first_lines(g)) == {"first_line_steroids", "second_line_anakinra"}
    outcome = next(o for o in verify(g).outcomes if o.kind == "first_line_offered")
    assert outcome.proved
    assert "second_line_anakinra" in outcome.note


def test_other_domain_guideline_proves_its_own_contract() -> None:
    g = load_guideline(OTHER, structural=False)
    report = verify(g)
    assert report.ok, [c.problem for c in report.counterexamples]
    assert report.contract["id"] == "agvhd-safety"
    assert "topical_never_a_line" in report.proved
    assert set(g.states).isdisjoint({"suspected", "first_line_steroids"})


def test_every_fixture_is_covered() -> None:
    names = sorted(p.name for p in DEFECTIVE.glob("*.yaml"))
    assert names == sorted([*EXPECTED, *REFUSED])
    assert len(names) >= 20


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_defective_guideline_fails_with_the_right_property(name: str) -> None:
    g = load_guideline(DEFECTIVE / name, structural=False)
    report = verify(g, witnesses=False)
    assert not report.ok
    assert {c.property for c in report.counterexamples} == EXPECTED[name]
    for cx in report.counterexamples:
        assert cx.problem
        assert cx.replay is not None
        if cx.steps:  # a path starts at the initial state and is connected
            assert cx.steps[0].source == g.initial_state
            for a, b in zip(cx.steps, cx.steps[1:], strict=False):
                assert a.target == b.source
        if cx.property in BEHAVIOURAL:
            assert cx.shows, cx.problem
        if cx.shows:
            assert cx.timeline is not None
            assert cx.replay.reproduced is True, cx.replay.detail
        else:
            assert cx.timeline is None
            assert cx.replay.reproduced is None


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_cli_verify_exits_1_with_a_readable_counterexample(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", str(DEFECTIVE / name)]) == 1
    out = capsys.readouterr().out
    for prop in EXPECTED[name]:
        assert f"FAILED {prop}:" in out
    assert "properties proved in" in out
    if EXPECTED[name] & BEHAVIOURAL:
        assert "shortest counterexample (" in out
        assert "replay: reproduced by the engine" in out
        assert "timeline (save it as a .json file" in out


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_profiles_that_weaken_a_property_are_refused(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    what, line = REFUSED[name]
    with pytest.raises(GuidelineError) as info:
        load_guideline(DEFECTIVE / name)
    (problem,) = info.value.problems
    assert what in problem.message or what in problem.path
    assert problem.line == line
    assert main(["verify", str(DEFECTIVE / name)]) == 2
    err = capsys.readouterr().err
    assert f"{name}:{line}:" in err
    assert what in err


def test_the_base_of_the_refused_profiles_proves_its_added_properties() -> None:
    g = load_guideline(ROOT / "tests" / "fixtures" / "contract" / "with-properties.yaml")
    report = verify(g)
    assert report.ok
    added = [o for o in report.outcomes if not o.contract]
    assert [o.property for o in added] == [
        "steroids_before_anakinra",
        "ruxolitinib_and_etoposide_apart",
    ]


def test_counterexample_timeline_runs_and_shows_the_violation(tmp_path: Path) -> None:
    name = "gate-ignores-suspected.yaml"
    report = verify(load_guideline(DEFECTIVE / name, structural=False))
    (cx,) = report.counterexamples
    last = cx.steps[-1]
    assert (last.source, last.event, last.target) == (
        "suspected",
        "give_corticosteroid",
        "first_line_steroids",
    )
    assert "infection suspected" in last.values
    assert cx.timeline is not None
    saved = tmp_path / "cx.json"
    saved.write_text(json.dumps(cx.timeline), encoding="utf-8")
    assert main(["run", str(saved), "--guideline", str(DEFECTIVE / name), "--format", "json"]) == 0


def test_verify_json_carries_timeline_and_replay(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(DEFECTIVE / "close-to-resolved.yaml"), "--format", "json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False
    (v,) = doc["violated"]
    assert v["property"] == "close_reaches_closed"
    assert v["replay"]["reproduced"] is True
    assert v["timeline"]["events"][-1]["kind"] == "close"
    assert doc["contract"] == {"id": "iec-hs-safety", "version": "1.0.0"}


def test_verify_json_when_proved(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True
    assert doc["violated"] == []
    assert all(p["proved"] for p in doc["properties"])
    assert set(doc["explored"]) == {"abstract_states", "edges", "sat_queries", "valuations_decided"}
    assert doc["seconds"] < 10


def test_text_never_wraps_a_counterexample_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    name = "trend-inside-band.yaml"
    assert main(["verify", str(DEFECTIVE / name)]) == 1
    out = capsys.readouterr().out.splitlines()
    report = verify(load_guideline(DEFECTIVE / name, structural=False))
    (cx,) = report.counterexamples
    assert f"    problem: {cx.problem}" in out  # one line, however long
    assert any(len(line) > 40 for line in out)
    start = out.index(next(line for line in out if line.startswith('      {"patient"')))
    end = next(i for i in range(start, len(out)) if out[i].strip() == "]}")
    assert json.loads("\n".join(out[start : end + 1])) == cx.timeline
    for line in out[start + 2 : end]:  # one event per line, each complete JSON
        json.loads(line.strip().rstrip(","))


def test_print_verification_to_a_stream(guideline: Guideline) -> None:
    buf = io.StringIO()
    print_verification(guideline, verify(guideline), 0.25, buf)
    text = buf.getvalue()
    assert "against contract iec-hs-safety" in text
    assert "PROVED infection_gate:" in text
    assert text.rstrip().endswith("properties proved in 0.250 s")


def test_proof_time_of_every_shipped_guideline_is_under_10_s() -> None:
    started = time.perf_counter()
    for path in [None, *PROFILES, OTHER]:
        assert verify(load_guideline(path, structural=False)).ok
    assert time.perf_counter() - started < 10


# --- the abstraction ---------------------------------------------------------------------------


def test_solver_relates_leaves_that_read_the_same_value(guideline: Guideline) -> None:
    s = Solver(guideline, 24.0, ["antimicrobial"])
    k = s.kleene
    # one ferritin value: above 10,000 is above twice the ULN (600), unless the baseline was
    # itself abnormal (then twice the baseline counts): the witness needs such a baseline
    w = s.solve(conj(k.true("ferritin_above_10000"), neg(k.true("ferritin_raised"))))
    assert w is not None
    d = w["obs:ferritin"].data
    assert isinstance(d, ObsData)
    assert d.baseline is not None
    assert d.latest is not None
    assert d.baseline > 300
    assert d.latest <= 2 * d.baseline
    assert s.solve(conj(k.true("ferritin_raised"), neg(k.true("ferritin_above_10000"))))
    # the latest CRS grade cannot be both >= 1 and 0
    assert s.solve(conj(k.true("crs_active"), k.true("crs_absent"))) is None
    # the latest response cannot be both worsening and improving
    assert s.solve(conj(k.true("worsening"), k.true("clinical_response_reported"))) is None


def test_trend_bands_are_respected(guideline: Guideline) -> None:
    s = Solver(guideline, 24.0, ["antimicrobial"])
    k = s.kleene
    # with one band, ferritin cannot be both falling and not falling
    assert s.solve(conj(k.true("ferritin_falling"), k.true("ferritin_not_falling"))) is None
    # a threshold and a trend on ferritin read the same latest value
    w = s.solve(conj(k.true("ferritin_above_10000"), k.true("ferritin_falling")))
    assert w is not None
    d = w["obs:ferritin"].data
    assert isinstance(d, ObsData)
    assert d.latest is not None
    assert d.previous is not None
    assert d.latest > 10000
    assert d.latest < d.previous * 0.9


def test_a_fall_inside_the_band_is_flat_for_the_banded_trend() -> None:
    g = load_guideline(DEFECTIVE / "trend-inside-band.yaml", structural=False)
    s = Solver(g, 24.0, ["antimicrobial"])
    k = s.kleene
    w = s.solve(conj(k.true("ferritin_falling_any"), k.true("ferritin_not_falling")))
    assert w is not None
    d = w["obs:ferritin"].data
    assert isinstance(d, ObsData)
    assert d.latest is not None
    assert d.previous is not None
    assert d.previous * 0.9 <= d.latest < d.previous  # e.g. 12,000 -> 11,000: inside 10%


def test_unknown_points_are_met(guideline: Guideline) -> None:
    s = Solver(guideline, 24.0, ["antimicrobial"])
    k = s.kleene
    # no ferritin value at all: every ferritin criterion is UNKNOWN
    w = s.solve(k.guard_unknown(("ferritin_raised",)))
    assert w is not None
    assert w["obs:ferritin"].tri[0] == "U"
    # infection never assessed: the gate is UNKNOWN, never FALSE
    w = s.solve(conj(k.guard_unknown(("infection_gate_open",))))
    assert w is not None
    # a single ferritin value: a trend is UNKNOWN while a threshold is decided
    w = s.solve(conj(k.true("ferritin_above_10000"), k.guard_unknown(("ferritin_falling",))))
    assert w is not None
