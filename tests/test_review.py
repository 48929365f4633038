"""The review page, read as a document (the browser test clicks it: test_review_browser.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import html as lhtml

from iechs import Guideline, load_guideline
from iechs.checks import citables
from iechs.cli import main
from iechs.diagram.artefacts import review_page
from iechs.diagram.review import review_html, svg_for_html

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
