"""The cards the service handed out, kept in the store's database (`iechs_service_cards`, see
`tables`) so that feedback on a card reaches any service process (a CDS Hooks feedback names
only the card's uuid), comes only from the client the card was issued to, and is limited.

A card's content is kept once however often it is shown (`iechs_service_card_content`); each
issue (a uuid, unique to the hook call) is a small row, dropped after `keep_days`. The chain
does not hold cards: what the clinician did with one is recorded there when the feedback
arrives, with the card's content copied into the record's reason.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ..audit.records import canonical
from .cards import content_of, with_uuids
from .errors import ServiceError
from .tables import ServiceTables

__all__ = ["FEEDBACK_WINDOW_S", "IssuedCard", "IssuedCards", "content_digest"]

#: The window of the feedback rate limit (`--feedback-per-minute`).
FEEDBACK_WINDOW_S = 60.0
_HOUSEKEEPING_S = 600.0

_INSERT_CONTENT = (
    "INSERT INTO iechs_service_card_content (digest, card) VALUES (?, ?) "
    "ON CONFLICT (digest) DO NOTHING"
)
_INSERT_CARD = (
    "INSERT INTO iechs_service_cards (uuid, service, episode, client, content, issued_at) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (uuid) DO NOTHING"
)
_SELECT = (
    "SELECT c.uuid, c.service, c.episode, c.client, c.feedbacks, t.card "
    "FROM iechs_service_cards c JOIN iechs_service_card_content t ON t.digest = c.content "
    "WHERE c.uuid = ?"
)


@attrs.frozen
class IssuedCard:
    uuid: str
    service: str
    episode: str
    #: `Client.key` of the client it was issued to.
    client: str
    #: how many feedbacks it has taken.
    feedbacks: int
    #: the card as it was handed out (uuids included).
    card: dict[str, Any]


def _one_insert(
    contents: Sequence[tuple[str, str]], rows: Sequence[tuple[Any, ...]]
) -> tuple[str, tuple[Any, ...]]:
    """The contents and the cards inserted by one PostgreSQL statement (the contents in a
    data-modifying WITH: both in one snapshot, all or nothing)."""
    statement = (
        "WITH content AS (INSERT INTO iechs_service_card_content (digest, card) VALUES "
        + ", ".join("(%s, %s)" for _ in contents)
        + " ON CONFLICT (digest) DO NOTHING) "
        "INSERT INTO iechs_service_cards (uuid, service, episode, client, content, issued_at) "
        "VALUES "
        + ", ".join("(%s, %s, %s, %s, %s, %s)" for _ in rows)
        + " ON CONFLICT (uuid) DO NOTHING"
    )
    return statement, tuple(v for row in (*contents, *rows) for v in row)


def content_digest(text: str) -> str:
    """The key of a card's content (its canonical JSON, `text`) in the content table."""
    return hashlib.sha256(text.encode()).hexdigest()


