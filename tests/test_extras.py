"""The plain CLI works without any extra; a door whose extra is missing says what to install.

Each command runs in a fresh interpreter where the extras' modules cannot be imported (a
meta-path finder refuses them, as if `pip install iechs` had installed no extra).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXTRA_MODULES = (
    "fastapi",
    "uvicorn",
    "jwt",
    "psycopg",
    "pygraphviz",
    "plotly",
    "dask",
    "distributed",
    "pyarrow",
)

_BLOCKED_RUN = """
import importlib.abc, sys
BLOCKED = set(sys.argv[1].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Block())
import importlib.util
_find = importlib.util.find_spec
def find_spec(name, package=None):
    return None if name.split(".")[0] in BLOCKED else _find(name, package)
importlib.util.find_spec = find_spec
from iechs.cli import main
code = main(sys.argv[2:])
loaded = sorted(m for m in BLOCKED if m in sys.modules)
assert not loaded, loaded
sys.exit(code)
"""


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _BLOCKED_RUN, ",".join(EXTRA_MODULES), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )


@pytest.mark.parametrize(
    "args",
    [
        ("validate",),
        ("verify",),
        ("run", "examples/day14-steroid-response.json", "--format", "json"),
        ("run", "examples/fhir/day14-steroid-response.bundle.json"),
        ("demo",),
        ("report", "examples", "--format", "json"),
    ],
    ids=lambda a: a[0] if isinstance(a, tuple) else a,
)
def test_plain_cli_needs_no_extra(args: tuple[str, ...]) -> None:
    done = _run(*args)
    assert done.returncode == 0, done.stderr


def test_audit_log_on_sqlite_needs_no_extra(tmp_path: Path) -> None:
    store = str(tmp_path / "log.db")
    done = _run("run", "examples/day14-steroid-response.json", "--store", store)
    assert done.returncode == 0, done.stderr
    done = _run("audit", "verify", store)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (("serve", "--store", "x.db"), "service"),
        (("diagram", "--format", "svg", "--out", "{tmp}/d.svg"), "diagrams"),
        (("audit", "verify", "postgresql://nobody@127.0.0.1:1/none"), "postgres"),
        (("report", "examples", "--html", "{tmp}/r.html"), "report"),
    ],
    ids=lambda a: a[0] if isinstance(a, tuple) else a,
)
def test_missing_extra_says_what_to_install(
    tmp_path: Path, args: tuple[str, ...], extra: str
) -> None:
    done = _run(*(a.replace("{tmp}", str(tmp_path)) for a in args))
    assert done.returncode == 2, done.stderr
    assert f"pip install 'iechs[{extra}]'" in done.stderr
    assert "Traceback" not in done.stderr
