"""Two service processes over one PostgreSQL store: requests for one patient alternate between
them, feedback is written through both (one after the other, and at the same time), and the
episode and the audit chain stay one: same answers from both, `iechs audit verify` and
`iechs audit replay` pass, no record number twice, every feedback recorded once. A JWT is
taken once by the two together (the used `jti`s are kept in the store), and a card issued to
one client takes no feedback from another through either.

The throwaway PostgreSQL server is the one of tests/test_audit_postgres.py (its fixture)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from iechs import Engine
from iechs.audit import open_log, open_store, run_recorded
from iechs.audit.chain import read_record
from iechs.cli import main
from iechs.service.tables import ServiceTables
from iechs.service.tokens import UsedTokens
from sibling import load

S = load("test_service_helpers")
server = load("test_audit_postgres").server  # the throwaway PostgreSQL server (a fixture)
PATIENT = "svc-no-steroid"
ROUNDS = 6


@pytest.fixture
def replicas(server: Any, engine: Engine, tmp_path: Path) -> Iterator[tuple[str, Any, Any]]:
    url = server.new_database()
    run_recorded(engine, S.NO_STEROID, url)
    # Replicas behind one address (--public-url): their cards link to the same review page.
    # The feedback below comes 18 times on one card: more than the default limit per card.
    public = ("--public-url", "https://cds.example.org", "--feedback-per-card", "100")
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


# --- the used token ids, shared by the replicas ----------------------------------------------

ISSUER = "https://ehr.example.org"
PUBLIC = "https://cds.example.org"


def _sign(key: ec.EllipticCurvePrivateKey, path: str, **claims: Any) -> str:
    now = int(time.time())
    payload = {
        "iss": ISSUER,
        "aud": f"{PUBLIC}{path}",
        "iat": now,
        "exp": now + 300,
        "jti": str(uuid.uuid4()),
        **claims,
    }
    return "Bearer " + jwt.encode(payload, key, algorithm="ES384", headers={"kid": "ehr-1"})


def test_a_token_is_used_once_across_replicas(server: Any, engine: Engine, tmp_path: Path) -> None:
    url = server.new_database()
    run_recorded(engine, S.NO_STEROID, url)
    key = ec.generate_private_key(ec.SECP384R1())
    public = json.loads(jwt.algorithms.get_default_algorithms()["ES384"].to_jwk(key.public_key()))
    keys = tmp_path / "ehr.jwks.json"
    keys.write_text(json.dumps({"keys": [{**public, "kid": "ehr-1", "alg": "ES384"}]}))
    options = ("--jwt-issuer", ISSUER, "--jwt-key", str(keys), "--public-url", PUBLIC)
    body = S.patient_view(PATIENT)
    with (
        S.serving(url, *options, log_dir=tmp_path) as a,
        S.serving(url, *options, log_dir=tmp_path) as b,
        httpx.Client(base_url=a.url, timeout=60) as ca,
        httpx.Client(base_url=b.url, timeout=60) as cb,
    ):

        def call(client: httpx.Client, token: str) -> httpx.Response:
            return client.post(S.PATIENT_VIEW, json=body, headers={"authorization": token})

        token = _sign(key, S.PATIENT_VIEW)
        assert call(ca, token).status_code == 200
        for client in (cb, ca):  # replayed to the other replica, or to the same
            replayed = call(client, token)
            assert replayed.status_code == 401
            assert "was already used (replay)" in replayed.json()["error"]
        # One token sent to both replicas at once: exactly one of them takes it.
        for _ in range(ROUNDS):
            token = _sign(key, S.PATIENT_VIEW)
            with ThreadPoolExecutor(max_workers=2) as pool:
                statuses = sorted(
                    f.result().status_code for f in [pool.submit(call, c, token) for c in (ca, cb)]
                )
            assert statuses == [200, 401]
        # A card issued to a tenant by one replica takes no feedback from another tenant
        # through the other one.
        card = call(ca, _sign(key, S.PATIENT_VIEW)).json()["cards"][1]["uuid"]
        item = {"card": card, "outcome": "overridden", "outcomeTimestamp": "2026-05-17T10:00:00Z"}
        path = f"{S.PATIENT_VIEW}/feedback"
        foreign = cb.post(
            path, json={"feedback": [item]}, headers={"authorization": _sign(key, path, tenant="x")}
        )
        assert foreign.status_code == 404
        own = cb.post(path, json={"feedback": [item]}, headers={"authorization": _sign(key, path)})
        assert own.status_code == 200, own.text
    assert "Traceback" not in a.output() + b.output()


def test_used_token_ids_expire_in_postgresql(server: Any) -> None:
    url = server.new_database()
    tables = ServiceTables(url)
    used = UsedTokens(tables, leeway_s=60)
    try:
        assert used.first_use(ISSUER, "a", expires=1000.0, now=900.0)
        assert not used.first_use(ISSUER, "a", expires=1000.0, now=950.0)
        other = UsedTokens(ServiceTables(url), leeway_s=60)  # another process
        assert not other.first_use(ISSUER, "a", expires=1000.0, now=1000.0)
        other.tables.close()
        assert used.count() == 1
        # Past its token's exp and the leeway, an id is dropped (the token is refused anyway).
        assert used.first_use(ISSUER, "b", expires=2000.0, now=1100.0)
        assert used.count() == 1
    finally:
        tables.close()
