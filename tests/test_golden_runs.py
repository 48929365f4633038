"""Differential test: what the engine says stays byte-identical to the recorded bytes.

`tests/golden/runs.json` holds the sha256 of every decision (as `iechs run --format json`
writes it), of the saved episode and of its restored replay, for the examples and a seeded
synthetic cohort, run retrospectively and prospectively (with `advance` between events). It
was recorded before the engine learned to evaluate criteria without building explanations
and to build them only when a decision is rendered: a faster engine must say the same thing,
under both runtimes. Regenerate (`python tests/golden_runs.py`) only for an intended change of
what the engine says.
"""

from __future__ import annotations

import json

import pytest

from sibling import load

make = load("golden_runs")
GOLDEN = json.loads(make.OUT.read_text())


@pytest.mark.parametrize("runtime", ["table", "statechart"])
def test_decisions_stay_byte_identical(runtime: str) -> None:
    now = make.golden(runtime)
    assert sorted(now) == sorted(GOLDEN)
    changed = {
        name: sorted(k for k in now[name] if now[name][k] != GOLDEN[name][k]) for name in now
    }
    changed = {name: keys for name, keys in changed.items() if keys}
    assert not changed, f"decisions changed (course: outputs): {changed}"
