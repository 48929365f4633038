"""Shared fixtures. Hypothesis: fast profile by default, thorough when CI is set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from iechs import Engine, Guideline, load_guideline

settings.register_profile("fast", max_examples=60, deadline=None)
settings.register_profile(
    "ci", max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci" if os.environ.get("CI") else "fast")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="session")
def guideline() -> Guideline:
    return load_guideline(ROOT / "guideline" / "iec-hs.yaml")


@pytest.fixture(scope="session")
def engine(guideline: Guideline) -> Engine:
    return Engine(guideline)
