"""The PostgreSQL store against a real, throwaway server (initdb + pg_ctl in a temp directory,
unix socket only). Skipped only when no server binaries exist here; CI installs them
(`.ci/run`) and fails rather than skips when they are missing."""

from __future__ import annotations

import itertools
import json
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from iechs import Engine
from iechs.audit import GENESIS, open_log, open_store, replay_log, run_recorded, verify_log
from iechs.audit.records import AuditRecord, parse_record
from iechs.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
DAY14 = EXAMPLES / "day14-steroid-response.json"
IL6 = EXAMPLES / "tocilizumab-monotherapy-deviation.json"
COUNT = 17 + 42
FAULTS = Path(__file__).with_name("test_audit_faults.py")


def server_binaries() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@attrs.frozen
class Server:
    socket_dir: Path
    counter: Iterator[int]

    def url(self, database: str) -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}&port=5432"

    def new_database(self) -> str:
        import psycopg

        name = f"t{next(self.counter)}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    bindir = server_binaries()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("CI runs the PostgreSQL tests: .ci/run installs the package postgresql")
        pytest.skip("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb)")
    base = Path(tempfile.mkdtemp(prefix="iechs-pg-"))
    user = None
    if os.geteuid() == 0:  # initdb refuses to run as root: run the server as `postgres`
        owner = pwd.getpwnam("postgres")
        os.chown(base, owner.pw_uid, owner.pw_gid)
        user = "postgres"
    data = base / "data"

    def run(*argv: str | Path) -> None:
        subprocess.run([str(a) for a in argv], check=True, capture_output=True, user=user)

    run(bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8")
    options = f"-c listen_addresses= -c unix_socket_directories={base} -c port=5432"
    run(bindir / "pg_ctl", "-D", data, "-l", base / "server.log", "-w", "-o", options, "start")
    try:
        yield Server(base, itertools.count())
    finally:
        run(bindir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def url(server: Server) -> str:
    return server.new_database()


def sql(url: str, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


def pg_records(url: str) -> list[AuditRecord]:
    rows = sql(url, "SELECT body FROM iechs_records ORDER BY seq")
    return [parse_record(json.loads(b)) for (b,) in rows]


def verify(capsys: pytest.CaptureFixture[str], log: str, *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["audit", "verify", log, *extra])
    captured = capsys.readouterr()
    return code, " ".join((captured.out + captured.err).split())


# --- the store -----------------------------------------------------------------------------------


def test_run_verify_replay_export_on_postgres(
    url: str, engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", str(DAY14), "--store", url, "--format", "json"]) == 0
    stored = json.loads(capsys.readouterr().out)
    assert main(["run", str(DAY14), "--format", "json"]) == 0
    assert stored == json.loads(capsys.readouterr().out)
    run_recorded(engine, IL6, url)
    code, out = verify(capsys, url)
    assert code == 0, out
    assert f"INTACT: {COUNT} records" in out
    with open_log(url) as log:
        assert replay_log(log, [engine.guideline]).ok
    # The same bytes as a SQLite store fed the same input.
    run_recorded(engine, DAY14, str(tmp_path / "log.db"))
    run_recorded(engine, IL6, str(tmp_path / "log.db"))
    assert main(["audit", "export", url, "--out", str(tmp_path / "pg.jsonl")]) == 0
    assert (
        main(["audit", "export", str(tmp_path / "log.db"), "--out", str(tmp_path / "db.jsonl")])
        == 0
    )
    pg_lines = (tmp_path / "pg.jsonl").read_text().splitlines()
    db_lines = (tmp_path / "db.jsonl").read_text().splitlines()
    assert pg_lines[1:] == db_lines[1:]
    # A checkpoint of the PostgreSQL store vouches for its SQLite copy.
    assert main(["audit", "keygen", "--out", str(tmp_path / "k.pem")]) == 0
    assert (
        main(
            [
                "audit",
                "checkpoint",
                url,
                "--key",
                str(tmp_path / "k.pem"),
                "--out",
                str(tmp_path / "c.json"),
            ]
        )
        == 0
    )
    assert (
        main(["audit", "import", str(tmp_path / "pg.jsonl"), "--store", str(tmp_path / "copy.db")])
        == 0
    )
    code, out = verify(capsys, str(tmp_path / "copy.db"), "--checkpoint", str(tmp_path / "c.json"))
    assert code == 0, out
    assert main(["audit", "show", url, "--episode", "il6-monotherapy"]) == 0
    assert "42 records." in capsys.readouterr().out


def test_import_into_postgres(
    server: Server, engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_recorded(engine, DAY14, str(tmp_path / "log.db"))
    assert (
        main(["audit", "export", str(tmp_path / "log.db"), "--out", str(tmp_path / "a.jsonl")]) == 0
    )
    target = server.new_database()
    assert main(["audit", "import", str(tmp_path / "a.jsonl"), "--store", target]) == 0
    code, out = verify(capsys, target)
    assert code == 0, out
    # The imported episode continues in PostgreSQL.
    assert main(["run", str(DAY14), "--store", target]) == 0
    assert len(pg_records(target)) == 17


def test_not_a_store_and_unreachable_server(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = server.new_database()
    assert main(["audit", "verify", empty]) == 2
    assert "not an iechs audit store" in capsys.readouterr().err
    missing = server.url("no_such_database")
    assert main(["audit", "verify", missing]) == 2
    err = capsys.readouterr().err
    assert "cannot connect" in err
    assert "Traceback" not in err


# --- tampering -----------------------------------------------------------------------------------


def reseal(records: list[AuditRecord], start: int) -> list[AuditRecord]:
    out = records[:start]
    prev = out[-1].hash if out else GENESIS
    for i, record in enumerate(records[start:], start=start):
        sealed = attrs.evolve(record, seq=i + 1, prev=prev)
        out.append(sealed)
        prev = sealed.hash
    return out


def rewrite(url: str, records: list[AuditRecord]) -> None:
    sql(url, "DELETE FROM iechs_records")
    for r in records:
        sql(
            url,
            "INSERT INTO iechs_records (seq, episode, hash, body) VALUES (%s, %s, %s, %s)",
            r.seq,
            r.episode,
            r.hash,
            r.body,
        )
    sql(url, "UPDATE iechs_chain SET seq = %s, hash = %s", records[-1].seq, records[-1].hash)


def edited(record: AuditRecord) -> AuditRecord:
    return attrs.evolve(record, decision={**record.decision, "to": "resolved"})


def one_byte(url: str) -> None:
    """Overwrite one character (the first of the observation's code) of record 23."""
    sql(
        url,
        "UPDATE iechs_records SET body = overlay(body placing 'X' "
        'from strpos(body, \'"code":"\') + 8 for 1) WHERE seq = 23',
    )


def delete(url: str) -> None:
    sql(url, "DELETE FROM iechs_records WHERE seq = 30")


def swap(url: str) -> None:
    sql(url, "UPDATE iechs_records SET seq = -1 WHERE seq = 10")
    sql(url, "UPDATE iechs_records SET seq = 10 WHERE seq = 11")
    sql(url, "UPDATE iechs_records SET seq = 11 WHERE seq = -1")


def cut(url: str) -> None:
    sql(url, "DELETE FROM iechs_records WHERE seq > %s", COUNT - 3)
    last = pg_records(url)[-1]
    sql(url, "UPDATE iechs_chain SET seq = %s, hash = %s", last.seq, last.hash)


def rewritten(url: str) -> None:
    records = pg_records(url)
    records[5] = edited(records[5])
    rewrite(url, reseal(records, 5))


@pytest.mark.parametrize(
    "case",
    [
        (one_byte, "TAMPERED (altered): record 23", None),
        (delete, "TAMPERED (missing): record 30 is missing", None),
        (swap, "TAMPERED (reordered): records are out of order: record 11", None),
        # The head moved back with the cut: the snapshot saved with the last record still tells.
        (
            cut,
            f"TAMPERED (snapshot): episode 'il6-monotherapy': the saved snapshot of episode "
            f"'il6-monotherapy' says it was saved with record {COUNT}",
            f"TAMPERED (truncated): the log ends at record {COUNT - 3}",
        ),
        (rewritten, None, f"TAMPERED (rewritten): record {COUNT} hashes to"),
    ],
)
def test_tampering_in_postgres(
    url: str,
    engine: Engine,
    tmp_path: Path,
    case: tuple[Callable[[str], None], str | None, str | None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    tamper, plain, with_checkpoint = case
    run_recorded(engine, DAY14, url)
    run_recorded(engine, IL6, url)
    assert main(["audit", "keygen", "--out", str(tmp_path / "k.pem")]) == 0
    assert (
        main(
            [
                "audit",
                "checkpoint",
                url,
                "--key",
                str(tmp_path / "k.pem"),
                "--out",
                str(tmp_path / "c.json"),
            ]
        )
        == 0
    )
    cp = ["--checkpoint", str(tmp_path / "c.json"), "--public-key", str(tmp_path / "k.pub.pem")]
    assert verify(capsys, url, *cp)[0] == 0
    tamper(url)
    code, out = verify(capsys, url)
    if plain is None:
        assert code == 0, out  # a consistent edit: only the checkpoint can tell
    else:
        assert code == 1
        assert plain in out
    code, out = verify(capsys, url, *cp)
    assert code == 1
    assert (with_checkpoint or plain or "") in out


# --- faults --------------------------------------------------------------------------------------


def faults() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("audit_faults", FAULTS)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_postgres_append_killed_midway_leaves_a_log_that_verifies(url: str) -> None:
    faults().check_after_kills(url, rounds=3, seed=20260113)


def test_postgres_concurrent_writers_never_fork_the_chain(url: str, tmp_path: Path) -> None:
    open_store(url, create=True).close()  # created up front, so the writers race on appends only
    faults().check_concurrent_writers(url, tmp_path / "go", writers=4)


def test_postgres_concurrent_creators(server: Server, tmp_path: Path) -> None:
    # Writers that all find no schema yet create it once, without failing each other.
    faults().check_concurrent_writers(server.new_database(), tmp_path / "go", writers=3)


def test_verify_sees_a_consistent_snapshot(url: str, engine: Engine) -> None:
    # A reader holds one snapshot: appends that commit while it walks are not half-seen.
    run_recorded(engine, DAY14, url)
    with open_log(url) as log, log.reading() as view:
        items = view.records()
        first = next(items)
        run_recorded(engine, IL6, url)  # commits while the reader is mid-walk
        rest = list(items)
        assert view.head is not None
        assert view.head.seq == 17
    assert 1 + len(rest) == 17
    assert first.seq == 1
    with open_log(url) as log:
        assert verify_log(log).count == COUNT
