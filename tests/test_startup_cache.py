"""Start-up: the guideline cache (`iechs.cache`) and the lazy imports of the CLI.

Every test here has its own cache folder (`IECHS_CACHE_DIR` set by monkeypatch)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from iechs import Engine, Guideline, GuidelineError, load_guideline, loader, run_to_json
from iechs import cache as guideline_cache
from iechs.cli import COMMAND_HELP, EXTERNAL_COMMANDS, main
from iechs.timeline import load_timeline

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "guideline" / "iec-hs.yaml"
PROFILE = ROOT / "guideline" / "profiles" / "astct-2023.yaml"
DAY14 = ROOT / "examples" / "day14-steroid-response.json"


def entries(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.pickle")) if folder.is_dir() else []


def fresh(path: Path, monkeypatch: pytest.MonkeyPatch, *, structural: bool = True) -> Guideline:
    with monkeypatch.context() as mp:
        mp.setenv("IECHS_CACHE", "off")
        return load_guideline(path, structural=structural)


def no_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on a load must come from the cache: building one fails the test."""

    def refuse(*_: object, **__: object) -> Guideline:
        raise AssertionError("built, not taken from the cache")

    monkeypatch.setattr(loader, "parse_guideline", refuse)


def run_json(guideline: Guideline) -> str:
    engine = Engine(guideline)
    timeline = load_timeline(DAY14, guideline)
    episode = engine.run(timeline)
    doc = run_to_json(engine.identity, timeline.patient.id, episode.decisions)
    return json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False)


# --- a hit is a fresh load ---------------------------------------------------------------------


@pytest.mark.parametrize("structural", [True, False])
def test_a_hit_equals_a_fresh_load(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch, structural: bool
) -> None:
    built = load_guideline(BUNDLED, structural=structural)
    assert len(entries(cache_dir)) == 1
    expected = fresh(BUNDLED, monkeypatch, structural=structural)
    no_build(monkeypatch)
    hit = load_guideline(BUNDLED, structural=structural)
    assert hit is not built
    assert hit == built == expected
    assert hit.sha256 == expected.sha256
    assert hit.file == expected.file == str(BUNDLED)
    assert run_json(hit) == run_json(expected)


