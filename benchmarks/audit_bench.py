"""Audit log throughput on this machine (a script, not a test).

    .venv/bin/python benchmarks/audit_bench.py [--records N] [--dir DIR]

Prints, for a SQLite store with durable commits (WAL, synchronous=FULL):
- append throughput with one record per transaction (an fsync per record: what a live
  episode stepping event by event costs) and with a batch per transaction (what
  `iechs run --store` does for a whole timeline);
- the verification rate (records/s re-hashed and re-linked by `iechs audit verify`);
- the replay rate, for scale.
Records are real decisions: the bundled example timelines, run again under new episode ids.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import attrs

from iechs import Engine, load_guideline, load_timeline
from iechs.audit import GENESIS, SqliteStore, replay_log, verify_log
from iechs.audit.records import RecordDraft, draft_of
from iechs.cli import examples_dir
from iechs.timeline import patient_to_json


def drafts(engine: Engine) -> list[RecordDraft]:
    """One draft per decision of every example timeline."""
    out: list[RecordDraft] = []
    for path in sorted(examples_dir().glob("*.json")):
        episode = engine.run(load_timeline(path, engine.guideline))
        patient = patient_to_json(episode.patient)
        out += [
            draft_of(d, episode=episode.episode_id, guideline=engine.identity, patient=patient)
            for d in episode.decisions
        ]
    return out


def renamed(source: list[RecordDraft], count: int, tag: str) -> list[RecordDraft]:
    """`count` drafts cycling through `source`, each cycle under fresh episode ids."""
    out = []
    for i in range(count):
        draft = source[i % len(source)]
        out.append(attrs.evolve(draft, episode=f"{tag}{i // len(source)}-{draft.episode}"))
    return out


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:>8,.0f} records/s  ({count} records in {seconds:.2f} s)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000, help="records per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (median)")
    parser.add_argument("--dir", help="where to put the store (default: a temporary directory)")
    args = parser.parse_args()
    engine = Engine(load_guideline())
    source = drafts(engine)
    n = args.records
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        db = Path(tmp) / "bench.db"
        one_each: list[float] = []
        in_batches: list[float] = []
        with SqliteStore(db, create=True) as store:
            for run in range(args.repeat):
                single = renamed(source, n, f"s{run}-")
                started = time.perf_counter()
                for draft in single:
                    store.append([draft])
                one_each.append(time.perf_counter() - started)

                batched = renamed(source, n * 10, f"b{run}-")
                started = time.perf_counter()
                for i in range(0, len(batched), 100):
                    store.append(batched[i : i + 100])
                in_batches.append(time.perf_counter() - started)

        with SqliteStore(db) as store:
            verifying: list[float] = []
            for _ in range(args.repeat):
                started = time.perf_counter()
                verification = verify_log(store)
                verifying.append(time.perf_counter() - started)
                assert verification.ok, verification.findings
            total = verification.count

            started = time.perf_counter()
            report = replay_log(store, [engine.guideline])
            replaying = time.perf_counter() - started
            assert report.ok, report.differences[:3]
        size = db.stat().st_size

    avg = sum(len(d.seal(1, GENESIS).body.encode("utf-8")) for d in source) // len(source)
    sys.stdout.write(
        f"SQLite store, durable (WAL, synchronous=FULL), records of ~{avg / 1000:.1f} kB\n"
        f"median of {args.repeat} runs (each run appends {n} + {n * 10} records)\n"
        f"append, 1 record per transaction:    {rate(n, statistics.median(one_each))}\n"
        f"append, 100 records per transaction: {rate(n * 10, statistics.median(in_batches))}\n"
        f"verify (hash + link every record):   {rate(total, statistics.median(verifying))}\n"
        f"replay (re-decide every record):     {rate(total, replaying)}\n"
        f"store size: {size / 1e6:.1f} MB for {total} records\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
