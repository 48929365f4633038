"""The verifier: proofs on the bundled guideline and its profile, counterexamples on defects."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iechs import Guideline, load_guideline
from iechs.cli import main
from iechs.verify import Solver, verify

ROOT = Path(__file__).resolve().parents[1]
DEFECTIVE = ROOT / "tests" / "fixtures" / "defective"
PROFILES = sorted((ROOT / "guideline" / "profiles").glob("*.yaml"))

#: fixture -> (the property it must break, length of its shortest counterexample path)
EXPECTED = {
    "il6-monotherapy.yaml": ("no_il6_monotherapy", 1),
    "skip-to-ruxolitinib.yaml": ("lines_in_order", 2),
    "no-infection-gate.yaml": ("antimicrobials_before_immunosuppression", 2),
    "escalation-without-min-time.yaml": ("escalation_after_minimum_time", 3),
    "unreachable-state.yaml": ("no_dead_ends", 0),
    "unsatisfiable-guard.yaml": ("no_dead_ends", 0),
    "trap-state.yaml": ("no_dead_ends", 3),
    "uncited-recommendation.yaml": ("everything_cited", 3),
    "two-transitions-enabled.yaml": ("deterministic", 1),
}
SEVEN = (
    "no_il6_monotherapy",
    "lines_in_order",
    "antimicrobials_before_immunosuppression",
    "escalation_after_minimum_time",
    "no_dead_ends",
    "everything_cited",
    "deterministic",
)


def test_bundled_guideline_proves_all_seven(guideline: Guideline) -> None:
    report = verify(guideline)
    assert report.ok
    assert report.proved == SEVEN
    assert report.abstract_states >= len(guideline.states)
    assert report.edges > 0


def test_every_fixture_is_covered() -> None:
    assert sorted(p.name for p in DEFECTIVE.glob("*.yaml")) == sorted(EXPECTED)
    assert len(EXPECTED) >= 8


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_defective_guideline_fails_with_the_right_property(name: str) -> None:
    prop, length = EXPECTED[name]
    report = verify(load_guideline(DEFECTIVE / name, structural=False))
    assert not report.ok
    assert [c.property for c in report.counterexamples] == [prop]
    (cx,) = report.counterexamples
    assert len(cx.steps) == length
    assert cx.problem
    if cx.steps:  # a path starts at the initial state and is connected
        assert cx.steps[0].source == "surveillance"
        for a, b in zip(cx.steps, cx.steps[1:], strict=False):
            assert a.target == b.source


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_cli_verify_exits_1_with_a_readable_counterexample(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", str(DEFECTIVE / name)]) == 1
    out = capsys.readouterr().out
    prop, length = EXPECTED[name]
    assert f"FAILED {prop}" in out
    if length:
        assert f"shortest counterexample ({length} step(s))" in out
    assert "6 of 7 properties proved" in out


def test_counterexample_names_the_values_that_break_the_gate() -> None:
    report = verify(load_guideline(DEFECTIVE / "no-infection-gate.yaml", structural=False))
    last = report.counterexamples[0].steps[-1]
    assert (last.source, last.event, last.target) == (
        "suspected",
        "give_corticosteroid",
        "first_line_steroids",
    )
    assert "infection suspected" in last.values
    assert "antimicrobials_started FALSE" in last.values


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_profiles_pass_verify(profile: Path) -> None:
    report = verify(load_guideline(profile))
    assert report.ok, [c.render() for c in report.counterexamples]
    assert set(SEVEN) <= set(report.proved)


def test_astct_profile_is_anakinra_first() -> None:
    (profile,) = [p for p in PROFILES if p.name == "astct-2023.yaml"]
    g = load_guideline(profile)
    assert g.guideline.id == "iec-hs-astct-2023"
    assert g.profile is not None
    events = {t.event: t.to for t in g.states["suspected"].transitions}
    assert events["give_anakinra"] == "second_line_anakinra"
    order = g.properties["lines_in_order"].order_of_lines
    assert order is not None
    assert order.lines == ("second_line_anakinra", "refractory_ruxolitinib")
    # Untouched parts come from the base guideline.
    base = load_guideline()
    assert g.criteria == base.criteria
    assert g.states["refractory_ruxolitinib"] == base.states["refractory_ruxolitinib"]


def test_profile_errors_name_the_profile_file(tmp_path: Path) -> None:
    from iechs import GuidelineError

    bad = tmp_path / "p.yaml"
    bad.write_text(
        f"profile:\n  extends: {ROOT / 'guideline' / 'iec-hs.yaml'}\n  rationale: x\n"
        "states:\n  resolved:\n    transitions:\n      - event: reassess\n"
        "        to: suspected\n        when: [recurence]\n        label: x\n"
        "        cite: [hines-2023]\n",
        encoding="utf-8",
    )
    with pytest.raises(GuidelineError) as info:
        load_guideline(bad)
    (p,) = info.value.problems
    assert p.file == str(bad)
    assert p.line == 9
    assert "unknown criterion 'recurence' (did you mean 'recurrence'?)" in p.message


def test_verify_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True
    assert doc["proved"] == list(SEVEN)
    assert doc["violated"] == []
    assert set(doc["explored"]) == {"abstract_states", "edges", "sat_queries", "valuations_decided"}


def test_solver_relates_leaves_that_read_the_same_value(guideline: Guideline) -> None:
    solver = Solver(guideline)
    # ferritin > 10,000 implies ferritin > 2 x ULN (600): one value, not two free inputs
    assert (
        solver.solve(solver.formula(("ferritin_above_10000",), ("ferritin_above_2x_uln",))) is None
    )
    assert solver.solve(solver.formula(("ferritin_above_2x_uln",), ("ferritin_above_10000",)))
    # the latest CRS grade cannot be both >= 1 and 0
    assert solver.solve(solver.formula(("crs_active", "crs_absent"))) is None
    # the latest response cannot be both worsening and improving
    assert solver.solve(solver.formula(("worsening", "clinical_response_reported"))) is None
    # at least two organ toxicities with haemophagocytosis absent still needs two others
    witness = solver.solve(solver.formula(("organ_toxicity_count_2",), ("hemophagocytosis",)))
    assert witness is not None
    assert witness["finding:hemophagocytosis"] == "hemophagocytosis absent"
