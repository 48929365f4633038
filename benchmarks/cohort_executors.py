"""`iechs replay-cohort` throughput per executor on this machine (a script, not a test).

    .venv/bin/python benchmarks/cohort_executors.py [--patients N] [--runs 3] [--seed 0]

Writes a synthetic cohort of N patients (`iechs synth`), then times the command as a user runs
it (a fresh process each run: start-up, reading, replay, writing), median of `--runs`, for:
local with 1 and 2 workers; a Dask LocalCluster of 2 workers that the command starts (start-up
included); a running 2-worker Dask cluster given by `--scheduler` (what a real cluster costs
per run); and local with 2 workers writing Parquet. Every run's output must be the same bytes.
Meanwhile it samples the resident memory of each process (the command, its pool or cluster
workers, the running cluster's workers) every 0.1 s, and it counts the CPU time of them all
(`CPU ms/pt`: per patient, every process included; on a shared machine, steadier than the wall
clock).

Then, timed alone in this process: the pure replay rate of one core (engine built, input in
memory), the client's own work per patient on the Dask path (read, pickle the input, unpickle
the results, write), and the cost of writing a result as JSON Lines or Parquet. From all of
these, what a 500,000-patient run would need: core-hours, wall time on a few cluster sizes,
memory per worker and for the client, and the size of the input and of each output. The
synthetic courses are alike, so Parquet compresses them better than it would real ones: read
its size as a floor.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

from iechs import cohort
from iechs.synthetic import synthetic_cohort

TARGET = 500_000
MB = 1024 * 1024


class PeakMemory:
    """Samples the RSS of a process tree (and of extra pids) until stopped: peak per process."""

    def __init__(self, root: int, extra: list[int]) -> None:
        self.root, self.extra = root, extra
        self.peak: dict[int, int] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.stop.is_set():
            try:
                root = psutil.Process(self.root)
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                procs = []
            procs += [psutil.Process(pid) for pid in self.extra]
            for p in procs:
                try:
                    rss = p.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
                self.peak[p.pid] = max(self.peak.get(p.pid, 0), rss)
            self.stop.wait(0.1)

    def done(self) -> tuple[int, int]:
        """(peak RSS of the command, largest peak RSS of any other process sampled)."""
        self.stop.set()
        self.thread.join()
        others = [v for pid, v in self.peak.items() if pid != self.root]
        return self.peak.get(self.root, 0), max(others, default=0)


@dataclass(frozen=True)
class Run:
    seconds: float
    command_cpu: float  # CPU seconds of the command and its descendants (pool, LocalCluster)
    workers_cpu: float  # CPU seconds of the running cluster's workers
    command_rss: int  # peak RSS of the command
    worker_rss: int  # largest peak RSS of any other process sampled


def cpu_seconds(pids: list[int]) -> tuple[float, float]:
    """CPU seconds so far: of this process's waited-for children, and of `pids`."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    others = sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids)
    return children.ru_utime + children.ru_stime, others


def timed_command(source: Path, out: Path, options: list[str], worker_pids: list[int]) -> Run:
    """One run of the command, as a user runs it."""
    if out.exists():
        out.unlink()
    argv = [sys.executable, "-m", "iechs", "replay-cohort", str(source), "--out", str(out)]
    command_cpu, workers_cpu = cpu_seconds(worker_pids)
    started = time.perf_counter()
    proc = subprocess.Popen([*argv, "--no-progress", *options], stderr=subprocess.PIPE)
    memory = PeakMemory(proc.pid, worker_pids)
    _, err = proc.communicate()
    seconds = time.perf_counter() - started
    command_after, workers_after = cpu_seconds(worker_pids)
    command_rss, worker_rss = memory.done()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(options)}: exit {proc.returncode}\n{err.decode()}")
    return Run(
        seconds,
        command_after - command_cpu,
        workers_after - workers_cpu,
        command_rss,
        worker_rss,
    )


def pure_rate(source: Path, runs: int) -> float:
    """Patients per second on one core: replay only (the engine built, the input in memory)."""
    cohort._init_worker(None, "table")
    items = list(cohort.iter_cohort(source))
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        for item in items:
            cohort.replay_one(item)
        times.append(time.perf_counter() - started)
    return len(items) / statistics.median(times)


