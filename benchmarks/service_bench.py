"""CDS Hooks service throughput and latency on this machine (a script, not a test).

    .venv/bin/python benchmarks/service_bench.py [--quick] [--json FILE] [--workers N]
        [--runtime both|table|statechart] [--duration S] [--repeats N] [--no-postgres]

What it measures, each with a warm-up that is thrown away and repeats (median and spread):

- **Concurrency.** `iechs serve` on a SQLite store, started as a separate process, is sent
  patient-view calls (and order-sign, a tocilizumab-only draft order) by `c` clients at once
  (c = 1, 8, 20, 32), each a task with its own `httpx.AsyncClient` and keep-alive connection,
  sending its next call as soon as the last is answered (a closed loop). Every call is a new
  hook call (its own `hookInstance`, so the service keeps new cards each time) about one of 40
  patients (13 and 42 recorded inputs). Requests per second, p50 and p99 of the client-side
  latency, for the table and the statechart runtime.
- **Episode length.** patient-view at c=1 on episodes of about 13, 100 and 1,000 recorded
  inputs (observations every 15 minutes before the course of the example patient).
- **Feedback.** patient-view at c=1, and one-item feedback calls, on episodes with 0, 100 and
  1,000 feedbacks recorded as the service records them (`advance` records with client and card).
- **PostgreSQL**, when the server binaries are installed (`/usr/lib/postgresql/*/bin/initdb`,
  as the tests find them): a throwaway server (unix socket), the same patients, two `iechs
  serve` replicas on the same database (each `--workers 1`: a replica is a process), all the
  calls to one of them, then the clients' connections spread over both. The database's CPU
  time per request is printed too.

The client runs in this process and shares the machine's cores with the servers (and with
whatever else runs): the CPU time per request of the servers (all their processes, from /proc)
and of the client is printed beside each figure; it depends much less than the latencies on
what else the machine is doing. `--json FILE` writes every figure. `--quick` (under 90 s) is
what `benchmarks/bench.py` runs: c = 1 and 20 with the table runtime, which alone has the
sweeps and order-sign, c = 20 with the statechart runtime and with PostgreSQL, one short run
each. Progress is printed as it goes.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import itertools
import json
import os
import platform
import pwd
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import types
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from iechs import Engine, load_guideline
from iechs.audit import RecordedEpisode, open_store, run_recorded

ROOT = Path(__file__).resolve().parents[1]
NO_STEROID = ROOT / "examples" / "service" / "iec-hs-no-steroid.json"
IL6 = ROOT / "examples" / "tocilizumab-monotherapy-deviation.json"
PATIENT_VIEW = "/cds-services/iechs-patient-view"
ORDER_SIGN = "/cds-services/iechs-order-sign"
FEEDBACK = "/cds-services/iechs-patient-view/feedback"
#: patients of the concurrency runs: copies of the two examples (13 and 42 inputs).
PATIENTS = 40
LENGTHS = (100, 1000)
FEEDBACKS = (0, 100, 1000)
TARGET_P99_MS = 50.0
TARGET_RPS = 300.0
STARTED = time.monotonic()


def say(text: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f}s] {text}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --- requests --------------------------------------------------------------------------------


def patient_view(patient: str) -> dict[str, Any]:
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/bench", "patientId": patient},
    }


def order_sign(patient: str) -> dict[str, Any]:
    order = {
        "resourceType": "MedicationRequest",
        "id": "toci-1",
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": {"text": "tocilizumab"},
        "dosageInstruction": [
            {
                "route": {"text": "IV"},
                "doseAndRate": [{"doseQuantity": {"value": 8, "unit": "mg/kg"}}],
            }
        ],
    }
    return {
        "hook": "order-sign",
        "hookInstance": str(uuid.uuid4()),
        "context": {
            "userId": "Practitioner/bench",
            "patientId": patient,
            "draftOrders": {"resourceType": "Bundle", "entry": [{"resource": order}]},
        },
    }


def overridden(card: str) -> dict[str, Any]:
    return {
        "card": card,
        "outcome": "overridden",
        "overrideReason": {"userComment": "benchmark"},
        "outcomeTimestamp": "2026-05-17T09:45:00Z",
    }


# --- the store's contents ----------------------------------------------------------------------


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def long_timeline(extra: int) -> dict[str, Any]:
    """The no-steroid patient with `extra` temperature readings (every 15 minutes from the day
    after the infusion) before its own course: the same end, a longer episode."""
    doc = json.loads(NO_STEROID.read_text())
    doc["patient"]["id"] = f"long-{extra}"
    start = datetime(2026, 5, 5, 0, tzinfo=UTC)
    readings = [
        {
            "at": _iso(start + timedelta(minutes=15 * i)),
            "kind": "observation",
            "code": "temperature",
            "value": 37.0 + (i % 7) / 10,
            "unit": "Cel",
        }
        for i in range(extra)
    ]
    assert start + timedelta(minutes=15 * extra) < datetime(2026, 5, 16, tzinfo=UTC)
    doc["events"] = readings + doc["events"]
    return doc


def fill_store(location: str, folder: Path, *, sweeps: bool) -> dict[str, int]:
    """Record the benchmark's patients in `location`: patient id -> recorded decisions. With
    `sweeps`, also the long episodes and those with feedback (`fb-N`: the no-steroid patient
    with N feedbacks recorded as the service records them, an `advance` to the last event's
    time with the client and the card in the record; in one append, to save time)."""
    engine = Engine(load_guideline(), runtime="table")
    docs: list[dict[str, Any]] = []
    for i in range(PATIENTS):
        doc = json.loads((NO_STEROID if i % 2 == 0 else IL6).read_text())
        doc["patient"]["id"] = f"p{i:03d}"
        docs.append(doc)
    if sweeps:
        docs += [long_timeline(n) for n in LENGTHS]
        for n in FEEDBACKS:
            doc = json.loads(NO_STEROID.read_text())
            doc["patient"]["id"] = f"fb-{n}"
            docs.append(doc)
    counts = {}
    for doc in docs:
        path = folder / f"{doc['patient']['id']}.json"
        path.write_text(json.dumps(doc))
        patient, (decisions, _) = run_recorded(engine, path, location)
        counts[patient] = len(decisions)
    if sweeps:
        with open_store(location) as store:
            for n in FEEDBACKS:
                if n:
                    recorded = RecordedEpisode.resume(engine, store, f"fb-{n}")
                    last = recorded.episode.decisions[-1].at
                    for _ in range(n):
                        recorded.episode.advance(last)
                    recorded.flush(
                        actor="client https://bench.example.org",
                        reason="CDS Hooks feedback: card (benchmark) overridden",
                    )
                counts[f"fb-{n}"] += n
    return counts


# --- servers ---------------------------------------------------------------------------------


def serve_supports_workers() -> bool:
    out = subprocess.run(
        [sys.executable, "-m", "iechs", "serve", "--help"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    ).stdout
    return "--workers" in out


class Server:
    def __init__(self, store: str, runtime: str, workers: int | None, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        argv = [
            sys.executable,
            "-m",
            "iechs",
            "serve",
            "--store",
            store,
            "--port",
            str(self.port),
            "--runtime",
            runtime,
            "--feedback-per-card",
            "1000000",
            "--feedback-per-minute",
            "1000000",
        ]
        if workers is not None:
            argv += ["--workers", str(workers)]
        with log.open("wb") as handle:
            self.process = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{self.url}/cds-services", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"iechs serve did not start:\n{log.read_text()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)


@contextmanager
def serving(
    store: str, runtime: str, workers: int | None, folder: Path, n: int = 1
) -> Iterator[list[Server]]:
    servers: list[Server] = []
    try:
        for k in range(n):
            log = folder / f"serve-{runtime}-{workers}-{k}-{time.monotonic_ns()}.log"
            servers.append(Server(store, runtime, workers, log))
        yield servers
    finally:
        for server in servers:
            server.stop()
        for server in servers:
            text = server.log.read_text(errors="replace")
            if "Traceback" in text:
                print(f"server log {server.log}:\n{text[-3000:]}", file=sys.stderr)


# --- load ------------------------------------------------------------------------------------


def quantile(values: list[float], q: float) -> float:
    """The q-quantile (0..1), interpolated between the nearest ranks."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


