"""The log's integrity beyond the chain, in SQLite and in a real PostgreSQL server: the episode
snapshot sealed into the chain (an edited snapshot is tampering for `iechs audit verify`, and is
never restored: not by `iechs run --store`, the store, or the CDS Hooks service), the records a
checkpoint does not cover, the warning when a checkpoint's key is not pinned, the write time a
store keeps beside the chain (records and exports the same bytes in any store), and the FHIR
Provenance of every decision.

The PostgreSQL server is the throwaway one of tests/test_audit_postgres.py (its fixture)."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import pytest

from iechs import Engine, __version__, load_timeline, parse_event
from iechs.audit import (
    GENESIS,
    AuditStore,
    JsonlLog,
    RecordedEpisode,
    SnapshotSealError,
    StoreError,
    import_jsonl,
    open_log,
    open_store,
    replay_log,
    run_recorded,
    sign_checkpoint,
    verify_log,
)
from iechs.audit.checkpoint import load_checkpoint, load_private_key
from iechs.audit.export import sound_records
from iechs.audit.records import RECORD_FORMAT_1, AuditRecord, canonical, parse_record, snapshot_seal
from iechs.audit.snapshots import episodes_of
from iechs.cli import main
from sibling import load

server = load("test_audit_postgres").server  # the throwaway PostgreSQL server (a fixture)
S = load("test_service_helpers")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
DAY14 = EXAMPLES / "day14-steroid-response.json"
IL6 = EXAMPLES / "tocilizumab-monotherapy-deviation.json"
FHIR_DAY14 = EXAMPLES / "fhir" / "day14-steroid-response.bundle.json"
#: the fields of a record of format 1 (format 2 adds `snapshot`, the seal).
PRIOR_FIELDS = {
    "actor",
    "decision",
    "engine",
    "episode",
    "format",
    "guideline",
    "patient",
    "prev",
    "reason",
    "seq",
}
#: `Provenance._recorded` when no write time is known (`recorded` is then the event's time).
WRITE_TIME_UNKNOWN = {
    "url": "https://iechs.dev/fhir/StructureDefinition/write-time-unknown",
    "valueBoolean": True,
}
PATIENT = "svc-no-steroid"  # S.NO_STEROID: IEC-HS suspected, no corticosteroid given
STEROID = {
    "at": "2026-05-17T09:30:00Z",
    "kind": "treatment",
    "drug": "dexamethasone",
    "dose": 10,
    "unit": "mg",
    "route": "IV",
    "indication": "iec_hs",
}
TOCILIZUMAB = {
    "at": "2026-05-17T09:45:00Z",
    "kind": "treatment",
    "drug": "tocilizumab",
    "dose": 8,
    "unit": "mg/kg",
    "route": "IV",
}


# --- one store, two databases --------------------------------------------------------------------


@attrs.frozen
class Store:
    """A store under test: its location, and plain SQL on it (as someone with database access)."""

    location: str
    postgres: bool

    def sql(self, statement: str, *params: object) -> list[tuple[Any, ...]]:
        if self.postgres:
            import psycopg

            with psycopg.connect(self.location, autocommit=True) as pg:
                cur = pg.execute(statement.replace("?", "%s"), params)
                return cur.fetchall() if cur.description else []
        with closing(sqlite3.connect(self.location)) as conn, conn:
            return conn.execute(statement, params).fetchall()

    def records(self) -> list[AuditRecord]:
        rows = self.sql("SELECT body FROM iechs_records ORDER BY seq")
        return [parse_record(json.loads(str(body))) for (body,) in rows]

    def written_at(self) -> list[str | None]:
        """The write time the store keeps beside each record, in order."""
        rows = self.sql("SELECT written_at FROM iechs_records ORDER BY seq")
        return [None if w is None else str(w) for (w,) in rows]

    def snapshot(self, episode: str) -> tuple[int, int, str]:
        ((steps, head_seq, text),) = self.sql(
            "SELECT steps, head_seq, snapshot FROM iechs_episodes WHERE id = ?", episode
        )
        return int(steps), int(head_seq), str(text)

    def save_snapshot(self, episode: str, text: str, steps: int, head_seq: int) -> None:
        self.sql(
            "UPDATE iechs_episodes SET snapshot = ?, steps = ?, head_seq = ? WHERE id = ?",
            text,
            steps,
            head_seq,
            episode,
        )

    def insert(self, record: AuditRecord) -> None:
        """Append `record` behind the log's back, the head moved along."""
        self.sql(
            "INSERT INTO iechs_records (seq, episode, hash, body) VALUES (?, ?, ?, ?)",
            record.seq,
            record.episode,
            record.hash,
            record.body,
        )
        self.sql("UPDATE iechs_chain SET seq = ?, hash = ? WHERE id = 1", record.seq, record.hash)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "postgres":
        return Store(request.getfixturevalue("server").new_database(), postgres=True)
    return Store(str(tmp_path / "log.db"), postgres=False)


