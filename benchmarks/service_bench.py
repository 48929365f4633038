"""CDS Hooks service throughput and latency on this machine (a script, not a test).

    .venv/bin/python benchmarks/service_bench.py [--quick] [--json FILE] [--workers N]
        [--runtime both|table|statechart] [--duration S] [--repeats N] [--no-postgres]

What it measures, each with a warm-up that is thrown away and repeats (median and spread):

- **Concurrency.** `iechs serve` on a SQLite store, started as a separate process, is sent
  patient-view calls (and order-sign, a tocilizumab-only draft order) by `c` clients at once
  (c = 1, 8, 20, 32), each a task with its own keep-alive HTTP/1.1 connection, sending its
  next call as soon as the last is answered (a closed loop). Every call is a new
  hook call (its own `hookInstance`, so the service keeps new cards each time) about one of 40
  patients (13 and 42 recorded inputs). Requests per second, p50 and p99 of the client-side
  latency (from just before the request is written to when the answer's last byte has been
  read), for the table and the statechart runtime. Every answer is checked: one that is not
  200, or whose body is not JSON with a `cards` list (feedback: a `recorded` list), is counted
  in `errors` (printed as ERRORS).
- **Episode length.** patient-view at c=1 on episodes of about 13, 100 and 1,000 recorded
  inputs (observations every 15 minutes before the course of the example patient).
- **Feedback.** patient-view at c=1, and one-item feedback calls, on episodes with 0, 100 and
  1,000 feedbacks recorded as the service records them (`advance` records with client and card).
- **PostgreSQL**, when the server binaries are installed (`/usr/lib/postgresql/*/bin/initdb`,
  as the tests find them): a throwaway server (unix socket), the same patients, two `iechs
  serve` replicas on the same database (each `--workers 1`: a replica is a process), all the
  calls to one of them, or the clients' connections spread over both. The two set-ups
  alternate run by run (at least 3 runs each; the medians are compared), so what else the
  machine does falls on both alike. The database's CPU time per request is printed too.

The client runs in this process and shares the machine's cores with the servers (and with
whatever else runs). It is a small HTTP/1.1 client on asyncio (uvloop's loop when installed),
one `asyncio.Protocol` per connection, writing requests encoded before they are timed and
reading answers with a `Content-Length` or chunked body: about a tenth of the CPU per request
httpx.AsyncClient took, which was more than the server's own and, on two cores, competed with
the servers it measured. The CPU time per request of the servers (all their processes, from
/proc) and of the client is printed beside each figure; it depends much less than the latencies on
what else the machine is doing. `--json FILE` writes every figure. `--quick` (under 90 s) is
what `benchmarks/bench.py` runs: c = 1 and 20 with the table runtime, which alone has the
sweeps and order-sign, and c = 20 with the statechart runtime, one short run each; c = 20
with PostgreSQL, three short runs of each set-up, alternating. Progress is printed as it goes.
"""

from __future__ import annotations

import argparse
import asyncio
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
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import httpx
import msgspec

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
    doc: dict[str, Any] = json.loads(NO_STEROID.read_text())
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


# The load client: plain asyncio (uvloop's loop when installed), one `asyncio.Protocol` per
# keep-alive HTTP/1.1 connection. httpx.AsyncClient took more CPU per call than the server
# answering it (1.3-2 ms), and on a machine of two cores it competed with the servers it
# measured; this client takes a small fraction of that, and checks every answer all the same.

