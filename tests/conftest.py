"""Shared fixtures. Hypothesis: fast profile by default, thorough when CI is set."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, settings

from iechs import Engine, Guideline, load_guideline

if TYPE_CHECKING:
    from playwright.sync_api import Browser

# The guideline cache (iechs.cache) of the whole run, and of the CLI subprocesses it starts, is a
# temporary folder: never the user's ~/.cache. Set before any test module loads a guideline.
_CACHE_DIR = tempfile.mkdtemp(prefix="iechs-test-cache-")
os.environ["IECHS_CACHE_DIR"] = _CACHE_DIR
atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)

settings.register_profile("fast", max_examples=60, deadline=None)
settings.register_profile(
    "ci", max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci" if os.environ.get("CI") else "fast")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache folder of the test's own (`IECHS_CACHE_DIR`), with the cache switched on."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("IECHS_CACHE_DIR", str(folder))
    monkeypatch.delenv("IECHS_CACHE", raising=False)
    return folder


@pytest.fixture(scope="session")
def guideline() -> Guideline:
    return load_guideline(ROOT / "guideline" / "iec-hs.yaml")


@pytest.fixture(scope="session")
def engine(guideline: Guideline) -> Engine:
    return Engine(guideline)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run the browser test)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's chromium driven by Playwright (never `playwright install`). Outside CI a missing
    chromium or Playwright skips the test with the reason; in CI it fails it."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright is not installed: pip install -e '.[dev]'")
    from iechs.diagram.browser import chromium_path, launch

    if chromium_path() is None:
        _unavailable("chromium is not installed: apt-get install -y chromium")
    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()
