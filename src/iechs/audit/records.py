"""Audit records: one per engine step, chained by SHA-256.

A record's content is a JSON object; its hash is the SHA-256 of the content's canonical
serialisation (JSON, sorted keys, no whitespace, UTF-8). Each record holds the hash of the one
before it (`prev`; the first holds `GENESIS`), so changing, removing or reordering a record breaks
the chain.

Two formats are read. `iechs.audit/2`, the one written, adds one field to those of
`iechs.audit/1`, hashed with the rest:

- `snapshot`: on the last record of the episode in an append that saved the episode's snapshot,
  the SHA-256 of that snapshot's canonical JSON (`snapshot_seal`); null on the other records. The
  snapshot table lies outside the chain; this seal ties it in, so an edited snapshot is caught by
  `iechs audit verify` and refused when an episode is restored.

A record of format 1 keeps its content exactly (no new keys), so an old log verifies, exports and
imports as it did; its snapshots are checked against the snapshot rebuilt from its records.

Nothing in a record comes from a clock: every time in `decision` is the events' time, so the same
input gives the same records, hashes and links, byte for byte, in any store. When a store wrote a
record (`written_at`) is the store's metadata, kept beside the chain and not covered by it (see
`iechs.audit.stores`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from typing import Any

import attrs

from .._version import __version__
from ..decision import Decision

__all__ = [
    "GENESIS",
    "RECORD_FORMAT",
    "RECORD_FORMATS",
    "RECORD_FORMAT_1",
    "AuditRecord",
    "GuidelineIdentity",
    "RecordDraft",
    "canonical",
    "draft_of",
    "parse_record",
    "sha256_hex",
    "snapshot_seal",
]

#: The format records are written in; `RECORD_FORMAT_1`, the prior one, is still read.
RECORD_FORMAT = "iechs.audit/2"
RECORD_FORMAT_1 = "iechs.audit/1"
RECORD_FORMATS = (RECORD_FORMAT_1, RECORD_FORMAT)
#: The `prev` of the first record of a chain.
GENESIS = "0" * 64
_SHA256 = re.compile(r"[0-9a-f]{64}")

_CONTENT_KEYS_1 = frozenset(
    {
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
)
_CONTENT_KEYS = {
    RECORD_FORMAT_1: _CONTENT_KEYS_1,
    RECORD_FORMAT: _CONTENT_KEYS_1 | {"snapshot"},
}


def canonical(value: Any) -> str:
    """The canonical serialisation that is hashed: sorted keys, no whitespace, no NaN."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def snapshot_seal(snapshot: dict[str, Any]) -> str:
    """The SHA-256 of an episode snapshot's canonical JSON: what the store saves (that text)
    and what the chain seals (this hash)."""
    return sha256_hex(canonical(snapshot))


@attrs.frozen
class GuidelineIdentity:
    """The guideline a decision was made with: `Engine.identity`."""

    id: str
    version: str
    sha256: str

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "version": self.version, "sha256": self.sha256}

    @property
    def label(self) -> str:
        return f"{self.id} {self.version} (sha256 {self.sha256[:12]})"