#: The answers that have no body (RFC 9112, 6.3).
_NO_BODY = frozenset({204, 304})


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection of the load client, one call at a time: `call` writes
    the request (bytes made before the call is timed) and waits for the whole answer: the
    status line, the header lines up to the blank line, then a `Content-Length` body, a
    chunked one, or (neither) the bytes up to the end of the connection. `finished` is the
    `perf_counter` time when the answer's last byte had been read."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.finished = 0.0
        self.closing = False  # the server said `Connection: close`, or closed it
        self._reset()

    def _reset(self) -> None:
        self.body_at = -1  # where the body starts in the buffer, -1 until the headers are in
        self.status = 0
        self.length: int | None = None  # Content-Length; None: chunked or up to the end
        self.chunked = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of it
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is not None:
            self._advance()

    def eof_received(self) -> bool:
        self.closing = True
        self._advance()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self._advance()

    async def call(self, request: bytes) -> tuple[int, bytes]:
        """Send `request` and return the answer's status and body."""
        assert self.transport is not None
        assert self.waiter is None
        if self.closing:
            raise ConnectionError("the server closed the connection")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.waiter

    def _advance(self) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        try:
            answer = self._answer()
        except Exception as exc:  # a malformed answer
            self.waiter = None
            self.closing = True
            waiter.set_exception(exc)
            return
        if answer is not None:
            self.finished = time.perf_counter()
            self.waiter = None
            waiter.set_result(answer)
        elif self.closing:
            self.waiter = None
            waiter.set_exception(ConnectionError("the server closed the connection mid-answer"))

    def _answer(self) -> tuple[int, bytes] | None:
        """The status and body of the answer in the buffer (taken out of it), None while it is
        incomplete."""
        buffer = self.buffer
        while self.body_at < 0:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return None
            self._headers(bytes(buffer[:end]).split(b"\r\n"))
            if 100 <= self.status < 200:  # an interim answer: the real one follows
                del buffer[: end + 4]
                self._reset()
                continue
            self.body_at = end + 4
        start = self.body_at
        if self.length is not None:
            stop = start + self.length
            if len(buffer) < stop:
                return None
            body = bytes(buffer[start:stop])
        elif self.chunked:
            found = _dechunk(buffer, start)
            if found is None:
                return None
            body, stop = found
        else:  # no length: the body ends with the connection
            if not self.closing:
                return None
            stop = len(buffer)
            body = bytes(buffer[start:stop])
        del buffer[:stop]
        status = self.status
        self._reset()
        return status, body

    def _headers(self, lines: list[bytes]) -> None:
        version, _, rest = lines[0].partition(b" ")
        if not version.startswith(b"HTTP/1."):
            raise ValueError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        self.status = int(rest[:3])
        close = version == b"HTTP/1.0"  # unless it says keep-alive (below)
        for header in lines[1:]:
            name, _, value = header.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                self.length = int(value)
            elif name == b"transfer-encoding":
                self.chunked = b"chunked" in value.lower()
            elif name == b"connection":
                value = value.lower()
                close = b"close" in value or (close and b"keep-alive" not in value)
        self.closing = self.closing or close
        if self.chunked:
            self.length = None  # RFC 9112, 6.3: chunked wins over Content-Length
        elif self.status in _NO_BODY:
            self.length = 0


def _dechunk(buffer: bytearray, start: int) -> tuple[bytes, int] | None:
    """A chunked body from `start` and where it ends, None while it is incomplete."""
    parts: list[bytes] = []
    at = start
    while True:
        eol = buffer.find(b"\r\n", at)
        if eol < 0:
            return None
        size = int(bytes(buffer[at:eol]).split(b";", 1)[0].strip(), 16)
        at = eol + 2
        if size == 0:  # the last chunk, then trailer lines up to a blank line
            if buffer[at : at + 2] == b"\r\n":
                return b"".join(parts), at + 2
            end = buffer.find(b"\r\n\r\n", at)
            return None if end < 0 else (b"".join(parts), end + 4)
        if len(buffer) < at + size + 2:
            return None
        parts.append(bytes(buffer[at : at + size]))
        at += size + 2


def has_cards(body: bytes) -> bool:
    """Whether `body` is a CDS Hooks answer: a JSON object with a `cards` list."""
    try:
        answer = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return False
    return isinstance(answer, dict) and isinstance(answer.get("cards"), list)


