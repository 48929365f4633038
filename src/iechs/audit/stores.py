"""Where the audit log lives: SQLite (embedded default), PostgreSQL (several writers), and the
read-only JSON Lines export.

A store holds one hash chain (every episode's records, in append order) and the episodes'
snapshots. An append is one transaction: it locks the chain head, seals each draft onto the head,
the episode's last one with the SHA-256 of the snapshot saved with it, inserts the records, moves
the head and saves the snapshot, then commits; a process killed before the commit leaves nothing
of it. SQLite runs in WAL mode with `synchronous=FULL` and takes the write lock up front
(`BEGIN IMMEDIATE`); PostgreSQL locks the head row (`SELECT ... FOR UPDATE`), so concurrent
writers queue and the chain never forks.

Loading an episode (`AuditStore.episode`) checks its snapshot against that seal and refuses one
the chain does not vouch for (`SnapshotSealError`; see `iechs.audit.snapshots`).

**Write time.** Beside each record the store keeps when it wrote it (`written_at`, a column of
the records table: a UTC instant, `2026-05-17T10:05:00.123456Z`). An append reads the store's
clock once, under the write lock, so appends read it in the order of the chain; an import
(`load_copy`) writes the time of the import, which is when that store wrote the records. It is
the store's metadata, not part of any record: no decision reads it, the records and their hashes
are the same whenever and wherever they are written, and the chain does not cover it (a write
time can be edited without `iechs audit verify` noticing: a signed checkpoint is what pins a log
at a time). A JSON Lines export leaves it out. A store made before write times were kept gains
the column when it is next opened; its earlier records have none (NULL).
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import AbstractContextManager, closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self
from urllib.parse import urlsplit, urlunsplit

import attrs

from ..jsonio import parse
from .errors import SnapshotSealError, StoreError, problem
from .records import GENESIS, AuditRecord, RecordDraft, canonical, parse_record, sha256_hex

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "EPISODE_EXPORT_FORMAT",
    "EXPORT_FORMAT",
    "AuditStore",
    "EpisodeHead",
    "EpisodeUpdate",
    "Head",
    "JsonlLog",
    "Log",
    "LogView",
    "PostgresStore",
    "SavedSnapshot",
    "SqliteStore",
    "StoredEpisode",
    "StoredRecord",
    "instant",
    "is_postgres",
    "open_log",
    "open_store",
]

EXPORT_FORMAT = "iechs.audit-export/1"
#: An episode export (`iechs audit export --episode`): the records of one episode, each with its
#: hash and link, taken from a log that verified; not a whole chain (see `iechs.audit.export`).
EPISODE_EXPORT_FORMAT = "iechs.audit-episode-export/1"

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS iechs_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS iechs_chain "
    "(id INTEGER PRIMARY KEY, seq BIGINT NOT NULL, hash TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS iechs_records (seq BIGINT PRIMARY KEY, episode TEXT NOT NULL, "
    "hash TEXT NOT NULL, body TEXT NOT NULL, written_at TEXT)",
    "CREATE INDEX IF NOT EXISTS iechs_records_episode ON iechs_records (episode, seq)",
    "CREATE TABLE IF NOT EXISTS iechs_episodes (id TEXT PRIMARY KEY, steps BIGINT NOT NULL, "
    "head_seq BIGINT NOT NULL, snapshot TEXT NOT NULL)",
)


@attrs.frozen
class Head:
    """The chain head a store keeps beside its records: the last record's number and hash."""

    seq: int
    hash: str

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "hash": self.hash}


@attrs.frozen(kw_only=True)
class StoredRecord:
    """A record as a log holds it: its content text and what the log keeps beside it.

    `body` is the content's text (for SQL stores, exactly the stored bytes); `hash` the hash
    stored beside it; `seq` and `episode` the index columns; `written_at` when the store wrote
    it (metadata the chain does not cover; None in an export, or for a record written before the
    store kept write times); `where` how to find it (a line); `defect` a problem the container
    itself found (e.g. a line that is not JSON).
    """

    body: str
    hash: str | None
    seq: int | None = None
    episode: str | None = None
    written_at: str | None = None
    where: str = ""
    defect: str | None = None


