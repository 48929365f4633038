"""`iechs replay-cohort --executor dask` and `--out *.parquet`: the same results, byte for byte.

A Dask LocalCluster (real worker processes, spawned, talking over TCP) stands in for a remote
cluster; most tests reuse one through `--scheduler`, two make their own through `--workers`.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iechs.cli import main
from iechs.synthetic import synthetic_cohort

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
PROFILE = ROOT / "guideline" / "profiles" / "astct-2023.yaml"
PATIENTS = 200
#: the cohort's bad lines (1-based line numbers): not JSON, and a timeline with no time zone.
BAD_LINES = {3: "{not json", 150: '{"patient": {"id": "X", "infusion_at": "2026-01-01T00:00:00"}}'}


def replay(source: Path, out: Path, *options: str) -> int:
    return main(["replay-cohort", str(source), "--out", str(out), "--no-progress", *options])


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 synthetic patients (seed 11) and two bad lines among them."""
    lines = []
    for doc in synthetic_cohort(PATIENTS, seed=11):
        doc.pop("course")
        lines.append(json.dumps(doc, sort_keys=True, separators=(",", ":")))
    for number, bad in sorted(BAD_LINES.items()):
        lines.insert(number - 1, bad)
    path = tmp_path_factory.mktemp("cohort") / "cohort.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def local(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The local executor's results: the reference."""
    out = tmp_path_factory.mktemp("local") / "results.jsonl"
    assert replay(cohort, out, "--workers", "2") == 2  # the bad lines
    return out.read_bytes()


