"""Loading and checking a guideline: structure, semantic checks, messages with line and path."""

from __future__ import annotations

from pathlib import Path

import pytest

from iechs import Guideline, GuidelineError, IechsError, load_guideline, parse_guideline
from iechs.checks import FIXED_STATES, citables
from iechs.loader import default_guideline_path

ROOT = Path(__file__).resolve().parents[1]
TEXT = (ROOT / "guideline" / "iec-hs.yaml").read_text(encoding="utf-8")


def edited(old: str, new: str, count: int = 1) -> str:
    assert old in TEXT, f"fixture text not found: {old!r}"
    return TEXT.replace(old, new, count)


def problems_of(text: str) -> GuidelineError:
    with pytest.raises(GuidelineError) as info:
        parse_guideline(text, "g.yaml")
    return info.value


def line_of(snippet: str, text: str = TEXT) -> int:
    return text[: text.index(snippet)].count("\n") + 1


def test_bundled_guideline_loads_with_fixed_states(guideline: Guideline) -> None:
    assert tuple(guideline.states) == FIXED_STATES
    assert guideline.initial_state == "surveillance"
    assert [s for s, d in guideline.states.items() if d.final] == ["closed"]
    assert len(guideline.sha256) == 64


def test_default_path_is_the_bundled_guideline() -> None:
    assert (
        default_guideline_path().read_bytes() == (ROOT / "guideline" / "iec-hs.yaml").read_bytes()
    )
    assert load_guideline().sha256 == load_guideline(ROOT / "guideline" / "iec-hs.yaml").sha256


def test_every_clinical_statement_cites_a_known_source(guideline: Guideline) -> None:
    items = list(citables(guideline))
    assert len(items) > 100
    for path, item in items:
        assert item.cite, path
        assert set(item.cite) <= set(guideline.sources), path


def test_reference_r_statements_stay_unverified(guideline: Guideline) -> None:
    # [R] in the clinical reference: hines-2023 identification and doses are not checked yet.
    assert not guideline.criteria["hines_identification"].verified
    anakinra = guideline.recommendation("anakinra-adult")
    assert anakinra is not None
    assert anakinra.dose is not None
    assert (anakinra.dose.min, anakinra.dose.max) == (100, 200)
    assert anakinra.cite == ("hines-2023",)
    assert not anakinra.verified
    dexamethasone = guideline.recommendation("dexamethasone-high-dose")
    assert dexamethasone is not None
    assert dexamethasone.dose is not None
    assert (dexamethasone.dose.min, dexamethasone.dose.max) == (10, 20)
    assert dexamethasone.cite == ("hines-2023",)
    assert not dexamethasone.verified
    # [V] from the seeds: verified (the seeds give the line, not the dose).
    assert guideline.criteria["cartox_hlh"].verified
    for rid in ("corticosteroids-first-line", "anakinra-added"):
        rec = guideline.recommendation(rid)
        assert rec is not None, rid
        assert rec.verified, rid
        assert rec.dose is None, rid
        assert "hines-2023" not in rec.cite, rid


def test_institutional_parameters_are_local_with_defaults(guideline: Guideline) -> None:
    params = guideline.parameters
    for name in (
        "ferritin_uln",
        "ast_uln",
        "ldh_uln",
        "reassessment_interval_hours",
        "min_hours_before_escalation",
        "escalation_due_hours",
        "finding_validity_hours",
        "therapy_continuity_hours",
    ):
        assert params[name].local, name
    assert params["reassessment_interval_hours"].value == 12
    # escalation is allowed from 24 h (the lower end of "24-48 h") and due at 48 h
    assert params["min_hours_before_escalation"].value == 24
    assert params["escalation_due_hours"].value == 48
    assert "trend_window_hours" not in params  # trends: latest fresh value vs the previous one


def test_unknown_criterion_names_line_path_and_suggestion() -> None:
    text = edited("when: [screening_trigger]", "when: [screning_trigger]")
    err = problems_of(text)
    (p,) = err.problems
    assert p.path == "$.states.surveillance.transitions[0].when[0]"
    assert p.line == line_of("when: [screning_trigger]", text)
    assert "unknown criterion 'screning_trigger' (did you mean 'screening_trigger'?)" in p.message
    assert err.render().startswith(f"g.yaml:{p.line}: $.states.surveillance")


