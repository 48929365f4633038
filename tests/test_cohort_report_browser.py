"""The cohort report in a real headless browser: Debian's chromium driven by Playwright.

The page of `fixtures/cohort-report/results.jsonl` (see `test_cohort_report.py` for its
numbers) renders its Sankey and charts from the inlined plotly.js, logs no error and requests
nothing beyond the file itself. Outside CI a missing chromium or Playwright skips these tests
with the reason; in CI (`CI` set) it fails them, as `test_review_browser.py` does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from iechs.cli import main

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "tests" / "fixtures" / "cohort-report" / "results.jsonl"


class Loaded:
    """A page opened from a file, with what it logged and fetched.

    Every request is routed: a `file://` one goes on, any other is recorded and aborted, so the
    test never reaches the network even if the page tried."""

    def __init__(self, browser: Browser, path: Path) -> None:
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page: Page = browser.new_page(viewport={"width": 1440, "height": 1000})
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.route(
            "**/*",
            lambda route: (
                route.continue_() if route.request.url.startswith("file://") else route.abort()
            ),
        )
        self.url = path.resolve().as_uri()
        self.page.goto(self.url)
        self.page.wait_for_selector("#chart-flow path.sankey-link")


@pytest.fixture(scope="module")
def page_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("report") / "report.html"
    assert main(["report", str(RESULTS), "--html", str(path)]) == 0
    return path


@pytest.fixture
def report(browser: Browser, page_file: Path) -> Iterator[Loaded]:
    loaded = Loaded(browser, page_file)
    yield loaded
    loaded.page.close()


def test_loads_without_errors_or_outside_requests(report: Loaded) -> None:
    report.page.wait_for_timeout(300)  # let anything late (fonts, images) ask
    assert report.errors == []
    assert report.requests == [report.url]  # the page itself, nothing else


def test_the_sankey_and_charts_are_drawn(report: Loaded) -> None:
    page = report.page
    assert page.locator(".js-plotly-plot").count() == 5
    # Sankey: the 8 transitions of the fixture between the 6 states entered
    links = page.locator("#chart-flow path.sankey-link")
    assert links.count() == 8
    assert (links.first.get_attribute("d") or "").startswith("M")
    assert page.locator("#chart-flow g.sankey-node").count() == 6
    assert "surveillance (5)" in page.locator("#chart-flow").inner_text()
    box = page.locator("#chart-flow .main-svg").first.bounding_box()
    assert box is not None
    assert box["width"] > 800
    assert box["height"] > 300
    # time to first line: 12 bins of 2 h; time on line: boxes for the 2 lines with data
    assert page.locator("#chart-first-line .barlayer .point path").count() == 12
    assert "median 6 h (IQR 4–15.5)" in page.locator("#chart-first-line").inner_text()
    assert page.locator("#chart-time-on-line .boxlayer path.box").count() == 2
    # alerts: 4 codes over 3 weeks; deviations: 2 codes
    assert page.locator("#chart-alerts .barlayer .trace").count() == 4
    assert page.locator("#chart-alerts .point path").count() == 12
    assert page.locator("#chart-deviations .legend .traces").count() == 2
    assert report.errors == []


def test_a_path_in_the_table_opens_the_patients_diagram(report: Loaded) -> None:
    page = report.page
    row = page.locator("#patients-table tbody tr").nth(3)
    assert "surveillance → suspected → surveillance → closed" in row.inner_text()
    row.locator("a").click()
    assert page.url.endswith("#patient-4")
    diagram = page.locator("#patient-4-path")
    assert diagram.is_visible()
    assert diagram.locator("g.state").count() == 4
    assert page.locator("#patient-4").evaluate("e => e.matches(':target')")
    assert "not followed: start_corticosteroid" in page.locator("#patient-4").inner_text()


def test_screenshot(report: Loaded, tmp_path: Path) -> None:
    png = tmp_path / "report.png"
    report.page.screenshot(path=str(png))
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG")
    assert int.from_bytes(data[16:20], "big") == 1440