def client_cost(source: Path, jsonl: bytes, runs: int) -> float:
    """ms per patient of the client's own work on the Dask path, median of `runs`: read the
    input, pickle it in partitions, unpickle the partitions' results, write JSON Lines. (The
    comms, per message, not per patient, and the scheduler's work are not in it.)"""
    import pickle

    from iechs.cohort_dask import _batches

    results = [json.loads(line) for line in jsonl.splitlines()]
    size = cohort.PARTITION_SIZE
    sent_back = [
        pickle.dumps(results[i : i + size], protocol=5) for i in range(0, len(results), size)
    ]
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        for batch in _batches(cohort.iter_cohort(source), size):
            pickle.dumps(batch, protocol=5)
        with open(os.devnull, "w", encoding="utf-8") as sink:
            for data in sent_back:
                for result in pickle.loads(data):
                    sink.write(cohort._line(result))
        times.append(time.perf_counter() - started)
    return statistics.median(times) / len(results) * 1000


def writer_costs(jsonl: bytes, tmp: Path, runs: int) -> tuple[float, float]:
    """ms per result for the client to write it: (Parquet, JSON Lines), median of `runs`."""
    results = [json.loads(line) for line in jsonl.splitlines()]
    costs = []
    for suffix in ("parquet", "jsonl"):
        times = []
        for _ in range(runs):
            out = tmp / f"writer.{suffix}"
            out.unlink(missing_ok=True)
            started = time.perf_counter()
            writer, _ = cohort._writer(out, force=True)
            for result in results:
                writer.write(result)
            writer.close(complete=True)
            times.append(time.perf_counter() - started)
        costs.append(statistics.median(times) / len(results) * 1000)
    return costs[0], costs[1]


def running_cluster(workers: int) -> Any:
    """Workers as the README starts them: one thread each, Dask's profiler off."""
    import dask
    import distributed

    make: Any = distributed.LocalCluster
    with warnings.catch_warnings(), dask.config.set({"distributed.worker.profile.enabled": False}):
        warnings.filterwarnings("ignore", "Port .* is already in use")
        return make(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--patients", type=int, default=2000, help="cohort size (default 2000)")
    parser.add_argument("--runs", type=int, default=3, help="runs per executor (median)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic cohort seed")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="iechs-cohort-bench-") as folder:
        return measure(args, Path(folder))


