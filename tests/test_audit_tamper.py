"""Tampering with a real log, every way the issue names, in a SQLite store and in a JSON Lines
export: `iechs audit verify` must catch each one (exit 1, naming the first bad record)."""

from __future__ import annotations

import json
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iechs import Engine
from iechs.audit import GENESIS, run_recorded
from iechs.audit.records import AuditRecord, canonical, parse_record, snapshot_seal
from iechs.audit.snapshots import episodes_of
from iechs.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
TIMELINES = ("day14-steroid-response.json", "tocilizumab-monotherapy-deviation.json")
COUNT = 17 + 42  # decisions of the two timelines (start included)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, engine: Engine) -> Path:
    """A store with two episodes, its export, and a key: built once, copied per test."""
    base = tmp_path_factory.mktemp("pristine")
    for name in TIMELINES:
        run_recorded(engine, EXAMPLES / name, str(base / "log.db"))
    assert main(["audit", "export", str(base / "log.db"), "--out", str(base / "log.jsonl")]) == 0
    assert main(["audit", "keygen", "--out", str(base / "key.pem")]) == 0
    return base


@pytest.fixture
def work(pristine: Path, tmp_path: Path) -> Path:
    for item in pristine.iterdir():
        if item.suffix in (".db", ".jsonl", ".pem"):
            (tmp_path / item.name).write_bytes(item.read_bytes())
    return tmp_path


def verify(capsys: pytest.CaptureFixture[str], log: Path, *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["audit", "verify", str(log), *extra])
    captured = capsys.readouterr()
    return code, " ".join((captured.out + captured.err).split())


def checkpoint(capsys: pytest.CaptureFixture[str], work: Path, log: Path) -> list[str]:
    assert (
        main(
            [
                "audit",
                "checkpoint",
                str(log),
                "--key",
                str(work / "key.pem"),
                "--out",
                str(work / "c.json"),
            ]
        )
        == 0
    )
    capsys.readouterr()
    return ["--checkpoint", str(work / "c.json"), "--public-key", str(work / "key.pub.pem")]


# --- tampering tools: SQLite ---------------------------------------------------------------------


