"""The JWT ids (`jti`) already used, shared by every service process over one store
(`iechs_service_tokens`, see `tables`): a token replayed to another replica is refused as it is
to the one that saw it first. An id is kept until its token has expired (with the verifier's
leeway): after that the token itself is refused, so the id need not be remembered.
"""

from __future__ import annotations

import time

from .tables import ServiceTables

__all__ = ["UsedTokens"]

_SWEEP_S = 60.0


class UsedTokens:
    """The used token ids of one store."""

    def __init__(self, tables: ServiceTables, leeway_s: float) -> None:
        self.tables = tables
        self.leeway_s = leeway_s
        self._swept = 0.0

    def first_use(self, issuer: str, jti: str, expires: float, now: float | None = None) -> bool:
        """Remember that `issuer`'s token `jti` (valid until `expires`) is used: True when no
        process had seen it before."""
        now = time.time() if now is None else now
        sql = self.tables.sql
        with self.tables.transaction("record the token id") as cur:
            if now - self._swept > _SWEEP_S:
                cur.execute(
                    sql("DELETE FROM iechs_service_tokens WHERE expires < ?"),
                    (now - self.leeway_s,),
                )
                self._swept = now
            cur.execute(
                sql(
                    "INSERT INTO iechs_service_tokens (issuer, jti, expires) VALUES (?, ?, ?) "
                    "ON CONFLICT (issuer, jti) DO NOTHING"
                ),
                (issuer, jti, float(expires)),
            )
            return bool(cur.rowcount == 1)

    def count(self) -> int:
        """How many token ids are kept (for tests and operators)."""
        rows = self.tables.query(
            "read the token ids", "SELECT COUNT(*) FROM iechs_service_tokens", ()
        )
        return int(rows[0][0])