async def _load(
    urls: list[str],
    path: str,
    bodies: Callable[[int], dict[str, Any]],
    concurrency: int,
    seconds: float,
) -> tuple[list[float], float, float, int]:
    """`concurrency` tasks, each with its own client and connection (spread over `urls`),
    calling for `seconds`: latencies in ms, the elapsed time, the client's CPU seconds, errors.
    Each body is encoded before its call is timed (the client's CPU is counted all the same)."""
    clients = [
        httpx.AsyncClient(
            base_url=urls[k % len(urls)],
            timeout=60,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )
        for k in range(concurrency)
    ]
    counter = itertools.count()
    latencies: list[float] = []
    errors = 0
    headers = {"content-type": "application/json"}
    try:
        # Open the connections first: the timed loop measures calls, not TCP handshakes.
        await asyncio.gather(*(client.get("/cds-services") for client in clients))
        end = time.perf_counter() + seconds

        async def worker(client: httpx.AsyncClient) -> None:
            nonlocal errors
            while time.perf_counter() < end:
                body = json.dumps(bodies(next(counter))).encode()
                started = time.perf_counter()
                response = await client.post(path, content=body, headers=headers)
                latencies.append((time.perf_counter() - started) * 1000)
                if response.status_code != 200:
                    errors += 1

        cpu = time.process_time()
        began = time.perf_counter()
        await asyncio.gather(*(worker(client) for client in clients))
        elapsed = time.perf_counter() - began
        cpu = time.process_time() - cpu
    finally:
        for client in clients:
            await client.aclose()
    return latencies, elapsed, cpu, errors