def sql(db: Path, statement: str, *params: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(statement, params).fetchall()


def sql_records(db: Path) -> list[AuditRecord]:
    return [
        parse_record(json.loads(str(b)))
        for (b,) in sql(db, "SELECT body FROM iechs_records ORDER BY seq")
    ]


def change_one_byte(text: str, marker: str) -> str:
    """`text` with one byte of a letter after `marker` changed (still valid JSON)."""
    i = text.index(marker) + len(marker)
    while not text[i].isascii() or not text[i].isalpha():
        i += 1
    changed = text[:i] + ("b" if text[i] != "b" else "c") + text[i + 1 :]
    assert len(changed.encode()) == len(text.encode())
    assert sum(x != y for x, y in zip(changed.encode(), text.encode(), strict=True)) == 1
    return changed


def reseal(records: list[AuditRecord], start: int) -> list[AuditRecord]:
    """Recompute seq and prev from index `start` on: a consistent rewrite of the chain."""
    out = records[:start]
    prev = out[-1].hash if out else GENESIS
    for i, record in enumerate(records[start:], start=start):
        sealed = attrs.evolve(record, seq=i + 1, prev=prev)
        out.append(sealed)
        prev = sealed.hash
    return out


def sql_rewrite(db: Path, records: list[AuditRecord]) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM iechs_records")
        conn.executemany(
            "INSERT INTO iechs_records (seq, episode, hash, body) VALUES (?, ?, ?, ?)",
            [(r.seq, r.episode, r.hash, r.body) for r in records],
        )
        last = records[-1]
        conn.execute("UPDATE iechs_chain SET seq = ?, hash = ?", (last.seq, last.hash))


def resealed_snapshots(records: list[AuditRecord]) -> list[AuditRecord]:
    """The records with each episode's last one sealing the snapshot the records rebuild (what a
    forger who knows the format does; `reseal` then recomputes the links)."""
    seals = {e.id: snapshot_seal(e.snapshot) for e in episodes_of(records)}
    last = {r.episode: i for i, r in enumerate(records)}
    return [
        attrs.evolve(r, snapshot=seals[r.episode]) if last[r.episode] == i else r
        for i, r in enumerate(records)
    ]


def sql_resnapshot(db: Path, records: list[AuditRecord]) -> None:
    """Replace every saved snapshot with the one `records` rebuild (saved with the episode's
    last record, counting steps up to its step)."""
    steps = {r.episode: r.step + 1 for r in records}
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM iechs_episodes")
        conn.executemany(
            "INSERT INTO iechs_episodes (id, steps, head_seq, snapshot) VALUES (?, ?, ?, ?)",
            [(e.id, steps[e.id], e.head_seq, canonical(e.snapshot)) for e in episodes_of(records)],
        )


def edited(record: AuditRecord) -> AuditRecord:
    """The kind of edit someone would hide: a state the engine never entered."""
    return attrs.evolve(record, decision={**record.decision, "to": "resolved"})


# --- tampering tools: JSON Lines -----------------------------------------------------------------


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def write_lines(path: Path, content: list[str]) -> None:
    path.write_text("\n".join(content) + "\n", encoding="utf-8")


def jsonl_rewrite(path: Path, records: list[AuditRecord]) -> None:
    header = json.loads(lines(path)[0])
    header["head"] = {"seq": records[-1].seq, "hash": records[-1].hash}
    body = [canonical({"hash": r.hash, "record": r.content()}) for r in records]
    write_lines(path, [canonical(header), *body])


def jsonl_records(path: Path) -> list[AuditRecord]:
    return [parse_record(json.loads(line)["record"]) for line in lines(path)[1:]]


# --- the pristine log verifies -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["log.db", "log.jsonl"])
def test_pristine_log_is_intact(work: Path, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = verify(capsys, work / name)
    assert code == 0, out
    assert f"INTACT: {COUNT} records" in out
    code, out = verify(capsys, work / name, *checkpoint(capsys, work, work / name))
    assert code == 0, out
    assert "matches" in out


# --- the five ways of the issue, in SQLite -------------------------------------------------------


def test_sqlite_one_byte_changed(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = work / "log.db"
    (body,) = sql(db, "SELECT body FROM iechs_records WHERE seq = 23")[0]
    sql(
        db,
        "UPDATE iechs_records SET body = ? WHERE seq = 23",
        change_one_byte(str(body), '"code":"'),  # the observation: ast -> bst
    )
    code, out = verify(capsys, db)
    assert code == 1
    assert "TAMPERED (altered): record 23 (episode il6-monotherapy, step 5" in out
    assert "does not match its stored hash" in out


def test_show_marks_the_altered_record_in_its_row(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An auditor lists the log (`iechs audit show`) after record 3 was edited to claim the
    patient went from surveillance straight to `resolved`. The edited row must carry its
    defect, in brackets under the event: an auditor who reads the list, not `verify`, sees
    which row not to trust. (rich read `[its content does not match its stored hash]` as a
    markup tag and printed an empty line in its place.)"""
    db = work / "log.db"
    (body,) = sql(db, "SELECT body FROM iechs_records WHERE seq = 3")[0]
    assert '"to":"surveillance"' in str(body)
    sql(
        db,
        "UPDATE iechs_records SET body = ? WHERE seq = 3",
        str(body).replace('"to":"surveillance"', '"to":"resolved"'),
    )
    capsys.readouterr()
    assert main(["audit", "show", str(db), "--episode", "demo-day14"]) == 0
    rows = capsys.readouterr().out.splitlines()
    third = next(i for i, row in enumerate(rows) if row.startswith("│ 3 "))
    assert "surveillance -> resolved" in rows[third]
    event_cells = " ".join(row.split("│")[5].strip() for row in rows[third : third + 5])
    assert "[its content does not match its stored hash]" in event_cells


def test_sqlite_one_byte_changed_breaking_the_json(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = work / "log.db"
    sql(db, "UPDATE iechs_records SET body = '[' || substr(body, 2) WHERE seq = 4")
    code, out = verify(capsys, db)
    assert code == 1
    assert "TAMPERED (altered): record 4 (seq 4): its content is not JSON" in out


def test_sqlite_record_deleted(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = work / "log.db"
    sql(db, "DELETE FROM iechs_records WHERE seq = 30")
    code, out = verify(capsys, db)
    assert code == 1
    assert (
        "TAMPERED (missing): record 30 is missing: the log goes from record 29 to record 31" in out
    )


def test_sqlite_two_records_swapped(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = work / "log.db"
    sql(db, "UPDATE iechs_records SET seq = -1 WHERE seq = 10")
    sql(db, "UPDATE iechs_records SET seq = 10 WHERE seq = 11")
    sql(db, "UPDATE iechs_records SET seq = 11 WHERE seq = -1")
    code, out = verify(capsys, db)
    assert code == 1
    assert (
        "TAMPERED (reordered): records are out of order: record 11 is stored before record 10"
        in out
    )


def test_sqlite_last_records_cut_off(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = work / "log.db"
    cp = checkpoint(capsys, work, db)
    # Naively (head row left alone): the store's own head already tells.
    sql(db, "DELETE FROM iechs_records WHERE seq > ?", COUNT - 3)
    code, out = verify(capsys, db)
    assert code == 1
    assert f"TAMPERED (truncated): the log ends at record {COUNT - 3} but the store's head" in out
    # Carefully (head row moved back too): the episode's snapshot, saved with the last record,
    # still tells.
    last = sql_records(db)[-1]
    sql(db, "UPDATE iechs_chain SET seq = ?, hash = ?", last.seq, last.hash)
    code, out = verify(capsys, db)
    assert code == 1
    assert (
        "TAMPERED (snapshot): episode 'il6-monotherapy': the saved snapshot of episode "
        f"'il6-monotherapy' says it was saved with record {COUNT}, but the episode's last record "
        f"is record {COUNT - 3}"
    ) in out
    # Most carefully (the snapshot replaced by the one the records left rebuild, which the last
    # of them, unsealed, vouches for): only the checkpoint tells.
    sql_resnapshot(db, sql_records(db))
    assert verify(capsys, db)[0] == 0
    code, out = verify(capsys, db, *cp)
    assert code == 1
    assert (
        f"TAMPERED (truncated): the log ends at record {COUNT - 3} but the signed checkpoint "
        f"vouches for {COUNT} records: records {COUNT - 2}-{COUNT} were cut off"
    ) in out


def test_sqlite_whole_chain_rewritten_after_an_edit(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = work / "log.db"
    cp = checkpoint(capsys, work, db)
    records = sql_records(db)
    records[20] = edited(records[20])
    sql_rewrite(db, reseal(records, 20))
    code, out = verify(capsys, db)
    assert code == 0, out  # every hash and link recomputed: the chain alone cannot tell
    code, out = verify(capsys, db, *cp)
    assert code == 1
    assert f"TAMPERED (rewritten): record {COUNT} hashes to" in out
    assert "but the signed checkpoint says" in out


# --- more ways, in SQLite ------------------------------------------------------------------------


def test_sqlite_record_altered_and_rehashed(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = work / "log.db"
    record = edited(sql_records(db)[7])
    sql(db, "UPDATE iechs_records SET body = ?, hash = ? WHERE seq = 8", record.body, record.hash)
    code, out = verify(capsys, db)
    assert code == 1
    assert "TAMPERED (broken_link): record 9 (episode demo-day14, step 8" in out
    assert "record 8 was altered and rehashed, or record 9 was forged" in out


def test_sqlite_last_record_rewritten_with_the_head(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = work / "log.db"
    cp = checkpoint(capsys, work, db)
    records = sql_records(db)
    records[-1] = edited(records[-1])
    sql_rewrite(db, reseal(records, COUNT - 1))
    assert verify(capsys, db)[0] == 0
    code, out = verify(capsys, db, *cp)
    assert code == 1
    assert "TAMPERED (rewritten)" in out


def test_sqlite_forged_tail_beyond_the_head(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = work / "log.db"
    records = sql_records(db)
    extra = attrs.evolve(records[-1], seq=COUNT + 1, prev=records[-1].hash)
    sql(
        db,
        "INSERT INTO iechs_records (seq, episode, hash, body) VALUES (?, ?, ?, ?)",
        extra.seq,
        extra.episode,
        extra.hash,
        extra.body,
    )
    code, out = verify(capsys, db)
    assert code == 1
    assert f"TAMPERED (forged_tail): records {COUNT + 1}-{COUNT + 1} lie past the head" in out


def test_sqlite_forged_tail_after_truncation(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Cut the last records, append made-up ones consistently: the checkpoint's record differs.
    db = work / "log.db"
    cp = checkpoint(capsys, work, db)
    records = sql_records(db)
    forged = [edited(r) for r in records[-5:]]
    forged_log = reseal(records[:-5] + forged + [edited(records[-1])], COUNT - 5)
    sql_rewrite(db, forged_log)
    code, out = verify(capsys, db)
    assert code == 1  # the snapshot was saved with record COUNT, the episode now ends later
    assert "TAMPERED (snapshot): episode 'il6-monotherapy'" in out
    # Sealed anew, with a snapshot to match: only the checkpoint tells.
    sql_rewrite(db, forged_log := reseal(resealed_snapshots(forged_log), COUNT - 5))
    sql_resnapshot(db, forged_log)
    assert verify(capsys, db)[0] == 0
    code, out = verify(capsys, db, *cp)
    assert code == 1
    assert f"TAMPERED (rewritten): record {COUNT} hashes to" in out


def test_sqlite_index_column_edited(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = work / "log.db"
    sql(db, "UPDATE iechs_records SET episode = 'someone-else' WHERE seq = 3")
    code, out = verify(capsys, db)
    assert code == 1
    assert "TAMPERED (altered): record 3" in out
    assert "indexed under episode 'someone-else'" in out


def test_checkpoint_edited_or_from_another_key(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = work / "log.db"
    cp = checkpoint(capsys, work, db)
    data = json.loads((work / "c.json").read_text())
    data["seq"] -= 1
    (work / "c.json").write_text(json.dumps(data))
    code, out = verify(capsys, db, *cp)
    assert code == 1
    assert "TAMPERED (checkpoint): the checkpoint's signature does not match its content" in out
    assert main(["audit", "keygen", "--out", str(work / "other.pem")]) == 0
    cp = checkpoint(capsys, work, db)
    code, out = verify(capsys, db, cp[0], cp[1], "--public-key", str(work / "other.pub.pem"))
    assert code == 1
    assert "not with the trusted key" in out


def test_checkpoint_of_another_store(
    work: Path, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    cp = checkpoint(capsys, work, work / "log.db")
    run_recorded(engine, EXAMPLES / TIMELINES[0], str(work / "other.db"))
    code, out = verify(capsys, work / "other.db", *cp)
    assert code == 1
    assert "TAMPERED (checkpoint): the checkpoint is for store" in out


def test_checkpoint_refuses_a_log_that_does_not_verify(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = work / "log.db"
    sql(db, "DELETE FROM iechs_records WHERE seq = 5")
    code = main(
        [
            "audit",
            "checkpoint",
            str(db),
            "--key",
            str(work / "key.pem"),
            "--out",
            str(work / "c.json"),
        ]
    )
    assert code == 1
    assert not (work / "c.json").exists()
    assert "Refusing to sign" in capsys.readouterr().err


# --- the five ways, in a JSON Lines export -------------------------------------------------------

Tamper = Callable[[Path], None]


def jsonl_byte(path: Path) -> None:
    content = lines(path)
    content[23] = change_one_byte(content[23], '"code":"')
    write_lines(path, content)


def jsonl_delete(path: Path) -> None:
    content = lines(path)
    del content[30]
    write_lines(path, content)


def jsonl_swap(path: Path) -> None:
    content = lines(path)
    content[10], content[11] = content[11], content[10]
    write_lines(path, content)


def jsonl_whitespace(path: Path) -> None:
    content = lines(path)
    content[5] = content[5].replace('":', '": ', 1)
    write_lines(path, content)


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        (jsonl_byte, "TAMPERED (altered): record 23 (episode il6-monotherapy, step 5"),
        (jsonl_delete, "TAMPERED (missing): record 30 is missing"),
        (
            jsonl_swap,
            "TAMPERED (reordered): records are out of order: record 11 is stored before record 10",
        ),
        (
            jsonl_whitespace,
            "TAMPERED (altered): record 5 (line 6): the line is not in canonical form",
        ),
    ],
)
def test_jsonl_tampering(
    work: Path, tamper: Tamper, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = work / "log.jsonl"
    tamper(path)
    code, out = verify(capsys, path)
    assert code == 1
    assert expected in out


def test_jsonl_cut_off_and_rewritten_need_the_checkpoint(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = work / "log.jsonl"
    cp = checkpoint(capsys, work, work / "log.db")  # the store's checkpoint vouches for its export
    original = path.read_bytes()
    jsonl_rewrite(path, jsonl_records(path)[:-4])
    assert verify(capsys, path)[0] == 0
    code, out = verify(capsys, path, *cp)
    assert code == 1
    assert f"TAMPERED (truncated): the log ends at record {COUNT - 4}" in out

    path.write_bytes(original)
    records = jsonl_records(path)
    records[3] = edited(records[3])
    jsonl_rewrite(path, reseal(records, 3))
    assert verify(capsys, path)[0] == 0
    code, out = verify(capsys, path, *cp)
    assert code == 1
    assert "TAMPERED (rewritten)" in out
    assert f"at or before record {COUNT}" in out


def test_jsonl_cut_off_naively_is_caught_by_its_header(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = work / "log.jsonl"
    write_lines(path, lines(path)[:-2])
    code, out = verify(capsys, path)
    assert code == 1
    assert "TAMPERED (truncated)" in out


# --- a tampered log is not exported, imported or replayed as if sound ----------------------------


def test_tampered_log_is_not_exported_or_imported(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = work / "log.db"
    sql(db, "DELETE FROM iechs_records WHERE seq = 12")
    assert main(["audit", "export", str(db), "--out", str(work / "x.jsonl")]) == 1
    assert not (work / "x.jsonl").exists()
    assert "TAMPERED (missing)" in capsys.readouterr().err
    jsonl_swap(work / "log.jsonl")
    assert main(["audit", "import", str(work / "log.jsonl"), "--store", str(work / "new.db")]) == 1
    with sqlite3.connect(work / "new.db") as conn:
        assert conn.execute("SELECT count(*) FROM iechs_records").fetchone() == (0,)


def test_replay_catches_a_decision_rewritten_consistently(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The chain verifies after a full rewrite; replaying the events does not reproduce the edit.
    db = work / "log.db"
    records = sql_records(db)
    records[12] = edited(records[12])
    sql_rewrite(db, reseal(records, 12))
    assert verify(capsys, db)[0] == 0
    assert main(["audit", "replay", str(db)]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "DIFFERENT: 1 decisions differ." in out
    assert "record 13 (episode demo-day14, step 12, 2026-03-15T10:00:00Z)" in out
    assert "differs at $.to" in out
    assert "logged: 'resolved' replayed: 'first_line_steroids'" in out


# --- any single byte, anywhere in any record -----------------------------------------------------


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_one_byte_changed_in_any_record_is_caught(pristine: Path, data: st.DataObject) -> None:
    from iechs.audit import JsonlLog, SqliteStore, verify_log

    original = (pristine / "log.jsonl").read_bytes()
    header_end = original.index(b"\n") + 1  # the header is metadata; records come after it
    at = data.draw(st.integers(header_end, len(original) - 1), label="offset")
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != original[at]), label="byte")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "log.jsonl"
        path.write_bytes(original[:at] + bytes([byte]) + original[at + 1 :])
        assert not verify_log(JsonlLog(path)).ok
        # The same in a store: one character of one record's stored text.
        db = Path(tmp) / "log.db"
        db.write_bytes((pristine / "log.db").read_bytes())
        seq = data.draw(st.integers(1, COUNT), label="seq")
        (body,) = sql(db, "SELECT body FROM iechs_records WHERE seq = ?", seq)[0]
        text = str(body)
        i = data.draw(st.integers(0, len(text) - 1), label="index")
        char = data.draw(st.characters(codec="utf-8").filter(lambda c: c != text[i]))
        sql(
            db,
            "UPDATE iechs_records SET body = ? WHERE seq = ?",
            text[:i] + char + text[i + 1 :],
            seq,
        )
        with SqliteStore(db) as store:
            verification = verify_log(store)
        assert not verification.ok
        assert verification.findings[0].seq == seq


def test_a_record_whose_own_seq_is_edited_is_named_where_it_is_stored(work: Path) -> None:
    # Found by the property above: "seq":54 edited to "seq":50 must be reported as record 54.
    from iechs.audit import SqliteStore, verify_log

    db = work / "log.db"
    (body,) = sql(db, "SELECT body FROM iechs_records WHERE seq = ?", 54)[0]
    text = str(body)
    assert text.count('"seq":54,') == 1
    sql(
        db,
        "UPDATE iechs_records SET body = ? WHERE seq = ?",
        text.replace('"seq":54,', '"seq":50,'),
        54,
    )
    with SqliteStore(db) as store:
        verification = verify_log(store)
    (finding,) = verification.findings
    assert (finding.kind, finding.seq) == ("altered", 54)
    assert "its altered body claims 50" in finding.message
