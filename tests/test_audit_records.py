"""Audit records, recording, checkpoints and the FHIR export (the library, no CLI)."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest

from iechs import Engine, __version__, load_timeline, parse_event
from iechs.audit import (
    GENESIS,
    AuditError,
    CheckpointError,
    RecordedEpisode,
    SqliteStore,
    StoreError,
    canonical,
    load_checkpoint,
    open_log,
    open_store,
    replay_log,
    run_recorded,
    sign_checkpoint,
    verify_log,
)
from iechs.audit.checkpoint import generate_key, load_private_key, load_public_key
from iechs.audit.fhir import FHIR_PACKAGE, audit_event, guidance_response, to_bundle
from iechs.audit.records import RECORD_FORMAT, draft_of, parse_record, sha256_hex
from iechs.audit.replay import first_difference
from iechs.audit.stores import EpisodeUpdate

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
DAY14 = EXAMPLES / "day14-steroid-response.json"
SALVAGE = EXAMPLES / "refractory-ruxolitinib-salvage.json"


def bodies(path: Path) -> list[tuple[int, str, str]]:
    import sqlite3

    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT seq, hash, body FROM iechs_records ORDER BY seq").fetchall()
    return [(int(s), str(h), str(b)) for s, h, b in rows]


# --- canonical form and hashes -----------------------------------------------------------------


def test_canonical_serialisation_is_sorted_compact_utf8() -> None:
    assert canonical({"b": [1, 2.5], "a": "é", "c": None}) == '{"a":"é","b":[1,2.5],"c":null}'
    assert sha256_hex("abc") == hashlib.sha256(b"abc").hexdigest()
    with pytest.raises(ValueError, match="Out of range float"):
        canonical({"x": float("nan")})


def test_each_record_hashes_its_canonical_content_and_links_to_the_previous(
    engine: Engine, tmp_path: Path
) -> None:
    db = tmp_path / "log.db"
    run_recorded(engine, DAY14, str(db))
    rows = bodies(db)
    assert [s for s, _, _ in rows] == list(range(1, 18))
    prev = GENESIS
    for seq, digest, body in rows:
        content = json.loads(body)
        assert canonical(content) == body
        assert hashlib.sha256(body.encode("utf-8")).hexdigest() == digest
        assert content["prev"] == prev
        assert content["seq"] == seq
        assert content["format"] == RECORD_FORMAT
        assert content["engine"] == __version__
        assert content["guideline"] == engine.identity
        assert content["episode"] == "demo-day14"
        prev = digest
    first, step12 = json.loads(rows[0][2]), json.loads(rows[12][2])
    assert first["patient"]["id"] == "demo-day14"  # the start record carries the patient
    assert first["decision"]["event"] == {"kind": "start", "patient": "demo-day14"}
    assert step12["patient"] is None
    decision = step12["decision"]
    assert (decision["from"], decision["to"]) == ("suspected", "first_line_steroids")
    assert decision["guards"][0]["result"] == "TRUE"  # the guards evaluated, with their results
    reads = [r for v in decision["criteria"].values() for r in v.get("reads", [])]
    assert {"what": "ferritin", "value": 26000.0} in [  # the values the criteria read
        {"what": r.get("what"), "value": r.get("value")} for r in reads
    ]
    assert decision["event"]["drug"] == "dexamethasone"


def test_records_are_identical_whichever_store_holds_them(engine: Engine, tmp_path: Path) -> None:
    # No clock, no store id in the hashed content: the same input gives the same log bytes.
    run_recorded(engine, DAY14, str(tmp_path / "a.db"))
    run_recorded(engine, DAY14, str(tmp_path / "b.db"))
    a, b = bodies(tmp_path / "a.db"), bodies(tmp_path / "b.db")
    assert a == b
    with open_store(str(tmp_path / "a.db")) as sa, open_store(str(tmp_path / "b.db")) as sb:
        assert sa.store_id != sb.store_id


def test_parse_record_names_what_is_wrong() -> None:
    good = {
        "format": RECORD_FORMAT,
        "seq": 1,
        "prev": GENESIS,
        "episode": "P1",
        "guideline": {"id": "g", "version": "1", "sha256": "a" * 64},
        "engine": "0.1.0",
        "decision": {"step": 0, "at": "t", "from": None, "to": "s", "event": {}, "alerts": []},
        "patient": None,
        "actor": None,
        "reason": None,
        "snapshot": None,
    }
    assert parse_record(good).episode == "P1"
    assert parse_record(good).content() == good
    # The prior format: no seal; its content (and so its hash) is kept as it was.
    prior = {k: v for k, v in good.items() if k != "snapshot"}
    old = parse_record({**prior, "format": "iechs.audit/1"})
    assert (old.format, old.snapshot) == ("iechs.audit/1", None)
    assert old.content() == {**prior, "format": "iechs.audit/1"}
    with pytest.raises(ValueError, match=r"\$\.snapshot: unexpected"):
        parse_record({**good, "format": "iechs.audit/1"})
    cases: list[tuple[dict[str, Any], str]] = [
        # The write time is the store's, beside the chain: never a field of a record.
        ({"recorded": "2026-05-17T10:05:00.000000Z"}, r"\$\.recorded: unexpected"),
        ({"written_at": "2026-05-17T10:05:00.000000Z"}, r"\$\.written_at: unexpected"),
        ({"snapshot": "XYZ"}, r"\$\.snapshot"),
        ({"seq": 0}, r"\$\.seq"),
        ({"seq": True}, r"\$\.seq"),
        ({"prev": "XYZ"}, r"\$\.prev"),
        ({"format": "other"}, r"\$\.format"),
        ({"extra": 1}, r"\$\.extra: unexpected"),
        ({"decision": {"step": 0}}, r"\$\.decision\.at"),
        ({"guideline": {"id": "g"}}, r"\$\.guideline"),
        ({"actor": 5}, r"\$\.actor"),
    ]
    for change, message in cases:
        with pytest.raises(ValueError, match=message):
            parse_record({**good, **change})
    with pytest.raises(ValueError, match=r"\$\.snapshot: missing"):
        parse_record({k: v for k, v in good.items() if k != "snapshot"})


# --- recording and resuming ----------------------------------------------------------------------


def test_recorded_episode_resumes_in_another_store_handle(engine: Engine, tmp_path: Path) -> None:
    timeline = load_timeline(SALVAGE, engine.guideline)
    events = timeline.events
    db = str(tmp_path / "log.db")
    # Each step knows what follows it (`later`), as in `Engine.run`; the snapshot keeps it.
    with open_store(db, create=True) as store:
        live = RecordedEpisode.start(engine, store, timeline.patient)
        for i in range(20):
            live.step(events[i], later=engine.later(events, i))
    with open_store(db) as store:  # a later process: restore from the store and go on
        again = RecordedEpisode.resume(engine, store, timeline.patient.id)
        assert again.recorded == 21
        for i in range(20, len(events)):
            again.step(events[i], later=engine.later(events, i))
    whole = engine.run(timeline)
    assert any(d.later for d in whole.decisions[:21])  # the first process knew what followed
    assert [d.to_json() for d in again.episode.decisions] == [d.to_json() for d in whole.decisions]
    with open_log(db) as log:
        assert verify_log(log).count == len(whole.decisions)
        report = replay_log(log, [engine.guideline])
    assert report.ok, report.differences


def test_advance_is_recorded_and_replayed(engine: Engine, tmp_path: Path) -> None:
    timeline = load_timeline(DAY14, engine.guideline)
    db = str(tmp_path / "log.db")
    with open_store(db, create=True) as store:
        live = RecordedEpisode.start(engine, store, timeline.patient)
        for event in timeline.events[:12]:
            live.step(event)
        due = live.advance(timeline.events[11].at + timedelta(hours=30))
    assert due.event["kind"] == "advance"
    assert [a.code for a in due.alerts] == ["reassessment_overdue"]
    with open_log(db) as log:
        report = replay_log(log, [engine.guideline], keep_decisions=True)
    assert report.ok, report.differences
    assert json.loads(report.replayed[14])["alerts"][0]["code"] == "reassessment_overdue"


def test_actor_and_reason_are_recorded_and_hashed(engine: Engine, tmp_path: Path) -> None:
    timeline = load_timeline(DAY14, engine.guideline)
    db = str(tmp_path / "log.db")
    with open_store(db, create=True) as store:
        live = RecordedEpisode.start(engine, store, timeline.patient, actor="system")
        live.step(timeline.events[0], actor="dr.house", reason="override: treating empirically")
    rows = bodies(tmp_path / "log.db")
    assert json.loads(rows[0][2])["actor"] == "system"
    second = json.loads(rows[1][2])
    assert (second["actor"], second["reason"]) == ("dr.house", "override: treating empirically")
    assert sha256_hex(rows[1][2]) == rows[1][1]


def test_a_second_writer_of_the_same_episode_is_refused(engine: Engine, tmp_path: Path) -> None:
    timeline = load_timeline(DAY14, engine.guideline)
    db = str(tmp_path / "log.db")
    with open_store(db, create=True) as store:
        first = RecordedEpisode.start(engine, store, timeline.patient)
        second = RecordedEpisode.resume(engine, store, timeline.patient.id)
        first.step(timeline.events[0])
        with pytest.raises(StoreError, match="another process changed it"):
            second.step(timeline.events[0])
        with pytest.raises(StoreError, match="expected 0"):
            RecordedEpisode.start(engine, store, timeline.patient)
        assert verify_log(store).count == 2


def test_an_append_is_one_transaction(engine: Engine, tmp_path: Path) -> None:
    # A refused append of several records leaves neither records nor a moved head behind.
    timeline = load_timeline(DAY14, engine.guideline)
    db = str(tmp_path / "log.db")
    with open_store(db, create=True) as store:
        RecordedEpisode.start(engine, store, timeline.patient)
        before = store.head()
        episode = engine.start(timeline.patient)
        for event in timeline.events[:5]:
            episode.step(event)
        drafts = [
            draft_of(d, episode=episode.episode_id, guideline=engine.identity)
            for d in episode.decisions
        ]
        update = EpisodeUpdate(episode.episode_id, episode.snapshot(), 6, expected_steps=0)
        with pytest.raises(StoreError, match="has 1 recorded steps"):
            store.append(drafts, update)
        assert store.head() == before
        assert verify_log(store).count == 1
        assert store.episode(episode.episode_id) is not None
        assert store.episode(episode.episode_id).steps == 1  # type: ignore[union-attr]


def test_stores_refuse_what_is_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such store"):
        SqliteStore(tmp_path / "absent.db")
    (tmp_path / "text.db").write_text("hello, not sqlite " * 100)
    with pytest.raises(StoreError, match="database error"):
        SqliteStore(tmp_path / "text.db")
    import sqlite3

    with sqlite3.connect(tmp_path / "other.db") as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(StoreError, match="not an iechs audit store"):
        SqliteStore(tmp_path / "other.db")
    with pytest.raises(StoreError, match="read-only"):
        open_store(str(tmp_path / "x.jsonl"), create=True)
    with pytest.raises(StoreError, match="no such export"):
        open_log(str(tmp_path / "x.jsonl"))
    assert not (tmp_path / "absent.db").exists()  # reading never creates a store


def test_store_runs_in_wal_mode_with_full_sync(engine: Engine, tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    run_recorded(engine, DAY14, str(db))
    with SqliteStore(db) as store:
        assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


# --- checkpoints ---------------------------------------------------------------------------------


def test_checkpoint_round_trip_and_signature(engine: Engine, tmp_path: Path) -> None:
    db = str(tmp_path / "log.db")
    run_recorded(engine, DAY14, db)
    public_path, public = generate_key(tmp_path / "k.pem")
    assert public_path.name == "k.pub.pem"
    assert (tmp_path / "k.pem").stat().st_mode & 0o777 == 0o600
    key = load_private_key(tmp_path / "k.pem")
    assert load_public_key(public_path).public_bytes_raw() == public.public_bytes_raw()
    with open_log(db) as log:
        v = verify_log(log)
        cp = sign_checkpoint(key, store_id=v.store_id, seq=v.head.seq, head=v.head.hash, at=None)
        (tmp_path / "c.json").write_text(json.dumps(cp.to_json()))
        loaded = load_checkpoint(tmp_path / "c.json")
        assert loaded == cp
        assert loaded.signature_problem(public) is None
        assert verify_log(log, loaded, public).ok
        forged = attrs.evolve(loaded, seq=loaded.seq - 1)
        assert "does not match its content" in str(forged.signature_problem(None))
        _, other = generate_key(tmp_path / "other.pem")
        assert "not with the trusted key" in str(loaded.signature_problem(other))
        bad = verify_log(log, loaded, other)
        assert [f.kind for f in bad.findings] == ["checkpoint"]
    with pytest.raises(CheckpointError, match="refusing to overwrite"):
        generate_key(tmp_path / "k.pem")


def test_bad_checkpoint_and_key_files_are_bad_input(tmp_path: Path) -> None:
    (tmp_path / "c.json").write_text('{"format": "iechs.audit-checkpoint/1", "seq": "x"}')
    with pytest.raises(CheckpointError, match=r"\$\.store_id"):
        load_checkpoint(tmp_path / "c.json")
    (tmp_path / "k.pem").write_text("not a key")
    with pytest.raises(CheckpointError, match="not an unencrypted PEM private key"):
        load_private_key(tmp_path / "k.pem")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_public_key(tmp_path / "missing.pem")


# --- replay --------------------------------------------------------------------------------------


def test_first_difference_names_the_path() -> None:
    a = {"alerts": [{"code": "x", "message": "m"}], "to": "s"}
    assert first_difference(a, a) is None
    b = {"alerts": [{"code": "x", "message": "n"}], "to": "s"}
    assert first_difference(a, b) == ("$.alerts[0].message", "m", "n")
    assert first_difference({"l": [1]}, {"l": [1, 2]}) == ("$.l.length", 1, 2)
    assert first_difference({"a": 1}, {"b": 1}) == ("$.a", 1, None)


def test_replay_needs_the_guideline_that_decided(engine: Engine, tmp_path: Path) -> None:
    from iechs import load_guideline

    profile = load_guideline(ROOT / "guideline" / "profiles" / "astct-2023.yaml")
    db = str(tmp_path / "log.db")
    run_recorded(Engine(profile), DAY14, db)
    with open_log(db) as log:
        with pytest.raises(AuditError, match="pass that guideline's file with --guideline"):
            replay_log(log, [engine.guideline])
        report = replay_log(log, [engine.guideline, profile])
    assert report.ok
    meta = profile.guideline
    assert report.guidelines == (f"{meta.id} {meta.version} (sha256 {profile.sha256[:12]})",)


# --- FHIR ----------------------------------------------------------------------------------------


def test_fhir_resources_validate_and_carry_the_record(engine: Engine, tmp_path: Path) -> None:
    import base64

    from fhir.resources.R4B.auditevent import AuditEvent
    from fhir.resources.R4B.guidanceresponse import GuidanceResponse

    assert FHIR_PACKAGE == "fhir.resources.R4B"
    db = str(tmp_path / "log.db")
    run_recorded(engine, DAY14, db)
    from iechs.audit.export import sound_records

    with open_log(db) as log:
        records = list(sound_records(log))
        bundle = to_bundle(records, log.store_id)
    assert bundle["type"] == "collection"
    # Each decision: its AuditEvent, its GuidanceResponse and its Provenance.
    assert len(bundle["entry"]) == 3 * len(records)
    step = records[12]
    event = AuditEvent.model_validate(audit_event(step, "store")).model_dump(mode="json")
    assert event["recorded"] == "2026-03-15T10:00:00Z"  # the event's time, not the clock
    details = {d["type"]: d for d in event["entity"][1]["detail"]}
    body = base64.b64decode(details["record"]["valueBase64Binary"]).decode("utf-8")
    assert body == step.body
    assert sha256_hex(body) == details["hash"]["valueString"] == step.hash
    response = GuidanceResponse.model_validate(guidance_response(step)).model_dump(mode="json")
    assert response["status"] == "success"
    # The patient, by the identifier system the FHIR input reads patients by.
    assert response["subject"]["identifier"] == {
        "system": "https://iechs.dev/fhir/sid/patient-id",
        "value": "demo-day14",
    }
    assert response["reasonCode"][0]["text"] == step.decision["transition"]["label"]
    notes = [n["text"] for n in response["note"]]
    assert any(n.startswith("Guard suspected -> first_line_steroids") for n in notes)
    assert any(n.startswith("Recommendation ") for n in notes)
    missing = next(r for r in records if any(a["code"] == "missing_data" for a in r.alerts))
    data_required = GuidanceResponse.model_validate(guidance_response(missing)).model_dump(
        mode="json"
    )
    assert data_required["status"] == "data-required"
    assert data_required["dataRequirement"][0]["type"] == "Observation"
    again = to_bundle(records, "store")
    assert canonical(again) == canonical(to_bundle(records, "store"))  # deterministic


def test_fhir_validation_rejects_a_malformed_resource(engine: Engine, tmp_path: Path) -> None:
    # The models really validate: a record whose time is not an instant cannot be exported.
    db = str(tmp_path / "log.db")
    run_recorded(engine, DAY14, db)
    from iechs.audit.export import sound_records

    with open_log(db) as log:
        record = next(iter(sound_records(log)))
    broken = attrs.evolve(record, decision={**record.decision, "at": "yesterday"})
    with pytest.raises(AuditError, match="does not map to valid FHIR"):
        to_bundle([broken], "store")


def test_parse_event_round_trip_of_logged_events(engine: Engine, tmp_path: Path) -> None:
    # Replay relies on it: a logged (canonical) event parses back to the same event.
    for path in sorted(EXAMPLES.glob("*.json")):
        timeline = load_timeline(path, engine.guideline)
        for event in timeline.events:
            from iechs.timeline import event_to_json

            assert parse_event(event_to_json(event), engine.guideline) == event


def test_package_exports_every_public_name() -> None:
    import iechs.audit

    for name in iechs.audit.__all__:
        assert getattr(iechs.audit, name) is not None, name
    assert set(iechs.audit.__all__) == set(iechs.audit._HOME)
    with pytest.raises(AttributeError):
        _ = iechs.audit.nothing_here


def test_a_password_in_a_store_url_is_never_shown() -> None:
    url = "postgresql://auditor:s3cret@127.0.0.1:1/iechs"
    with pytest.raises(StoreError) as caught:
        open_store(url)
    assert "s3cret" not in str(caught.value)
    assert "auditor:***@127.0.0.1:1" in str(caught.value)
