"""The review page in a real headless browser: Debian's chromium driven by Playwright.

Outside CI a missing chromium or Playwright skips these tests with the reason; in CI (`CI` set)
it fails them: `make test` installs chromium when it runs as root.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from iechs import Guideline, load_guideline
from iechs.diagram.artefacts import review_page

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

ROOT = Path(__file__).resolve().parents[1]


class Loaded:
    """A page opened from a file, with what it logged and fetched."""

    def __init__(self, browser: Browser, path: Path) -> None:
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page: Page = browser.new_page(viewport={"width": 1440, "height": 1000})
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.url = path.resolve().as_uri()
        self.page.goto(self.url)


@pytest.fixture
def review(browser: Browser, guideline: Guideline, tmp_path: Path) -> Iterator[Loaded]:
    path = tmp_path / "review.html"
    path.write_bytes(review_page(guideline))
    loaded = Loaded(browser, path)
    yield loaded
    loaded.page.close()


def test_loads_without_errors_or_outside_requests(review: Loaded) -> None:
    assert review.errors == []
    assert review.requests == [review.url]  # the page itself, nothing else


def test_the_diagram_is_there(review: Loaded, guideline: Guideline) -> None:
    nodes = review.page.locator("#diagram svg g.node")
    assert nodes.count() == len(guideline.states)
    edges = review.page.locator("#diagram svg g.edge")
    assert edges.count() == sum(len(s.transitions) for s in guideline.states.values())
    box = review.page.locator("#diagram svg").bounding_box()
    assert box is not None
    assert box["width"] > 500
    assert box["height"] > 500
    assert review.page.locator("#state-first_line_steroids").is_visible()


def test_clicking_a_state_shows_its_citations(review: Loaded, guideline: Guideline) -> None:
    page = review.page
    detail = page.locator("#detail-first_line_steroids")
    assert detail.is_hidden()
    page.click("#state-first_line_steroids")
    assert detail.is_visible()
    text = detail.inner_text()
    for item in guideline.states["first_line_steroids"].recommendations:
        for key in item.cite:
            assert key in text
    assert guideline.sources["hines-2023"].citation in text
    assert "Dexamethasone 10–20 mg IV, every 6 h, adults" in text
    assert "IL-6 blockade is not recommended as monotherapy" in text
    assert "selected" in (page.get_attribute("#state-first_line_steroids", "class") or "")
    assert page.locator("#details-empty").is_hidden()
    # another state replaces it
    page.click("#state-suspected")
    assert detail.is_hidden()
    assert page.locator("#detail-suspected").is_visible()
    assert "hayden-2017" in page.locator("#detail-suspected").inner_text()
    assert review.errors == []


def test_keyboard_and_buttons_open_a_state(review: Loaded) -> None:
    page = review.page
    page.focus("#state-salvage")
    page.keyboard.press("Enter")
    assert page.locator("#detail-salvage").is_visible()
    page.click("button[data-state='resolved']")
    assert page.locator("#detail-resolved").is_visible()
    assert page.locator("#detail-salvage").is_hidden()


def test_profile_page_shows_what_changed(
    browser: Browser, guideline: Guideline, tmp_path: Path
) -> None:
    profile = load_guideline(ROOT / "guideline" / "profiles" / "astct-2023.yaml")
    path = tmp_path / "profile.html"
    path.write_bytes(review_page(profile, since=guideline))
    loaded = Loaded(browser, path)
    try:
        assert loaded.errors == []
        changes = loaded.page.locator("#changes-table tbody tr")
        assert changes.count() > 5
        assert loaded.page.locator("#changes").is_visible()
    finally:
        loaded.page.close()


def test_screenshot(review: Loaded, tmp_path: Path) -> None:
    review.page.click("#state-first_line_steroids")
    png = tmp_path / "review.png"
    review.page.screenshot(path=str(png))
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG")
    width = int.from_bytes(data[16:20], "big")
    assert width == 1440


def test_actions_and_rules_sections_are_visible(review: Loaded, guideline: Guideline) -> None:
    page = review.page
    for section, table, count in (
        ("#actions", "#actions-table", len(guideline.actions)),
        ("#rules", "#rules-table", len(guideline.rules)),
        ("#indications", "#indications-table", len(guideline.indications)),
        ("#lines", "#lines-table", None),
    ):
        page.locator(section).scroll_into_view_if_needed()
        assert page.locator(section).is_visible(), section
        rows = page.locator(f"{table} tbody tr")
        if count is not None:
            assert rows.count() == count > 0, table
        assert rows.first.is_visible(), table
    rule = page.locator("#row-rule-il6_monotherapy")
    assert rule.is_visible()
    assert "critical" in rule.inner_text()
    assert page.locator("#order-set-sequence").is_visible()
    assert review.errors == []


def test_a_state_shows_its_actions_and_a_state_link_opens_it(
    review: Loaded, guideline: Guideline
) -> None:
    page = review.page
    page.click("#state-first_line_steroids")
    detail = page.locator("#detail-first_line_steroids")
    text = " ".join(detail.inner_text().split())
    assert "ACTIONS (IN THIS ORDER)" in text.upper()
    for a in guideline.actions.values():
        if "first_line_steroids" in a.states:
            assert " ".join(a.text.split()) in text
    # a state named in the actions table opens that state's details
    aid = next(k for k, a in guideline.actions.items() if "salvage" in a.states)
    page.locator(f"#row-action-{aid} a[data-show='salvage']").click()
    assert page.locator("#detail-salvage").is_visible()
    assert detail.is_hidden()
    assert review.errors == []
