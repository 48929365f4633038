"""The cards the service handed out, kept in the audit store's database so that feedback on a
card reaches any service process (a CDS Hooks feedback names only the card's uuid).

The table `iechs_service_cards` is not part of the hash chain: a card is only an offer. What
the clinician did with it is recorded in the chain when the feedback arrives, with the card's
content copied into the record's reason.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

import attrs

from ..audit.records import canonical
from ..audit.stores import is_postgres
from .errors import ServiceError

__all__ = ["IssuedCard", "IssuedCards"]

_CREATE = (
    "CREATE TABLE IF NOT EXISTS iechs_service_cards (uuid TEXT PRIMARY KEY, "
    "service TEXT NOT NULL, episode TEXT NOT NULL, card TEXT NOT NULL)"
)
_INSERT = (
    "INSERT INTO iechs_service_cards (uuid, service, episode, card) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (uuid) DO NOTHING"
)
_SELECT = "SELECT uuid, service, episode, card FROM iechs_service_cards WHERE uuid = ?"
_PG_LOCK = "SELECT pg_advisory_xact_lock(4201620920)"


@attrs.frozen
class IssuedCard:
    uuid: str
    service: str
    episode: str
    card: dict[str, Any]


class IssuedCards:
    """The issued cards of one store (`PATH.db` or `postgresql://...`), on its own connection."""

    def __init__(self, location: str) -> None:
        self.postgres = is_postgres(location)
        try:
            if self.postgres:
                import psycopg  # noqa: PLC0415 - only PostgreSQL users load it

                self.pg: Any = psycopg.connect(location, autocommit=True, connect_timeout=10)
                with self.pg.transaction(), self.pg.cursor() as cur:
                    cur.execute(_PG_LOCK)  # replicas starting together create it once
                    cur.execute(_CREATE)
            else:
                self.lite = sqlite3.connect(location, isolation_level=None, timeout=60.0)
                self.lite.execute("PRAGMA busy_timeout = 60000")
                self.lite.execute("PRAGMA synchronous = NORMAL")  # an offer, not a record
                self.lite.execute(_CREATE)
        except Exception as exc:
            raise ServiceError(503, f"cannot open the issued-cards table: {exc}") from None

    def close(self) -> None:
        (self.pg if self.postgres else self.lite).close()

    def _sql(self, statement: str) -> str:
        return statement.replace("?", "%s") if self.postgres else statement

    def add(self, service: str, episode: str, cards: Sequence[dict[str, Any]]) -> None:
        """Keep the cards not kept yet (a card's uuid is derived from its content, so the
        same card shown again is found, and costs a read instead of a write)."""
        rows = [
            (c["uuid"], service, episode, canonical(c))
            for c in cards
            if self.get(c["uuid"]) is None
        ]
        if not rows:
            return
        try:
            if self.postgres:
                with self.pg.transaction(), self.pg.cursor() as cur:
                    cur.executemany(self._sql(_INSERT), rows)
            else:
                self.lite.execute("BEGIN IMMEDIATE")
                try:
                    self.lite.executemany(_INSERT, rows)
                except BaseException:
                    self.lite.rollback()
                    raise
                self.lite.execute("COMMIT")
        except Exception as exc:
            raise ServiceError(503, f"cannot record the issued cards: {exc}") from None

    def get(self, card_uuid: str) -> IssuedCard | None:
        try:
            if self.postgres:
                with self.pg.cursor() as cur:
                    cur.execute(self._sql(_SELECT), (card_uuid,))
                    row = cur.fetchone()
            else:
                row = self.lite.execute(_SELECT, (card_uuid,)).fetchone()
        except Exception as exc:
            raise ServiceError(503, f"cannot read the issued cards: {exc}") from None
        if row is None:
            return None
        return IssuedCard(str(row[0]), str(row[1]), str(row[2]), json.loads(row[3]))
