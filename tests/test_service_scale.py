"""The service at scale, by behaviour (the figures are benchmarks/service_bench.py's):

- an episode a process keeps (restored once, then checked against the store's head on every
  request) answers byte for byte as a process that restores it from the store afresh, after
  feedback it recorded itself, a treatment another process recorded, and what is due later;
- the kept episode is checked against the store on every request: what another process
  appended is answered, and a last record edited under its stored hash is refused (409);
- `iechs serve --workers 2` runs two processes answering on one port;
- several processes writing one SQLite file, or one PostgreSQL database, at the same time lose
  no feedback and keep one chain (`iechs audit verify`, `iechs audit replay`);
- a valid hook call answered on the short path (`app._FastHooks`) gets the answer FastAPI
  gives, and anything else is FastAPI's to answer;
- the snapshot text the service keeps up to date is the canonical JSON of the snapshot.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from iechs import Engine, parse_event
from iechs.audit import RecordedEpisode, open_log, open_store, run_recorded
from iechs.audit.chain import read_record
from iechs.audit.records import canonical
from iechs.cli import main
from iechs.service.core import HookService, ServiceConfig
from iechs.service.episodes import SnapshotText, private_copy
from iechs.service.errors import ServiceError
from sibling import load

S = load("test_service_helpers")
server = load("test_audit_postgres").server  # the throwaway PostgreSQL server (a fixture)
PATIENT = "svc-no-steroid"
PUBLIC = ("--public-url", "https://cds.example.org")  # the same card links from any process
ROOMY = ("--feedback-per-card", "100000", "--feedback-per-minute", "100000")
REVIEW = "https://cds.example.org/review"
LATER = "2026-05-18T09:00:00Z"
STEROID = {
    "at": "2026-05-17T12:00:00Z",
    "kind": "treatment",
    "drug": "dexamethasone",
    "dose": 10,
    "unit": "mg",
}


def new_store(folder: Path, engine: Engine) -> str:
    location = str(folder / "audit.db")
    run_recorded(engine, S.NO_STEROID, location)
    return location


def overridden(card: str, comment: str) -> dict[str, Any]:
    return {
        "card": card,
        "outcome": "overridden",
        "overrideReason": {"userComment": comment},
        "outcomeTimestamp": "2026-05-17T10:00:00Z",
    }


def state_card(client: httpx.Client) -> str:
    response = client.post(S.PATIENT_VIEW, json=S.patient_view(PATIENT))
    assert response.status_code == 200, response.text
    found: str = next(
        c["uuid"] for c in response.json()["cards"] if c["source"]["topic"]["code"] == "state"
    )
    return found


def give_feedback(client: httpx.Client, card: str, comments: list[str]) -> list[int]:
    """Post feedback as a client does: a 409 that says the episode kept changing while the
    service retried (other processes writing it at the same moment) is posted again."""
    for _ in range(20):
        response = client.post(
            f"{S.PATIENT_VIEW}/feedback",
            json={"feedback": [overridden(card, c) for c in comments]},
        )
        if not (response.status_code == 409 and "kept changing" in response.text):
            break
    assert response.status_code == 200, response.text
    return [int(item["seq"]) for item in response.json()["recorded"]]


def calls() -> list[tuple[str, dict[str, Any]]]:
    """Hook calls whose answers depend on all of the episode: now, later, and a draft order."""
    return [
        (S.PATIENT_VIEW, S.patient_view(PATIENT)),
        (S.PATIENT_VIEW, S.patient_view(PATIENT, LATER)),
        (S.ORDER_SIGN, S.order_sign(PATIENT, S.medication_request("tocilizumab", "t1"))),
        (S.ORDER_SIGN, S.order_sign(PATIENT, S.medication_request("anakinra", "a1"), now=LATER)),
    ]


def answers(client: httpx.Client) -> list[bytes]:
    out = []
    for path, body in calls():
        response = client.post(path, json=body)
        assert response.status_code == 200, response.text
        out.append(response.content)
    return out


def verified(capsys: pytest.CaptureFixture[str], log: str) -> str:
    capsys.readouterr()
    assert main(["audit", "verify", log]) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert main(["audit", "replay", log]) == 0, capsys.readouterr()
    return out


def feedback_records(log: str) -> list[Any]:
    with open_log(log) as opened, opened.reading() as view:
        records = [read_record(item)[0] for item in view.records()]
    assert all(r is not None for r in records)
    return [r for r in records if r is not None and (r.reason or "").startswith("CDS Hooks")]


# --- the kept episode ------------------------------------------------------------------------


def test_a_kept_episode_answers_byte_for_byte_as_a_fresh_restore(
    tmp_path: Path, engine: Engine
) -> None:
    store = new_store(tmp_path, engine)
    with (
        S.serving(store, "--workers", "1", *PUBLIC, *ROOMY, log_dir=tmp_path) as warm,
        httpx.Client(base_url=warm.url, timeout=60) as client,
    ):
        first = answers(client)
        card = state_card(client)
        give_feedback(client, card, [f"first {i}" for i in range(40)])
        # Another process records a treatment: the kept episode is continued with it.
        with open_store(store) as s:
            other = RecordedEpisode.resume(engine, s, PATIENT)
            other.step(parse_event(STEROID, engine.guideline))
        give_feedback(client, card, [f"then {i}" for i in range(60)])
        kept = answers(client)
        assert kept != first  # the treatment changed the answers
        with (
            S.serving(store, "--workers", "1", *PUBLIC, log_dir=tmp_path) as fresh,
            httpx.Client(base_url=fresh.url, timeout=60) as other_client,
        ):
            assert answers(other_client) == kept
        assert answers(client) == kept  # and again, from the kept episode
    with open_store(store) as s:
        saved = s.episode(PATIENT)
    assert saved is not None
    assert sum(1 for i in saved.snapshot["inputs"] if i.get("kind") == "advance") >= 100


def test_the_kept_episode_is_checked_against_the_store_on_every_request(
    tmp_path: Path, engine: Engine
) -> None:
    store = new_store(tmp_path, engine)
    config = ServiceConfig(store=store, feedback_per_card=1000, feedback_per_minute=1000)
    service = HookService(config)
    try:
        context = {"userId": "Practitioner/haem-1", "patientId": PATIENT}

        def view() -> list[dict[str, Any]]:
            return service.patient_view(
                context, None, None, REVIEW, hook_instance=str(uuid.uuid4())
            )

        cards = view()
        assert (service.episodes.replayed, service.episodes.reused) == (1, 0)
        for _ in range(5):
            view()
        assert (service.episodes.replayed, service.episodes.reused) == (1, 5)
        # Its own feedback is kept as written: the next request reads no snapshot.
        state = next(c["uuid"] for c in cards if c["source"]["topic"]["code"] == "state")
        service.feedback("iechs-patient-view", [overridden(state, "kept")])
        view()
        assert (service.episodes.replayed, service.episodes.continued) == (1, 0)
        # Another process appends: the next request answers with it (continued, not replayed).
        with open_store(store) as s:
            other = RecordedEpisode.resume(engine, s, PATIENT)
            other.step(parse_event(STEROID, engine.guideline))
        assert "first_line_steroids" in json.dumps(view())
        assert (service.episodes.replayed, service.episodes.continued) == (1, 1)
        # The last record edited under its stored hash: the kept episode is not used, and the
        # store's refusal is the answer.
        with sqlite3.connect(store) as conn:
            (seq, body) = conn.execute(
                "SELECT seq, body FROM iechs_records WHERE episode = ? ORDER BY seq DESC LIMIT 1",
                (PATIENT,),
            ).fetchone()
            conn.execute(
                "UPDATE iechs_records SET body = ? WHERE seq = ?",
                (body.replace("dexamethasone", "dexamethasonE"), seq),
            )
        with pytest.raises(ServiceError) as refused:
            view()
        assert refused.value.status == 409
        assert "does not match its hash" in refused.value.message
    finally:
        service.close()


def test_the_snapshot_text_kept_is_the_canonical_json(engine: Engine) -> None:
    timeline = json.loads(S.NO_STEROID.read_text())
    timeline["patient"]["id"] = "P-ünïcode €"
    episode = engine.run(engine_timeline(engine, timeline))
    text = SnapshotText()
    assert text.of(episode.snapshot()) == canonical(episode.snapshot())
    # Copies that go their own ways, one after the other, on the same kept text.
    last = episode.decisions[-1].at
    one = private_copy(episode)
    for _ in range(3):
        one.advance(last)
    assert text.of(one.snapshot()) == canonical(one.snapshot())
    two = private_copy(episode)
    two.step(parse_event(STEROID, engine.guideline))
    assert text.of(two.snapshot()) == canonical(two.snapshot())
    assert text.of(episode.snapshot()) == canonical(episode.snapshot())
    two.advance(two.decisions[-1].at)
    assert text.of(two.snapshot()) == canonical(two.snapshot())


def engine_timeline(engine: Engine, doc: dict[str, Any]) -> Any:
    from iechs import parse_timeline

    return parse_timeline(doc, engine.guideline)


# --- several processes -----------------------------------------------------------------------


def _parent(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[1])


def test_workers_2_runs_two_processes_answering(tmp_path: Path, engine: Engine) -> None:
    store = new_store(tmp_path, engine)
    with S.serving(store, "--workers", "2", log_dir=tmp_path) as running:
        seen: set[int] = set()
        for _ in range(300):
            # A new connection each time: the two processes take turns accepting them.
            response = httpx.post(
                running.url + S.PATIENT_VIEW, json=S.patient_view(PATIENT), timeout=60
            )
            assert response.status_code == 200, response.text
            seen.add(int(response.headers["x-iechs-worker"]))
            if len(seen) == 2:
                break
        assert len(seen) == 2, seen
        assert running.process.pid not in seen
        assert {_parent(pid) for pid in seen} == {running.process.pid}
        assert "2 worker process(es)" in running.output()
    assert "Traceback" not in running.output()


def _writers(urls: list[str], card: str, rounds: int) -> list[int]:
    """Feedback through each of `urls` from two threads at once: the record numbers."""

    def write(url: str, who: str) -> list[int]:
        seqs = []
        with httpx.Client(base_url=url, timeout=120) as client:
            for i in range(rounds):
                seqs += give_feedback(client, card, [f"{who} {i}"])
        return seqs

    jobs = [(url, f"{k}-{t}") for k, url in enumerate(urls) for t in range(2)]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = [pool.submit(write, url, who) for url, who in jobs]
        return [seq for f in futures for seq in f.result()]


def _check_one_chain(
    capsys: pytest.CaptureFixture[str], log: str, seqs: list[int], expected: int
) -> None:
    assert len(seqs) == len(set(seqs)) == expected  # every feedback once, each its own record
    records = feedback_records(log)
    assert sorted(r.seq for r in records) == sorted(seqs)
    assert len({r.reason for r in records}) == expected  # none lost, none twice
    out = verified(capsys, log)
    assert "INTACT" in out


def test_processes_writing_one_sqlite_file_at_once_keep_one_chain(
    tmp_path: Path, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    store = new_store(tmp_path, engine)
    rounds = 8
    with (
        S.serving(store, "--workers", "2", *PUBLIC, *ROOMY, log_dir=tmp_path) as a,
        S.serving(store, "--workers", "1", *PUBLIC, *ROOMY, log_dir=tmp_path) as b,
    ):
        with httpx.Client(base_url=a.url, timeout=60) as client:
            card = state_card(client)
        seqs = _writers([a.url, b.url], card, rounds)
        # Every process answers alike after it all.
        with (
            httpx.Client(base_url=a.url, timeout=60) as ca,
            httpx.Client(base_url=b.url, timeout=60) as cb,
        ):
            assert answers(ca) == answers(cb)
    assert "Traceback" not in a.output() + b.output()
    _check_one_chain(capsys, store, seqs, 4 * rounds)


@pytest.fixture
def postgres_url(server: Any, engine: Engine) -> str:
    url: str = server.new_database()
    run_recorded(engine, S.NO_STEROID, url)
    return url


def test_processes_writing_one_postgres_database_at_once_keep_one_chain(
    postgres_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rounds = 8
    with (
        S.serving(postgres_url, "--workers", "2", *PUBLIC, *ROOMY, log_dir=tmp_path) as a,
        S.serving(postgres_url, "--workers", "1", *PUBLIC, *ROOMY, log_dir=tmp_path) as b,
    ):
        with httpx.Client(base_url=a.url, timeout=60) as client:
            card = state_card(client)
        seqs = _writers([a.url, b.url], card, rounds)
        with (
            httpx.Client(base_url=a.url, timeout=60) as ca,
            httpx.Client(base_url=b.url, timeout=60) as cb,
        ):
            assert answers(ca) == answers(cb)
    assert "Traceback" not in a.output() + b.output()
    _check_one_chain(capsys, postgres_url, seqs, 4 * rounds)


# --- the short path of hook calls ------------------------------------------------------------


def test_the_short_path_answers_as_fastapi_does(
    tmp_path: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from iechs.service import app as service_app

    store = new_store(tmp_path, engine)
    config = ServiceConfig(store=store, public_url="https://cds.example.org")
    short_calls = []

    class Counted(service_app._FastHooks):
        def __init__(self, app: Any) -> None:
            super().__init__(app)
            answer = self.hook

            async def hook(*args: Any) -> Any:
                short_calls.append(args[0])
                return await answer(*args)

            self.hook = hook

    monkeypatch.setattr(service_app, "_FastHooks", Counted)
    short = service_app.build(config)
    monkeypatch.setattr(service_app, "_FastHooks", lambda app: app)
    plain = service_app.build(config)
    monkeypatch.undo()
    bad_time = S.patient_view(PATIENT, "2026-05-01T00:00:00Z")  # before the last event: 400
    json_type = {"content-type": "application/json"}
    requests: list[tuple[str, str, dict[str, str]]] = [
        *((path, json.dumps(body), json_type) for path, body in calls()),
        (S.PATIENT_VIEW, json.dumps(S.patient_view("nobody")), json_type),
        (S.PATIENT_VIEW, json.dumps(bad_time), json_type),
        (S.PATIENT_VIEW, json.dumps(S.patient_view("@tenant/P1")), json_type),
        (S.ORDER_SIGN, json.dumps(S.order_sign(PATIENT, {"resourceType": "Patient"})), json_type),
        # FastAPI's alone: not valid, not JSON, or another endpoint.
        (S.PATIENT_VIEW, json.dumps(S.patient_view(PATIENT)), {"content-type": "text/x+json"}),
        (S.PATIENT_VIEW, json.dumps({**S.patient_view(PATIENT), "hookInstance": "x"}), json_type),
        (S.PATIENT_VIEW, '{"hook": ', json_type),
        (S.PATIENT_VIEW, json.dumps(S.patient_view(PATIENT)), {"content-type": "text/plain"}),
        (S.PATIENT_VIEW, json.dumps(S.patient_view(PATIENT)), {}),
        (f"{S.PATIENT_VIEW}/feedback", json.dumps({"feedback": []}), json_type),
    ]

    async def compare() -> None:
        async with (
            httpx.AsyncClient(transport=httpx.ASGITransport(short), base_url="http://t") as fast,
            httpx.AsyncClient(transport=httpx.ASGITransport(plain), base_url="http://t") as slow,
        ):
            for path, body, headers in requests:
                one = await fast.post(path, content=body, headers=headers)
                other = await slow.post(path, content=body, headers=headers)
                assert (one.status_code, one.content) == (other.status_code, other.content), body
                for header in ("content-type", "content-length", "retry-after"):
                    assert one.headers.get(header) == other.headers.get(header)
                assert one.headers["x-iechs-worker"] == other.headers["x-iechs-worker"]

    asyncio.run(compare())
    # The valid hook calls took the short path, the others did not ("text/x+json" is not a
    # JSON type FastAPI reads, so the short path leaves it alone too).
    assert len(short_calls) == 8