class IssuedCards:
    """The issued cards of one store; an issue is kept `keep_days`."""

    def __init__(self, tables: ServiceTables, keep_days: float = 30.0) -> None:
        self.tables = tables
        self.keep_s = keep_days * 86400.0
        self._swept = 0.0

    def add(
        self,
        service: str,
        episode: str,
        client: str,
        cards: Sequence[dict[str, Any]],
        now: float | None = None,
    ) -> None:
        """Keep the cards of one hook call (the same call answered again is kept once)."""
        issued = []
        for card in cards:
            text = canonical(content_of(card))
            issued.append((str(card["uuid"]), content_digest(text), text))
        self.add_contents(service, episode, client, issued, now)

    def add_contents(
        self,
        service: str,
        episode: str,
        client: str,
        issued: Sequence[tuple[str, str, str]],
        now: float | None = None,
    ) -> None:
        """`add`, with each card given as its uuid, its content's digest (`content_digest`)
        and its content's canonical JSON."""
        if not issued:
            return
        now = time.time() if now is None else now
        contents = list({digest: text for _, digest, text in issued}.items())
        rows = [(card, service, episode, client, digest, now) for card, digest, _ in issued]
        if self.tables.postgres:
            # One statement, one round trip (a transaction of three took four).
            self.tables.execute("record the issued cards", *_one_insert(contents, rows))
        else:
            with self.tables.transaction("record the issued cards") as cur:
                cur.executemany(_INSERT_CONTENT, contents)
                cur.executemany(_INSERT_CARD, rows)
        if now - self._swept > _HOUSEKEEPING_S:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        """Drop the issues older than `keep_days`, the contents no issue names any more, and
        the feedback times past the rate window."""
        self._swept = now
        sql = self.tables.sql
        with self.tables.transaction("drop old issued cards", exclusive=True) as cur:
            cur.execute(
                sql("DELETE FROM iechs_service_cards WHERE issued_at < ?"), (now - self.keep_s,)
            )
            cur.execute(
                "DELETE FROM iechs_service_card_content WHERE digest NOT IN "
                "(SELECT content FROM iechs_service_cards)"
            )
            cur.execute(
                sql("DELETE FROM iechs_service_feedback WHERE at <= ?"),
                (now - FEEDBACK_WINDOW_S,),
            )

    def get(self, card_uuid: str) -> IssuedCard | None:
        rows = self.tables.query("read the issued cards", _SELECT, (card_uuid,))
        if not rows:
            return None
        uuid_, service, episode, client, feedbacks, text = rows[0]
        return IssuedCard(
            str(uuid_),
            str(service),
            str(episode),
            str(client),
            int(feedbacks),
            with_uuids(json.loads(text), str(uuid_)),
        )

    def admit_feedback(
        self,
        counts: Mapping[str, int],
        client: str,
        *,
        per_card: int,
        per_minute: int,
        now: float | None = None,
    ) -> None:
        """Count `counts` (card uuid -> feedbacks in this request) against the limits: at most
        `per_card` feedbacks per card, ever, and `per_minute` per client in any minute, across
        every process. Over a limit: a 429 and nothing counted."""
        now = time.time() if now is None else now
        total = sum(counts.values())
        sql = self.tables.sql
        with self.tables.transaction("count the feedback", exclusive=True) as cur:
            for card, k in counts.items():
                cur.execute(
                    sql(
                        "UPDATE iechs_service_cards SET feedbacks = feedbacks + ? "
                        "WHERE uuid = ? AND feedbacks + ? <= ?"
                    ),
                    (k, card, k, per_card),
                )
                if cur.rowcount != 1:
                    cur.execute(
                        sql("SELECT feedbacks FROM iechs_service_cards WHERE uuid = ?"), (card,)
                    )
                    row = cur.fetchone()
                    taken = int(row[0]) if row else 0
                    raise ServiceError(
                        429,
                        f"card {card} takes at most {per_card} feedbacks (--feedback-per-card): "
                        f"it has taken {taken}, this request brings {k}",
                    )
            cur.execute(
                sql("DELETE FROM iechs_service_feedback WHERE client = ? AND at <= ?"),
                (client, now - FEEDBACK_WINDOW_S),
            )
            cur.execute(
                sql("SELECT COUNT(*), MIN(at) FROM iechs_service_feedback WHERE client = ?"),
                (client,),
            )
            recent, first = cur.fetchone()
            if int(recent) + total > per_minute:
                wait = 1 + math.ceil((first or now) + FEEDBACK_WINDOW_S - now)
                raise ServiceError(
                    429,
                    f"at most {per_minute} feedbacks a minute from one client "
                    f"(--feedback-per-minute): {int(recent)} in the last minute, {total} in this "
                    f"request; retry in {wait} s",
                    headers={"retry-after": str(max(wait, 1))},
                )
            cur.executemany(
                sql("INSERT INTO iechs_service_feedback (client, at) VALUES (?, ?)"),
                [(client, now)] * total,
            )