def _process_tree(pid: int) -> list[int]:
    out = [pid]
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [p for child in f.read().split() for p in _process_tree(int(child))]
    except OSError:
        pass
    return out


def cpu_seconds(pids: list[int]) -> float | None:
    """CPU seconds used so far by the processes `pids` and their children (Linux; None
    elsewhere)."""
    total = 0
    for pid in {p for root in pids for p in _process_tree(root)}:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            if not Path("/proc/self/stat").exists():
                return None
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def _client_setup() -> str:
    """Make the client as light as it can be, and say how: uvloop's event loop when installed
    (`iechs[service]` brings it), and, when the `sniffio` module is missing, a stand-in that
    says "asyncio": httpcore imports it on every lock it takes, and a missing module is
    searched for on every import (four times a request, a third of the client's CPU)."""
    if importlib.util.find_spec("sniffio") is None:
        stand_in = types.ModuleType("sniffio")
        stand_in.current_async_library = lambda: "asyncio"  # type: ignore[attr-defined]
        sys.modules["sniffio"] = stand_in
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run_async(coroutine: Any) -> Any:
    """Run `coroutine` on uvloop's event loop when there is one."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def measure(
    urls: list[str],
    path: str,
    bodies: Callable[[int], dict[str, Any]],
    concurrency: int,
    *,
    seconds: float,
    repeats: int,
    warmup: float,
    pids: list[int] | None = None,
    database: list[int] | None = None,
) -> dict[str, Any]:
    """Requests per second and latency percentiles: the median of `repeats` runs of `seconds`
    each (after `warmup` seconds thrown away), with the spread of the runs; with the servers'
    `pids`, the servers' CPU time per request too."""
    if warmup > 0:
        run_async(_load(urls, path, bodies, concurrency, warmup))
    runs = []
    errors = 0
    for _ in range(repeats):
        before = cpu_seconds(pids) if pids else None
        db_before = cpu_seconds(database) if database else None
        latencies, elapsed, cpu, bad = run_async(_load(urls, path, bodies, concurrency, seconds))
        after = cpu_seconds(pids) if pids else None
        db_after = cpu_seconds(database) if database else None
        errors += bad
        runs.append(
            {
                "rps": len(latencies) / elapsed,
                "p50_ms": quantile(latencies, 0.50),
                "p99_ms": quantile(latencies, 0.99),
                "max_ms": max(latencies),
                "requests": len(latencies),
                "client_cpu": cpu / elapsed,
                "client_cpu_ms": cpu / len(latencies) * 1000,
                "server_cpu_ms": (
                    (after - before) / len(latencies) * 1000
                    if before is not None and after is not None
                    else float("nan")
                ),
                "database_cpu_ms": (
                    (db_after - db_before) / len(latencies) * 1000
                    if db_before is not None and db_after is not None
                    else float("nan")
                ),
            }
        )

    def med(key: str) -> float:
        return float(statistics.median(r[key] for r in runs))

    return {
        "c": concurrency,
        "rps": med("rps"),
        "p50_ms": med("p50_ms"),
        "p99_ms": med("p99_ms"),
        "rps_range": [min(r["rps"] for r in runs), max(r["rps"] for r in runs)],
        "p99_range": [min(r["p99_ms"] for r in runs), max(r["p99_ms"] for r in runs)],
        "requests": sum(r["requests"] for r in runs),
        "client_cpu": med("client_cpu"),
        "client_cpu_ms": med("client_cpu_ms"),
        "server_cpu_ms": med("server_cpu_ms"),
        "database_cpu_ms": med("database_cpu_ms"),
        "errors": errors,
        "repeats": repeats,
        "seconds": seconds,
    }