def has_recorded(body: bytes) -> bool:
    """Whether `body` is a feedback answer: a JSON object with a `recorded` list (what was
    recorded of each feedback item)."""
    try:
        answer = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return False
    return isinstance(answer, dict) and isinstance(answer.get("recorded"), list)


def _head(url: str, method: str, path: str) -> str:
    return f"{method} {path} HTTP/1.1\r\nHost: {urlsplit(url).netloc}\r\n"


def _post_prefix(url: str, path: str) -> bytes:
    """A POST's request line and headers, up to its `Content-Length` value."""
    return (
        _head(url, "POST", path) + "Content-Type: application/json\r\nContent-Length: "
    ).encode()


def request_bytes(url: str, method: str, path: str, body: bytes | None = None) -> bytes:
    """An HTTP/1.1 request to `url` (keep-alive, HTTP/1.1's default), with a JSON body if any:
    the headers that matter to the service, and no others (no Authorization: the benchmark's
    servers require none)."""
    if body is None:
        return (_head(url, method, path) + "\r\n").encode()
    assert method == "POST"
    return _post_prefix(url, path) + b"%d\r\n\r\n" % len(body) + body


async def _connect(url: str) -> _Connection:
    parts = urlsplit(url)
    assert parts.hostname is not None, url
    assert parts.port is not None, url
    _, connection = await asyncio.get_running_loop().create_connection(
        _Connection, parts.hostname, parts.port
    )
    return connection


async def _load(
    urls: list[str],
    path: str,
    bodies: Callable[[int], dict[str, Any]],
    concurrency: int,
    seconds: float,
    *,
    check: Callable[[bytes], bool] = has_cards,
) -> tuple[list[float], float, float, int]:
    """`concurrency` callers, each with its own keep-alive connection (spread over `urls`),
    calling for `seconds`, each its next call as soon as the last answer is in: latencies in
    ms (from just before the request is written to when the answer's last byte has been read),
    the elapsed time, the client's CPU seconds, and the bad answers (not 200, or a body that
    `check` refuses). Each request is encoded before its call is timed (the client's CPU is
    counted all the same)."""
    targets = [urls[k % len(urls)] for k in range(concurrency)]
    connections: list[_Connection] = []
    counter = itertools.count()
    latencies: list[float] = []
    errors = 0
    try:
        for url in targets:
            connections.append(await _connect(url))
        # Open the connections first: the timed loop measures calls, not TCP handshakes.
        for url, connection in zip(targets, connections, strict=True):
            status, _ = await connection.call(request_bytes(url, "GET", "/cds-services"))
            if status != 200:
                raise RuntimeError(f"GET {url}/cds-services: {status}")
        end = time.perf_counter() + seconds

        async def caller(k: int) -> None:
            nonlocal errors
            url = targets[k]
            prefix = _post_prefix(url, path)
            while time.perf_counter() < end:
                body = json.dumps(bodies(next(counter))).encode()
                request = prefix + b"%d\r\n\r\n" % len(body) + body
                started = time.perf_counter()
                connection = connections[k]
                if connection.closing:  # the server closed it: a new one, in this call's time
                    connection.transport.close()  # type: ignore[union-attr]
                    connection = connections[k] = await _connect(url)
                status, answer = await connection.call(request)
                latencies.append((connection.finished - started) * 1000)
                if status != 200 or not check(answer):
                    errors += 1

        cpu = time.process_time()
        began = time.perf_counter()
        await asyncio.wait_for(
            asyncio.gather(*(caller(k) for k in range(concurrency))), seconds + 60
        )
        elapsed = time.perf_counter() - began
        cpu = time.process_time() - cpu
    finally:
        for connection in connections:
            if connection.transport is not None:
                connection.transport.close()
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
    """The client's event loop: uvloop's when installed (`iechs[service]` brings it)."""
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
    check: Callable[[bytes], bool] = has_cards,
) -> dict[str, Any]:
    """Requests per second and latency percentiles: the median of `repeats` runs of `seconds`
    each (after `warmup` seconds thrown away), with the spread of the runs; with the servers'
    `pids`, the servers' CPU time per request too. `errors`: the answers that were not 200 or
    whose body `check` refused."""
    if warmup > 0:
        run_async(_load(urls, path, bodies, concurrency, warmup, check=check))
    runs = [
        one_run(urls, path, bodies, concurrency, seconds, pids=pids, database=database, check=check)
        for _ in range(repeats)
    ]
    return summary(runs, concurrency, seconds)


