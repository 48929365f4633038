"""Helpers of the service tests (no tests here): run `python -m iechs serve` as a separate
process on a free loopback port, and build CDS Hooks requests. The test_service* modules load
this file with `importlib` (tests are not a package)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SERVICE_EXAMPLES = EXAMPLES / "service"
NO_STEROID = SERVICE_EXAMPLES / "iec-hs-no-steroid.json"
PATIENT_VIEW = "/cds-services/iechs-patient-view"
ORDER_SIGN = "/cds-services/iechs-order-sign"
IECHS_SYSTEM = "https://iechs.dev/fhir/CodeSystem/iechs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    """`python -m iechs serve` running in its own process."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)


def start_server(store: str, *extra: str, log_dir: Path, timeout: float = 60.0) -> Server:
    """Start a server on a free port and wait until it answers; a server that dies (e.g. the
    port was taken meanwhile) is retried on another port."""
    for _ in range(3):
        port = free_port()
        log = log_dir / f"serve-{port}.log"
        with log.open("wb") as handle:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "iechs",
                    "serve",
                    "--store",
                    store,
                    "--port",
                    str(port),
                    *extra,
                ],
                stdout=handle,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        server = Server(process, port, log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"{server.url}/openapi.json", timeout=2).status_code == 200:
                    return server
            except httpx.TransportError:
                time.sleep(0.1)
        server.stop()
        if "address already in use" not in server.output().lower():
            raise RuntimeError(f"iechs serve did not start:\n{server.output()}")
    raise RuntimeError("iechs serve found no free port")


@contextmanager
def serving(store: str, *extra: str, log_dir: Path) -> Iterator[Server]:
    server = start_server(store, *extra, log_dir=log_dir)
    try:
        yield server
    finally:
        server.stop()


def patient_view(patient: str, now: str | None = None, **more: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/haem-1", "patientId": patient},
        **more,
    }
    if now is not None:
        body["extension"] = {"dev.iechs.now": now}
    return body


def medication_request(
    drug: str,
    rid: str | None = None,
    *,
    dose: float | None = None,
    unit: str | None = None,
    route: str | None = None,
    indication: str | None = None,
    status: str = "draft",
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "status": status,
        "intent": "order",
        "medicationCodeableConcept": {"text": drug},
    }
    if rid is not None:
        resource["id"] = rid
    dosage: dict[str, Any] = {}
    if route is not None:
        dosage["route"] = {"text": route}
    if dose is not None:
        dosage["doseAndRate"] = [{"doseQuantity": {"value": dose, "unit": unit}}]
    if dosage:
        resource["dosageInstruction"] = [dosage]
    if indication is not None:
        resource["reasonCode"] = [{"coding": [{"system": IECHS_SYSTEM, "code": indication}]}]
    return resource


def order_sign(patient: str, *orders: dict[str, Any], now: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hook": "order-sign",
        "hookInstance": "2d1f6a0e-8a8e-4c43-9a8b-52d2c1f0e6a1",
        "context": {
            "userId": "Practitioner/haem-1",
            "patientId": patient,
            "draftOrders": {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [{"resource": o} for o in orders],
            },
        },
    }
    if now is not None:
        body["extension"] = {"dev.iechs.now": now}
    return body


def topics(cards: list[dict[str, Any]]) -> list[str]:
    """The topic code of each card: `state` or the alert's code."""
    return [str(c["source"]["topic"]["code"]) for c in cards]


def write_timeline(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path
