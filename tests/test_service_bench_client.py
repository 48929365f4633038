"""The load client of benchmarks/service_bench.py (a small HTTP/1.1 client on asyncio):

- against a stand-in server on this loop: an answer that is not 200, not JSON, or JSON
  without a `cards` list is counted as bad, and a good one is not, with a `Content-Length`
  body, a chunked one, and after `Connection: close` (the client connects again); a latency
  runs until the answer's last byte, not its headers;
- against a real `iechs serve`: hook calls and feedback calls are answered and counted good,
  one per latency; calls the service refuses (400) are counted bad, and so are good answers
  that the check of the other endpoint refuses.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from iechs import Engine
from iechs.audit import run_recorded
from sibling import load

S = load("test_service_helpers")
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "service_bench.py"
CARDS = json.dumps({"cards": [{"summary": "x"}]}).encode()
SLOW = 0.05  # seconds between a slow answer's headers and its body


def bench() -> Any:
    spec = importlib.util.spec_from_file_location("_service_bench", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


B = bench()


def _answer(status: int, body: bytes, *extra: str) -> bytes:
    head = [f"HTTP/1.1 {status} X", "Content-Type: application/json", *extra]
    if not any(h.lower().startswith("transfer-encoding") for h in extra):
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _chunked(body: bytes) -> bytes:
    half = len(body) // 2
    parts = [body[:half], body[half:]]
    out = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in parts)
    return out + b"0\r\nX-Trailer: 1\r\n\r\n"


async def _stand_in(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer each request by its path (GET /cds-services: 200)."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            method, path, _ = lines[0].split(" ")
            length = next(
                (
                    int(v)
                    for k, _, v in (h.partition(":") for h in lines[1:])
                    if k == "Content-Length"
                ),
                0,
            )
            body = await reader.readexactly(length)
            if method == "POST" and json.loads(body).get("hook") != "patient-view":
                writer.write(_answer(400, b'{"error": "not a patient-view call"}'))
            elif path in {"/cds-services", "/ok"}:
                writer.write(_answer(200, CARDS))
            elif path == "/text":
                writer.write(_answer(200, b"not json", "Content-Type: text/plain"))
            elif path == "/no-cards":
                writer.write(_answer(200, b'{"recorded": 1}'))
            elif path == "/cards-not-a-list":
                writer.write(_answer(200, b'{"cards": {}}'))
            elif path == "/error":
                writer.write(_answer(500, CARDS))
            elif path == "/chunked":
                writer.write(_answer(200, _chunked(CARDS), "Transfer-Encoding: chunked"))
            elif path == "/close":
                writer.write(_answer(200, CARDS, "Connection: close"))
                await writer.drain()
                writer.close()
                return
            elif path == "/slow":
                whole = _answer(200, CARDS)
                cut = whole.index(b"\r\n\r\n") + 4
                writer.write(whole[:cut])
                await writer.drain()
                await asyncio.sleep(SLOW)
                writer.write(whole[cut:])
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


def _run(path: str, concurrency: int = 2, seconds: float = 0.3) -> tuple[list[float], int]:
    async def main() -> tuple[list[float], int]:
        server = await asyncio.start_server(_stand_in, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            latencies, _, _, bad = await B._load(
                [f"http://127.0.0.1:{port}"],
                path,
                B.rotating(B.patient_view, ["p000"]),
                concurrency,
                seconds,
            )
        finally:
            server.close()
        return latencies, bad

    return asyncio.run(main())


@pytest.mark.parametrize("path", ["/ok", "/chunked", "/close"])
def test_good_answers_are_not_bad(path: str) -> None:
    latencies, bad = _run(path)
    assert len(latencies) > 10
    assert bad == 0
    assert all(0 < ms < 1000 for ms in latencies)


@pytest.mark.parametrize("path", ["/text", "/no-cards", "/cards-not-a-list", "/error"])
def test_bad_answers_are_counted(path: str) -> None:
    latencies, bad = _run(path)
    assert len(latencies) > 10
    assert bad == len(latencies)


def test_latency_runs_to_the_last_byte() -> None:
    latencies, bad = _run("/slow", concurrency=1, seconds=0.25)
    assert bad == 0
    assert latencies
    assert min(latencies) >= SLOW * 1000


def test_request_bytes() -> None:
    body = b'{"a": 1}'
    assert B.request_bytes("http://127.0.0.1:8123", "POST", "/x", body) == (
        b"POST /x HTTP/1.1\r\nHost: 127.0.0.1:8123\r\nContent-Type: application/json\r\n"
        b'Content-Length: 8\r\n\r\n{"a": 1}'
    )


def test_against_iechs_serve(tmp_path: Path, engine: Engine) -> None:
    location = str(tmp_path / "audit.db")
    patient, _ = run_recorded(engine, S.NO_STEROID, location)
    roomy = ("--feedback-per-card", "100000", "--feedback-per-minute", "100000")
    with S.serving(location, "--workers", "1", *roomy, log_dir=tmp_path) as server:
        urls = [server.url]
        good = B.rotating(B.patient_view, [patient])
        latencies, elapsed, cpu, bad = B.run_async(B._load(urls, B.PATIENT_VIEW, good, 2, 0.5))
        assert bad == 0
        assert len(latencies) > 5
        assert all(ms > 0 for ms in latencies)
        assert elapsed >= 0.5
        assert cpu > 0

        def no_context(_: int) -> dict[str, Any]:
            return {"hook": "patient-view", "hookInstance": "not-a-uuid"}

        latencies, _, _, bad = B.run_async(B._load(urls, B.PATIENT_VIEW, no_context, 2, 0.3))
        assert latencies
        assert bad == len(latencies)
        # 200 answers, but not what the feedback check expects
        latencies, _, _, bad = B.run_async(
            B._load(urls, B.PATIENT_VIEW, good, 1, 0.3, check=B.has_recorded)
        )
        assert latencies
        assert bad == len(latencies)
        # feedback answers pass the feedback check, and not the hooks' one
        card = B.states_card(server.url, patient)

        def feedback(_: int) -> dict[str, Any]:
            return {"feedback": [B.overridden(card)]}

        for check, wrong in ((B.has_recorded, False), (B.has_cards, True)):
            latencies, _, _, bad = B.run_async(
                B._load(urls, B.FEEDBACK, feedback, 1, 0.2, check=check)
            )
            assert latencies
            assert bad == (len(latencies) if wrong else 0)
