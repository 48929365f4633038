"""`iechs diff`: a semantic diff of two guideline versions or profiles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import pytest

from iechs import Guideline, load_guideline
from iechs.cli import main
from iechs.diagram.diff import CATEGORIES, Change, diff_guidelines, diff_to_json, diff_to_text
from iechs.loader import parse_guideline
from iechs.model import Dose

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "guideline" / "iec-hs.yaml"
PROFILE = ROOT / "guideline" / "profiles" / "astct-2023.yaml"


def with_state(g: Guideline, sid: str, **changes: Any) -> Guideline:
    states = dict(g.states)
    states[sid] = attrs.evolve(states[sid], **changes)
    return attrs.evolve(g, states=states)


def only(changes: list[Change]) -> Change:
    assert len(changes) == 1, changes
    return changes[0]


def test_no_changes(guideline: Guideline) -> None:
    assert diff_guidelines(guideline, guideline) == []
    assert diff_to_text(guideline, guideline, []).endswith(": no changes\n")


def test_a_dose_change(guideline: Guideline) -> None:
    state = guideline.states["first_line_steroids"]
    recs = tuple(
        attrs.evolve(r, dose=Dose(min=10, max=40, unit="mg"))
        if r.id == "dexamethasone-high-dose"
        else r
        for r in state.recommendations
    )
    new = with_state(guideline, "first_line_steroids", recommendations=recs)
    c = only(diff_guidelines(guideline, new))
    assert (c.category, c.change) == ("dose", "changed")
    assert c.where == "recommendation dexamethasone-high-dose in first_line_steroids"
    assert c.before == "Dexamethasone 10–20 mg IV, every 6 h, adults"
    assert c.after == "Dexamethasone 10–40 mg IV, every 6 h, adults"


def test_a_threshold_change(guideline: Guideline) -> None:
    criteria = dict(guideline.criteria)
    c0 = criteria["ferritin_above_10000"]
    assert c0.threshold is not None
    criteria["ferritin_above_10000"] = attrs.evolve(
        c0, threshold=attrs.evolve(c0.threshold, value=5000.0)
    )
    c = only(diff_guidelines(guideline, attrs.evolve(guideline, criteria=criteria)))
    assert (c.category, c.where) == ("threshold", "criterion ferritin_above_10000")
    assert (c.before, c.after) == ("ferritin > 10000 ng/mL", "ferritin > 5000 ng/mL")


def test_a_parameter_is_a_threshold(guideline: Guideline) -> None:
    params = dict(guideline.parameters)
    old = params["min_hours_before_escalation"].value
    params["min_hours_before_escalation"] = attrs.evolve(
        params["min_hours_before_escalation"], value=old + 12
    )
    c = only(diff_guidelines(guideline, attrs.evolve(guideline, parameters=params)))
    assert (c.category, c.before, c.after) == ("threshold", f"{old:g} h", f"{old + 12:g} h")


def test_guard_citation_and_verified_changes(guideline: Guideline) -> None:
    state = guideline.states["suspected"]
    t = attrs.evolve(
        state.transitions[0],
        when=("iec_hs_identified",),
        cite=("hines-2023",),
        verified=not state.transitions[0].verified,
    )
    new = with_state(guideline, "suspected", transitions=(t, *state.transitions[1:]))
    changes = {c.category: c for c in diff_guidelines(guideline, new)}
    assert set(changes) == {"guard", "citation", "verified"}
    where = "transition suspected --give_corticosteroid--> first_line_steroids"
    assert all(c.where == where for c in changes.values())
    assert changes["guard"].after == {"when": ["iec_hs_identified"]}
    assert changes["citation"].after == ["hines-2023"]
    text = changes["guard"].text()
    assert (
        text == f"~ guard: {where}: iec_hs_identified and infection_gate_open -> iec_hs_identified"
    )


def test_transitions_added_removed_and_reordering_is_no_change(guideline: Guideline) -> None:
    state = guideline.states["suspected"]
    reordered = with_state(guideline, "suspected", transitions=state.transitions[::-1])
    assert diff_guidelines(guideline, reordered) == []
    fewer = with_state(guideline, "suspected", transitions=state.transitions[1:])
    c = only(diff_guidelines(guideline, fewer))
    assert (c.category, c.change) == ("transition", "removed")
    assert c.before == state.transitions[0].label
    back = only(diff_guidelines(fewer, guideline))
    assert back.change == "added"
    assert back.text().startswith("+ transition: transition suspected")


def test_states_and_statements(guideline: Guideline) -> None:
    state = guideline.states["suspected"]
    caution = attrs.evolve(state.cautions[0], text="A new caution.")
    new = with_state(guideline, "suspected", cautions=(caution, *state.cautions[1:]))
    changes = diff_guidelines(guideline, new)
    assert {(c.category, c.change) for c in changes} == {
        ("statement", "added"),
        ("statement", "removed"),
    }
    renamed = with_state(guideline, "salvage", name="Salvage")
    c = only(diff_guidelines(guideline, renamed))
    assert (c.category, c.where, c.after) == ("state", "state salvage name", "Salvage")


def test_a_criterion_definition_change(guideline: Guideline) -> None:
    criteria = dict(guideline.criteria)
    criteria["iec_hs_identified"] = attrs.evolve(
        criteria["iec_hs_identified"], any_of=("hines_identification",)
    )
    c = only(diff_guidelines(guideline, attrs.evolve(guideline, criteria=criteria)))
    assert c.category == "criterion"
    assert c.after == "any of: hines_identification"


def test_the_profile_against_its_base() -> None:
    base, profile = load_guideline(BASE), load_guideline(PROFILE)
    changes = diff_guidelines(base, profile)
    added = {c.where for c in changes if c.change == "added" and c.category == "transition"}
    assert "transition suspected --give_anakinra--> second_line_anakinra" in added
    assert "transition second_line_anakinra --give_salvage--> salvage" in added
    guards = [c for c in changes if c.category == "guard"]
    assert [c.where for c in guards] == [
        "transition first_line_steroids --give_anakinra--> second_line_anakinra"
    ]
    assert any(c.category == "verified" for c in changes)
    assert any(c.category == "recommendation" and c.change == "added" for c in changes)
    lines = {c.where: c.after for c in changes if c.category == "line_order"}
    assert lines["line second_line_anakinra comes after"] == []  # anakinra first
    assert any(c.category == "action" for c in changes)
    order = [CATEGORIES.index(c.category) for c in changes]
    assert order == sorted(order)  # listed by category


def test_json_document() -> None:
    base, profile = load_guideline(BASE), load_guideline(PROFILE)
    changes = diff_guidelines(base, profile)
    doc = diff_to_json(base, profile, changes)
    assert doc["format"] == "iechs.diff/1"
    assert doc["old"]["sha256"] == base.sha256
    assert doc["new"]["id"] == "iec-hs-astct-2023"
    assert sum(doc["summary"].values()) == len(doc["changes"]) == len(changes)
    json.dumps(doc)  # serialisable as it is


def test_cli_text_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diff", str(BASE), str(PROFILE)]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"iec-hs {load_guideline(BASE).guideline.version} (sha256 ")
    assert "+ transition: transition suspected --give_anakinra--> second_line_anakinra" in text
    assert main(["diff", str(BASE), str(PROFILE), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["summary"]["guard"] == 1


def test_cli_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diff", str(BASE), str(PROFILE), "--exit-code"]) == 1
    assert main(["diff", str(BASE), str(BASE), "--exit-code"]) == 0
    capsys.readouterr()


def test_cli_unreadable_file_is_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diff", "does-not-exist.yaml", str(BASE)]) == 2
    err = capsys.readouterr().err
    assert "does-not-exist.yaml" in err
    assert "Traceback" not in err


# --- rules, actions, indications, order sets, quotes, contract, line order, findings --------


def with_rule(g: Guideline, rid: str, **changes: Any) -> Guideline:
    rules = dict(g.rules)
    rules[rid] = attrs.evolve(rules[rid], **changes)
    return attrs.evolve(g, rules=rules)


def with_action(g: Guideline, aid: str, **changes: Any) -> Guideline:
    actions = dict(g.actions)
    actions[aid] = attrs.evolve(actions[aid], **changes)
    return attrs.evolve(g, actions=actions)


def test_rule_fields_are_diffed(guideline: Guideline) -> None:
    rule = guideline.rules["il6_monotherapy"]
    assert rule.without is not None
    new = with_rule(
        guideline,
        "il6_monotherapy",
        severity="warning",
        deviation=None,
        when=("icans_active",),
        without=attrs.evolve(rule.without, hours=12.0),
        message="IL-6 blockade alone.",
    )
    changes = {c.where: c for c in diff_guidelines(guideline, new)}
    assert all(c.category == "rule" for c in changes.values()), changes
    assert changes["rule il6_monotherapy severity"].after == "warning"
    assert changes["rule il6_monotherapy deviation"].before == rule.deviation
    assert changes["rule il6_monotherapy deviation"].after is None
    assert changes["rule il6_monotherapy criteria"].after == {"when": ["icans_active"]}
    conc = changes["rule il6_monotherapy concurrency"]
    assert "$concurrent_steroid_window_hours h" in conc.before
    assert "within 12 h" in conc.after
    assert changes["rule il6_monotherapy message"].after == "IL-6 blockade alone."
    assert len(changes) == 5


def test_rule_trigger_and_treatment_match(guideline: Guideline) -> None:
    rule = guideline.rules["tocilizumab_with_icans"]
    assert rule.treatment is not None
    new = with_rule(
        guideline,
        "tocilizumab_with_icans",
        treatment=attrs.evolve(rule.treatment, drugs=("tocilizumab", "siltuximab")),
    )
    c = only(diff_guidelines(guideline, new))
    assert (c.category, c.where) == ("rule", "rule tocilizumab_with_icans trigger")
    assert c.after == "once per new therapy with tocilizumab or siltuximab"


def test_rules_added_and_removed(guideline: Guideline) -> None:
    rules = dict(guideline.rules)
    removed = rules.pop("high_risk_patient")
    fewer = attrs.evolve(guideline, rules=rules)
    c = only(diff_guidelines(guideline, fewer))
    assert (c.category, c.change, c.where) == ("rule", "removed", "rule high_risk_patient")
    assert (
        c.before == f"alert high_risk_patient ({removed.severity}), once, when the episode starts"
    )
    back = only(diff_guidelines(fewer, guideline))
    assert back.change == "added"
    assert back.text().startswith("+ rule: rule high_risk_patient: ")


def test_a_rule_quote_verified_and_citation(guideline: Guideline) -> None:
    rid = next(rid for rid, r in guideline.rules.items() if r.verified and r.quote)
    new = with_rule(guideline, rid, quote="Other words.", verified=False, cite=("hines-2023",))
    changes = {c.category: c for c in diff_guidelines(guideline, new)}
    assert set(changes) == {"quote", "verified", "citation"}
    assert changes["quote"].where == f"rule {rid}"
    assert changes["quote"].after == "Other words."
    # the same words folded differently in the YAML are no change
    rule = guideline.rules[rid]
    assert rule.quote is not None
    refolded = with_rule(guideline, rid, quote="\n  ".join(rule.quote.split(" ")))
    assert diff_guidelines(guideline, refolded) == []


def test_quotes_of_any_statement_are_diffed(guideline: Guideline) -> None:
    state = guideline.states["first_line_steroids"]
    rec = state.recommendations[0]
    quoted = attrs.evolve(rec, quote="High-dose corticosteroids")
    new = with_state(
        guideline, "first_line_steroids", recommendations=(quoted, *state.recommendations[1:])
    )
    c = only(diff_guidelines(guideline, new))
    assert (c.category, c.where) == ("quote", f"recommendation {rec.id} in first_line_steroids")
    assert (c.before, c.after) == (rec.quote, "High-dose corticosteroids")


def test_action_fields_are_diffed(guideline: Guideline) -> None:
    aid, action = next((k, a) for k, a in guideline.actions.items() if a.recommendation)
    new = with_action(
        guideline,
        aid,
        text="Something else.",
        states=(*action.states, "salvage"),
        unless=("icans_active",),
        recommendation="ruxolitinib",
        due="reassessment",
        code="consider_salvage",
    )
    changes = {c.where.removeprefix(f"action {aid} "): c for c in diff_guidelines(guideline, new)}
    assert set(changes) == {"code", "recommendation", "text", "states", "criteria", "due"}
    assert all(c.category == "action" for c in changes.values())
    assert changes["states"].after == [*action.states, "salvage"]
    assert changes["criteria"].after == {"when": list(action.when), "unless": ["icans_active"]}
    assert changes["due"].before is None
    assert changes["due"].after == "by the last reassessment + reassessment interval"
    assert changes["recommendation"].after == "ruxolitinib"


def test_actions_added_and_removed(guideline: Guideline) -> None:
    actions = dict(guideline.actions)
    aid, action = actions.popitem()
    fewer = attrs.evolve(guideline, actions=actions)
    c = only(diff_guidelines(guideline, fewer))
    assert (c.category, c.change, c.where) == ("action", "removed", f"action {aid}")
    assert c.before.startswith(f"{action.code} in [")
    assert only(diff_guidelines(fewer, guideline)).change == "added"


def test_indication_rules_in_another_order_are_a_change(guideline: Guideline) -> None:
    rules = guideline.indications
    assert len(rules) >= 3
    swapped = (rules[1], rules[0], *rules[2:])
    c = only(diff_guidelines(guideline, attrs.evolve(guideline, indications=swapped)))
    assert (c.category, c.change, c.where) == ("indication", "changed", "indication rules order")
    assert c.before[:2] == c.after[1::-1]
    assert c.before[0].startswith(f"{rules[0].indication} if ")


def test_indication_rules_added_removed_and_reworded(guideline: Guideline) -> None:
    rules = guideline.indications
    fewer = attrs.evolve(guideline, indications=rules[1:])
    c = only(diff_guidelines(guideline, fewer))  # the others keep their order: no order change
    assert (c.category, c.change) == ("indication", "removed")
    assert c.before == f"rule 1: {rules[0].reason}"
    reworded = attrs.evolve(rules[0], reason="another reason")
    c = only(
        diff_guidelines(guideline, attrs.evolve(guideline, indications=(reworded, *rules[1:])))
    )
    assert (c.category, c.after) == ("indication", "another reason")
    assert c.where.endswith(" reason")
    # what a rule matches identifies it: a narrower match is another rule
    narrower = attrs.evolve(rules[0], states=("suspected",))
    changes = diff_guidelines(
        guideline, attrs.evolve(guideline, indications=(narrower, *rules[1:]))
    )
    assert {(c.category, c.change) for c in changes} == {
        ("indication", "added"),
        ("indication", "removed"),
    }
    added = next(c for c in changes if c.change == "added")
    assert "in suspected" in added.where


def test_order_set_sequence(guideline: Guideline) -> None:
    o = guideline.order_sets
    assert o is not None
    seq = o.sequence
    new = attrs.evolve(guideline, order_sets=attrs.evolve(o, sequence=(seq[1], seq[0], *seq[2:])))
    c = only(diff_guidelines(guideline, new))
    assert (c.category, c.where) == ("order_set", "order sets sequence")
    assert (c.before, c.after) == (list(seq), [seq[1], seq[0], *seq[2:]])
    gone = attrs.evolve(guideline, order_sets=None)
    c = only(diff_guidelines(guideline, gone))
    assert (c.category, c.change, c.before) == ("order_set", "removed", list(seq))
    assert only(diff_guidelines(gone, guideline)).change == "added"


def test_the_contract(guideline: Guideline) -> None:
    meta = attrs.evolve(guideline.guideline, contract="other-contract")
    c = only(diff_guidelines(guideline, attrs.evolve(guideline, guideline=meta)))
    assert (c.category, c.where) == ("contract", "guideline contract")
    assert (c.before, c.after) == (guideline.guideline.contract, "other-contract")


def test_line_predecessors(guideline: Guideline) -> None:
    new = with_state(guideline, "salvage", after=("second_line_anakinra", "refractory_ruxolitinib"))
    c = only(diff_guidelines(guideline, new))
    assert (c.category, c.where) == ("line_order", "line salvage comes after")
    assert c.before == list(guideline.line_after("salvage"))
    assert c.after == ["second_line_anakinra", "refractory_ruxolitinib"]
    # declaring the default order is no change
    same = with_state(guideline, "salvage", after=guideline.line_after("salvage"))
    assert diff_guidelines(guideline, same) == []


def test_finding_validity_is_a_threshold(guideline: Guideline) -> None:
    fid = next(iter(guideline.findings))
    findings = dict(guideline.findings)
    findings[fid] = attrs.evolve(findings[fid], valid_hours=72.0)
    c = only(diff_guidelines(guideline, attrs.evolve(guideline, findings=findings)))
    assert (c.category, c.where, c.after) == ("threshold", f"finding {fid} validity", "72 h")
    findings[fid] = attrs.evolve(findings[fid], valid_hours=None)
    c = only(diff_guidelines(guideline, attrs.evolve(guideline, findings=findings)))
    assert c.after == "never expires"


PROFILE_TEXT = """
profile: {extends: iec-hs.yaml, rationale: a test of the diff}
guideline: {id: test-profile, title: Test, version: 9.9.9}
rules:
  high_risk_patient: {severity: warning}
  jak_started:
    alert: jak_started
    severity: info
    treatment: {class: [jak_inhibitor]}
    message: "{drug} started."
    cite: [seed-summary]
actions:
  reassess: null
"""


def test_a_profile_of_rules_and_actions() -> None:
    base = load_guideline(BASE)
    profile = parse_guideline(PROFILE_TEXT, "<test>", base_dir=BASE.parent)
    changes = [c for c in diff_guidelines(base, profile) if c.category != "metadata"]
    assert [(c.category, c.change, c.where) for c in changes] == [
        ("action", "removed", "action reassess"),
        ("rule", "added", "rule jak_started"),
        ("rule", "changed", "rule high_risk_patient severity"),
    ]
    assert changes[1].after == (
        "alert jak_started (info), once per new therapy with a drug of class jak_inhibitor"
    )
    text = diff_to_text(base, profile, diff_guidelines(base, profile))
    assert "+ rule: rule jak_started: " in text
    assert "1 action, 2 rule" in text
    doc = diff_to_json(base, profile, diff_guidelines(base, profile))
    assert doc["summary"]["rule"] == 2
