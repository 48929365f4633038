"""The review page, read as a document (the browser test clicks it: test_review_browser.py)."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
from lxml import html as lhtml

from iechs import Guideline, load_guideline
from iechs.checks import citables
from iechs.cli import main
from iechs.diagram.artefacts import review_page
from iechs.diagram.review import review_html, svg_for_html
from iechs.loader import parse_guideline

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "guideline" / "profiles" / "astct-2023.yaml"
TINY_SVG = (
    b'<?xml version="1.0"?>\n<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" '
    b'"http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd">\n<!-- made by hand -->\n'
    b'<svg xmlns="http://www.w3.org/2000/svg" width="100pt" height="50pt" viewBox="0 0 100 50">'
    b'<g id="state-a" class="node"><text>A</text></g><g id="t" class="edge"/></svg>'
)


@pytest.fixture(scope="module")
def page(guideline: Guideline) -> str:
    return review_page(guideline).decode("utf-8")


@pytest.fixture(scope="module")
def doc(page: str) -> lhtml.HtmlElement:
    return lhtml.document_fromstring(page)


def test_svg_for_html_drops_prolog_and_makes_states_focusable() -> None:
    out = svg_for_html(TINY_SVG, {"a": "State A"})
    assert out.startswith("<svg")
    assert "DOCTYPE" not in out
    assert "made by hand" not in out
    assert 'width="100pt"' not in out
    assert 'viewBox="0 0 100 50"' in out
    assert 'tabindex="0"' in out
    assert 'role="button"' in out
    assert 'aria-label="State A: show details"' in out
    assert out.count("tabindex") == 1  # states only, not edges


def test_review_html_on_a_tiny_diagram(guideline: Guideline) -> None:
    page = review_html(guideline, TINY_SVG)
    assert page.startswith("<!DOCTYPE html>")
    assert 'id="state-a"' in page


def test_self_contained(doc: lhtml.HtmlElement, page: str) -> None:
    assert not doc.xpath("//link | //script[@src] | //img | //iframe | //object | //embed")
    for el in doc.xpath("//*[@href]"):
        assert el.get("href").startswith("#"), el.get("href")
    assert "http://" not in page.replace("http://www.w3.org/", "")
    assert "https://" not in page
    assert "@import" not in page
    assert "url(" not in page


def test_identity(doc: lhtml.HtmlElement, guideline: Guideline) -> None:
    assert doc.get_element_by_id("guideline-sha256").text_content() == guideline.sha256
    assert doc.get_element_by_id("guideline-version").text_content() == guideline.guideline.version
    assert guideline.guideline.title in doc.findtext(".//title")


def test_diagram_and_one_detail_per_state(doc: lhtml.HtmlElement, guideline: Guideline) -> None:
    nodes = doc.xpath("//div[@id='diagram']//*[local-name()='g' and contains(@class, 'node')]")
    assert len(nodes) == len(guideline.states)
    details = doc.xpath("//section[contains(@class, 'state-detail')]")
    assert [d.get("data-state") for d in details] == list(guideline.states)
    assert all(d.get("hidden") is not None for d in details)  # shown by a click


def test_state_detail_has_recommendations_doses_cautions_citations(
    doc: lhtml.HtmlElement, guideline: Guideline
) -> None:
    detail = doc.get_element_by_id("detail-first_line_steroids").text_content()
    assert "High-dose corticosteroids are the mainstay" in detail
    assert "Dexamethasone 10–20 mg IV, every 6 h, adults" in detail
    assert "IL-6 blockade is not recommended as monotherapy" in detail
    assert "hines-2023" in detail
    assert guideline.sources["hines-2023"].citation in detail
    assert "not yet verified" in detail
    assert "verified" in detail


def test_transitions_table(doc: lhtml.HtmlElement, guideline: Guideline) -> None:
    rows = doc.xpath("//table[@id='transitions-table']/tbody/tr")
    assert len(rows) == sum(len(s.transitions) for s in guideline.states.values())
    text = doc.get_element_by_id("row-transition-suspected-0").text_content()
    assert "corticosteroid given" in text
    assert "iec_hs_identified" in text
    assert guideline.criteria["infection_gate_open"].description in text


def test_every_unverified_statement_is_listed(doc: lhtml.HtmlElement, guideline: Guideline) -> None:
    unverified = [path for path, item in citables(guideline) if not item.verified]
    rows = doc.xpath("//table[@id='unverified-table']/tbody/tr")
    assert [r.xpath("string(td[1])") for r in rows] == unverified
    assert f"Not yet verified ({len(unverified)})" in doc.text_content()


def test_criteria_show_their_thresholds(doc: lhtml.HtmlElement) -> None:
    text = doc.get_element_by_id("criteria-table").text_content()
    assert "ferritin > 10000 ng/mL" in text
    assert "fibrinogen < 150 mg/dL" in text


def test_no_changes_section_without_since(doc: lhtml.HtmlElement) -> None:
    assert not doc.xpath("//section[@id='changes']")


def test_since_shows_what_changed(guideline: Guideline) -> None:
    profile = load_guideline(PROFILE)
    doc: lhtml.HtmlElement = lhtml.document_fromstring(
        review_page(profile, since=guideline).decode()
    )
    rows = doc.xpath("//table[@id='changes-table']/tbody/tr")
    assert rows
    text = doc.get_element_by_id("changes").text_content()
    assert "transition suspected --give_anakinra--> second_line_anakinra" in text
    assert f"since iec-hs {guideline.guideline.version}" in text


def test_deterministic(guideline: Guideline, page: str) -> None:
    assert review_page(guideline).decode() == page


def test_cli_review(tmp_path: Path) -> None:
    out = tmp_path / "r" / "review.html"
    assert (
        main(
            [
                "review",
                str(PROFILE),
                "--out",
                str(out),
                "--since",
                str(ROOT / "guideline/iec-hs.yaml"),
            ]
        )
        == 0
    )
    assert 'id="changes"' in out.read_text(encoding="utf-8")


# --- actions, rules, indications, order sets, line order, findings, contract, quotes ---------


def text_of(doc: lhtml.HtmlElement, element_id: str) -> str:
    return " ".join(doc.get_element_by_id(element_id).text_content().split())


def words(text: str) -> str:
    return " ".join(text.split())


def test_every_action_is_shown(doc: lhtml.HtmlElement, guideline: Guideline) -> None:
    rows = doc.xpath("//table[@id='actions-table']/tbody/tr")
    assert [r.get("id") for r in rows] == [f"row-action-{aid}" for aid in guideline.actions]
    assert guideline.actions
    for aid, a in guideline.actions.items():
        text = text_of(doc, f"row-action-{aid}")
        assert a.code in text.replace(" ", "")  # the code may break after an underscore
        assert words(a.text) in text
        for name in (*a.when, *a.unless):
            assert name in text
            assert words(guideline.criteria[name].description) in text
        for key in a.cite:
            assert key in text
        assert ("not yet verified" in text) == (not a.verified)


def test_an_action_shows_its_drug_dose_and_due(
    doc: lhtml.HtmlElement, guideline: Guideline
) -> None:
    aid, action = next(
        (k, a)
        for k, a in guideline.actions.items()
        if a.recommendation == "dexamethasone-high-dose"
    )
    text = text_of(doc, f"row-action-{aid}")
    assert "Dexamethasone 10–20 mg IV, every 6 h, adults" in text
    assert "dexamethasone-high-dose" in text
    if action.unless:
        assert f"unless {action.unless[0]}" in text
    due = next(k for k, a in guideline.actions.items() if a.due == "reassessment")
    interval = guideline.parameters["reassessment_interval_hours"].value
    assert f"{interval:g} h (parameter reassessment_interval_hours)" in text_of(
        doc, f"row-action-{due}"
    )


def test_actions_per_state_in_order(doc: lhtml.HtmlElement, guideline: Guideline) -> None:
    for sid in guideline.states:
        codes = [a.code for a in guideline.actions.values() if sid in a.states]
        here = doc.xpath(f"//p[@id='actions-in-{sid}']//code")
        assert [c.text_content() for c in here] == codes
        detail = doc.get_element_by_id(f"detail-{sid}").text_content()
        assert ("Actions (in this order)" in detail) == bool(codes)
        for a in guideline.actions.values():
            if sid in a.states:
                assert words(a.text) in words(detail)


def test_every_rule_is_shown(doc: lhtml.HtmlElement, guideline: Guideline) -> None:
    rows = doc.xpath("//table[@id='rules-table']/tbody/tr")
    assert [r.get("id") for r in rows] == [f"row-rule-{rid}" for rid in guideline.rules]
    for rid, r in guideline.rules.items():
        text = text_of(doc, f"row-rule-{rid}")
        assert r.alert in text.replace(" ", "")
        assert r.severity in text
        assert words(r.deviation or "alert only") in text
        for name in (*r.when, *r.unless):
            assert name in text
        for key in r.cite:
            assert key in text


def test_a_rule_in_words(doc: lhtml.HtmlElement, guideline: Guideline) -> None:
    text = text_of(doc, "row-rule-il6_monotherapy")
    hours = guideline.parameters["concurrent_steroid_window_hours"].value
    assert "once per new therapy with a drug of class IL-6 blockade" in text
    assert "given for iec_hs" in text
    assert f"without a dose of Corticosteroid (corticosteroid) within {hours:g} h" in text
    assert "(parameter concurrent_steroid_window_hours)" in text
    assert "{$" not in text  # the message's parameters are filled in
    assert f"within {hours:g} h: IL-6" in text
    step = text_of(doc, "row-rule-escalation_due")
    assert "once per stay in " + guideline.states["first_line_steroids"].name in step
    assert "escalation_overdue" in step


def test_indication_rules_in_order(doc: lhtml.HtmlElement, guideline: Guideline) -> None:
    rows = doc.xpath("//table[@id='indications-table']/tbody/tr")
    assert len(rows) == len(guideline.indications) > 0
    for i, (row, rule) in enumerate(zip(rows, guideline.indications, strict=True), 1):
        assert row.xpath("string(td[1])") == str(i)
        assert row.xpath("string(td[2])").replace(" ", "") == rule.indication
        assert words(row.xpath("string(td[4])")) == words(rule.reason)
        for name in rule.when:
            assert name in row.xpath("string(td[3])")


def test_indication_order_follows_the_guideline(guideline: Guideline) -> None:
    flipped = attrs.evolve(guideline, indications=guideline.indications[::-1])
    doc: lhtml.HtmlElement = lhtml.document_fromstring(review_html(flipped, TINY_SVG))
    rows = doc.xpath("//table[@id='indications-table']/tbody/tr/td[4]")
    assert [words(r.text_content()) for r in rows] == [
        words(r.reason) for r in guideline.indications[::-1]
    ]


def test_order_set_sequence(doc: lhtml.HtmlElement, guideline: Guideline) -> None:
    assert guideline.order_sets is not None
    items = doc.xpath("//ol[@id='order-set-sequence']/li/code")
    assert [c.text_content() for c in items] == list(guideline.order_sets.sequence)
    assert words(guideline.order_sets.description) in text_of(doc, "order-sets")
    none = review_html(attrs.evolve(guideline, order_sets=None), TINY_SVG)
    assert 'id="order-set-sequence"' not in none


def test_line_order(doc: lhtml.HtmlElement, guideline: Guideline) -> None:
    first = text_of(doc, "row-line-first_line_steroids")
    assert "a first line" in first
    second = text_of(doc, "row-line-second_line_anakinra")
    assert "after " + guideline.states["first_line_steroids"].name in second
    assert "by line number" in second
    profile = load_guideline(PROFILE)
    pdoc = lhtml.document_fromstring(review_html(profile, TINY_SVG))
    anakinra = text_of(pdoc, "row-line-second_line_anakinra")
    assert "a first line" in anakinra
    assert "declared" in anakinra
    names = [profile.states[s].name for s in profile.line_after("salvage")]
    assert len(names) == 2
    assert f"after {names[0]} or {names[1]}" in text_of(pdoc, "row-line-salvage")
    assert "a first line" in text_of(pdoc, "detail-second_line_anakinra")


def test_finding_validity(doc: lhtml.HtmlElement, guideline: Guideline) -> None:
    rows = doc.xpath("//table[@id='findings-table']/tbody/tr")
    assert len(rows) == len(guideline.findings)
    fid, finding = next((k, f) for k, f in guideline.findings.items() if f.valid_hours)
    assert finding.valid_hours is not None
    text = text_of(doc, f"row-finding-{fid}")
    assert f"{guideline.param(finding.valid_hours):g} h" in text
    findings = dict(guideline.findings)
    findings[fid] = attrs.evolve(finding, valid_hours=None)
    page = review_html(attrs.evolve(guideline, findings=findings), TINY_SVG)
    row = text_of(lhtml.document_fromstring(page), f"row-finding-{fid}")
    assert "never expires" in row


def test_the_contract(doc: lhtml.HtmlElement, guideline: Guideline) -> None:
    from iechs.contract import contract_for

    contract = contract_for(guideline)
    assert doc.get_element_by_id("guideline-contract").text_content() == contract.id
    text = text_of(doc, "contract-ref")
    assert f"names the safety contract {guideline.guideline.contract}" in text
    assert contract.contract.title in text
    rows = doc.xpath("//table[@id='contract-table']/tbody/tr")
    assert len(rows) == len(contract.properties)


def test_verified_statements_show_their_quote(doc: lhtml.HtmlElement, guideline: Guideline) -> None:
    text = words(doc.text_content())
    quoted = [(p, item) for p, item in citables(guideline) if item.quote and item.verified]
    assert any(p.startswith("$.rules.") for p, _ in quoted)
    for path, item in quoted:
        assert item.quote is not None
        assert f"Source: “{words(item.quote)}”" in text, path
    # an unverified statement keeps its marking; a quote proposed for it is shown only where
    # the unverified statements are listed
    unverified = text_of(doc, "unverified")
    proposed = [(p, item) for p, item in citables(guideline) if item.quote and not item.verified]
    for path, item in proposed:
        assert item.quote is not None
        assert f"Proposed quote, not yet verified: “{words(item.quote)}”" in unverified, path
    assert text.count("Proposed quote") == len(proposed)


def test_a_rule_quote_appears_only_once_verified(guideline: Guideline) -> None:
    rules = dict(guideline.rules)
    rules["high_risk_patient"] = attrs.evolve(
        rules["high_risk_patient"], verified=True, quote="Some words of the source"
    )
    doc = lhtml.document_fromstring(review_html(attrs.evolve(guideline, rules=rules), TINY_SVG))
    row = text_of(doc, "row-rule-high_risk_patient")
    assert "Source: “Some words of the source”" in row
    assert "not yet verified" not in row
    rules["high_risk_patient"] = attrs.evolve(rules["high_risk_patient"], verified=False)
    doc = lhtml.document_fromstring(review_html(attrs.evolve(guideline, rules=rules), TINY_SVG))
    row = text_of(doc, "row-rule-high_risk_patient")
    assert "not yet verified" in row
    assert "Source: “" not in row


def test_unverified_rules_actions_and_indications_say_what_they_are(
    doc: lhtml.HtmlElement,
) -> None:
    rows = doc.xpath("//table[@id='unverified-table']/tbody/tr")
    kinds = ("$.rules.", "$.actions.", "$.indications[")
    mine = [r for r in rows if r.xpath("string(td[1])").startswith(kinds)]
    assert mine
    assert all(r.xpath("string(td[2])").strip() for r in mine)


PROFILE_WITH_A_RULE = """
profile: {extends: iec-hs.yaml, rationale: a rule and an action of a profile}
guideline: {id: test-profile, title: Test, version: 9.9.9}
rules:
  jak_started:
    alert: jak_started
    severity: info
    treatment: {class: [jak_inhibitor]}
    with: {class: [corticosteroid], hours: 6}
    message: "{drug} started within {$lab_validity_hours} h."
    cite: [seed-summary]
