"""Guard tests for the repository layout (DESIGN.md, "Layout")."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import statemachine

ROOT = Path(__file__).resolve().parents[1]
CONTENT_FOLDERS = ("guideline", "statemachine", "diagrams", "examples")


def test_statemachine_import_is_the_library() -> None:
    # A top-level `statemachine/` data folder must never shadow python-statemachine.
    origin = Path(statemachine.__file__).resolve()
    assert "site-packages" in origin.parts or "dist-packages" in origin.parts
    assert origin.parent != (ROOT / "statemachine").resolve()
    assert hasattr(statemachine, "StateChart")


@pytest.mark.parametrize("folder", CONTENT_FOLDERS)
def test_content_folders_hold_no_python(folder: str) -> None:
    base = ROOT / folder
    assert base.is_dir(), f"{folder}/ is part of the layout"
    offenders = sorted(str(p.relative_to(ROOT)) for p in base.rglob("*.py"))
    assert offenders == [], f"content folders hold data only: {offenders}"


def test_wheel_ships_the_default_guideline_and_examples(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("iechs-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "iechs/guideline/iec-hs.yaml" in names
    assert "iechs/py.typed" in names
    assert any(n.startswith("iechs/examples/") and n.endswith(".json") for n in names)
    shipped = zipfile.ZipFile(wheel).read("iechs/guideline/iec-hs.yaml")
    assert shipped == (ROOT / "guideline" / "iec-hs.yaml").read_bytes()
    # every card links to /review: the installed service serves the page the wheel ships
    review = zipfile.ZipFile(wheel).read("iechs/review.html")
    assert review == (ROOT / "diagrams" / "review.html").read_bytes()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), sorted(names)[-8:]