def one_run(
    urls: list[str],
    path: str,
    bodies: Callable[[int], dict[str, Any]],
    concurrency: int,
    seconds: float,
    *,
    pids: list[int] | None,
    database: list[int] | None,
    check: Callable[[bytes], bool] = has_cards,
) -> dict[str, Any]:
    """One measured run of `seconds`: its figures (see `measure`)."""
    before = cpu_seconds(pids) if pids else None
    db_before = cpu_seconds(database) if database else None
    latencies, elapsed, cpu, bad = run_async(
        _load(urls, path, bodies, concurrency, seconds, check=check)
    )
    after = cpu_seconds(pids) if pids else None
    db_after = cpu_seconds(database) if database else None
    return {
        "errors": bad,
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


def summary(runs: list[dict[str, Any]], concurrency: int, seconds: float) -> dict[str, Any]:
    """The median of the runs' figures, with the spread of requests/s and p99."""

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
        "errors": sum(r["errors"] for r in runs),
        "repeats": len(runs),
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
        hooks = (
            ("concurrency", "patient-view", PATIENT_VIEW, patient_view, args.levels),
            ("order_sign", "order-sign", ORDER_SIGN, order_sign, args.order_levels),
        )
        for key, label, path, body, levels in hooks:
            # Without the sweeps: patient-view at the highest level only, no order-sign.
            for c in levels if sweeps else (levels[-1:] if key == "concurrency" else ()):
                m = measure(
                    urls,
                    path,
                    rotating(body, patients),
                    c,
                    seconds=seconds,
                    repeats=repeats,
                    warmup=warmup,
                    pids=pids,
                )
                out[key].append(m)
                say(line(f"{label} ({runtime})", m))
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

            def one_feedback(_: int, card: str = card) -> dict[str, Any]:
                return {"feedback": [overridden(card)]}

            fb = measure(
                urls,
                FEEDBACK,
                one_feedback,
                1,
                seconds=args.sweep_seconds / 2,
                repeats=1,
                warmup=0,
                pids=pids,
                check=has_recorded,
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
            # All calls to the first replica, or spread over both: the two set-ups alternate,
            # run by run, so what else the machine does falls on both alike (at least 3 runs
            # each, the median compared).
            rounds = max(3, args.repeats)
            rows: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
            for c in args.pg_levels:
                bodies = rotating(patient_view, patients)
                runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
                for n in (1, 2):
                    urls = [s.url for s in servers[:n]]
                    run_async(_load(urls, PATIENT_VIEW, bodies, c, args.warmup))
                for _ in range(rounds):
                    for n in (1, 2):
                        urls = [s.url for s in servers[:n]]
                        pids = [s.process.pid for s in servers[:n]]
                        runs[n].append(
                            one_run(
                                urls,
                                PATIENT_VIEW,
                                bodies,
                                c,
                                args.duration,
                                pids=pids,
                                database=[postmaster],
                            )
                        )
                for n in (1, 2):
                    m = summary(runs[n], c, args.duration)
                    rows[n].append(m)
                    say(
                        line(f"PostgreSQL, {n} replica(s), patient-view", m)
                        + f", database {m['database_cpu_ms']:.2f} ms"
                    )
            out["replicas"] = {str(n): rows[n] for n in (1, 2)}
            out["alternating_runs"] = rounds
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
            "client": "asyncio HTTP/1.1 client (an asyncio.Protocol per connection), one "
            "keep-alive connection per concurrent caller, closed loop, every answer checked "
            f"(200 and its JSON), in the benchmark's process, on {loop}",
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