@attrs.frozen
class StoredEpisode:
    """An episode's saved snapshot and how many of its steps the log holds; `head_hash`: the
    hash of the episode's last record (record `head_seq`, which seals the snapshot), when the
    store read it."""

    id: str
    steps: int
    head_seq: int
    snapshot: dict[str, Any]
    head_hash: str | None = None


@attrs.frozen
class EpisodeHead:
    """Where an episode stands in a store, without its snapshot (`AuditStore.episode_head`):
    its step count, its last record's number and the hash that record's content has."""

    id: str
    steps: int
    head_seq: int
    #: the SHA-256 of the last record's content, as read (None: no such record).
    hash: str | None


@attrs.frozen
class SavedSnapshot:
    """An episode's snapshot as the store keeps it: the text, exactly as stored."""

    id: str
    steps: int
    head_seq: int
    text: str


@attrs.frozen
class EpisodeUpdate:
    """The snapshot to save with an append; `expected_steps` guards against a lost update.
    `text`: the snapshot's canonical JSON (`records.canonical(snapshot)`), when the writer has
    it already (e.g. kept up to date as the episode grows); None: the store serialises it."""

    id: str
    snapshot: dict[str, Any]
    steps: int
    expected_steps: int
    text: str | None = None


class LogView(Protocol):
    """A consistent view of a log (one read transaction)."""

    @property
    def store_id(self) -> str: ...

    @property
    def head(self) -> Head | None: ...

    @property
    def only_episode(self) -> str | None:
        """The one episode this log holds when it is an episode export; None: a whole log."""
        ...

    def records(self, episode: str | None = None) -> Iterator[StoredRecord]: ...

    def snapshots(self) -> Iterator[SavedSnapshot]:
        """The episodes' saved snapshots, by episode id (none in an export)."""
        ...


class Log(Protocol):
    """Anything that can be read as an audit log: a store or an export."""

    location: str

    def reading(self) -> AbstractContextManager[LogView]: ...

    def close(self) -> None: ...


def _no_snapshots() -> Iterator[SavedSnapshot]:
    return iter(())


@attrs.frozen
class _View:
    store_id: str
    head: Head | None
    rows: Callable[[str | None], Iterator[StoredRecord]]
    only_episode: str | None = None
    saved: Callable[[], Iterator[SavedSnapshot]] = _no_snapshots

    def records(self, episode: str | None = None) -> Iterator[StoredRecord]:
        return self.rows(episode)

    def snapshots(self) -> Iterator[SavedSnapshot]:
        return self.saved()


def utc_now() -> datetime:
    """The wall clock, in UTC: read for a record's write time (`written_at`), and nowhere else
    in the audit log."""
    return datetime.now(UTC)


def instant(moment: datetime) -> str:
    """`2026-05-17T10:05:00.123456Z`: a record's write time (a FHIR `instant`)."""
    if moment.tzinfo is None:
        raise ValueError("a record's write time needs a time zone")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def is_postgres(location: str) -> bool:
    return location.startswith(("postgresql://", "postgres://"))


def _shown(location: str) -> str:
    """A location fit for messages: a URL without its password."""
    if not is_postgres(location):
        return location
    parts = urlsplit(location)
    if parts.password is None:
        return location
    netloc = parts.netloc.rsplit("@", 1)
    user = (parts.username or "") + ":***"
    return urlunsplit(parts._replace(netloc=f"{user}@{netloc[-1]}"))