def test_a_profile_hit_equals_a_fresh_load(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_guideline(PROFILE)
    expected = fresh(PROFILE, monkeypatch)
    no_build(monkeypatch)
    hit = load_guideline(PROFILE)
    assert hit == expected
    assert hit.sha256 == expected.sha256
    assert run_json(hit) == run_json(expected)


def test_the_name_shown_is_part_of_the_key(cache_dir: Path) -> None:
    a = load_guideline(BUNDLED)
    b = load_guideline(BUNDLED, shown="other-name.yaml")
    assert (a.file, b.file) == (str(BUNDLED), "other-name.yaml")
    assert len(entries(cache_dir)) == 2


def test_the_cli_gives_the_same_output_with_and_without_the_cache(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def outputs() -> list[tuple[int, str, str]]:
        out = []
        for argv in (
            ["run", str(DAY14)],
            ["run", str(DAY14), "--format", "json"],
            ["validate", "--unverified"],
            ["validate", str(PROFILE)],
        ):
            code = main(argv)
            captured = capsys.readouterr()
            out.append((code, captured.out, captured.err))
        return out

    monkeypatch.setenv("IECHS_CACHE", "off")
    without = outputs()
    assert not cache_dir.exists()
    monkeypatch.delenv("IECHS_CACHE")
    cold = outputs()
    assert len(entries(cache_dir)) == 2  # the bundled guideline and the profile
    warm = outputs()
    assert without == cold == warm


# --- misses ------------------------------------------------------------------------------------


def test_one_changed_byte_misses(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "g.yaml"
    shutil.copy(BUNDLED, path)
    first = load_guideline(path)
    raw = path.read_bytes()
    at = raw.index(b"title: ") + len(b"title: ")
    path.write_bytes(raw[:at] + (b"X" if raw[at : at + 1] != b"X" else b"Y") + raw[at + 1 :])
    second = load_guideline(path)
    assert second != first
    assert second.sha256 != first.sha256
    assert second == fresh(path, monkeypatch)
    assert len(entries(cache_dir)) == 2


def test_a_changed_base_misses(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "profiles").mkdir()
    shutil.copy(BUNDLED, tmp_path / "iec-hs.yaml")
    profile = tmp_path / "profiles" / PROFILE.name
    shutil.copy(PROFILE, profile)
    first = load_guideline(profile)
    base = tmp_path / "iec-hs.yaml"
    base.write_text(
        base.read_text(encoding="utf-8").replace("  authors:", "  authors:\n    - Someone", 1),
        encoding="utf-8",
    )
    second = load_guideline(profile)
    assert second.guideline.authors != first.guideline.authors
    assert second == fresh(profile, monkeypatch)
    # a base that now breaks the profile: the error, not the old entry
    base.write_text(
        base.read_text(encoding="utf-8").replace("give_anakinra", "give_anakinra_x"),
        encoding="utf-8",
    )
    with pytest.raises(GuidelineError) as cached_error:
        load_guideline(profile)
    with pytest.raises(GuidelineError) as fresh_error:
        fresh(profile, monkeypatch)
    assert cached_error.value.render() == fresh_error.value.render()


def test_a_bad_file_is_never_cached_and_reports_as_without_the_cache(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(
        BUNDLED.read_text(encoding="utf-8").replace("to: suspected", "to: suspectd", 1),
        encoding="utf-8",
    )
    errors = []
    for _ in range(2):
        with pytest.raises(GuidelineError) as info:
            load_guideline(path)
        errors.append(info.value.render())
    with pytest.raises(GuidelineError) as without:
        fresh(path, monkeypatch)
    assert errors == [without.value.render()] * 2
    assert entries(cache_dir) == []
    path.write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(GuidelineError, match="not UTF-8"):
        load_guideline(path)
    assert entries(cache_dir) == []


def test_a_contract_named_by_path_is_not_cached(cache_dir: Path, tmp_path: Path) -> None:
    contract = ROOT / "src" / "iechs" / "contracts" / "iec-hs-safety.yaml"
    shutil.copy(contract, tmp_path / "my-contract.yaml")
    path = tmp_path / "g.yaml"
    path.write_text(
        BUNDLED.read_text(encoding="utf-8").replace(
            "contract: iec-hs-safety", "contract: my-contract.yaml", 1
        ),
        encoding="utf-8",
    )
    assert load_guideline(path).guideline.contract == "my-contract.yaml"
    assert entries(cache_dir) == []


def test_an_unchecked_load_is_not_cached(cache_dir: Path) -> None:
    load_guideline(BUNDLED, check=False)
    assert entries(cache_dir) == []


# --- corrupt, off, unwritable ------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[: len(b) // 2],  # truncated
        lambda b: b[:-1] + bytes([b[-1] ^ 1]),  # one bit of the payload
        lambda b: b"",  # empty
        lambda b: b"not an entry at all",
        lambda b: b[:30] + b"\0" * (len(b) - 30),  # the checksum no longer matches
    ],
)
def test_a_corrupt_entry_is_rebuilt_silently(
    cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    damage: object,
) -> None:
    expected = load_guideline(BUNDLED)
    (entry,) = entries(cache_dir)
    good = entry.read_bytes()
    entry.write_bytes(damage(good))  # type: ignore[operator]
    assert load_guideline(BUNDLED) == expected
    assert capsys.readouterr() == ("", "")
    assert entry.read_bytes() == good  # rebuilt
    no_build(monkeypatch)
    assert load_guideline(BUNDLED) == expected


def test_an_entry_of_another_key_or_type_is_a_miss(cache_dir: Path) -> None:
    expected = load_guideline(BUNDLED)
    (entry,) = entries(cache_dir)
    key = entry.stem
    for payload in (("0" * 64, (), expected), (key, (), "not a guideline"), (key,)):
        _write_entry(entry, payload)
        assert guideline_cache.read(key) is None
        assert load_guideline(BUNDLED) == expected


def test_off_writes_nothing(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for value in ("off", "OFF", "0", "false", "no"):
        monkeypatch.setenv("IECHS_CACHE", value)
        assert guideline_cache.cache_dir() is None
        load_guideline(BUNDLED)
        load_guideline(PROFILE)
        assert not cache_dir.exists()


def test_off_reads_nothing(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    load_guideline(BUNDLED)
    monkeypatch.setenv("IECHS_CACHE", "off")
    calls: list[str] = []
    monkeypatch.setattr(guideline_cache, "read", calls.append)
    load_guideline(BUNDLED)
    assert calls == []


def test_an_unwritable_cache_dir_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("", encoding="utf-8")
    monkeypatch.setenv("IECHS_CACHE_DIR", str(blocker / "cache"))  # cannot be created
    monkeypatch.delenv("IECHS_CACHE", raising=False)
    assert load_guideline(BUNDLED) == fresh(BUNDLED, monkeypatch)
    assert capsys.readouterr() == ("", "")


def test_the_default_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("IECHS_CACHE", raising=False)
    monkeypatch.delenv("IECHS_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert guideline_cache.cache_dir() == tmp_path / "xdg" / "iechs"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert guideline_cache.cache_dir() == tmp_path / ".cache" / "iechs"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert guideline_cache.cache_dir() == tmp_path / ".cache" / "iechs"
    monkeypatch.setenv("IECHS_CACHE_DIR", str(tmp_path / "mine"))
    assert guideline_cache.cache_dir() == tmp_path / "mine"


def test_old_entries_are_pruned(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guideline_cache, "MAX_ENTRIES", 2)
    for name in ("a.yaml", "b.yaml", "c.yaml"):
        load_guideline(BUNDLED, shown=name)
    assert len(entries(cache_dir)) == 2


# --- pickles are read only from a folder and a file of this user that no one else may write -----

#: Set by the booby-trapped entry when it is unpickled.
MARKER = "IECHS_TEST_UNPICKLED"


def _trap(marker: str) -> str:
    Path(marker).write_text("unpickled", encoding="utf-8")
    return "trap"


class Trap:
    """Unpickling it runs `_trap`: proof that an entry was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return _trap, (str(self.marker),)


def _write_entry(entry: Path, payload: object) -> None:
    import hashlib

    data = pickle.dumps(payload)
    entry.write_bytes(guideline_cache._MAGIC + hashlib.sha256(data).digest() + data)


def _trapped(cache_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """Replace the bundled guideline's entry by a trap (a well-formed entry)."""
    load_guideline(BUNDLED)
    (entry,) = entries(cache_dir)
    marker = tmp_path / "unpickled"
    _write_entry(entry, Trap(marker))
    return entry, marker


def test_the_trap_is_unpickled_from_a_trusted_entry(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the control: without the ownership and mode checks the trap runs (and is still a miss)
    entry, marker = _trapped(cache_dir, tmp_path)
    os.chmod(entry, 0o600)
    assert load_guideline(BUNDLED) == fresh(BUNDLED, monkeypatch)
    assert marker.exists()


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="no user ids: the cache is off")
@pytest.mark.parametrize("mode", [0o777, 0o770, 0o722, 0o720, 0o702])
def test_an_insecure_cache_dir_is_not_read(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: int
) -> None:
    entry, marker = _trapped(cache_dir, tmp_path)
    os.chmod(cache_dir, mode)
    try:
        assert load_guideline(BUNDLED) == fresh(BUNDLED, monkeypatch)
        assert not marker.exists()
        assert b"_trap" in entry.read_bytes()  # nor written over
    finally:
        os.chmod(cache_dir, 0o700)


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="no user ids: the cache is off")
@pytest.mark.parametrize("mode", [0o666, 0o620, 0o602])
def test_an_entry_others_may_write_is_not_read(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: int
) -> None:
    entry, marker = _trapped(cache_dir, tmp_path)
    os.chmod(entry, mode)
    assert load_guideline(BUNDLED) == fresh(BUNDLED, monkeypatch)
    assert not marker.exists()


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="no user ids: the cache is off")
def test_an_entry_of_another_user_is_not_read(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _entry, marker = _trapped(cache_dir, tmp_path)
    monkeypatch.setattr(os, "getuid", lambda: os.stat(cache_dir).st_uid + 1)
    assert load_guideline(BUNDLED) == fresh(BUNDLED, monkeypatch)
    assert not marker.exists()


@pytest.mark.skipif(not hasattr(os, "O_NOFOLLOW"), reason="no O_NOFOLLOW")
def test_a_symlinked_entry_is_not_read(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry, marker = _trapped(cache_dir, tmp_path)
    elsewhere = tmp_path / "elsewhere.pickle"
    entry.rename(elsewhere)
    entry.symlink_to(elsewhere)
    assert load_guideline(BUNDLED) == fresh(BUNDLED, monkeypatch)
    assert not marker.exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs")
def test_an_entry_that_is_not_a_regular_file_is_not_read(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = load_guideline(BUNDLED)
    (entry,) = entries(cache_dir)
    entry.unlink()
    os.mkfifo(entry)  # opening it for reading would wait for a writer
    assert load_guideline(BUNDLED) == expected
    assert entry.is_file()  # replaced by a fresh entry
    no_build(monkeypatch)
    assert load_guideline(BUNDLED) == expected


def test_the_cache_dir_is_private(cache_dir: Path) -> None:
    load_guideline(BUNDLED)
    assert cache_dir.stat().st_mode & 0o777 == 0o700
    (entry,) = entries(cache_dir)
    assert entry.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in cache_dir.iterdir()] == [entry.name]  # no temporary file left


# --- what the key holds -------------------------------------------------------------------------


def test_the_key_covers_the_code_that_builds_a_guideline(tmp_path: Path) -> None:
    # Every iechs module a build imports is one whose source is part of the key.
    code = (
        "import sys; from iechs.loader import load_guideline; "
        f"load_guideline({str(PROFILE)!r}); "
        "print(sorted(m for m in sys.modules if m.startswith('iechs')))"
    )
    env = {**os.environ, "IECHS_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("IECHS_CACHE", None)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    loaded = {m.removeprefix("iechs.") for m in json.loads(done.stdout.replace("'", '"'))}
    assert loaded - {"iechs"} <= set(guideline_cache.BUILD_MODULES)


def test_a_hit_imports_no_yaml_nor_checks_nor_other_commands(tmp_path: Path) -> None:
    code = (
        f"import sys; from iechs.cli import main; main(['run', {str(DAY14)!r}]); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('yaml', 'fhir') or m in "
        "('iechs.checks', 'iechs.contract', 'iechs.authoring', 'iechs.verify') "
        "or m.startswith(('iechs.diagram', 'iechs.service', 'iechs.audit', 'iechs.fhir'))))"
    )
    env = {**os.environ, "IECHS_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("IECHS_CACHE", None)
    runs = [
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
        ).stdout.splitlines()[-1]
        for _ in range(2)
    ]
    assert "'yaml'" in runs[0]  # a miss builds
    assert runs[1] == "[]"  # a hit does not


# --- the command line ---------------------------------------------------------------------------


def test_command_help_is_each_modules_help() -> None:
    import importlib

    assert set(COMMAND_HELP) == set(EXTERNAL_COMMANDS)
    for name, module in EXTERNAL_COMMANDS.items():
        assert COMMAND_HELP[name] == importlib.import_module(module).HELP, name


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = "".join(capsys.readouterr().out.split())  # argparse wraps the lines
    for name, text in COMMAND_HELP.items():
        assert name + "".join(text.split()) in out, name


@pytest.mark.parametrize("name", sorted(EXTERNAL_COMMANDS))
def test_a_commands_own_help_has_its_arguments(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from iechs.cli import _parser

    with pytest.raises(SystemExit):
        main([name, "--help"])
    lazy = capsys.readouterr().out
    with pytest.raises(SystemExit):
        _parser().parse_args([name, "--help"])
    assert lazy == capsys.readouterr().out


def test_run_imports_no_other_command(tmp_path: Path) -> None:
    code = (
        "import sys; from iechs.cli import main, EXTERNAL_COMMANDS; "
        f"main(['run', {str(DAY14)!r}, '--format', 'json']); "
        "print(sorted(m for m in EXTERNAL_COMMANDS.values() if m in sys.modules))"
    )
    env = {**os.environ, "IECHS_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert done.stdout.splitlines()[-1] == "[]"


# --- the chart class is built without `statemachine.io` ------------------------------------------


def _describe(chart: type) -> object:
    """Everything the engine and python-statemachine read of a chart class, in order."""
    states = [
        (
            s.id,
            s.name,
            s.value,
            s.initial,
            s.final,
            [
                (
                    str(t),
                    [target.id for target in t.targets],
                    t.internal,
                    t.initial,
                    t.is_self,
                    [str(e) for e in t.events],
                    [str(spec) for spec in t._specs],
                )
                for t in s.transitions
            ],
        )
        for s in chart.states  # type: ignore[attr-defined]
    ]
    events = [repr(e) for e in chart.events]  # type: ignore[attr-defined]
    attributes = {
        k: repr(v) if not hasattr(v, "__dict__") else type(v).__name__
        for k, v in vars(chart).items()
        if not k.startswith("__")
    }
    return chart.__name__, states, events, attributes


@pytest.mark.parametrize("path", [BUNDLED, PROFILE])
def test_the_chart_class_is_the_class_factorys(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from statemachine.io.class_factory import create_machine_class_from_definition

    from iechs import compiler

    guideline = load_guideline(path)
    ours = compiler.compile_guideline(guideline)
    with monkeypatch.context() as mp:
        mp.setattr(compiler, "_chart_class", create_machine_class_from_definition)
        theirs = compiler.compile_guideline(guideline)
        assert _describe(ours.chart) == _describe(theirs.chart)
        factory_run = run_json(guideline)
    assert run_json(guideline) == factory_run


def test_run_imports_no_statemachine_io(tmp_path: Path) -> None:
    code = (
        "import sys; from iechs.cli import main; "
        f"main(['run', {str(DAY14)!r}]); "
        "print(sorted(m for m in sys.modules if m.startswith('statemachine.io')))"
    )
    env = {**os.environ, "IECHS_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert done.stdout.splitlines()[-1] == "[]"


# --- the contract is read with libyaml, its errors as before -------------------------------------

CONTRACT = ROOT / "src" / "iechs" / "contracts" / "iec-hs-safety.yaml"


def test_a_contract_read_by_libyaml_is_the_pure_python_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import yaml

    from iechs import contract

    text = CONTRACT.read_text(encoding="utf-8")
    fast = contract.parse_contract(text, "c.yaml")
    with monkeypatch.context() as mp:
        mp.delattr(yaml, "CSafeLoader", raising=False)
        assert contract.parse_contract(text, "c.yaml") == fast


@pytest.mark.parametrize(
    "broken", ["roles: [\n", "a: 1\n\tb: 2\n", "a: b: c\n", "key: 'open\n", "- [x\n"]
)
def test_a_malformed_contract_is_reported_as_before(broken: str) -> None:
    import yaml

    from iechs import contract

    with pytest.raises(yaml.YAMLError) as pure:
        yaml.safe_load(broken)
    with pytest.raises(GuidelineError) as info:
        contract.parse_contract(broken, "c.yaml")
    assert info.value.render() == f"c.yaml: $: malformed YAML: {pure.value}"
