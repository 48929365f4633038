"""Two service processes over one PostgreSQL store: requests for one patient alternate between
them, feedback is written through both (one after the other, and at the same time), and the
episode and the audit chain stay one: same answers from both, `iechs audit verify` and
`iechs audit replay` pass, no record number twice, every feedback recorded once.

The throwaway PostgreSQL server is the one of tests/test_audit_postgres.py (its fixture)."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from iechs import Engine
from iechs.audit import open_log, open_store, run_recorded
from iechs.audit.chain import read_record
from iechs.cli import main


def _load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(
        f"_{name}", Path(__file__).with_name(f"{name}.py")
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


S = _load("test_service_helpers")
server = _load("test_audit_postgres").server  # the throwaway PostgreSQL server (a fixture)
PATIENT = "svc-no-steroid"
ROUNDS = 6


@pytest.fixture
def replicas(server: Any, engine: Engine, tmp_path: Path) -> Iterator[tuple[str, Any, Any]]:
    url = server.new_database()
    run_recorded(engine, S.NO_STEROID, url)
    # Replicas behind one address (--public-url): their cards link to the same review page.
    public = ("--public-url", "https://cds.example.org")
    with (
        S.serving(url, *public, log_dir=tmp_path) as a,
        S.serving(url, *public, log_dir=tmp_path) as b,
    ):
        yield url, a, b


def _cards(client: httpx.Client, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    cards: list[dict[str, Any]] = response.json()["cards"]
    return cards


def _override(client: httpx.Client, card: str, comment: str) -> int:
    body = {
        "feedback": [
            {
                "card": card,
                "outcome": "overridden",
                "overrideReason": {"userComment": comment},
                "outcomeTimestamp": "2026-05-17T09:45:00Z",
            }
        ]
    }
    response = client.post(f"{S.ORDER_SIGN}/feedback", json=body)
    assert response.status_code == 200, response.text
    seq: int = response.json()["recorded"][0]["seq"]
    return seq


def test_two_replicas_keep_one_episode_and_one_chain(
    replicas: tuple[str, Any, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    url, a, b = replicas
    order = S.order_sign(PATIENT, S.medication_request("tocilizumab", "t1"))
    view = S.patient_view(PATIENT)
    comments: list[str] = []
    seqs: list[int] = []
    with (
        httpx.Client(base_url=a.url, timeout=60) as ca,
        httpx.Client(base_url=b.url, timeout=60) as cb,
    ):
        for i in range(ROUNDS):
            first, second = (ca, cb) if i % 2 == 0 else (cb, ca)
            # Both replicas see the same episode and give the same cards (same uuids).
            assert _cards(first, S.PATIENT_VIEW, view) == _cards(second, S.PATIENT_VIEW, view)
            (card,) = _cards(first, S.ORDER_SIGN, order)
            assert card["indicator"] == "critical"
            # Feedback on a card one replica issued, through the other one.
            comments.append(f"round {i}")
            seqs.append(_override(second, card["uuid"], comments[-1]))
        # Feedback through both at once, for the same patient: one of each pair waits for or
        # loses the race on the episode, reloads it and writes after the other.
        (card,) = _cards(ca, S.ORDER_SIGN, order)
        with ThreadPoolExecutor(max_workers=2) as pool:
            for i in range(ROUNDS):
                pair = [f"together {i} a", f"together {i} b"]
                comments += pair
                futures = [
                    pool.submit(_override, client, card["uuid"], comment)
                    for client, comment in zip((ca, cb), pair, strict=True)
                ]
                seqs += [f.result() for f in futures]
        # After all that, the replicas still agree.
        assert _cards(ca, S.PATIENT_VIEW, view) == _cards(cb, S.PATIENT_VIEW, view)
    assert "Traceback" not in a.output() + b.output()
    # One chain: every feedback recorded once, each under its own record number, in order.
    with open_store(url) as store:
        head = store.head()
        stored = store.episode(PATIENT)
    assert stored is not None
    assert len(set(seqs)) == len(seqs) == len(comments)
    with open_log(url) as log, log.reading() as view_:
        records = [read_record(item)[0] for item in view_.records()]
    assert all(r is not None for r in records)
    assert [r.seq for r in records if r is not None] == list(range(1, head.seq + 1))
    assert stored.steps == len(records)  # the episode's snapshot has every step
    recorded = {
        json.dumps(r.reason): r.seq
        for r in records
        if r is not None and r.reason and "CDS Hooks feedback" in r.reason
    }
    assert len(recorded) == len(comments)
    for comment, seq in zip(comments, seqs, strict=True):
        (reason,) = [k for k in recorded if f'comment: \\"{comment}\\"' in k]
        assert recorded[reason] == seq
    capsys.readouterr()
    assert main(["audit", "verify", url]) == 0
    assert f"INTACT: {head.seq} records" in " ".join(capsys.readouterr().out.split())
    assert main(["audit", "replay", url]) == 0
    assert "SAME" in capsys.readouterr().out