def local_cluster(workers: int) -> Any:
    """A `distributed.LocalCluster` of worker processes as the README starts them: one thread
    each, Dask's profiler off (0 workers: a bare scheduler)."""
    import dask
    import distributed

    make: Any = distributed.LocalCluster  # untyped
    with (
        warnings.catch_warnings(),  # 8787 taken by another cluster: a free port it is
        dask.config.set({"distributed.worker.profile.enabled": False}),
    ):
        warnings.filterwarnings("ignore", "Port .* is already in use")
        return make(
            n_workers=workers,
            threads_per_worker=1,
            processes=workers > 0,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    """The address of a running two-worker cluster, as a remote one would be given."""
    with local_cluster(2) as cluster:
        yield str(cluster.scheduler_address)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_local_cluster_writes_the_local_bytes(
    cohort: Path,
    local: bytes,
    workers: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "dask.jsonl"
    options = ("--executor", "dask", "--workers", workers, "--partition-size", "16")
    assert replay(cohort, out, *options) == 2
    assert out.read_bytes() == local
    assert (
        f"{PATIENTS + 2} replayed, 0 already in {out}, 2 with bad input" in capsys.readouterr().err
    )


def test_bad_lines_are_the_same_error_lines(cohort: Path, local: bytes) -> None:
    rows = [json.loads(line) for line in local.splitlines()]
    errors = {r["source"]: r["error"] for r in rows if "error" in r}
    assert errors.keys() == {f"cohort.jsonl:{n}" for n in BAD_LINES}
    assert errors["cohort.jsonl:3"].startswith("cohort.jsonl:3: $: not valid JSON")
    assert "has no time zone" in errors["cohort.jsonl:150"]
    assert [r["source"] for r in rows] == [f"cohort.jsonl:{n}" for n in range(1, PATIENTS + 3)]


def test_the_examples_folder_on_a_running_scheduler(tmp_path: Path, scheduler: str) -> None:
    assert replay(EXAMPLES, tmp_path / "local.jsonl", "--workers", "1") == 0
    dask = ("--executor", "dask", "--scheduler", scheduler)
    assert replay(EXAMPLES, tmp_path / "dask.jsonl", *dask) == 0
    assert (tmp_path / "dask.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()
    assert len((tmp_path / "dask.jsonl").read_bytes().splitlines()) == len(
        list(EXAMPLES.glob("*.json"))
    )


def test_a_profile_replays_alike_on_the_cluster(
    cohort: Path, tmp_path: Path, scheduler: str
) -> None:
    small = tmp_path / "small.jsonl"
    small.write_bytes(b"".join(cohort.read_bytes().splitlines(keepends=True)[:40]))
    profile = ("--guideline", str(PROFILE))
    assert replay(small, tmp_path / "local.jsonl", "--workers", "1", *profile) == 2
    dask = ("--executor", "dask", "--scheduler", scheduler, "--partition-size", "7")
    assert replay(small, tmp_path / "dask.jsonl", *dask, *profile) == 2
    assert (tmp_path / "dask.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()


def test_a_worker_needs_no_guideline_file(cohort: Path, tmp_path: Path) -> None:
    """The worker side reads no file: the profile and its base are deleted before it runs."""
    from iechs import cohort_dask
    from iechs.cohort import iter_cohort, replay_with
    from iechs.engine import Engine
    from iechs.loader import load_guideline

    copy = tmp_path / "guideline"
    shutil.copytree(ROOT / "guideline", copy, ignore=shutil.ignore_patterns("sources"))
    guideline = load_guideline(copy / "profiles" / PROFILE.name)
    shipment = cohort_dask.ship(guideline, "table")
    shutil.rmtree(copy)
    items = list(iter_cohort(cohort))[:30]
    cohort_dask._ENGINES.clear()
    assert cohort_dask.replay_partition(shipment, items) == [
        replay_with(Engine(guideline, runtime="table"), item) for item in items
    ]
    engine = cohort_dask._engine_for(shipment)
    assert engine.guideline == guideline
    assert cohort_dask._engine_for(shipment) is engine  # built once per process


def test_a_worker_of_another_version_refuses(cohort: Path) -> None:
    from dataclasses import replace

    from iechs import cohort_dask
    from iechs.loader import load_guideline

    shipment = replace(cohort_dask.ship(load_guideline(), "table"), version="0.0.0-other")
    with pytest.raises(cohort_dask.WorkerMismatchError, match=r"the client 0\.0\.0-other"):
        cohort_dask.replay_partition(shipment, [("x", "{}")])


def test_workers_of_another_version_are_refused_before_any_task(
    cohort: Path,
    tmp_path: Path,
    scheduler: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import iechs._version

    monkeypatch.setattr(iechs._version, "__version__", "9.9.9")
    out = tmp_path / "r.jsonl"
    assert replay(cohort, out, "--executor", "dask", "--scheduler", scheduler) == 2
    err = capsys.readouterr().err
    assert f"iechs replay-cohort: {scheduler}: --scheduler: worker tcp://" in err
    assert "has iechs 0.1.0, this client 9.9.9" in err
    assert out.read_bytes() == b""


def test_resume_under_dask(cohort: Path, local: bytes, tmp_path: Path, scheduler: str) -> None:
    lines = local.splitlines(keepends=True)
    part = tmp_path / "part.jsonl"
    part.write_bytes(b"".join(lines[:90]) + lines[90][:40])  # killed in the middle of line 91
    options = ("--executor", "dask", "--scheduler", scheduler, "--partition-size", "32")
    assert replay(cohort, part, *options) == 2  # a bad line is among those left
    assert part.read_bytes() == local
    assert replay(cohort, part, *options) == 0  # nothing left to do
    assert part.read_bytes() == local


def replay_killing_a_worker(cluster: Any, source: Path, out: Path) -> tuple[int, int]:
    """Replay on `cluster`, killing one of its workers once 32 results are written and the
    worker is running a partition: the exit code, and how many results were written then."""
    import os
    import signal
    import threading

    import distributed

    make_client: Any = distributed.Client
    with make_client(cluster, set_as_default=False) as client:
        address, victim = sorted(client.run(os.getpid).items())[0]
    killed_after: list[int] = []

    def kill_when_started() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            written = len(out.read_bytes().splitlines()) if out.exists() else 0
            worker = cluster.scheduler.workers.get(address)  # the scheduler runs in this process
            if written >= 32 and worker is not None and worker.processing:
                os.kill(victim, signal.SIGKILL)
                killed_after.append(written)
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_when_started)
    killer.start()
    options = ("--executor", "dask", "--scheduler", cluster.scheduler_address)
    code = replay(source, out, *options, "--partition-size", "16")
    killer.join()
    assert killed_after
    return code, killed_after[0]


def test_a_worker_lost_mid_run_changes_nothing(cohort: Path, local: bytes, tmp_path: Path) -> None:
    """Its partitions run again elsewhere (the guideline too, if need be)."""
    out = tmp_path / "dask.jsonl"
    with local_cluster(2) as cluster:
        code, killed_after = replay_killing_a_worker(cluster, cohort, out)
    assert code == 2  # the bad lines
    assert killed_after < PATIENTS  # the run was far from over
    assert out.read_bytes() == local


def test_a_partition_that_kills_its_workers_stops_the_run_resumably(
    cohort: Path, local: bytes, tmp_path: Path, scheduler: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import dask

    out = tmp_path / "dask.jsonl"
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):  # one death is too many
        cluster = local_cluster(2)
    with cluster:
        code, _ = replay_killing_a_worker(cluster, cohort, out)
    assert code == 2
    err = capsys.readouterr().err
    assert "a worker died on every try at the partition starting here (out of memory?)" in err
    assert re.search(r"iechs replay-cohort: cohort\.jsonl:\d+: \$: a worker died", err)
    written = out.read_bytes()
    assert 32 <= len(written.splitlines()) < PATIENTS
    assert local.startswith(written)  # in order, whole lines
    assert replay(cohort, out, "--executor", "dask", "--scheduler", scheduler) == 2  # resumed
    assert out.read_bytes() == local


def test_the_local_path_imports_no_dask_nor_pyarrow(cohort: Path, tmp_path: Path) -> None:
    small = tmp_path / "small.jsonl"
    small.write_bytes(b"".join(cohort.read_bytes().splitlines(keepends=True)[:20]))
    code = (
        "import sys\n"
        "import iechs.cli\n"
        f"rc = iechs.cli.main(['replay-cohort', {str(small)!r}, '--workers', '2',"
        f" '--out', {str(tmp_path / 'r.jsonl')!r}, '--no-progress'])\n"
        "assert rc == 2, rc\n"
        "loaded = sorted({m.split('.')[0] for m in sys.modules} & {'dask', 'distributed',"
        " 'pyarrow'})\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert len((tmp_path / "r.jsonl").read_bytes().splitlines()) == 20


# --- Parquet -------------------------------------------------------------------------------------


def summaries_of(parquet: Path) -> list[dict[str, Any]]:
    """The JSON lines' content, read back from the Parquet file."""
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    table = pq.read_table(parquet)
    fmt = table.schema.metadata[b"iechs.format"].decode()

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            # an action's `until` and `given_at` are absent from a JSON line when not known
            return {
                k: plain(v)
                for k, v in value.items()
                if v is not None or k not in ("until", "given_at")
            }
        if isinstance(value, list):
            return [plain(v) for v in value]
        if hasattr(value, "strftime"):
            return str(value.strftime("%Y-%m-%dT%H:%M:%SZ"))
        return value

    rows = []
    for row in table.to_pylist():
        if row["error"] is not None:
            rows.append({"source": row["source"], "error": row["error"]})
        else:
            del row["error"]
            final = row.pop("final_state")
            rows.append({**plain(row), "final_state": final, "format": fmt})
    return rows


def test_parquet_holds_the_jsonl_content(
    cohort: Path, local: bytes, tmp_path: Path, scheduler: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow.parquet as pq

    from iechs import cohort as command
    from iechs.cohort import parquet_schema

    monkeypatch.setattr(command, "ROW_GROUP_ROWS", 64)  # this process writes, either executor
    assert replay(cohort, tmp_path / "local.parquet", "--workers", "2") == 2
    dask = ("--executor", "dask", "--scheduler", scheduler, "--partition-size", "50")
    assert replay(cohort, tmp_path / "dask.parquet", *dask) == 2
    assert (tmp_path / "dask.parquet").read_bytes() == (tmp_path / "local.parquet").read_bytes()
    assert summaries_of(tmp_path / "dask.parquet") == [json.loads(x) for x in local.splitlines()]
    assert pq.read_schema(tmp_path / "dask.parquet") == parquet_schema()
    assert pq.ParquetFile(tmp_path / "dask.parquet").num_row_groups == 4  # 202 rows
    assert not list(tmp_path.glob("*.partial"))


def test_parquet_is_never_resumed_nor_overwritten_unless_forced(
    cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small = tmp_path / "small.jsonl"
    small.write_bytes(b"".join(cohort.read_bytes().splitlines(keepends=True)[:2]))
    out = tmp_path / "r.parquet"
    out.write_bytes(b"an earlier result")
    assert replay(small, out, "--workers", "1") == 2
    assert "r.parquet: --out: already exists: a Parquet file is written whole, never resumed" in (
        capsys.readouterr().err
    )
    assert out.read_bytes() == b"an earlier result"
    assert replay(small, out, "--workers", "1", "--force") == 0
    assert [r["source"] for r in summaries_of(out)] == ["small.jsonl:1", "small.jsonl:2"]


# --- clear errors --------------------------------------------------------------------------------


def test_without_dask_the_command_says_what_to_install(
    cohort: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` fails
    assert replay(cohort, tmp_path / "r.jsonl", "--executor", "dask") == 2
    assert (
        "iechs replay-cohort: replay on a Dask cluster (`--executor dask`) needs distributed, "
        "which is not installed: pip install 'iechs[cluster]'" in capsys.readouterr().err
    )
    assert not list(tmp_path.iterdir())  # refused before anything starts


def test_without_pyarrow_the_command_says_what_to_install(
    cohort: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    out = tmp_path / "r.parquet"
    assert replay(cohort, out, "--workers", "1") == 2
    assert (
        "iechs replay-cohort: Parquet results (`--out results.parquet`) needs pyarrow, which is "
        "not installed: pip install 'iechs[parquet]'" in capsys.readouterr().err
    )
    assert not list(tmp_path.iterdir())


def test_an_unreachable_scheduler_is_a_clear_error(
    cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    started = time.monotonic()
    options = ("--executor", "dask", "--scheduler", address, "--timeout", "1")
    assert replay(cohort, tmp_path / "r.jsonl", *options) == 2
    assert time.monotonic() - started < 20
    assert (
        f"iechs replay-cohort: {address}: --scheduler: no Dask scheduler answered within 1 s"
        in capsys.readouterr().err
    )


def test_a_scheduler_without_workers_is_a_clear_error(
    cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with local_cluster(0) as empty:
        options = ("--executor", "dask", "--scheduler", empty.scheduler_address, "--timeout", "1")
        assert replay(cohort, tmp_path / "r.jsonl", *options) == 2
    assert "no worker joined the scheduler within 1 s" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--scheduler", "tcp://127.0.0.1:8786"), "--scheduler needs --executor dask"),
        (("--executor", "dask", "--partition-size", "0"), "--partition-size is at least 1"),
        (("--executor", "dask", "--timeout", "0"), "--timeout is a number of seconds above 0"),
    ],
)
def test_bad_options_are_refused_before_anything_starts(
    cohort: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    options: tuple[str, ...],
    message: str,
) -> None:
    assert replay(cohort, tmp_path / "r.jsonl", *options) == 2
    assert f"iechs replay-cohort: {cohort}: $: {message}" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
