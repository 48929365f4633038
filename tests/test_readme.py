"""The README's Python examples run as doctests, so the documented API cannot drift."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest

import iechs

ROOT = Path(__file__).resolve().parents[1]


def test_readme_examples_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the examples use paths relative to the checkout
    result = doctest.testfile(str(ROOT / "README.md"), module_relative=False, verbose=False)
    assert result.attempted >= 8
    assert result.failed == 0


def test_package_docstring_example_runs() -> None:
    result = doctest.testmod(iechs, verbose=False)
    assert result.attempted >= 1
    assert result.failed == 0


def test_public_api_is_listed() -> None:
    exported = set(iechs.__all__)
    assert {
        "Engine",
        "Episode",
        "Decision",
        "load_guideline",
        "load_timeline",
        "IechsError",
    } <= exported
    for name in exported:
        assert hasattr(iechs, name), name
    assert exported == {*iechs._EXPORTS, "__version__"}  # lazy names and __all__ agree
