"""A headless Chromium for the review page: Debian's `chromium`, driven by Playwright.

Never `playwright install` (it downloads a browser build): the system's chromium is launched by
path. Used by `iechs review --screenshot` and by the browser tests.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import IechsError, Problem

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Playwright

__all__ = ["CHROMIUM_ARGS", "chromium_path", "launch", "screenshot"]

CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
VIEWPORT = {"width": 1440, "height": 1300}


def chromium_path() -> str | None:
    """The system's chromium: `$IECHS_CHROMIUM`, else `chromium` on PATH, else None."""
    explicit = os.environ.get("IECHS_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


def launch(p: Playwright) -> Browser:
    """Launch the system's chromium headless (raises `IechsError` when there is none)."""
    path = chromium_path()
    if path is None:
        raise IechsError(
            [Problem("chromium not found: install Debian's package (apt-get install chromium)")]
        )
    return p.chromium.launch(executable_path=path, args=list(CHROMIUM_ARGS))


def screenshot(html: Path, png: Path, state: str | None = None) -> None:
    """A screenshot of the review page `html`, with `state`'s details opened."""
    try:
        from playwright.sync_api import sync_playwright  # noqa: PLC0415 (a dev dependency)
    except ImportError:
        raise IechsError(
            [Problem("a screenshot needs Playwright: pip install -e '.[dev]'")]
        ) from None
    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
            page.goto(html.resolve().as_uri())
            if state is not None:
                page.click(f"#state-{state}")
                page.evaluate("window.scrollTo(0, 0)")  # the click scrolled the state into view
            png.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(png))
        finally:
            browser.close()