class AuditStore(ABC):
    """A store that can be written: the SQL stores share this logic, not their dialect."""

    location: str
    #: the clock an append (or an import) reads for the records' `written_at` (the constructors
    #: take another, e.g. in tests). No record and no decision reads it.
    clock: Callable[[], datetime] = staticmethod(utc_now)
    #: whether the records table has the `written_at` column (see `_add_write_times`).
    _write_times = True
    _placeholder = "?"
    _lock_head = "SELECT seq, hash FROM iechs_chain WHERE id = 1"
    #: run first in the transaction that creates the schema (concurrent creators queue on it).
    _schema_lock: str | None = None
    _errors: tuple[type[BaseException], ...] = ()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- dialect --------------------------------------------------------------------------

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def _write(self) -> AbstractContextManager[Any]:
        """A write transaction that holds the store's write lock; yields a cursor."""

    @abstractmethod
    def _read(self) -> AbstractContextManager[Any]:
        """A read transaction with a consistent snapshot; yields a cursor."""

    @abstractmethod
    def _scan(self, cur: Any, name: str) -> AbstractContextManager[Any]:
        """A cursor of its own (`name`: unique among those open at once) for a long scan inside
        the read transaction of `cur`."""

    def _sql(self, statement: str) -> str:
        return statement.replace("?", self._placeholder)

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except self._errors as exc:
            raise StoreError(problem(f"database error: {exc}"), _shown(self.location)) from None

    # --- schema ---------------------------------------------------------------------------

    def _init_schema(self, create: bool) -> None:
        with self._translated():
            if create:
                with self._write() as cur:
                    if self._schema_lock is not None:
                        cur.execute(self._schema_lock)
                    for statement in _SCHEMA:
                        cur.execute(statement)
                    cur.execute(
                        self._sql(
                            "INSERT INTO iechs_meta (key, value) VALUES (?, ?) "
                            "ON CONFLICT DO NOTHING"
                        ),
                        ("store_id", str(uuid.uuid4())),
                    )
                    cur.execute(
                        self._sql(
                            "INSERT INTO iechs_chain (id, seq, hash) VALUES (1, 0, ?) "
                            "ON CONFLICT DO NOTHING"
                        ),
                        (GENESIS,),
                    )
            if not self._has_schema():
                raise StoreError(
                    problem(
                        "not an iechs audit store (no iechs_meta table); "
                        "`iechs run --store` or `iechs audit import --store` creates one"
                    ),
                    _shown(self.location),
                )
            self._add_write_times(create)
            with self._read() as cur:
                cur.execute("SELECT value FROM iechs_meta WHERE key = 'store_id'")
                row = cur.fetchone()
        if row is None:
            raise StoreError(problem("the store has no store_id"), _shown(self.location))
        self.store_id: str = str(row[0])

    @abstractmethod
    def _has_schema(self) -> bool: ...

    @abstractmethod
    def _has_write_times(self, cur: Any) -> bool:
        """Whether the records table has the `written_at` column."""

    def _add_write_times(self, create: bool) -> None:
        """Migrate a store made before write times were kept: add the `written_at` column
        (NULL for the records already there), once, under the schema lock. A connection that may
        not alter the table (e.g. a read-only role) can still read the store, and its records
        show no write time; an append through it is refused (`_refuse_without_write_times`)."""
        with self._read() as cur:
            if self._has_write_times(cur):
                return
        try:
            with self._write() as cur:
                if self._schema_lock is not None:
                    cur.execute(self._schema_lock)
                if not self._has_write_times(cur):  # another process may have added it
                    cur.execute("ALTER TABLE iechs_records ADD COLUMN written_at TEXT")
        except self._errors:
            if create:
                raise
            self._write_times = False

    def _refuse_without_write_times(self) -> None:
        if not self._write_times:
            raise StoreError(
                problem(
                    "the store was made before write times were kept and this connection could "
                    "not add the records' written_at column: open it once as the owner of the "
                    "iechs_records table (e.g. `iechs audit verify`) to migrate it"
                ),
                _shown(self.location),
            )

    # --- writing --------------------------------------------------------------------------

    def append(
        self, drafts: Sequence[RecordDraft], episode: EpisodeUpdate | None = None
    ) -> list[AuditRecord]:
        """Seal `drafts` onto the chain and save `episode`, in one transaction.

        The episode's last draft seals the snapshot saved with it (its SHA-256), so the snapshot
        is part of the chain. Every record of the append gets the same write time (`written_at`,
        beside the chain, not in the records)."""
        self._refuse_without_write_times()
        sealed: list[AuditRecord] = []
        sealing: int | None = None
        text: str | None = None
        if episode is not None:
            text = episode.text if episode.text is not None else canonical(episode.snapshot)
            mine = [i for i, d in enumerate(drafts) if d.episode == episode.id]
            sealing = mine[-1] if mine else None
            if sealing is None:
                raise StoreError(
                    problem(
                        f"the snapshot of episode {episode.id!r} is saved with a record of the "
                        "episode, which seals it into the chain: this append has none"
                    ),
                    _shown(self.location),
                )
        with self._translated(), self._write() as cur:
            cur.execute(self._lock_head)
            row = cur.fetchone()
            seq, prev = int(row[0]), str(row[1])
            # Read under the write lock: appends read the clock in the order of the chain.
            written_at = instant(self.clock())
            self._refuse_stale_snapshots(cur, drafts, episode)
            if episode is not None:
                cur.execute(
                    self._sql("SELECT steps FROM iechs_episodes WHERE id = ?"), (episode.id,)
                )
                found = cur.fetchone()
                steps = 0 if found is None else int(found[0])
                if steps != episode.expected_steps:
                    raise StoreError(
                        problem(
                            f"episode {episode.id!r} has {steps} recorded steps, this writer "
                            f"expected {episode.expected_steps}: another process changed it; "
                            "reload the episode and try again"
                        ),
                        _shown(self.location),
                    )
            head_seq = seq
            for i, draft in enumerate(drafts):
                seq += 1
                seal = sha256_hex(text) if i == sealing and text is not None else None
                record = draft.seal(seq, prev, snapshot=seal)
                sealed.append(record)
                prev = record.hash
                if i == sealing:
                    head_seq = seq
            cur.executemany(
                self._sql(
                    "INSERT INTO iechs_records (seq, episode, hash, body, written_at) "
                    "VALUES (?, ?, ?, ?, ?)"
                ),
                [(r.seq, r.episode, r.hash, r.body, written_at) for r in sealed],
            )
            cur.execute(
                self._sql("UPDATE iechs_chain SET seq = ?, hash = ? WHERE id = 1"), (seq, prev)
            )
            if episode is not None:
                cur.execute(
                    self._sql(
                        "INSERT INTO iechs_episodes (id, steps, head_seq, snapshot) "
                        "VALUES (?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                        "steps = excluded.steps, head_seq = excluded.head_seq, "
                        "snapshot = excluded.snapshot"
                    ),
                    (episode.id, episode.steps, head_seq, text),
                )
        return sealed

    def _refuse_stale_snapshots(
        self, cur: Any, drafts: Sequence[RecordDraft], episode: EpisodeUpdate | None
    ) -> None:
        """An episode whose snapshot the store keeps gets records only with a new snapshot:
        otherwise the saved one would no longer be the one its last record seals."""
        others = sorted({d.episode for d in drafts} - ({episode.id} if episode else set()))
        if not others:
            return
        marks = ", ".join("?" for _ in others)
        cur.execute(self._sql(f"SELECT id FROM iechs_episodes WHERE id IN ({marks})"), others)
        row = cur.fetchone()
        if row is not None:
            raise StoreError(
                problem(
                    f"the store keeps a snapshot of episode {row[0]!r}: its records are appended "
                    "with the snapshot they lead to (an EpisodeUpdate), which they seal"
                ),
                _shown(self.location),
            )

    def load_copy(
        self, store_id: str, records: Sequence[AuditRecord], episodes: Sequence[StoredEpisode]
    ) -> None:
        """Fill an empty store with a verified copy of a log (import), keeping its store id.

        Every record's write time is the time of the import: when this store wrote it (the
        export carries no write times)."""
        self._refuse_without_write_times()
        with self._translated(), self._write() as cur:
            cur.execute(self._lock_head)
            if int(cur.fetchone()[0]) != 0:
                raise StoreError(
                    problem("the store already holds records: import into a new, empty store"),
                    _shown(self.location),
                )
            written_at = instant(self.clock())
            cur.executemany(
                self._sql(
                    "INSERT INTO iechs_records (seq, episode, hash, body, written_at) "
                    "VALUES (?, ?, ?, ?, ?)"
                ),
                [(r.seq, r.episode, r.hash, r.body, written_at) for r in records],
            )
            last = records[-1] if records else None
            cur.execute(
                self._sql("UPDATE iechs_chain SET seq = ?, hash = ? WHERE id = 1"),
                (last.seq, last.hash) if last else (0, GENESIS),
            )
            cur.executemany(
                self._sql(
                    "INSERT INTO iechs_episodes (id, steps, head_seq, snapshot) VALUES (?, ?, ?, ?)"
                ),
                [(e.id, e.steps, e.head_seq, canonical(e.snapshot)) for e in episodes],
            )
            cur.execute(
                self._sql("UPDATE iechs_meta SET value = ? WHERE key = 'store_id'"), (store_id,)
            )
        self.store_id = store_id

    # --- reading --------------------------------------------------------------------------

    def episode(self, episode_id: str) -> StoredEpisode | None:
        """The episode's saved snapshot, once checked against the chain: it must be the one
        sealed by the episode's last record, and that record must be sound and linked into the
        chain (the record after it, or the head, names its hash). `SnapshotSealError` when not:
        an episode is never restored from a snapshot edited outside the log. (The whole chain is
        walked by `iechs audit verify`, not here: a rewrite that carries the edit through every
        later record and the head is what a signed checkpoint catches.)"""
        with self._translated(), self._read() as cur:
            cur.execute(
                self._sql("SELECT id, steps, head_seq, snapshot FROM iechs_episodes WHERE id = ?"),
                (episode_id,),
            )
            row = cur.fetchone()
            if row is None:
                return None
            saved = SavedSnapshot(str(row[0]), int(row[1]), int(row[2]), str(row[3]))
            digest = self._check_snapshot(cur, saved)
        try:
            snapshot = json.loads(saved.text)
        except ValueError:
            raise StoreError(
                problem(f"the saved snapshot of episode {episode_id!r} is not JSON"),
                _shown(self.location),
            ) from None
        return StoredEpisode(saved.id, saved.steps, saved.head_seq, snapshot, digest)

    def episode_head(self, episode_id: str) -> EpisodeHead | None:
        """Where the episode stands now, in one read of constant cost (neither the snapshot nor
        the chain is read): its step count, its last record's number and the SHA-256 of that
        record's content (hashed here, so a record edited under its stored hash reads as
        another). A process that keeps an episode it restored with `episode` (which checks the
        snapshot against the chain) knows by this whether the store still holds that episode,
        and nothing after it. None: no such episode."""
        with self._translated():
            row = self._one(
                self._sql(
                    "SELECT e.steps, e.head_seq, r.body FROM iechs_episodes e "
                    "LEFT JOIN iechs_records r ON r.seq = e.head_seq AND r.episode = e.id "
                    "WHERE e.id = ?"
                ),
                (episode_id,),
            )
        if row is None:
            return None
        body = row[2]
        digest = None if body is None else sha256_hex(str(body))
        return EpisodeHead(episode_id, int(row[0]), int(row[1]), digest)

    @abstractmethod
    def _one(self, statement: str, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """The first row of one read statement, run on its own (a consistent snapshot)."""

    def _check_snapshot(self, cur: Any, saved: SavedSnapshot) -> str:
        """`SnapshotSealError` unless `saved` is the snapshot the chain vouches for; else the
        hash of the episode's last record (the one that seals it)."""
        from .snapshots import last_record, rebuilt_seal, snapshot_problem  # noqa: PLC0415

        def refuse(why: str, seq: int | None) -> SnapshotSealError:
            return SnapshotSealError(
                f"{why}; refusing to restore episode {saved.id!r} from it (`iechs audit verify` "
                "checks the whole log; `iechs audit export` and `import` make a store whose "
                "snapshots are rebuilt from the records)",
                _shown(self.location),
                episode=saved.id,
                seq=seq,
            )

        cur.execute(
            self._sql(
                "SELECT seq, hash, body FROM iechs_records WHERE episode = ? "
                "ORDER BY seq DESC LIMIT 1"
            ),
            (saved.id,),
        )
        found = cur.fetchone()
        record: AuditRecord | None = None
        if found is not None:
            seq, digest, body = int(found[0]), str(found[1]), str(found[2])
            where = f"record {seq}, the last of the episode,"
            try:
                record = parse_record(json.loads(body))
            except ValueError as exc:
                raise refuse(f"{where} is unreadable ({exc})", seq) from None
            if sha256_hex(body) != digest or canonical(json.loads(body)) != body:
                raise refuse(f"{where} does not match its hash", seq)
            if record.seq != seq or record.episode != saved.id:
                raise refuse(f"{where} is not indexed as its content says", seq)
            linked = self._linked(cur, seq, digest)
            if linked is not None:
                raise refuse(linked, seq)

        def rebuilt() -> str | None:
            cur.execute(
                self._sql("SELECT body FROM iechs_records WHERE episode = ? ORDER BY seq"),
                (saved.id,),
            )
            try:
                records = [parse_record(json.loads(body)) for (body,) in cur.fetchall()]
            except ValueError:  # an unreadable record rebuilds nothing: the snapshot is refused
                return None
            return rebuilt_seal(records, saved.id)

        why = snapshot_problem(saved, None if record is None else last_record(record), rebuilt)
        if why is not None:
            raise refuse(why, saved.head_seq)
        assert found is not None  # `snapshot_problem` refuses an episode without records
        return str(found[1])

    def _linked(self, cur: Any, seq: int, digest: str) -> str | None:
        """Why record `seq` (hashing to `digest`) is not linked into the chain, or None."""
        cur.execute(self._sql("SELECT body FROM iechs_records WHERE seq = ?"), (seq + 1,))
        after = cur.fetchone()
        if after is not None:
            try:
                names = json.loads(after[0]).get("prev")
            except (ValueError, AttributeError):
                names = None
            if names != digest:
                return (
                    f"record {seq + 1} does not link to record {seq}, the last of the episode: "
                    "the chain was altered there"
                )
            return None
        cur.execute("SELECT seq, hash FROM iechs_chain WHERE id = 1")
        head = cur.fetchone()
        if head is None or (int(head[0]), str(head[1])) != (seq, digest):
            return (
                f"record {seq}, the last of the episode and of the log, is not the head the store "
                "recorded: the chain was altered there"
            )
        return None

    def head(self) -> Head:
        with self._translated(), self._read() as cur:
            cur.execute("SELECT seq, hash FROM iechs_chain WHERE id = 1")
            row = cur.fetchone()
        return Head(int(row[0]), str(row[1]))

    @contextmanager
    def reading(self) -> Iterator[LogView]:
        with self._translated(), self._read() as cur:
            cur.execute("SELECT seq, hash FROM iechs_chain WHERE id = 1")
            row = cur.fetchone()
            head = None if row is None else Head(int(row[0]), str(row[1]))

            # A store this connection could not migrate has no write times to read.
            columns = "seq, episode, hash, body, " + ("written_at" if self._write_times else "NULL")

            def rows(episode: str | None) -> Iterator[StoredRecord]:
                with self._translated(), self._scan(cur, "iechs_scan") as scan:
                    if episode is None:
                        scan.execute(f"SELECT {columns} FROM iechs_records ORDER BY seq")
                    else:
                        scan.execute(
                            self._sql(
                                f"SELECT {columns} FROM iechs_records WHERE episode = ? "
                                "ORDER BY seq"
                            ),
                            (episode,),
                        )
                    for seq, ep, digest, body, written_at in scan:
                        yield StoredRecord(
                            body=body,
                            hash=digest,
                            seq=int(seq),
                            episode=ep,
                            written_at=None if written_at is None else str(written_at),
                            where=f"seq {seq}",
                        )

            def saved() -> Iterator[SavedSnapshot]:
                with self._translated(), self._scan(cur, "iechs_snapshots") as scan:
                    scan.execute(
                        "SELECT id, steps, head_seq, snapshot FROM iechs_episodes ORDER BY id"
                    )
                    for episode_id, steps, head_seq, text in scan:
                        yield SavedSnapshot(str(episode_id), int(steps), int(head_seq), str(text))

            yield _View(self.store_id, head, rows, saved=saved)


class SqliteStore(AuditStore):
    """One SQLite file: WAL, `synchronous=FULL`, appends under `BEGIN IMMEDIATE`."""

    _errors = (sqlite3.Error,)

    def __init__(
        self,
        path: str | Path,
        *,
        create: bool = False,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.location = str(path)
        if clock is not None:
            self.clock = clock
        p = Path(path)
        if p.is_dir():
            raise StoreError(problem("is a directory, not a store file"), self.location)
        if not create and not p.is_file():
            raise StoreError(
                problem("no such store (`iechs run --store` creates one)"), self.location
            )
        with self._translated():
            # isolation_level=None: this class issues BEGIN/COMMIT itself.
            self.conn = sqlite3.connect(str(p), isolation_level=None, timeout=60.0)
        try:
            with self._translated():
                self.conn.execute("PRAGMA busy_timeout = 60000")
                if not create and not self._has_schema():
                    # Checked before any PRAGMA that would write to somebody else's database.
                    raise StoreError(
                        problem("not an iechs audit store (no iechs_meta table)"), self.location
                    )
                self.conn.execute("PRAGMA journal_mode = WAL")
                self.conn.execute("PRAGMA synchronous = FULL")
            self._init_schema(create)
        except BaseException:
            self.conn.close()
            raise

    def close(self) -> None:
        self.conn.close()

    def _has_schema(self) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'iechs_meta'"
        ).fetchone()
        return row is not None

    def _has_write_times(self, cur: Any) -> bool:
        cur.execute("SELECT 1 FROM pragma_table_info('iechs_records') WHERE name = 'written_at'")
        return cur.fetchone() is not None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Cursor]:
        cur = self.conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
        except BaseException:
            self.conn.rollback()
            raise
        cur.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Cursor]:
        cur = self.conn.cursor()
        cur.execute("BEGIN")  # deferred: the first SELECT fixes the snapshot (WAL)
        try:
            yield cur
        finally:
            self.conn.rollback()

    def _scan(self, cur: Any, name: str) -> AbstractContextManager[Any]:
        # Another cursor of the same connection: the same read transaction.
        return closing(self.conn.cursor())

    def _one(self, statement: str, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        # Autocommit: one statement is one read transaction (a WAL snapshot).
        row: tuple[Any, ...] | None = self.conn.execute(statement, args).fetchone()
        return row


class PostgresStore(AuditStore):
    """PostgreSQL via psycopg 3: appends lock the chain head row (`SELECT ... FOR UPDATE`)."""

    _placeholder = "%s"
    _lock_head = "SELECT seq, hash FROM iechs_chain WHERE id = 1 FOR UPDATE"
    _schema_lock = "SELECT pg_advisory_xact_lock(4201620919)"

    def __init__(
        self, url: str, *, create: bool = False, clock: Callable[[], datetime] | None = None
    ) -> None:
        if clock is not None:
            self.clock = clock
        from ..extras import require  # noqa: PLC0415

        require("postgres")  # psycopg: `pip install 'iechs[postgres]'`
        import psycopg  # noqa: PLC0415 - only PostgreSQL users pay for loading it

        self.location = _shown(url)  # what messages and reports show: never the password
        self._errors = (psycopg.Error,)
        try:
            # autocommit: every transaction is an explicit `conn.transaction()` block.
            self.conn: psycopg.Connection[Any] = psycopg.connect(
                url, autocommit=True, connect_timeout=10
            )
        except psycopg.Error as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreError(problem(f"cannot connect: {message}"), self.location) from None
        try:
            self._init_schema(create)
        except BaseException:
            self.conn.close()
            raise

    def close(self) -> None:
        self.conn.close()

    def _has_schema(self) -> bool:
        with self._read() as cur:
            cur.execute("SELECT to_regclass('iechs_meta') IS NOT NULL")
            row = cur.fetchone()
        return bool(row and row[0])

    def _has_write_times(self, cur: Any) -> bool:
        cur.execute(
            "SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('iechs_records') "
            "AND attname = 'written_at' AND NOT attisdropped"
        )
        return cur.fetchone() is not None

    @contextmanager
    def _write(self) -> Iterator[psycopg.Cursor[Any]]:
        with self.conn.transaction(), self.conn.cursor() as cur:
            yield cur

    @contextmanager
    def _read(self) -> Iterator[psycopg.Cursor[Any]]:
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield cur

    def _scan(self, cur: Any, name: str) -> AbstractContextManager[Any]:
        # A server-side cursor streams a long log instead of loading it whole.
        return self.conn.cursor(name=name)

    def _one(self, statement: str, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        # Autocommit: one statement sees one snapshot, in one round trip.
        row: tuple[Any, ...] | None = self.conn.execute(statement, args).fetchone()
        return row


class JsonlLog:
    """A JSON Lines export (read-only): a header line, then one `{"hash", "record"}` per line.

    Every line is in canonical form, so a changed byte is always a changed record. The header
    of a whole log's export is `{format: EXPORT_FORMAT, store_id, head}`; that of an episode
    export is `{format: EPISODE_EXPORT_FORMAT, store_id, head, episode, records}` (`head`: the
    head of the log it was taken from, `records`: how many lines follow), and `only_episode`
    names its episode.
    """

    def __init__(self, path: str | Path) -> None:
        self.location = str(path)
        self.path = Path(path)
        if not self.path.is_file():
            raise StoreError(problem("no such export file"), self.location)
        first = self._lines()
        header_line = next(first, None)
        first.close()
        if header_line is None:
            raise StoreError(problem("empty file: not an iechs audit export"), self.location)
        try:
            header = None if header_line[1] else parse(header_line[0])
        except ValueError:
            header = None
        if (
            not isinstance(header, dict)
            or header.get("format") not in (EXPORT_FORMAT, EPISODE_EXPORT_FORMAT)
            or not isinstance(header.get("store_id"), str)
            or not isinstance(header.get("head"), dict)
        ):
            raise StoreError(
                problem(
                    f"line 1 is not an iechs audit export header ({EXPORT_FORMAT} or "
                    f"{EPISODE_EXPORT_FORMAT})"
                ),
                self.location,
            )
        head = header["head"]
        if not isinstance(head.get("seq"), int) or not isinstance(head.get("hash"), str):
            raise StoreError(problem("expected {seq, hash}", "$.head"), self.location)
        self.store_id: str = header["store_id"]
        self.head = Head(head["seq"], head["hash"])
        #: the episode of an episode export, and how many records its header says follow.
        self.only_episode: str | None = None
        self.exported_records: int | None = None
        if header["format"] == EPISODE_EXPORT_FORMAT:
            episode, records = header.get("episode"), header.get("records")
            if not isinstance(episode, str):
                raise StoreError(problem("expected the episode's id", "$.episode"), self.location)
            if isinstance(records, bool) or not isinstance(records, int) or records < 0:
                raise StoreError(problem("expected a record count", "$.records"), self.location)
            self.only_episode, self.exported_records = episode, records

    def _lines(self) -> Generator[tuple[str, str | None], None, None]:
        """Each line's text, and why it is unreadable (a line that is not UTF-8 is a defect
        of that one record, not of the file)."""
        try:
            with self.path.open("rb") as handle:
                for raw in handle:
                    line = raw.removesuffix(b"\n")
                    try:
                        yield line.decode("utf-8"), None
                    except UnicodeDecodeError:
                        yield line.decode("utf-8", "replace"), "the line is not UTF-8 text"
        except OSError as exc:
            raise StoreError(problem(f"cannot read the export: {exc}"), self.location) from None

    def close(self) -> None:
        """Nothing to release: the file is opened for each reading."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _records(self, episode: str | None) -> Iterator[StoredRecord]:
        lines = self._lines()
        next(lines, None)
        for number, (line, unreadable) in enumerate(lines, start=2):
            where = f"line {number}"
            if unreadable is not None:
                yield StoredRecord(body=line, hash=None, where=where, defect=unreadable)
                continue
            try:
                item = parse(line)
            except ValueError as exc:
                yield StoredRecord(body=line, hash=None, where=where, defect=f"not JSON ({exc})")
                continue
            if not isinstance(item, dict) or set(item) != {"hash", "record"}:
                yield StoredRecord(
                    body=line, hash=None, where=where, defect="not a {hash, record} line"
                )
                continue
            record = item["record"]
            ep = record.get("episode") if isinstance(record, dict) else None
            if episode is not None and ep != episode:
                continue
            digest = item["hash"] if isinstance(item["hash"], str) else None
            try:
                body = canonical(record)
            except ValueError:  # NaN or Infinity: JSON has neither
                yield StoredRecord(body=line, hash=None, where=where, defect="not plain JSON")
                continue
            defect = None
            if canonical(item) != line:
                defect = "the line is not in canonical form (it was edited)"
            yield StoredRecord(body=body, hash=digest, where=where, defect=defect)

    @contextmanager
    def reading(self) -> Iterator[LogView]:
        yield _View(self.store_id, self.head, self._records, self.only_episode)


def open_store(
    location: str, *, create: bool = False, clock: Callable[[], datetime] | None = None
) -> AuditStore:
    """A writable store: `PATH.db` (SQLite) or `postgresql://...`; `clock` (default: the wall
    clock, UTC) gives the records' write time (`written_at`, beside the chain)."""
    if is_postgres(location):
        return PostgresStore(location, create=create, clock=clock)
    if location.endswith(".jsonl"):
        raise StoreError(
            problem("a .jsonl export is read-only: use a PATH.db or postgresql:// store"),
            location,
        )
    return SqliteStore(location, create=create, clock=clock)


def open_log(location: str) -> AuditStore | JsonlLog:
    """A log to read: an existing store or a `.jsonl` export."""
    if location.endswith(".jsonl"):
        return JsonlLog(location)
    return open_store(location, create=False)