def line(label: str, m: dict[str, Any]) -> str:
    lo, hi = m["rps_range"]
    err = f"  ERRORS {m['errors']}" if m["errors"] else ""
    return (
        f"{label:<34} c={m['c']:<3} {m['rps']:7.0f} req/s ({lo:.0f}-{hi:.0f})  "
        f"p50 {m['p50_ms']:6.1f} ms  p99 {m['p99_ms']:6.1f} ms  "
        f"CPU/request: server {m['server_cpu_ms']:.2f} ms, client {m['client_cpu_ms']:.2f} ms"
        f"{err}"
    )


def rotating(make: Callable[[str], dict[str, Any]], patients: list[str]) -> Callable[[int], Any]:
    return lambda i: make(patients[i % len(patients)])


def states_card(url: str, patient: str) -> str:
    """The uuid of a patient-view card of `patient` (the state card)."""
    response = httpx.post(url + PATIENT_VIEW, json=patient_view(patient), timeout=60)
    response.raise_for_status()
    cards = response.json()["cards"]
    card: str = next(c for c in cards if c["source"]["topic"]["code"] == "state")["uuid"]
    return card


# --- the parts -------------------------------------------------------------------------------


def sqlite_part(
    args: argparse.Namespace,
    runtime: str,
    store: str,
    folder: Path,
    counts: dict[str, int],
    *,
    sweeps: bool,
) -> dict[str, Any]:
    out: dict[str, Any] = {"runtime": runtime, "concurrency": [], "order_sign": []}
    patients = [p for p in counts if p.startswith("p")]
    seconds, repeats, warmup = args.duration, args.repeats, args.warmup
    with serving(store, runtime, args.workers, folder) as (server,):
        urls, pids = [server.url], [server.process.pid]
        say(f"SQLite, {runtime} runtime: `iechs serve` up ({args.workers_shown})")
        for c in args.levels if sweeps else args.levels[-1:]:
            m = measure(
                urls,
                PATIENT_VIEW,
                rotating(patient_view, patients),
                c,
                seconds=seconds,
                repeats=repeats,
                warmup=warmup,
                pids=pids,
            )
            out["concurrency"].append(m)
            say(line(f"patient-view ({runtime})", m))
        for c in args.order_levels if sweeps else ():
            m = measure(
                urls,
                ORDER_SIGN,
                rotating(order_sign, patients),
                c,
                seconds=seconds,
                repeats=repeats,
                warmup=warmup,
                pids=pids,
            )
            out["order_sign"].append(m)
            say(line(f"order-sign ({runtime})", m))
        if not sweeps:
            return out
        # Episode length: one episode at a time, at c=1.
        out["length"] = []
        for patient in ["p000", *(f"long-{n}" for n in LENGTHS)]:
            m = measure(
                urls,
                PATIENT_VIEW,
                rotating(patient_view, [patient]),
                1,
                seconds=args.sweep_seconds,
                repeats=repeats,
                warmup=min(warmup, 1.0),
                pids=pids,
            )
            m["inputs"] = counts[patient]
            out["length"].append(m)
            say(line(f"patient-view, {counts[patient]} decisions", m))
        # Feedback: patient-view and one-item feedback on episodes with 0, 100, 1000.
        out["feedback"] = []
        for n in FEEDBACKS:
            patient = f"fb-{n}"
            m = measure(
                urls,
                PATIENT_VIEW,
                rotating(patient_view, [patient]),
                1,
                seconds=args.sweep_seconds,
                repeats=repeats,
                warmup=min(warmup, 1.0),
                pids=pids,
            )
            m["feedbacks"] = n
            say(line(f"patient-view after {n} feedbacks", m))
            card = states_card(server.url, patient)
            fb = measure(
                urls,
                FEEDBACK,
                lambda _, card=card: {"feedback": [overridden(card)]},
                1,
                seconds=args.sweep_seconds / 2,
                repeats=1,
                warmup=0,
                pids=pids,
            )
            m["feedback_call"] = fb
            out["feedback"].append(m)
            say(line(f"  one-item feedback after {n}", fb))
    return out