@pytest.fixture
def another(request: pytest.FixtureRequest, store: Store, tmp_path: Path) -> Store:
    """A second, empty store of the same kind as `store`."""
    if store.postgres:
        return Store(request.getfixturevalue("server").new_database(), postgres=True)
    return Store(str(tmp_path / "another.db"), postgres=False)


def parsed(text: str | None) -> datetime:
    assert text is not None
    return datetime.fromisoformat(text)


def clock_at(monkeypatch: pytest.MonkeyPatch, moment: datetime) -> None:
    """Every store opened from now on writes at `moment` (as `open_store(clock=...)` would)."""
    monkeypatch.setattr(AuditStore, "clock", staticmethod(lambda: moment))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`iechs ARGV`: exit code, standard output and standard error (whitespace collapsed)."""
    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, " ".join(captured.out.split()), " ".join(captured.err.split())


@pytest.fixture
def keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    assert main(["audit", "keygen", "--out", str(tmp_path / "k.pem")]) == 0
    capsys.readouterr()
    return tmp_path / "k.pem"


def checkpoint(
    capsys: pytest.CaptureFixture[str], location: str, key: Path, out: Path
) -> list[str]:
    """Sign the head; the `verify` options that check against it with the key pinned."""
    code, _, err = run(
        capsys, "audit", "checkpoint", location, "--key", str(key), "--out", str(out)
    )
    assert code == 0, err
    return ["--checkpoint", str(out), "--public-key", str(key.with_name("k.pub.pem"))]


def with_steroid(engine: Engine, tmp_path: Path) -> dict[str, Any]:
    """The snapshot of the measured attack: the patient's episode as if a corticosteroid had
    been given at 09:30 (it never was)."""
    doc = json.loads(S.NO_STEROID.read_text())
    doc["events"].append(STEROID)
    (tmp_path / "forged.json").write_text(json.dumps(doc))
    episode = engine.run(load_timeline(tmp_path / "forged.json", engine.guideline))
    snapshot: dict[str, Any] = json.loads(canonical(episode.snapshot()))
    return snapshot


def forge_snapshot(store: Store, engine: Engine, tmp_path: Path) -> None:
    """Edit the saved snapshot as the measured attack did: a steroid added, steps to match."""
    forged = with_steroid(engine, tmp_path)
    _, head_seq, _ = store.snapshot(PATIENT)
    store.save_snapshot(PATIENT, canonical(forged), len(forged["inputs"]) + 1, head_seq)


# --- the snapshot, sealed in the chain -----------------------------------------------------------


def test_the_measured_attack_would_silence_the_il6_card(engine: Engine, tmp_path: Path) -> None:
    # Why the snapshot must be sealed: restored from the edited one, the engine believes a
    # corticosteroid was given, and tocilizumab no longer raises the critical IL-6 alert.
    genuine = engine.run(load_timeline(S.NO_STEROID, engine.guideline)).snapshot()
    toci = parse_event(TOCILIZUMAB, engine.guideline)
    alerts = {
        name: [a.code for a in engine.restore(snapshot).step(toci).alerts]
        for name, snapshot in (("genuine", genuine), ("forged", with_steroid(engine, tmp_path)))
    }
    assert "il6_monotherapy" in alerts["genuine"]
    assert "il6_monotherapy" not in alerts["forged"]


def test_every_append_seals_its_snapshot(engine: Engine, store: Store) -> None:
    run_recorded(engine, DAY14, store.location)
    run_recorded(engine, S.NO_STEROID, store.location)
    records = store.records()
    for episode in ("demo-day14", PATIENT):
        steps, head_seq, text = store.snapshot(episode)
        (last,) = [r for r in records if r.seq == head_seq]
        assert last.episode == episode
        assert last.step == steps - 1
        assert last.snapshot == snapshot_seal(json.loads(text))
        assert text == canonical(json.loads(text))
    # One append, one seal: on its last record; the others carry none.
    assert [r.seq for r in records if r.snapshot is not None] == [17, len(records)]
    with open_log(store.location) as log:
        verification = verify_log(log)
    assert verification.ok, verification.findings
    assert verification.snapshots == 2


def test_an_edited_snapshot_is_tampering_even_under_a_pinned_checkpoint(
    engine: Engine, store: Store, keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_recorded(engine, DAY14, store.location)
    run_recorded(engine, S.NO_STEROID, store.location)
    pinned = checkpoint(capsys, store.location, keys, tmp_path / "c.json")
    code, out, _ = run(capsys, "audit", "verify", store.location, *pinned)
    assert code == 0, out
    assert "Snapshots: the 2 saved episode snapshot(s) are the ones the chain seals" in out
    forge_snapshot(store, engine, tmp_path)
    last = len(store.records())
    for extra in ([], pinned):
        code, out, _ = run(capsys, "audit", "verify", store.location, *extra)
        assert code == 1, out
        assert (
            f"TAMPERED (snapshot): episode '{PATIENT}': the saved snapshot of episode "
            f"'{PATIENT}' does not match the SHA-256 sealed in record {last} of the chain"
        ) in out
        assert "edited outside the log" in out
        assert "demo-day14" not in out  # the other episode's snapshot is sound
    # The chain itself is whole: the pinned checkpoint still matches it.
    assert "Checkpoint: record" in out
    assert "matches." in out
    code, out, _ = run(capsys, "audit", "verify", store.location, *pinned, "--format", "json")
    doc = json.loads(out)
    assert code == 1
    assert doc["ok"] is False
    assert [(f["kind"], f["seq"]) for f in doc["findings"]] == [("snapshot", last)]
    assert PATIENT in doc["findings"][0]["message"]
    assert doc["checkpoint"]["matches"] is True
    # The records are sound: the log can still be copied out, and a store made of the copy has
    # the snapshot its records rebuild, which the chain vouches for (the way back).
    copy = tmp_path / "copy.db"
    assert (
        run(capsys, "audit", "export", store.location, "--out", str(tmp_path / "x.jsonl"))[0] == 0
    )
    assert main(["audit", "import", str(tmp_path / "x.jsonl"), "--store", str(copy)]) == 0
    code, out, _ = run(capsys, "audit", "verify", str(copy), *pinned)
    assert code == 0, out
    with open_store(str(copy)) as again:
        restored = RecordedEpisode.resume(engine, again, PATIENT)
    assert restored.episode.state == "suspected"


def test_an_edited_snapshot_is_never_restored(
    engine: Engine, store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from iechs.service.core import HookService, ServiceConfig
    from iechs.service.errors import ServiceError

    run_recorded(engine, S.NO_STEROID, store.location)
    forge_snapshot(store, engine, tmp_path)
    # The store refuses to load it ...
    with open_store(store.location) as opened:
        with pytest.raises(SnapshotSealError) as refused:
            opened.episode(PATIENT)
        assert refused.value.episode == PATIENT
        assert refused.value.seq == 13
        assert "does not match the SHA-256 sealed in record 13" in str(refused.value)
        with pytest.raises(SnapshotSealError):
            RecordedEpisode.resume(engine, opened, PATIENT)
    # ... so `iechs run --store`, continuing the episode, exits 2 with the reason ...
    code, _, err = run(capsys, "run", str(S.NO_STEROID), "--store", store.location)
    assert code == 2
    assert f"refusing to restore episode '{PATIENT}'" in err
    assert "Traceback" not in err
    # ... and the CDS Hooks service answers with the store's refusal, not with cards.
    service = HookService(ServiceConfig(store=store.location))
    try:
        order = S.order_sign(PATIENT, S.medication_request("tocilizumab", "t1"))["context"]
        for call, context in (
            (service.order_sign, order),
            (service.patient_view, {"patientId": PATIENT}),
        ):
            with pytest.raises(ServiceError) as answered:
                call(context, None, None, "http://localhost/review")
            assert answered.value.status == 409
            assert f"episode '{PATIENT}' cannot be restored here" in answered.value.message
            assert "does not match the SHA-256 sealed in record 13" in answered.value.message
    finally:
        service.close()
    # Nothing was written meanwhile.
    assert len(store.records()) == 13


def test_a_snapshot_rolled_back_or_rewired_is_refused(
    engine: Engine, store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    whole = json.loads(S.NO_STEROID.read_text())
    (tmp_path / "first.json").write_text(json.dumps({**whole, "events": whole["events"][:4]}))
    run_recorded(engine, tmp_path / "first.json", store.location)
    older = store.snapshot(PATIENT)  # genuine, sealed by record 5
    run_recorded(engine, S.NO_STEROID, store.location)
    current = store.snapshot(PATIENT)
    # An older genuine snapshot put back (with its own steps and record): no longer the
    # episode's, whose last record is 13.
    store.save_snapshot(PATIENT, older[2], older[0], older[1])
    code, out, _ = run(capsys, "audit", "verify", store.location)
    assert code == 1
    assert (
        f"the saved snapshot of episode '{PATIENT}' says it was saved with record 5, but the "
        "episode's last record is record 13: it was replaced or rolled back outside the log"
    ) in out
    with (
        open_store(store.location) as opened,
        pytest.raises(SnapshotSealError, match="rolled back"),
    ):
        opened.episode(PATIENT)
    # The current snapshot with its step count edited.
    store.save_snapshot(PATIENT, current[2], current[0] - 1, current[1])
    code, out, _ = run(capsys, "audit", "verify", store.location)
    assert code == 1
    assert "its step count was edited outside the log" in out
    # The current snapshot, and the seal of its record edited to match a forged one, the record
    # rehashed in place: the record no longer links into the chain (its successor, or the head,
    # names the old hash), which loading checks without walking the whole log.
    store.save_snapshot(PATIENT, current[2], current[0], current[1])
    forged = with_steroid(engine, tmp_path)
    last = store.records()[-1]
    resealed = attrs.evolve(last, snapshot=snapshot_seal(forged))
    store.sql(
        "UPDATE iechs_records SET hash = ?, body = ? WHERE seq = ?",
        resealed.hash,
        resealed.body,
        last.seq,
    )
    store.save_snapshot(PATIENT, canonical(forged), len(forged["inputs"]) + 1, last.seq)
    with open_store(store.location) as opened, pytest.raises(SnapshotSealError) as refused:
        opened.episode(PATIENT)
    assert "is not the head the store recorded" in str(refused.value)
    code, out, _ = run(capsys, "audit", "verify", store.location)
    assert code == 1
    assert "TAMPERED (rewritten)" in out


def test_a_log_of_the_prior_format_verifies_and_its_snapshots_are_checked(
    engine: Engine, store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Records of `iechs.audit/1` (no seal), written before the store kept write times: the chain
    # verifies as before, and a snapshot is checked against the one its records rebuild.
    db = store
    run_recorded(engine, DAY14, db.location)
    run_recorded(engine, S.NO_STEROID, db.location)
    prior, prev = [], GENESIS
    for record in db.records():
        old = attrs.evolve(record, format=RECORD_FORMAT_1, snapshot=None, prev=prev)
        assert set(json.loads(old.body)) == {
            "actor",
            "decision",
            "engine",
            "episode",
            "format",
            "guideline",
            "patient",
            "prev",
            "reason",
            "seq",
        }
        prior.append(old)
        prev = old.hash
    db.sql("DELETE FROM iechs_records")
    for record in prior:
        db.insert(record)
    code, out, _ = run(capsys, "audit", "verify", db.location)
    assert code == 0, out
    assert "Snapshots: the 2 saved episode snapshot(s)" in out
    with open_store(db.location) as opened:
        assert RecordedEpisode.resume(engine, opened, PATIENT).episode.state == "suspected"
    assert run(capsys, "audit", "replay", db.location)[0] == 0
    assert db.written_at() == [None] * len(prior)  # rows from before write times were kept
    # Exported as FHIR: every decision has its Provenance; with no write time known, `recorded`
    # (which FHIR requires) is the event's time, flagged as not the write time.
    code, out, _ = run(capsys, "audit", "export", db.location, "--format", "fhir")
    assert code == 0
    provenances = [
        e["resource"]
        for e in json.loads(out)["entry"]
        if e["resource"]["resourceType"] == "Provenance"
    ]
    assert len(provenances) == len(prior)
    for resource in provenances:
        assert resource["recorded"] == resource["occurredDateTime"]
        assert resource["_recorded"] == {"extension": [WRITE_TIME_UNKNOWN]}
    # The same attack on the old log.
    forge_snapshot(db, engine, tmp_path)
    code, out, _ = run(capsys, "audit", "verify", db.location)
    assert code == 1
    assert (
        f"TAMPERED (snapshot): episode '{PATIENT}': the saved snapshot of episode '{PATIENT}' is "
        "not the one its records rebuild (record 30, the episode's last, is of format "
        "iechs.audit/1 and seals no snapshot)"
    ) in out
    with open_store(db.location) as opened, pytest.raises(SnapshotSealError, match="rebuild"):
        opened.episode(PATIENT)
    # The genuine snapshot back: new steps on the old log are written in the new format, the
    # last one sealing the snapshot.
    (genuine,) = episodes_of(r for r in prior if r.episode == PATIENT)
    db.save_snapshot(PATIENT, canonical(genuine.snapshot), genuine.steps, genuine.head_seq)
    with open_store(db.location) as opened:
        resumed = RecordedEpisode.resume(engine, opened, PATIENT)
        resumed.step(parse_event(TOCILIZUMAB, engine.guideline))
    newest = db.records()[-1]
    assert newest.format == "iechs.audit/2"
    assert newest.snapshot == snapshot_seal(json.loads(db.snapshot(PATIENT)[2]))
    assert db.written_at()[-1] is not None
    code, out, _ = run(capsys, "audit", "verify", db.location)
    assert code == 0, out


# --- what a checkpoint covers, and whom it trusts ------------------------------------------------


def test_records_after_the_checkpoint_are_reported(
    engine: Engine, store: Store, keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_recorded(engine, DAY14, store.location)
    pinned = checkpoint(capsys, store.location, keys, tmp_path / "c.json")
    code, out, err = run(capsys, "audit", "verify", store.location, *pinned)
    assert code == 0, out
    assert "The checkpoint covers every record of the log." in out
    assert "WARNING" not in err
    run_recorded(engine, IL6, store.location)  # 42 records more, not (yet) checkpointed
    code, out, err = run(capsys, "audit", "verify", store.location, *pinned)
    assert code == 0, out
    assert "Not covered by the checkpoint: 42 record(s) after its head (records 18-59; see" in out
    assert (
        "WARNING (uncovered): 42 records (records 18-59; episode il6-monotherapy) lie after the "
        "checkpoint's head (record 17): no checkpoint vouches for them"
    ) in err
    doc = json.loads(run(capsys, "audit", "verify", store.location, *pinned, "--format", "json")[1])
    assert doc["ok"] is True
    assert doc["checkpoint"]["uncovered"] == 42
    assert [w["kind"] for w in doc["warnings"]] == ["uncovered"]
    assert doc["warnings"][0]["seq"] == 18


def test_a_record_forged_after_the_checkpoint_is_at_least_visible(
    engine: Engine, store: Store, keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The measured problem: a record appended after the last checkpoint, the head moved along
    # (and, to be thorough, the episode's snapshot and its seal forged to match), verifies: no
    # chain can tell it from a genuine one. The checkpoint's verification now counts it.
    run_recorded(engine, S.NO_STEROID, store.location)
    pinned = checkpoint(capsys, store.location, keys, tmp_path / "c.json")
    records = store.records()
    last = records[-1]
    fake = attrs.evolve(
        last,
        seq=last.seq + 1,
        prev=last.hash,
        decision={**last.decision, "step": last.step + 1, "to": "resolved"},
        actor="someone",
    )
    rebuilt = episodes_of([*records, fake])[0]
    fake = attrs.evolve(fake, snapshot=snapshot_seal(rebuilt.snapshot))
    store.insert(fake)
    store.save_snapshot(PATIENT, canonical(rebuilt.snapshot), last.step + 2, fake.seq)
    code, out, err = run(capsys, "audit", "verify", store.location, *pinned)
    assert code == 0, out  # indistinguishable from a genuine append ...
    assert "Not covered by the checkpoint: 1 record(s) after its head (record 14; see" in out
    assert (
        f"WARNING (uncovered): 1 record (record 14; episode {PATIENT}) lies after the "
        "checkpoint's head (record 13): no checkpoint vouches for it"
    ) in err
    # ... and replay, which re-decides it, is what shows the decision was never made.
    assert run(capsys, "audit", "replay", store.location)[0] == 1


def test_a_checkpoint_without_a_pinned_key_warns(
    engine: Engine, store: Store, keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_recorded(engine, DAY14, store.location)
    pinned = checkpoint(capsys, store.location, keys, tmp_path / "c.json")
    embedded = pinned[:2]
    code, out, err = run(capsys, "audit", "verify", store.location, *embedded)
    assert code == 0, out
    assert "WARNING (embedded_key): no --public-key: the checkpoint was checked with the key" in err
    assert "--public-key KEY.pub.pem" in err
    code, out, err = run(capsys, "audit", "verify", store.location, *embedded, "--format", "json")
    doc = json.loads(out)  # the warning goes to standard error: the JSON stays whole
    assert doc["checkpoint"]["key_pinned"] is False
    assert [w["kind"] for w in doc["warnings"]] == ["embedded_key"]
    assert "WARNING (embedded_key)" in err
    code, out, err = run(capsys, "audit", "verify", store.location, *pinned, "--format", "json")
    assert json.loads(out)["checkpoint"]["key_pinned"] is True
    assert json.loads(out)["warnings"] == []
    assert "WARNING" not in err
    # Why it matters: a checkpoint forged with another key (e.g. after rewriting the chain)
    # passes when its embedded key is trusted, and fails against the pinned one.
    assert main(["audit", "keygen", "--out", str(tmp_path / "forger.pem")]) == 0
    genuine = load_checkpoint(tmp_path / "c.json")
    forged = sign_checkpoint(
        load_private_key(tmp_path / "forger.pem"),
        store_id=genuine.store_id,
        seq=genuine.seq,
        head=genuine.head,
        at=genuine.at,
    )
    (tmp_path / "forged.json").write_text(json.dumps(forged.to_json()))
    code, _, err = run(
        capsys, "audit", "verify", store.location, "--checkpoint", str(tmp_path / "forged.json")
    )
    assert code == 0
    assert f"embedded in it ({forged.key_id})" in err
    code, out, _ = run(
        capsys,
        "audit",
        "verify",
        store.location,
        "--checkpoint",
        str(tmp_path / "forged.json"),
        pinned[2],
        pinned[3],
    )
    assert code == 1
    assert f"the checkpoint is signed with key {forged.key_id}, not with the trusted key" in out


# --- write time and provenance -------------------------------------------------------------------


def test_the_write_time_is_kept_beside_the_chain_and_no_input_to_a_decision(
    engine: Engine,
    store: Store,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = datetime(2026, 5, 17, 9, 0, tzinfo=UTC)
    second = datetime(2026, 5, 18, 7, 30, 1, 5, tzinfo=UTC)
    whole = json.loads(DAY14.read_text())
    (tmp_path / "first.json").write_text(json.dumps({**whole, "events": whole["events"][:10]}))
    clock_at(monkeypatch, first)
    run_recorded(engine, tmp_path / "first.json", store.location)
    clock_at(monkeypatch, second)
    run_recorded(engine, DAY14, store.location)
    # One reading per append, under the write lock, kept beside each record ...
    assert (
        store.written_at()
        == ["2026-05-17T09:00:00.000000Z"] * 11 + ["2026-05-18T07:30:01.000005Z"] * 6
    )
    # ... and in no record: their content holds no clock reading at all.
    records = store.records()
    for record in records:
        assert set(record.content()) == {*PRIOR_FIELDS, "snapshot"}
        assert "2026-05-17T09" not in record.body
        assert "2026-05-18T07" not in record.body
    # Decisions are byte for byte those of a run without any store, and replay (which
    # re-decides every event) does not see the write time.
    plain = engine.run(load_timeline(DAY14, engine.guideline))
    assert [canonical(r.decision) for r in records] == [
        canonical(d.to_json()) for d in plain.decisions
    ]
    with open_log(store.location) as log:
        report = replay_log(log, [engine.guideline], keep_decisions=True)
    assert report.ok, report.differences
    assert run(capsys, "audit", "replay", store.location)[0] == 0
    # `audit show` gives it, marked as what it is: unsealed metadata.
    code, out, _ = run(capsys, "audit", "show", store.location, "--record", "4")
    assert code == 0
    assert (
        "written 2026-05-17T09:00:00.000000Z by the store's clock — unsealed metadata: kept "
        "beside the chain, not covered by its hashes"
    ) in out
    # The chain proves content and order, not time: a write time edited afterwards goes
    # unnoticed by `audit verify` (a signed checkpoint is what pins a log at a time).
    store.sql(
        "UPDATE iechs_records SET written_at = ? WHERE seq = 4", "2026-05-16T08:00:00.000000Z"
    )
    code, out, _ = run(capsys, "audit", "verify", store.location)
    assert code == 0, out
    assert (
        "written 2026-05-16T08:00:00.000000Z"
        in run(capsys, "audit", "show", store.location, "--record", "4")[1]
    )


def test_two_stores_fed_the_same_input_export_the_same_bytes(
    store: Store,
    another: Store,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # `iechs run X --store A` and `iechs run X --store B`, at different times: the same records,
    # hashes and links, and the same JSON Lines export (its header names each store's id).
    exports: list[tuple[str, bytes]] = []
    for location, moment in (
        (store.location, datetime(2026, 5, 17, 9, 0, tzinfo=UTC)),
        (another.location, datetime(2026, 6, 1, 23, 59, 59, 999999, tzinfo=UTC)),
    ):
        clock_at(monkeypatch, moment)
        for timeline in (DAY14, S.NO_STEROID):
            assert run(capsys, "run", str(timeline), "--store", location)[0] == 0
        with open_log(location) as log:
            store_id = log.store_id
        path = tmp_path / f"{len(exports)}.jsonl"
        assert run(capsys, "audit", "export", location, "--out", str(path))[0] == 0
        exports.append((store_id, path.read_bytes()))
    (a_id, a), (b_id, b) = exports
    assert a_id != b_id
    assert a.replace(a_id.encode(), b_id.encode()) == b
    assert a.splitlines()[1:] == b.splitlines()[1:]  # every record line, byte for byte
    assert store.sql("SELECT seq, hash, body FROM iechs_records ORDER BY seq") == another.sql(
        "SELECT seq, hash, body FROM iechs_records ORDER BY seq"
    )
    assert set(store.written_at()) == {"2026-05-17T09:00:00.000000Z"}
    assert set(another.written_at()) == {"2026-06-01T23:59:59.999999Z"}
    # Exported from the JSON Lines copy, FHIR has no write time to give: each Provenance holds
    # the event's time, flagged.
    code, out, _ = run(capsys, "audit", "export", str(tmp_path / "0.jsonl"), "--format", "fhir")
    assert code == 0
    flags = [
        e["resource"].get("_recorded")
        for e in json.loads(out)["entry"]
        if e["resource"]["resourceType"] == "Provenance"
    ]
    assert flags == [{"extension": [WRITE_TIME_UNKNOWN]}] * len(store.records())


def test_an_import_writes_the_time_of_the_import(
    store: Store,
    another: Store,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock_at(monkeypatch, datetime(2026, 5, 17, 9, 0, tzinfo=UTC))
    assert run(capsys, "run", str(DAY14), "--store", store.location)[0] == 0
    export = tmp_path / "x.jsonl"
    assert run(capsys, "audit", "export", store.location, "--out", str(export))[0] == 0
    # `iechs audit import`: every record is written at the time of the import.
    clock_at(monkeypatch, datetime(2026, 7, 1, 12, 0, tzinfo=UTC))
    assert run(capsys, "audit", "import", str(export), "--store", another.location)[0] == 0
    assert another.written_at() == ["2026-07-01T12:00:00.000000Z"] * 17
    # The copy exports the same bytes (the same store id, and no write times in an export).
    copied = tmp_path / "y.jsonl"
    assert run(capsys, "audit", "export", another.location, "--out", str(copied))[0] == 0
    assert copied.read_bytes() == export.read_bytes()
    # The library: a store's own clock, when given one.
    moment = datetime(2026, 7, 2, 8, 15, tzinfo=UTC)
    third = str(tmp_path / "third.db")
    with open_store(third, create=True, clock=lambda: moment) as target:
        assert import_jsonl(JsonlLog(export), target) == 17
    assert Store(third, postgres=False).written_at() == ["2026-07-02T08:15:00.000000Z"] * 17


def test_a_store_made_before_write_times_gains_them(
    engine: Engine,
    store: Store,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_recorded(engine, DAY14, store.location)
    store.sql("ALTER TABLE iechs_records DROP COLUMN written_at")  # the records table of before
    # Opened again (to read or to write), the store gains the column; its rows have no write time.
    with open_log(store.location) as log:
        assert verify_log(log).ok
    assert store.written_at() == [None] * 17
    clock_at(monkeypatch, datetime(2026, 5, 17, 9, 0, tzinfo=UTC))
    run_recorded(engine, S.NO_STEROID, store.location)
    assert store.written_at() == [None] * 17 + ["2026-05-17T09:00:00.000000Z"] * 13
    code, out, _ = run(capsys, "audit", "verify", store.location)
    assert code == 0, out
    code, out, _ = run(capsys, "audit", "show", store.location, "--record", "2")
    assert "write time: none kept (written before the store kept write times)" in out
    # FHIR: the old rows' Provenance at the event's time, flagged; the new ones' at the write time.
    code, out, _ = run(capsys, "audit", "export", store.location, "--format", "fhir")
    assert code == 0
    provenances = {
        int(e["resource"]["id"].removeprefix("iechs-provenance-")): e["resource"]
        for e in json.loads(out)["entry"]
        if e["resource"]["resourceType"] == "Provenance"
    }
    assert len(provenances) == 30
    for seq, resource in provenances.items():
        if seq <= 17:
            assert resource["recorded"] == resource["occurredDateTime"]
            assert resource["_recorded"] == {"extension": [WRITE_TIME_UNKNOWN]}
        else:
            assert parsed(resource["recorded"]) == datetime(2026, 5, 17, 9, 0, tzinfo=UTC)
            assert "_recorded" not in resource


def test_a_connection_that_cannot_migrate_reads_and_refuses_to_write(
    engine: Engine, server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # A read-only role on a PostgreSQL store of before: it verifies, shows and exports the log
    # (no write times), and an append through it says what to do.
    url = server.new_database()
    run_recorded(engine, S.NO_STEROID, url)
    owner = Store(url, postgres=True)
    owner.sql("ALTER TABLE iechs_records DROP COLUMN written_at")
    owner.sql("CREATE ROLE auditor LOGIN")
    owner.sql("GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO auditor")
    reader = url.replace("postgres@", "auditor@", 1)
    code, out, _ = run(capsys, "audit", "verify", reader)
    assert code == 0, out
    code, out, _ = run(capsys, "audit", "show", reader, "--record", "3")
    assert "write time: none kept" in out
    assert run(capsys, "audit", "export", reader, "--format", "fhir")[0] == 0
    with open_store(reader) as opened:
        live = RecordedEpisode.resume(engine, opened, PATIENT)
        with pytest.raises(StoreError, match="open it once as the owner of the iechs_records"):
            live.advance(live.episode.decisions[-1].at)
    assert (
        owner.sql(
            "SELECT 1 FROM information_schema.columns WHERE table_name = 'iechs_records' "
            "AND column_name = 'written_at'"
        )
        == []
    )
    open_store(url).close()  # opened by the owner: migrated
    assert owner.written_at() == [None] * 13


def test_a_write_time_without_a_time_zone_is_refused(tmp_path: Path, engine: Engine) -> None:
    from iechs.audit.stores import instant

    assert instant(datetime(2026, 5, 17, 11, 0, tzinfo=UTC)) == "2026-05-17T11:00:00.000000Z"
    with pytest.raises(ValueError, match="time zone"):
        instant(datetime(2026, 5, 17, 11, 0))


def test_every_decision_has_a_provenance(
    engine: Engine, store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fhir.resources.R4B.bundle import Bundle
    from fhir.resources.R4B.provenance import Provenance

    from iechs.fhir.codes import PATIENT_ID_SYSTEM

    # A patient from a FHIR Bundle (named by an identifier of the system the input reads), one
    # from a native timeline, and an override with a reason.
    bundle_in = json.loads(FHIR_DAY14.read_text())
    (patient_in,) = [
        e["resource"] for e in bundle_in["entry"] if e["resource"]["resourceType"] == "Patient"
    ]
    patient_in["identifier"] = [
        {"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "hospital-mrn-7"},
        {"system": PATIENT_ID_SYSTEM, "value": "P-0042"},
    ]
    (tmp_path / "in.json").write_text(json.dumps(bundle_in))
    assert main(["run", str(tmp_path / "in.json"), "--store", store.location]) == 0
    run_recorded(engine, S.NO_STEROID, store.location)
    with open_store(store.location) as opened:
        live = RecordedEpisode.resume(engine, opened, PATIENT)
        live.advance(live.episode.decisions[-1].at, actor="dr-lee", reason="ward round")
    code, out, _ = run(capsys, "audit", "export", store.location, "--format", "fhir")
    assert code == 0
    bundle = Bundle.model_validate_json(out).model_dump(mode="json", exclude_none=True)
    entries = {e["fullUrl"]: e["resource"] for e in bundle["entry"]}
    with open_log(store.location) as log:
        records = {r.seq: r for r in sound_records(log)}
    written = dict(zip(sorted(records), store.written_at(), strict=True))
    provenances = [r for r in entries.values() if r["resourceType"] == "Provenance"]
    responses = [r for r in entries.values() if r["resourceType"] == "GuidanceResponse"]
    assert len(provenances) == len(responses) == len(records)
    identity = engine.identity
    for resource in provenances:
        Provenance.model_validate(resource)  # valid FHIR R4B on its own
        (target,) = resource["target"]
        response = entries[target["reference"]]  # resolves within the Bundle ...
        assert response["resourceType"] == target["type"] == "GuidanceResponse"  # ... to its
        seq = int(resource["id"].removeprefix("iechs-provenance-"))
        assert response["id"] == f"iechs-decision-{seq}"  # own decision
        record = records[seq]
        # when the store wrote the record (FHIR writes the instant without zero microseconds)
        assert parsed(resource["recorded"]) == parsed(written[seq])
        assert "_recorded" not in resource  # (and so no flag saying it is unknown)
        assert resource["occurredDateTime"] == record.at  # the event's time
        engine_agent = resource["agent"][0]
        assert engine_agent["type"]["coding"][0]["code"] == "performer"
        assert engine_agent["who"]["type"] == "Device"
        assert engine_agent["who"]["display"] == f"iechs {__version__}"
        (source,) = resource["entity"]
        assert source["role"] == "source"
        assert source["what"]["type"] == "PlanDefinition"
        assert source["what"]["identifier"] == {
            "system": "urn:iechs:guideline",
            "value": f"{identity['id']}|{identity['version']}",
        }
        assert source["extension"] == [
            {
                "url": "https://iechs.dev/fhir/StructureDefinition/guideline-sha256",
                "valueString": identity["sha256"],
            }
        ]
    override = next(p for p in provenances if len(p["agent"]) == 2)
    assert override["agent"][1]["who"]["display"] == "dr-lee"
    assert override["agent"][1]["type"]["coding"][0]["code"] == "enterer"
    assert override["reason"] == [{"text": "ward round"}]
    # Patients are named as the FHIR input names them: one identifier system, in and out.
    subjects = {canonical(r["subject"]) for r in responses}
    assert subjects == {
        canonical({"type": "Patient", "identifier": {"system": PATIENT_ID_SYSTEM, "value": v}})
        for v in ("P-0042", PATIENT)
    }
    events = [r for r in entries.values() if r["resourceType"] == "AuditEvent"]
    assert {canonical(e["entity"][0]["what"]) for e in events} == subjects


def test_appends_that_would_leave_a_snapshot_unsealed_are_refused(
    engine: Engine, tmp_path: Path
) -> None:
    from iechs.audit import StoreError
    from iechs.audit.records import draft_of
    from iechs.audit.stores import EpisodeUpdate

    db = str(tmp_path / "log.db")
    run_recorded(engine, S.NO_STEROID, db)
    episode = engine.run(load_timeline(S.NO_STEROID, engine.guideline))
    episode.step(parse_event(TOCILIZUMAB, engine.guideline))
    draft = draft_of(episode.decisions[-1], episode=PATIENT, guideline=engine.identity)
    with open_store(db) as opened:
        before = opened.head()
        # Records of an episode whose snapshot the store keeps, without the new snapshot ...
        with pytest.raises(StoreError, match=f"keeps a snapshot of episode '{PATIENT}'"):
            opened.append([draft])
        # ... or a snapshot without a record of its episode to seal it.
        update = EpisodeUpdate(PATIENT, episode.snapshot(), 14, expected_steps=13)
        with pytest.raises(StoreError, match="this append has none"):
            opened.append([attrs.evolve(draft, episode="someone-else")], update)
        assert opened.head() == before
        (sealed,) = opened.append([draft], update)  # with both: sealed
        assert sealed.snapshot == snapshot_seal(episode.snapshot())
        assert verify_log(opened).ok
