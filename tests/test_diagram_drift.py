"""Drift check: every committed artefact in `diagrams/` and `statemachine/` is what a fresh
render of the guideline gives, byte for byte. Regenerate with `make diagrams`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from iechs.diagram.artefacts import NOT_DRIFT_CHECKED, SCREENSHOT, TARGETS, build, drift

ROOT = Path(__file__).resolve().parents[1]
HOW = (
    "regenerate with `make diagrams` (renders need the bundled Graphviz of pygraphviz==2.0.4 and "
    "the DejaVu Sans font, Debian's fonts-dejavu-core)"
)


@pytest.fixture(scope="module")
def fresh() -> dict[str, bytes]:
    return build(ROOT)


def test_committed_artefacts_match_a_fresh_render(fresh: dict[str, bytes]) -> None:
    problems = drift(ROOT, fresh)
    assert not problems, "drift in generated files:\n  " + "\n  ".join(problems) + f"\n{HOW}"


def test_every_target_is_generated(fresh: dict[str, bytes]) -> None:
    for target in TARGETS:
        assert f"{target.diagrams}/review.html" in fresh
        assert any(p.startswith(target.machine + "/") and p.endswith(".scxml") for p in fresh)
        assert any(p.startswith(target.diagrams + "/") and p.endswith(".png") for p in fresh)
    assert SCREENSHOT in NOT_DRIFT_CHECKED
    assert SCREENSHOT not in fresh


def _checkout_copy(tmp_path: Path, fresh: dict[str, bytes]) -> Path:
    for folder in ("guideline", "examples"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    for rel, data in fresh.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    return tmp_path


def test_drift_names_the_file(tmp_path: Path, fresh: dict[str, bytes]) -> None:
    root = _checkout_copy(tmp_path, fresh)
    assert drift(root, fresh) == []
    (root / "diagrams/iec-hs.svg").write_bytes(fresh["diagrams/iec-hs.svg"] + b"\n")
    (root / "statemachine/iec-hs.json").unlink()
    (root / "statemachine/old.scxml").write_text("<scxml/>")
    (root / SCREENSHOT).write_bytes(b"any screenshot is fine")
    assert drift(root, fresh) == [
        "diagrams/iec-hs.svg: differs from a fresh render",
        "statemachine/iec-hs.json: missing",
        "statemachine/old.scxml: not generated any more (stale)",
    ]


def test_a_guideline_edit_is_drift(tmp_path: Path, fresh: dict[str, bytes]) -> None:
    root = _checkout_copy(tmp_path, fresh)
    path = root / "guideline/iec-hs.yaml"
    path.write_text(path.read_text(encoding="utf-8") + "\n# an edit\n", "utf-8")
    changed = {line.split(":", 1)[0] for line in drift(root)}
    assert "diagrams/iec-hs.svg" in changed
    assert "diagrams/iec-hs.png" in changed
    assert "diagrams/review.html" in changed
    assert "statemachine/iec-hs.scxml" in changed  # the guideline's hash is in its metadata
    # the profile extends the guideline: its hash, and so its exports, change too
    assert any(p.startswith("statemachine/profiles/") for p in changed)


def test_the_check_command_with_another_hash_seed() -> None:
    """The same bytes from a fresh process whose hash seed differs (no set-order leaks)."""
    result = subprocess.run(
        [sys.executable, "-m", "iechs.diagram.artefacts", "--check", "--root", str(ROOT)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr + HOW
