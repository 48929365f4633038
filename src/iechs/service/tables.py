"""The service's own tables, in the audit store's database beside the chain (not part of it), so
that every service process over one store shares them:

- `iechs_service_cards`: each card handed out (its uuid, service, episode, the client it was
  issued to, when, how many feedbacks it has taken, its content's digest);
- `iechs_service_card_content`: card contents by digest (a card shown again adds no content);
- `iechs_service_tokens`: the JWT ids (`jti`) used, per issuer, until their tokens expire;
- `iechs_service_feedback`: when each client sent feedback, over the last minute (rate limit).

None of them is a record: a card is an offer, a token id a nonce. What a clinician did with a
card is recorded in the chain when the feedback arrives.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..audit.stores import is_postgres
from .errors import ServiceError

__all__ = ["ServiceTables"]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS iechs_service_cards (uuid TEXT PRIMARY KEY, "
    "service TEXT NOT NULL, episode TEXT NOT NULL, client TEXT NOT NULL, "
    "content TEXT NOT NULL, issued_at DOUBLE PRECISION NOT NULL, "
    "feedbacks INTEGER NOT NULL DEFAULT 0)",
    "CREATE INDEX IF NOT EXISTS iechs_service_cards_issued ON iechs_service_cards (issued_at)",
    "CREATE TABLE IF NOT EXISTS iechs_service_card_content "
    "(digest TEXT PRIMARY KEY, card TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS iechs_service_tokens (issuer TEXT NOT NULL, jti TEXT NOT NULL, "
    "expires DOUBLE PRECISION NOT NULL, PRIMARY KEY (issuer, jti))",
    "CREATE INDEX IF NOT EXISTS iechs_service_tokens_expires ON iechs_service_tokens (expires)",
    "CREATE TABLE IF NOT EXISTS iechs_service_feedback "
    "(client TEXT NOT NULL, at DOUBLE PRECISION NOT NULL)",
    "CREATE INDEX IF NOT EXISTS iechs_service_feedback_client ON iechs_service_feedback "
    "(client, at)",
)
#: Serialises schema creation and feedback admission across the processes of one database.
_PG_LOCK = "SELECT pg_advisory_xact_lock(4201620920)"
_COLUMNS = {
    False: "SELECT name FROM pragma_table_info('iechs_service_cards')",
    True: "SELECT column_name FROM information_schema.columns "
    "WHERE table_name = 'iechs_service_cards' AND table_schema = current_schema()",
}


class ServiceTables:
    """The service tables of one store (`PATH.db` or `postgresql://...`), on their own
    connection (the store's is busy with the chain). A database failure is a 503; a SQLite
    file is never created here (the store must exist)."""

    def __init__(self, location: str) -> None:
        self.postgres = is_postgres(location)
        self.conn: Any = None
        #: the database's own errors (a 503); anything else is a bug and stays one.
        self.errors: tuple[type[Exception], ...] = (sqlite3.Error,)
        try:
            if self.postgres:
                import psycopg  # noqa: PLC0415 - only PostgreSQL users load it

                self.errors = (psycopg.Error,)
                self.conn = psycopg.connect(location, autocommit=True, connect_timeout=10)
                # No record lives here (as SQLite's `synchronous = NORMAL` below): a commit
                # need not wait for the server's log to reach the disk, which cost every hook
                # call a sync. A crash of the server may lose the last moments' cards and token
                # ids; the chain's own commits stay synchronous.
                self.conn.execute("SET synchronous_commit = off")
            else:
                uri = Path(location).absolute().as_uri() + "?mode=rw"
                self.conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=60.0)
                self.conn.execute("PRAGMA busy_timeout = 60000")
                self.conn.execute("PRAGMA synchronous = NORMAL")  # no record lives here
            with self.transaction("create the service tables", exclusive=True) as cur:
                cur.execute(_COLUMNS[self.postgres])
                columns = {str(row[0]) for row in cur.fetchall()}
                if columns and "content" not in columns:
                    # The table of an earlier version: cards issued to nobody in particular,
                    # which no client could now give feedback on. Offers, not records.
                    cur.execute("DROP TABLE iechs_service_cards")
                for statement in _SCHEMA:
                    cur.execute(statement)
        except ServiceError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise ServiceError(503, f"cannot open the service tables: {exc}") from None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def sql(self, statement: str) -> str:
        return statement.replace("?", "%s") if self.postgres else statement

    @contextmanager
    def transaction(self, what: str, *, exclusive: bool = False) -> Iterator[Any]:
        """A write transaction; yields a cursor. `exclusive`: one at a time across processes
        (SQLite's write lock always is; PostgreSQL takes an advisory lock). `what` names the
        transaction in a 503."""
        try:
            if self.postgres:
                with self.conn.transaction(), self.conn.cursor() as cur:
                    if exclusive:
                        cur.execute(_PG_LOCK)
                    yield cur
            else:
                cur = self.conn.cursor()
                cur.execute("BEGIN IMMEDIATE")
                try:
                    yield cur
                except BaseException:
                    self.conn.rollback()
                    raise
                cur.execute("COMMIT")
        except self.errors as exc:
            raise ServiceError(503, f"cannot {what}: {exc}") from None

    def execute(self, what: str, statement: str, args: tuple[Any, ...]) -> None:
        """One statement on its own, in its own transaction (written in this dialect)."""
        try:
            self.conn.execute(statement, args)
        except self.errors as exc:
            raise ServiceError(503, f"cannot {what}: {exc}") from None

    def query(self, what: str, statement: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """The rows of one read (no lock)."""
        try:
            if self.postgres:
                with self.conn.cursor() as cur:
                    cur.execute(self.sql(statement), args)
                    return list(cur.fetchall())
            return list(self.conn.execute(statement, args).fetchall())
        except self.errors as exc:
            raise ServiceError(503, f"cannot {what}: {exc}") from None