actions:
  look-again:
    code: measure
    in: [salvage]
    when: [icans_active]
    recommendation: ruxolitinib
    text: Look again.
    cite: [hines-2023]
"""


def test_a_profiles_rule_and_action_are_shown(guideline: Guideline) -> None:
    g = parse_guideline(PROFILE_WITH_A_RULE, "<test>", base_dir=ROOT / "guideline")
    doc = lhtml.document_fromstring(review_html(g, TINY_SVG, since=guideline))
    rule = text_of(doc, "row-rule-jak_started")
    assert "once per new therapy with a drug of class JAK inhibitor (jak_inhibitor)" in rule
    assert "with a dose of Corticosteroid (corticosteroid) within 6 h of it" in rule
    validity = guideline.parameters["lab_validity_hours"].value
    assert f"started within {validity:g} h." in rule
    action = text_of(doc, "row-action-look-again")
    assert "Look again." in action
    assert "icans_active" in action
    assert "(recommendation ruxolitinib)" in action
    assert "Look again." in text_of(doc, "detail-salvage")
    changes = text_of(doc, "changes-table")
    assert "rule jak_started" in changes
    assert "action look-again" in changes


def test_drug_classes_risk_factors_and_observations(
    doc: lhtml.HtmlElement, guideline: Guideline
) -> None:
    rows = doc.xpath("//table[@id='drug-classes-table']/tbody/tr")
    assert len(rows) == len(guideline.drug_classes)
    steroid = text_of(doc, "row-class-corticosteroid")
    assert "yes" in steroid
    assert "Dexamethasone" in steroid
    for rid, r in guideline.risk_factors.items():
        assert words(r.text) in text_of(doc, f"row-risk-{rid}")
    assert len(doc.xpath("//table[@id='observations-table']/tbody/tr")) == len(
        guideline.observations
    )