def postgres_binaries() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@contextmanager
def postgres_server() -> Iterator[tuple[str, int]]:
    """A throwaway PostgreSQL server on a unix socket (as tests/test_audit_postgres.py starts
    one); yields the URL of a fresh database and the server's process id."""
    import psycopg

    bindir = postgres_binaries()
    assert bindir is not None
    base = Path(tempfile.mkdtemp(prefix="iechs-bench-pg-"))
    user = None
    if os.geteuid() == 0:  # initdb refuses to run as root
        owner = pwd.getpwnam("postgres")
        os.chown(base, owner.pw_uid, owner.pw_gid)
        user = "postgres"
    data = base / "data"

    def run(*argv: str | Path) -> None:
        subprocess.run([str(a) for a in argv], check=True, capture_output=True, user=user)

    run(bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8")
    options = (
        f"-c listen_addresses= -c unix_socket_directories={base} -c port=5432 "
        "-c max_connections=200 -c fsync=on"
    )
    run(bindir / "pg_ctl", "-D", data, "-l", base / "server.log", "-w", "-o", options, "start")
    try:
        url = f"postgresql://postgres@/postgres?host={base}&port=5432"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
        postmaster = int((data / "postmaster.pid").read_text().split()[0])
        yield f"postgresql://postgres@/bench?host={base}&port=5432", postmaster
    finally:
        run(bindir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


def postgres_part(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    if postgres_binaries() is None:
        return {"skipped": "no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb)"}
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return {"skipped": "psycopg is not installed (pip install 'iechs[postgres]')"}
    out: dict[str, Any] = {"runtime": "table", "workers_per_replica": 1, "replicas": {}}
    with postgres_server() as (url, postmaster):
        counts = fill_store(url, folder, sweeps=False)
        patients = [p for p in counts if p.startswith("p")]
        say(f"PostgreSQL: {len(counts)} episodes recorded")
        with serving(url, "table", 1 if args.has_workers else None, folder, 2) as servers:
            say("PostgreSQL: two `iechs serve` replicas up (one process each)")
            for n in (1, 2):  # all calls to the first replica, then spread over both
                rows = []
                for c in args.pg_levels:
                    m = measure(
                        [s.url for s in servers[:n]],
                        PATIENT_VIEW,
                        rotating(patient_view, patients),
                        c,
                        seconds=args.duration,
                        repeats=args.repeats,
                        warmup=args.warmup,
                        pids=[s.process.pid for s in servers[:n]],
                        database=[postmaster],
                    )
                    rows.append(m)
                    say(
                        line(f"PostgreSQL, {n} replica(s), patient-view", m)
                        + f", database {m['database_cpu_ms']:.2f} ms"
                    )
                out["replicas"][str(n)] = rows
    return out


# --- the report ------------------------------------------------------------------------------


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the service, with the figure measured and whether it is met."""
    out: list[dict[str, Any]] = []
    for runtime, part in results["sqlite"].items():
        at20 = next((m for m in part["concurrency"] if m["c"] == 20), None)
        if at20 is not None:
            out.append(
                {
                    "target": f"SQLite, {runtime}: p99 <= {TARGET_P99_MS:.0f} ms at c=20",
                    "value": round(at20["p99_ms"], 1),
                    "met": at20["p99_ms"] <= TARGET_P99_MS,
                }
            )
            out.append(
                {
                    "target": f"SQLite, {runtime}: >= {TARGET_RPS:.0f} requests/s at c=20",
                    "value": round(at20["rps"], 0),
                    "met": at20["rps"] >= TARGET_RPS,
                }
            )
        for sweep, key, what in (
            ("length", "inputs", "episode length"),
            ("feedback", "feedbacks", "feedbacks"),
        ):
            rows = part.get(sweep) or []
            if len(rows) >= 2:
                first, last = rows[0], rows[-1]
                # Flat: within 25% (and 1 ms) of the shortest episode's p50.
                flat = last["p50_ms"] <= 1.25 * first["p50_ms"] + 1.0
                out.append(
                    {
                        "target": f"SQLite, {runtime}: p50 flat with {what} "
                        f"({first[key]} -> {last[key]})",
                        "value": f"{first['p50_ms']:.1f} -> {last['p50_ms']:.1f} ms",
                        "met": flat,
                    }
                )
    pg = results.get("postgres", {})
    reps = pg.get("replicas", {})
    if "1" in reps and "2" in reps:
        for one, two in zip(reps["1"], reps["2"], strict=True):
            out.append(
                {
                    "target": f"PostgreSQL: 2 replicas > 1 replica, requests/s at c={one['c']}",
                    "value": f"{one['rps']:.0f} -> {two['rps']:.0f}",
                    "met": two["rps"] > one["rps"],
                }
            )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (under 90 s)")
    parser.add_argument("--json", metavar="FILE", help="write every figure to FILE (JSON)")
    parser.add_argument(
        "--runtime", choices=("both", "table", "statechart"), default="both", help="runtimes"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="`iechs serve --workers N` (default: the server's default)",
    )
    parser.add_argument("--duration", type=float, help="seconds per measured run")
    parser.add_argument("--repeats", type=int, help="measured runs per figure")
    parser.add_argument("--no-postgres", action="store_true", help="skip PostgreSQL")
    args = parser.parse_args()
    loop = _client_setup()
    args.has_workers = serve_supports_workers()
    if args.workers is not None and not args.has_workers:
        parser.error("this `iechs serve` has no --workers option")
    args.workers_shown = (
        f"--workers {args.workers}"
        if args.workers is not None
        else ("default workers" if args.has_workers else "one process, no --workers option")
    )
    if args.quick:
        args.levels, args.order_levels, args.pg_levels = (1, 20), (20,), (20,)
        args.duration = args.duration or 2.0
        args.repeats = args.repeats or 1
        args.warmup, args.sweep_seconds = 0.5, 1.0
    else:
        args.levels, args.order_levels, args.pg_levels = (1, 8, 20, 32), (1, 20), (8, 20, 32)
        args.duration = args.duration or 5.0
        args.repeats = args.repeats or 3
        args.warmup, args.sweep_seconds = 2.0, 2.0
    runtimes = ("table", "statechart") if args.runtime == "both" else (args.runtime,)
    results: dict[str, Any] = {
        "benchmark": "service",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "config": {
            "quick": args.quick,
            "workers": args.workers,
            "serve_has_workers_option": args.has_workers,
            "seconds_per_run": args.duration,
            "repeats": args.repeats,
            "warmup_s": args.warmup,
            "patients": PATIENTS,
            "client": "httpx.AsyncClient, one client and keep-alive connection per concurrent "
            f"caller, closed loop, in the benchmark's process, on {loop}",
        },
        "sqlite": {},
    }
    with tempfile.TemporaryDirectory(prefix="iechs-service-bench-") as tmp:
        folder = Path(tmp)
        for runtime in runtimes:
            store = str(folder / f"bench-{runtime}.db")
            # --quick: the sweeps with the first runtime only.
            sweeps = not args.quick or runtime == runtimes[0]
            counts = fill_store(store, folder, sweeps=sweeps)
            say(f"SQLite store {runtime}: {len(counts)} episodes recorded")
            results["sqlite"][runtime] = sqlite_part(
                args, runtime, store, folder, counts, sweeps=sweeps
            )
        if args.no_postgres:
            results["postgres"] = {"skipped": "--no-postgres"}
        else:
            results["postgres"] = postgres_part(args, folder)
            if "skipped" in results["postgres"]:
                say(f"PostgreSQL skipped: {results['postgres']['skipped']}")
    results["targets"] = targets(results)
    results["elapsed_s"] = round(time.monotonic() - STARTED, 1)
    print()
    print("Targets (issue 14, service):")
    for t in results["targets"]:
        print(f"  {'met   ' if t['met'] else 'MISSED'}  {t['target']}: {t['value']}")
    print(f"done in {results['elapsed_s']} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