def measure(args: argparse.Namespace, tmp: Path) -> int:
    source = tmp / "cohort.jsonl"
    events = 0
    with source.open("w", encoding="utf-8") as fh:
        for doc in synthetic_cohort(args.patients, args.seed):
            doc.pop("course")
            events += len(doc["events"])
            fh.write(json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n")
    n = args.patients
    print(
        f"cohort: {n} synthetic patients (seed {args.seed}), {events} events "
        f"({events / n:.1f} per patient), {source.stat().st_size / n:,.0f} bytes per patient "
        f"in JSON Lines; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start"
    )

    with running_cluster(2) as cluster:
        import distributed

        make_client: Callable[..., Any] = distributed.Client
        with make_client(cluster, set_as_default=False) as client:
            worker_pids = list(client.run(os.getpid).values())
        address = str(cluster.scheduler_address)
        setups: list[tuple[str, str, list[str], list[int]]] = [
            ("local, 1 worker", "jsonl", ["--workers", "1"], []),
            ("local, 2 workers", "jsonl", ["--workers", "2"], []),
            ("dask LocalCluster, 2 workers", "jsonl", ["--executor", "dask", "--workers", "2"], []),
            (
                "dask, running cluster of 2",
                "jsonl",
                ["--executor", "dask", "--scheduler", address],
                worker_pids,
            ),
            ("local, 2 workers, Parquet", "parquet", ["--workers", "2"], []),
        ]
        results: dict[str, Run] = {}
        outputs: dict[str, bytes] = {}
        print(
            f"\n{'executor':<31}{'patients/s':>11}{'events/s':>10}{'median s':>9}"
            f"{'CPU ms/pt':>10}{'client MB':>10}{'worker MB':>10}"
        )
        for label, suffix, options, pids in setups:
            out = tmp / f"out.{suffix}"
            runs = [timed_command(source, out, options, pids) for _ in range(args.runs)]
            median = sorted(runs, key=lambda r: r.seconds)[len(runs) // 2]
            results[label] = median
            data = out.read_bytes()
            if suffix in outputs and outputs[suffix] != data:
                sys.exit(f"{label}: the output differs from the first {suffix} run's")
            outputs[suffix] = data
            cpu_ms = (median.command_cpu + median.workers_cpu) / n * 1000
            worker_mb = max(r.worker_rss for r in runs) / MB
            print(
                f"{label:<31}{n / median.seconds:>11,.0f}{events / median.seconds:>10,.0f}"
                f"{median.seconds:>9.2f}{cpu_ms:>10.1f}"
                f"{max(r.command_rss for r in runs) / MB:>10.0f}"
                + (f"{worker_mb:>10.0f}" if worker_mb else f"{'(same)':>10}")
            )
        print("(every run of each format wrote the same bytes)")
        one = tmp / "one.jsonl"
        one.write_text(source.read_text(encoding="utf-8").split("\n", 1)[0] + "\n")
        start = [
            timed_command(one, tmp / "one-out.jsonl", setups[3][2], worker_pids)
            for _ in range(args.runs)
        ]
        startup = sorted(start, key=lambda r: r.seconds)[len(start) // 2]

    rate = pure_rate(source, args.runs)
    print(
        f"\nreplay only, one core: {rate:,.0f} patients/s, {rate * events / n:,.0f} events/s "
        f"({1000 / rate:.1f} ms per patient); load average {os.getloadavg()[0]:.2f} at the end"
    )

    cluster_run = results["dask, running cluster of 2"]
    worker_ms = cluster_run.workers_cpu / n * 1000
    client_ms = client_cost(source, outputs["jsonl"], args.runs)
    parquet_ms, jsonl_ms = writer_costs(outputs["jsonl"], tmp, args.runs)
    print(
        f"on the running cluster, per patient: {worker_ms:.1f} ms of worker CPU, "
        f"{client_ms:.3f} ms of the client's own work (reading, pickling the input, "
        "unpickling the results, writing; timed alone, in this process); the command takes "
        f"{startup.seconds:.1f} s ({startup.command_cpu:.1f} s CPU) with a one-patient cohort; "
        f"writing a result costs the client {jsonl_ms:.3f} ms (JSON Lines) or {parquet_ms:.3f} ms "
        "(Parquet)"
    )

    jsonl_bytes = len(outputs["jsonl"]) / n
    parquet_bytes = len(outputs["parquet"]) / n
    input_bytes = source.stat().st_size / n
    core_hours = TARGET * worker_ms / 1000 / 3600
    fed = worker_ms / client_ms
    worker_mb = max(results[k].worker_rss for k in results if "dask" in k) / MB
    client_mb = cluster_run.command_rss / MB
    window_mb = 2 * cohort.PARTITION_SIZE * (input_bytes + jsonl_bytes) / MB

    link = 125e6 / input_bytes  # patients/s through the client's link, at 1 Gbit/s

    def wall(cores: int) -> str:
        per_patient = max(worker_ms / cores / 1000, client_ms / 1000, 1 / link)
        seconds = TARGET * per_patient + startup.seconds
        return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"

    print(f"\n{TARGET:,} patients, estimated from these measurements:")
    print(
        f"- time: {core_hours:.2f} core-hours of worker CPU as measured on the cluster "
        f"({TARGET / rate / 3600:.2f} at the one-core replay-only rate: the cluster's workers "
        "shared the cores with the client and each other); wall time on 8 / 32 / 128 worker "
        f"cores: about {wall(8)} / {wall(32)} / {wall(128)} (the cores not shared; past about "
        f"{min(fed, link * worker_ms / 1000):.0f} the client or its link is the limit)"
    )
    print(
        f"- the client: its own work is {TARGET * client_ms / 1000:.0f} s of CPU for "
        f"{TARGET:,} patients (enough for about {fed:.0f} worker cores); sending "
        f"{input_bytes / 1000:.1f} kB per patient through a 1 Gbit/s link caps the run at about "
        f"{link:,.0f} patients/s (about {link * worker_ms / 1000:.0f} worker cores), "
        f"{TARGET / link / 60:.1f} min for the input alone"
    )
    print(
        f"- memory: a Dask worker peaked at {worker_mb:.0f} MB, a local pool worker at "
        f"{results['local, 2 workers'].worker_rss / MB:.0f} MB; neither grows with the cohort "
        "(Dask's profiler off: with it, a worker grows for its first 1000 s) "
        f"and holds one engine and two partitions of {cohort.PARTITION_SIZE} timelines (about "
        f"{window_mb:.1f} MB of input and results). The client peaked at {client_mb:.0f} MB "
        "(JSON Lines, whatever the cohort's size); the scheduler holds the input of the "
        f"partitions in flight, two per worker thread: about {window_mb * 32:.0f} MB for 32 "
        "worker threads"
    )
    print(
        f"- input: {input_bytes:,.0f} bytes per patient, {TARGET * input_bytes / 1e9:.1f} GB "
        "read by the client and sent to the workers in partitions"
    )
    print(
        f"- output: JSON Lines {jsonl_bytes:,.0f} bytes per patient "
        f"({TARGET * jsonl_bytes / 1e9:.2f} GB); Parquet {parquet_bytes:,.1f} bytes per patient "
        f"({TARGET * parquet_bytes / 1e6:.0f} MB; synthetic courses are alike: real ones "
        "compress less). The Parquet writer holds a row group "
        f"({cohort.ROW_GROUP_ROWS} rows) at a time: the client's extra memory above"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
