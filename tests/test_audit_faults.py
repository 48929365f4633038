"""Faults, for real: a writer SIGKILLed in the middle of appending, and several writer processes
appending to the same SQLite file at once. The log must verify afterwards, every time.

Run as a script, this file is the child writer (`python tests/test_audit_faults.py ...`);
`test_audit_postgres.py` uses the same children against PostgreSQL.
"""

from __future__ import annotations

import itertools
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import attrs

ROOT = Path(__file__).resolve().parents[1]
SALVAGE = ROOT / "examples" / "refractory-ruxolitinib-salvage.json"
BATCH = 94  # decisions of the salvage timeline (start included): one append each round


# --- the children --------------------------------------------------------------------------------


def say(line: str) -> None:
    """Tell the parent how far the child got (a line, flushed at once)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def append_forever(location: str, prefix: str) -> None:
    """Append the salvage episode again and again, BATCH records per transaction."""
    from iechs import Engine, load_guideline, load_timeline
    from iechs.audit import open_store
    from iechs.audit.records import draft_of
    from iechs.audit.stores import EpisodeUpdate
    from iechs.timeline import patient_to_json

    engine = Engine(load_guideline())
    episode = engine.run(load_timeline(SALVAGE, engine.guideline))
    patient = patient_to_json(episode.patient)
    drafts = [
        draft_of(d, episode="x", guideline=engine.identity, patient=patient)
        for d in episode.decisions
    ]
    assert len(drafts) == BATCH
    snapshot = episode.snapshot()
    with open_store(location, create=True) as store:
        say("ready")
        for i in range(1_000_000):
            name = f"{prefix}-{i}"
            batch = [attrs.evolve(d, episode=name) for d in drafts]
            update = EpisodeUpdate(name, {**snapshot, "episode_id": name}, BATCH, 0)
            say(f"begin {i}")
            store.append(batch, update)
            say(f"end {i}")


def write_episode(location: str, episode_id: str, go: str) -> None:
    """Wait for `go` to exist, then record the salvage timeline one transaction per event."""
    from iechs import Engine, load_guideline, load_timeline
    from iechs.audit import RecordedEpisode, open_store

    engine = Engine(load_guideline())
    timeline = load_timeline(SALVAGE, engine.guideline)
    with open_store(location, create=True) as store:
        say("ready")
        deadline = time.monotonic() + 60
        while not Path(go).exists():
            if time.monotonic() > deadline:
                raise SystemExit("no go signal")
            time.sleep(0.005)
        live = RecordedEpisode.start(engine, store, timeline.patient, episode_id)
        for event in timeline.events:
            live.step(event)
    say("done")


def child(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(proc: subprocess.Popen[str], word: str, limit: float = 60) -> list[str]:
    """Read the child's lines until one starts with `word`."""
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            stderr = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"child ended early: {seen}\n{stderr}")
        seen.append(line.strip())
        if line.startswith(word):
            return seen
    raise AssertionError(f"child did not say {word!r} in {limit} s")


# --- the checks, shared with the PostgreSQL tests -------------------------------------------------


def check_after_kills(location: str, rounds: int, seed: int) -> None:
    """Kill an appending child `rounds` times at random moments; verify after each kill."""
    from iechs.audit import open_log, verify_log

    rng = random.Random(seed)
    batches = 0
    mid_append = 0
    for n in range(rounds):
        proc = child("append", location, f"k{n}")
        wait_for(proc, "end 0")  # one append committed: the child is in its loop
        time.sleep(rng.uniform(0.0, 0.5))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        said = out.splitlines()
        acknowledged = 1 + sum(1 for line in said if line.startswith("end "))
        if said and said[-1].startswith("begin "):
            mid_append += 1
        with open_log(location) as log:
            verification = verify_log(log)
        assert verification.ok, verification.findings
        # Atomic: no partial batch. Durable: every acknowledged append is there (and at most
        # one more, committed just before the kill but not yet acknowledged).
        assert verification.count % BATCH == 0, verification.count
        now = verification.count // BATCH
        assert batches + acknowledged <= now <= batches + acknowledged + 1, (batches, now)
        batches = now
    assert mid_append >= 1, "no kill landed inside an append: the test proved nothing"
    check_episodes(location, batches)


def check_episodes(location: str, expected: int) -> None:
    """Every episode's snapshot was saved with its records: same count, head inside the log."""
    from iechs.audit import open_store

    with open_store(location) as store:
        with store.reading() as view:
            by_episode: dict[str, list[int]] = {}
            for item in view.records():
                assert item.episode is not None
                assert item.seq is not None
                by_episode.setdefault(item.episode, []).append(item.seq)
        assert len(by_episode) == expected
        for name, seqs in by_episode.items():
            saved = store.episode(name)
            assert saved is not None, name
            assert (saved.steps, saved.head_seq) == (len(seqs), seqs[-1])


def check_concurrent_writers(location: str, go: Path, writers: int) -> None:
    from iechs import Engine, load_guideline
    from iechs.audit import open_log, replay_log, verify_log

    procs = [child("write", location, f"w{k}", str(go)) for k in range(writers)]
    for proc in procs:
        wait_for(proc, "ready")
    go.touch()
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert out.strip().endswith("done")
    with open_log(location) as log:
        verification = verify_log(log)
        assert verification.ok, verification.findings
        assert verification.count == writers * BATCH
        with log.reading() as view:
            order = [item.episode for item in view.records()]
        report = replay_log(log, [Engine(load_guideline()).guideline])
    assert report.ok, report.differences[:3]
    assert sorted(report.episodes) == [f"w{k}" for k in range(writers)]
    switches = sum(1 for a, b in itertools.pairwise(order) if a != b)
    assert switches > writers, f"the writers did not overlap ({switches} switches)"
    check_episodes(location, writers)


# --- SQLite --------------------------------------------------------------------------------------


def test_sqlite_append_killed_midway_leaves_a_log_that_verifies(tmp_path: Path) -> None:
    db = str(tmp_path / "log.db")
    check_after_kills(db, rounds=5, seed=20260112)
    # The log goes on after the kills: a new writer appends onto the surviving head.
    from iechs import Engine
    from iechs.audit import open_log, run_recorded, verify_log

    run_recorded(Engine(), SALVAGE, db)
    with open_log(db) as log:
        assert verify_log(log).ok


def test_sqlite_concurrent_writers_never_fork_the_chain(tmp_path: Path) -> None:
    check_concurrent_writers(str(tmp_path / "log.db"), tmp_path / "go", writers=3)


if __name__ == "__main__":
    if sys.argv[1] == "append":
        append_forever(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "write":
        write_episode(sys.argv[2], sys.argv[3], sys.argv[4])
    else:  # pragma: no cover
        raise SystemExit(f"unknown child {sys.argv[1]!r}")
