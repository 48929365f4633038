"""CDS Hooks service latency on this machine (a script, not a test).

    .venv/bin/python benchmarks/service_bench.py [--requests N] [--runtime statechart|table]

Records two patients in a fresh SQLite store (`examples/service/iec-hs-no-steroid.json`, 13
inputs, and `examples/tocilizumab-monotherapy-deviation.json`, 42), starts `iechs serve` on it
as a separate process on a free loopback port, and sends N requests per endpoint and patient
from one client over one keep-alive connection, one at a time. Prints p50/p99 (and max) of the
client-side latency per endpoint: patient-view, and order-sign with a tocilizumab-only draft
order (a critical card for the first patient). Each request restores the episode from the store
and answers with the engine's decisions, so the cost grows with the episode's length.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from iechs import Engine, load_guideline
from iechs.audit import run_recorded

ROOT = Path(__file__).resolve().parents[1]
PATIENTS = {
    "svc-no-steroid": ROOT / "examples" / "service" / "iec-hs-no-steroid.json",
    "il6-monotherapy": ROOT / "examples" / "tocilizumab-monotherapy-deviation.json",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def patient_view(patient: str) -> dict[str, Any]:
    return {
        "hook": "patient-view",
        "hookInstance": "b3f1c2a4-5d6e-4f70-8a9b-0c1d2e3f4a5b",
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
        "hookInstance": "b3f1c2a4-5d6e-4f70-8a9b-0c1d2e3f4a5b",
        "context": {
            "userId": "Practitioner/bench",
            "patientId": patient,
            "draftOrders": {"resourceType": "Bundle", "entry": [{"resource": order}]},
        },
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def measure(client: httpx.Client, path: str, body: dict[str, Any], n: int) -> list[float]:
    for _ in range(max(5, n // 20)):  # warm-up: first requests pay for lazy imports and caches
        client.post(path, json=body).raise_for_status()
    times = []
    for _ in range(n):
        started = time.perf_counter()
        response = client.post(path, json=body)
        times.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500, help="requests per measurement")
    parser.add_argument("--runtime", choices=("statechart", "table"), default="statechart")
    args = parser.parse_args()
    engine = Engine(load_guideline())
    with tempfile.TemporaryDirectory() as folder:
        store = str(Path(folder) / "bench.db")
        inputs = {}
        for patient, path in PATIENTS.items():
            _, (decisions, _) = run_recorded(engine, path, store)
            inputs[patient] = len(decisions)
        port = free_port()
        log = Path(folder) / "serve.log"
        with log.open("wb") as handle:
            server = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "iechs",
                    "serve",
                    "--store",
                    store,
                    "--port",
                    str(port),
                    "--runtime",
                    args.runtime,
                ],
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx.get(f"{url}/openapi.json").raise_for_status()
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        print(log.read_text(), file=sys.stderr)
                        return 1
                    time.sleep(0.1)
            print(
                f"iechs serve ({args.runtime} runtime), SQLite store, {args.requests} sequential "
                "requests per line over one keep-alive connection; client-side latency in ms"
            )
            print(f"{'endpoint':<13} {'patient (decisions)':<24} {'p50':>7} {'p99':>7} {'max':>7}")
            with httpx.Client(base_url=url, timeout=30) as client:
                for patient in PATIENTS:
                    for name, path, body in (
                        ("patient-view", "/cds-services/iechs-patient-view", patient_view),
                        ("order-sign", "/cds-services/iechs-order-sign", order_sign),
                    ):
                        times = measure(client, path, body(patient), args.requests)
                        label = f"{patient} ({inputs[patient]})"
                        print(
                            f"{name:<13} {label:<24} {statistics.median(times):7.2f} "
                            f"{percentile(times, 99):7.2f} {max(times):7.2f}"
                        )
        finally:
            server.terminate()
            server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