@attrs.frozen(kw_only=True)
class AuditRecord:
    """One engine step as the log keeps it.

    `decision` is `Decision.to_json()`: the step, the event time, the event as the engine
    received it (canonical units, UTC), the state before and after, every guard evaluated and
    the criteria with the values they read, recommendations, alerts and deviations. `patient`
    is present on an episode's first record (step 0), so that the episode can be replayed.
    `actor` and `reason` record who overrode the guideline and why, when a host says so.
    `snapshot` is the seal of the episode's snapshot saved with it (format 2; see the module's
    text); a record of format 1 has none. When the store wrote the record is not part of it.
    """

    seq: int
    prev: str
    episode: str
    guideline: GuidelineIdentity
    engine: str
    decision: dict[str, Any]
    patient: dict[str, Any] | None = None
    actor: str | None = None
    reason: str | None = None
    snapshot: str | None = None
    format: str = RECORD_FORMAT

    def __attrs_post_init__(self) -> None:
        if self.format not in RECORD_FORMATS:
            raise ValueError(f"unknown record format {self.format!r}")
        if self.format == RECORD_FORMAT_1 and self.snapshot is not None:
            raise ValueError(f"a record of format {RECORD_FORMAT_1!r} seals no snapshot")

    def content(self) -> dict[str, Any]:
        content: dict[str, Any] = {
            "format": self.format,
            "seq": self.seq,
            "prev": self.prev,
            "episode": self.episode,
            "guideline": self.guideline.to_json(),
            "engine": self.engine,
            "decision": self.decision,
            "patient": self.patient,
            "actor": self.actor,
            "reason": self.reason,
        }
        if self.format != RECORD_FORMAT_1:
            content["snapshot"] = self.snapshot
        return content

    @functools.cached_property
    def body(self) -> str:
        """The canonical serialisation of the content: what the log stores and hashes."""
        return canonical(self.content())

    @functools.cached_property
    def hash(self) -> str:
        return sha256_hex(self.body)

    # --- the decision's fields, read back --------------------------------------------------

    @property
    def step(self) -> int:
        return int(self.decision["step"])

    @property
    def at(self) -> str:
        return str(self.decision["at"])

    @property
    def event(self) -> dict[str, Any]:
        event: dict[str, Any] = self.decision["event"]
        return event

    @property
    def source(self) -> str | None:
        source = self.decision["from"]
        return None if source is None else str(source)

    @property
    def target(self) -> str:
        return str(self.decision["to"])

    @property
    def alerts(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = self.decision["alerts"]
        return alerts

    def where(self) -> str:
        """`record 7 (episode P1, step 6, 2026-01-12T08:00:00Z)`: for messages."""
        return f"record {self.seq} (episode {self.episode}, step {self.step}, {self.at})"


@attrs.frozen(kw_only=True)
class RecordDraft:
    """A record before it joins a chain: everything but `seq` and `prev`."""

    episode: str
    guideline: GuidelineIdentity
    engine: str
    decision: dict[str, Any]
    patient: dict[str, Any] | None = None
    actor: str | None = None
    reason: str | None = None

    def seal(self, seq: int, prev: str, *, snapshot: str | None = None) -> AuditRecord:
        """The record at `seq` after `prev`, sealing `snapshot` (the `snapshot_seal` of the
        episode's snapshot saved with it) when given."""
        return AuditRecord(
            seq=seq,
            prev=prev,
            episode=self.episode,
            guideline=self.guideline,
            engine=self.engine,
            decision=self.decision,
            patient=self.patient,
            actor=self.actor,
            reason=self.reason,
            snapshot=snapshot,
        )


def draft_of(
    decision: Decision,
    *,
    episode: str,
    guideline: dict[str, str],
    patient: dict[str, Any] | None = None,
    actor: str | None = None,
    reason: str | None = None,
) -> RecordDraft:
    """The draft record of one engine step (`patient` belongs on step 0 only)."""
    # A JSON round trip turns tuples into lists, so the draft equals what a log reads back.
    content: dict[str, Any] = json.loads(canonical(decision.to_json()))
    return RecordDraft(
        episode=episode,
        guideline=GuidelineIdentity(guideline["id"], guideline["version"], guideline["sha256"]),
        engine=__version__,
        decision=content,
        patient=patient if decision.step == 0 else None,
        actor=actor,
        reason=reason,
    )


def _text(data: dict[str, Any], key: str, *, optional: bool = False, at: str = "$") -> str | None:
    value = data.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{at}.{key}: expected text, got {value!r}")
    return value


def _hash_text(data: dict[str, Any], key: str, at: str = "$") -> str:
    value = _text(data, key, at=at)
    assert value is not None
    if _SHA256.fullmatch(value) is None:
        raise ValueError(f"{at}.{key}: expected a SHA-256 in lower-case hex, got {value!r}")
    return value


def parse_record(content: Any) -> AuditRecord:
    """Read a record's content (parsed JSON); `ValueError` naming the path if it is not one."""
    if not isinstance(content, dict):
        raise ValueError(f"$: expected a record (a JSON object), got {type(content).__name__}")
    form = content.get("format")
    if form not in RECORD_FORMATS:
        raise ValueError(
            f"$.format: expected {RECORD_FORMAT!r} (or the prior {RECORD_FORMAT_1!r}), got {form!r}"
        )
    keys = _CONTENT_KEYS[form]
    extra = sorted(set(content) - keys)
    if extra:
        raise ValueError(f"$.{extra[0]}: unexpected field")
    seal: str | None = None
    if form != RECORD_FORMAT_1:
        missing = sorted(keys - set(content))
        if missing:
            raise ValueError(f"$.{missing[0]}: missing")
        seal = None if content.get("snapshot") is None else _hash_text(content, "snapshot")
    seq = content.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        raise ValueError(f"$.seq: expected a positive whole number, got {seq!r}")
    g = content.get("guideline")
    if not isinstance(g, dict) or set(g) != {"id", "version", "sha256"}:
        raise ValueError("$.guideline: expected {id, version, sha256}")
    identity = GuidelineIdentity(
        str(_text(g, "id", at="$.guideline")),
        str(_text(g, "version", at="$.guideline")),
        _hash_text(g, "sha256", at="$.guideline"),
    )
    decision = content.get("decision")
    if not isinstance(decision, dict):
        raise ValueError("$.decision: expected an object")
    step = decision.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"$.decision.step: expected a whole number, got {step!r}")
    _text(decision, "at", at="$.decision")
    _text(decision, "to", at="$.decision")
    _text(decision, "from", optional=True, at="$.decision")
    if not isinstance(decision.get("event"), dict):
        raise ValueError("$.decision.event: expected an object")
    if not isinstance(decision.get("alerts"), list):
        raise ValueError("$.decision.alerts: expected a list")
    patient = content.get("patient")
    if patient is not None and not isinstance(patient, dict):
        raise ValueError("$.patient: expected an object or null")
    return AuditRecord(
        seq=seq,
        prev=_hash_text(content, "prev"),
        episode=str(_text(content, "episode")),
        guideline=identity,
        engine=str(_text(content, "engine")),
        decision=decision,
        patient=patient,
        actor=_text(content, "actor", optional=True),
        reason=_text(content, "reason", optional=True),
        snapshot=seal,
        format=form,
    )
