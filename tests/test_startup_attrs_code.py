"""Start-up: the methods attrs writes for iechs's classes are compiled once and kept in the cache
(`iechs._attrs_code`), so a second start compiles none of them.

Each test runs Python in a subprocess (a class is made once per process) with a cache folder of
its own, and with a fixed `PYTHONHASHSEED` where a hash is compared between processes: attrs
mixes a per-process number into every `__hash__`, which the cache must not freeze."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import iechs

ROOT = Path(__file__).resolve().parents[1]
DAY14 = ROOT / "examples" / "day14-steroid-response.json"

# Fails the process as soon as attrs is asked to compile the methods of an iechs class itself.
_TRAP = """
from attr import _make
_own = _make._compile_and_eval
def _trap(script, globs, locs=None, filename=""):
    if "generated methods iechs." in filename or "generated getattr iechs." in filename:
        raise SystemExit(f"attrs compiled {filename} itself")
    _own(script, globs, locs, filename)
_make._compile_and_eval = _trap
"""


def python(code: str, cache: Path, *, seed: int = 0, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "IECHS_CACHE_DIR": str(cache),
            "PYTHONHASHSEED": str(seed),
            "IECHS_CACHE": "on",
            **env,
        },
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_second_start_compiles_none_of_the_classes(tmp_path: Path) -> None:
    """The second process, with another hash seed, builds every class of the run path from the
    cache: the per-process number in `__hash__` does not make each start a miss."""
    imports = "import iechs.engine, iechs.report, iechs.cli, iechs.audit.stores\n"
    python(imports, tmp_path, seed=1)
    entries = sorted(tmp_path.glob("*.code"))
    assert len(entries) > 40
    python(_TRAP + imports, tmp_path, seed=2)
    assert sorted(tmp_path.glob("*.code")) == entries  # nothing new was written


def test_every_module_makes_its_classes_through_the_cache(tmp_path: Path) -> None:
    """Whichever iechs module a program imports first, its attrs classes are made with the cache
    installed: each module is imported alone, afresh, with attrs refusing to compile an iechs
    class itself."""
    modules = sorted(
        m.name
        for m in __import__("pkgutil").walk_packages(iechs.__path__, "iechs.")
        if not m.name.endswith("__main__")
    )
    out = python(
        _TRAP
        + textwrap.dedent(
            f"""
        import importlib, sys
        made = 0
        for name in {modules!r}:
            for loaded in [m for m in sys.modules if m == "iechs" or m.startswith("iechs.")]:
                del sys.modules[loaded]
            _make._compile_and_eval = _trap  # as if iechs had never been imported
            module = importlib.import_module(name)
            made += sum(
                1 for v in vars(module).values()
                if isinstance(v, type) and v.__module__ == name and hasattr(v, "__attrs_attrs__")
            )
        print(made)
        """
        ),
        tmp_path,
    )
    assert int(out) > 100  # the loop did meet iechs's classes (some 140)


_BEHAVIOUR = """
import json, os, sys
import attrs
from attr import _make

attrs_own = _make._compile_and_eval


def afresh(installed):
    # iechs imported anew: its classes made again, by attrs itself or through the cache
    for name in [m for m in sys.modules if m == "iechs" or m.startswith("iechs.")]:
        del sys.modules[name]
    _make._compile_and_eval = attrs_own
    import iechs._attrs_code
    iechs._attrs_code._installed = not installed  # True: install() does nothing
    from iechs import load_guideline
    return load_guideline()


def behaviour(g):
    seen, out = set(), []
    def walk(x):
        if id(x) in seen:
            return
        seen.add(id(x))
        if attrs.has(type(x)):
            try:
                h = hash(x)
            except TypeError:  # holds a dict or a list: unhashable, as attrs makes it
                h = None
            out.append([type(x).__qualname__, h, repr(x), x == attrs.evolve(x)])
            for f in attrs.fields(type(x)):
                walk(getattr(x, f.name))
        elif isinstance(x, dict):
            for k, v in x.items():
                walk(k)
                walk(v)
        elif isinstance(x, (list, tuple, set, frozenset)):
            for v in x:
                walk(v)
    walk(g)
    return out


os.environ["IECHS_CACHE"] = "off"
own = behaviour(afresh(installed=False))
os.environ["IECHS_CACHE"] = "on"
miss = behaviour(afresh(installed=True))
hit = behaviour(afresh(installed=True))
print(json.dumps([own, miss, hit]))
"""


def test_classes_from_the_cache_behave_as_attrs_makes_them(tmp_path: Path) -> None:
    """The same hashes, reprs and equality for every object of a loaded guideline, whether
    attrs compiled the classes itself (the cache not installed), the cache compiled them (a
    miss) or the cache served them (a hit). One process: a hash of None differs between
    processes."""
    own, miss, hit = json.loads(python(_BEHAVIOUR, tmp_path))
    assert len(own) > 200
    assert sum(1 for _, h, _, _ in own if h is not None) > 50  # hashes were compared
    assert all(same for *_, same in own)
    assert miss == own
    assert hit == own
    assert len(list(tmp_path.glob("*.code"))) > 40  # the hit did read the cache


def test_the_cli_gives_the_same_bytes_with_the_classes_cached(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "iechs", "run", "--format", "json", str(DAY14)]
    env = {**os.environ, "IECHS_CACHE_DIR": str(tmp_path)}
    cold, warm = (
        subprocess.run(run, capture_output=True, check=True, env=env).stdout for _ in range(2)
    )
    off = subprocess.run(
        run, capture_output=True, check=True, env={**env, "IECHS_CACHE": "off"}
    ).stdout
    assert cold == warm == off
    assert len(list(tmp_path.glob("*.code"))) > 40


def test_other_classes_are_left_to_attrs(tmp_path: Path) -> None:
    """A program's own attrs classes, made after iechs is imported, are compiled by attrs and
    never written to iechs's cache."""
    python(
        """
        import iechs.engine, attrs
        from pathlib import Path
        import os
        before = sorted(Path(os.environ["IECHS_CACHE_DIR"]).glob("*.code"))
        @attrs.frozen
        class Mine:
            x: int
        assert hash(Mine(1)) == hash(Mine(1)) and Mine(1) != Mine(2)
        assert sorted(Path(os.environ["IECHS_CACHE_DIR"]).glob("*.code")) == before
        """,
        tmp_path,
    )


def test_another_attrs_is_left_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    """An attrs whose internals differ from those this was written for (here: another
    signature) compiles as it will: install() changes nothing."""
    from attr import _make

    from iechs import _attrs_code

    def other(script: str, globs: dict[str, object]) -> None:
        raise AssertionError("not called here")

    monkeypatch.setattr(_make, "_compile_and_eval", other)
    monkeypatch.setattr(_attrs_code, "_installed", False)
    _attrs_code.install()
    assert _make._compile_and_eval is other