def test_structural_error_is_reported_by_cattrs_with_path_and_line() -> None:
    text = edited("    initial: true\n", "    initial: yes please\n")
    (p,) = problems_of(text).problems
    assert p.path == "$.states.surveillance.initial"
    assert "expected true or false" in p.message
    assert p.line == line_of("initial: yes please", text)


def test_extra_key_is_rejected() -> None:
    text = edited("    phase: diagnosis\n", "    phase: diagnosis\n    colour: red\n")
    messages = [p.message for p in problems_of(text).problems]
    assert any("extra fields found (colour)" in m for m in messages)


def test_boolean_key_is_explained() -> None:
    text = edited(
        "      - event: close\n        to: closed", "      - on: close\n        to: closed"
    )
    (p,) = problems_of(text).problems
    assert "not text" in p.message
    assert "quote it" in p.message


def test_duplicate_key_is_rejected() -> None:
    text = edited("    phase: diagnosis\n", "    phase: diagnosis\n    phase: treatment\n")
    (p,) = problems_of(text).problems
    assert p.message == "duplicate key 'phase'"
    assert p.path == "$.states.suspected.phase"


def test_malformed_yaml_names_the_line() -> None:
    (p,) = problems_of("guideline:\n  id: [unclosed\n").problems
    assert p.message.startswith("malformed YAML")
    assert p.line is not None


def test_missing_citation_is_a_problem() -> None:
    text = edited(
        "        cite: [hines-2023]\n      - id: methylprednisolone-equivalent",
        "      - id: methylprednisolone-equivalent",
    )
    paths = [p.path for p in problems_of(text).problems]
    assert "$.states.first_line_steroids.recommendations[1].cite" in paths  # dexamethasone


def test_unknown_source_key_is_a_problem() -> None:
    text = edited("cite: [seed-summary, santomasso-2021]", "cite: [seed-sumary, santomasso-2021]")
    messages = [p.message for p in problems_of(text).problems]
    assert any("unknown source 'seed-sumary' (did you mean 'seed-summary'?)" in m for m in messages)


def test_threshold_unit_must_fit_its_observation() -> None:
    text = edited("value: 150, unit: mg/dL}", "value: 150, unit: U/L}")
    (p,) = problems_of(text).problems
    assert p.path == "$.criteria.fibrinogen_below_150.threshold.unit"
    assert "does not fit observation 'fibrinogen'" in p.message


def test_unknown_observation_in_criterion() -> None:
    text = edited("ratio: {observation: ast,", "ratio: {observation: asst,")
    (p,) = problems_of(text).problems
    assert "unknown observation 'asst' (did you mean 'ast'?)" in p.message


def test_unknown_parameter_reference() -> None:
    text = edited("reference: $ast_uln,", "reference: $ast_ulnn,")
    (p,) = problems_of(text).problems
    assert p.path == "$.criteria.ast_above_5x_uln.ratio.reference"
    assert "unknown parameter 'ast_ulnn'" in p.message


def test_criteria_cycle_is_detected() -> None:
    text = edited("all: [screening_trigger, ferritin_not_falling]", "all: [recurrence]")
    messages = [p.message for p in problems_of(text).problems]
    assert any("cycle: recurrence -> recurrence" in m for m in messages)


def test_unreachable_state_is_detected() -> None:
    text = edited(
        "        to: suspected\n        when: [recurrence]",
        "        to: closed\n        when: [recurrence]",
    )
    # suspected stays reachable from surveillance; cut that edge too
    text = text.replace(
        "        to: suspected\n        when: [screening_trigger]",
        "        to: closed\n        when: [screening_trigger]",
    )
    err = problems_of(text)
    unreachable = {p.path for p in err.problems if p.message.startswith("unreachable state")}
    assert "$.states.suspected" in unreachable
    assert "$.states.first_line_steroids" in unreachable


def test_trap_state_is_detected() -> None:
    start = TEXT.index("  resolved:\n")
    block_start = TEXT.index("    transitions:\n", start)
    block_end = TEXT.index("  closed:\n", start)
    text = TEXT[:block_start] + "\n" + TEXT[block_end:]
    paths = {p.path: p.message for p in problems_of(text).problems}
    assert "trap state" in paths["$.states.resolved"]


def test_errors_share_one_base_class() -> None:
    assert issubclass(GuidelineError, IechsError)
    assert issubclass(GuidelineError, ValueError)


def test_missing_file_is_a_guideline_error(tmp_path: Path) -> None:
    with pytest.raises(GuidelineError, match="cannot read the file"):
        load_guideline(tmp_path / "nope.yaml")
