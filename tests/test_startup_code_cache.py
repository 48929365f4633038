"""Start-up: compiled code kept in the cache (`iechs.cache.code`): the criteria iechs writes
out as Python source (`iechs.criteria_codegen`) are compiled once, not at every start.

Every test here has its own cache folder (`IECHS_CACHE_DIR` set by monkeypatch)."""

from __future__ import annotations

import builtins
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from iechs import cache

ROOT = Path(__file__).resolve().parents[1]
DAY14 = ROOT / "examples" / "day14-steroid-response.json"
SOURCE = "def f(x):\n    return [x, x * 2, 'text', (1, 2.5)]\n"


def code_entries(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.code")) if folder.is_dir() else []


def run(code: Any) -> Any:
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    return namespace["f"](3)


def no_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on the code must come from the cache: compiling fails the test."""

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("compiled, not taken from the cache")

    monkeypatch.setattr(builtins, "compile", refuse)


def test_a_miss_compiles_and_keeps_a_hit_reads(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = cache.code(SOURCE, "<test>")
    assert first == compile(SOURCE, "<test>", "exec")
    (entry,) = code_entries(cache_dir)
    assert entry.stat().st_mode & 0o777 == 0o600
    no_compile(monkeypatch)
    again = cache.code(SOURCE, "<test>")
    assert again == first
    assert run(again) == [3, 6, "text", (1, 2.5)]


def test_the_key_holds_the_source_and_the_name(cache_dir: Path) -> None:
    cache.code(SOURCE, "<test>")
    cache.code(SOURCE, "<other>")
    cache.code(SOURCE.replace("2.5", "3.5"), "<test>")
    assert len(code_entries(cache_dir)) == 3
    assert run(cache.code(SOURCE.replace("2.5", "3.5"), "<test>")) == [3, 6, "text", (1, 3.5)]
    assert cache.code(SOURCE, "<other>").co_filename == "<other>"


def test_the_key_holds_the_python_version(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache.code(SOURCE, "<test>")
    monkeypatch.setattr(sys, "version", sys.version + " (another build)")
    cache.code(SOURCE, "<test>")
    assert len(code_entries(cache_dir)) == 2


def test_the_cache_off_keeps_nothing(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IECHS_CACHE", "off")
    assert run(cache.code(SOURCE, "<test>")) == [3, 6, "text", (1, 2.5)]
    assert not cache_dir.exists()


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[:-1] + bytes([data[-1] ^ 1]),  # a changed byte: the checksum
        lambda data: data[: len(data) // 2],  # truncated
        lambda data: b"iechs-guideline-cache 1\n" + data[len(b"iechs-code-cache 1\n") :],
    ],
    ids=["changed", "truncated", "another-kind"],
)
def test_a_damaged_entry_is_a_miss(cache_dir: Path, damage: Any) -> None:
    cache.code(SOURCE, "<test>")
    (entry,) = code_entries(cache_dir)
    entry.write_bytes(damage(entry.read_bytes()))
    assert run(cache.code(SOURCE, "<test>")) == [3, 6, "text", (1, 2.5)]
    assert cache._read_entry(entry, cache._CODE_MAGIC) is not None  # written afresh


def test_an_entry_others_may_write_is_not_read(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache.code(SOURCE, "<test>")
    (entry,) = code_entries(cache_dir)
    entry.chmod(0o620)
    calls: list[tuple[Any, ...]] = []
    real = builtins.compile

    def counted(*a: Any, **k: Any) -> Any:
        calls.append(a)
        return real(*a, **k)

    monkeypatch.setattr(builtins, "compile", counted)
    cache.code(SOURCE, "<test>")
    assert len(calls) == 1  # compiled again


def test_a_code_entry_that_is_no_code_is_a_miss(cache_dir: Path) -> None:
    import hashlib
    import marshal

    cache.code(SOURCE, "<test>")
    (entry,) = code_entries(cache_dir)
    payload = marshal.dumps(("not", "code"))
    entry.write_bytes(cache._CODE_MAGIC + hashlib.sha256(payload).digest() + payload)
    assert run(cache.code(SOURCE, "<test>")) == [3, 6, "text", (1, 2.5)]


def test_code_entries_are_pruned_apart_from_guidelines(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from iechs import load_guideline

    load_guideline()
    (guideline_entry,) = cache_dir.glob("*.pickle")
    monkeypatch.setattr(cache, "MAX_CODE_ENTRIES", 3)
    for i in range(5):
        cache.code(SOURCE + f"# {i}\n", "<test>")
    assert len(code_entries(cache_dir)) == 3
    assert guideline_entry.exists()


def test_what_a_killed_writer_left_is_removed_after_an_hour(cache_dir: Path) -> None:
    """A temporary file (a writer killed between writing and renaming) is removed by a later
    write once it is an hour old; a younger one may be a writer at work, and is left."""
    cache.code(SOURCE, "<test>")
    old, young = cache_dir / ".tmp-old.code", cache_dir / ".tmp-young.code"
    for path in (old, young):
        path.write_bytes(b"half an entry")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    cache.code(SOURCE + "# another\n", "<test>")
    assert not old.exists()
    assert young.exists()
    assert len([p for p in code_entries(cache_dir) if not p.name.startswith(".")]) == 2


def test_an_engine_decides_alike_with_the_cache_and_without(cache_dir: Path) -> None:
    # The same decisions from a fresh cache, from a filled one, and with the cache off.
    code = textwrap.dedent(
        f"""
        import json
        from iechs import Engine, load_guideline, run_to_json
        from iechs.timeline import load_timeline
        g = load_guideline()
        e = Engine(g)
        t = load_timeline({str(DAY14)!r}, g)
        print(json.dumps(run_to_json(e.identity, t.patient.id, e.run(t).decisions)))
        """
    )
    env = {**os.environ, "IECHS_CACHE_DIR": str(cache_dir)}
    runs = [
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
        ).stdout
        for _ in range(2)
    ]
    off = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**env, "IECHS_CACHE": "off"},
    ).stdout
    assert runs[0] == runs[1] == off
