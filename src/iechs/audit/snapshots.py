"""Episode snapshots and the chain: which snapshot the records vouch for.

A store saves each episode's snapshot (what `Engine.restore` continues) beside the chain, in a
table the chain does not cover. The snapshot is sealed into the chain instead: the last record of
the episode in each append that saves it carries the SHA-256 of the snapshot's canonical JSON
(`AuditRecord.snapshot`). A saved snapshot is the one the chain vouches for when

- the chain holds records of its episode, and the snapshot was saved with the last of them
  (`head_seq`), counting every step (`steps`);
- its text hashes to the seal of that record; a record of the prior format (or one appended
  without a snapshot) seals none, and then the snapshot must be the one its records rebuild
  (`episodes_of`: the patient, every input in order, the state).

`snapshot_problem` says why not. `iechs audit verify` applies it to every saved snapshot after
walking the chain; `AuditStore.episode` (the path `RecordedEpisode.resume`, `iechs run --store`
and the CDS Hooks service restore an episode by) applies it to the one it loads, with the record
read and checked there, and refuses an episode that fails it (`SnapshotSealError`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import attrs

from ..engine import SNAPSHOT_FORMAT
from .records import AuditRecord, canonical, sha256_hex
from .stores import SavedSnapshot, StoredEpisode

__all__ = ["LastRecord", "episodes_of", "last_record", "rebuilt_seal", "snapshot_problem"]


@attrs.frozen
class LastRecord:
    """An episode's last record in the chain, as far as its snapshot is concerned."""

    seq: int
    step: int
    #: the seal it carries (None: the prior format, or appended without a snapshot).
    seal: str | None
    format: str


def last_record(record: AuditRecord) -> LastRecord:
    return LastRecord(record.seq, record.step, record.snapshot, record.format)


def snapshot_problem(
    saved: SavedSnapshot, last: LastRecord | None, rebuilt: Callable[[], str | None]
) -> str | None:
    """Why `saved` is not the snapshot the chain vouches for, or None when it is.

    `last` is the episode's last record (None: the chain holds none); `rebuilt` gives the seal
    of the snapshot its records rebuild (None: they rebuild none), asked only when `last`
    seals nothing."""
    name = f"the saved snapshot of episode {saved.id!r}"
    if last is None:
        return f"{name} has no record in the chain: it was added outside the log"
    if saved.head_seq != last.seq:
        return (
            f"{name} says it was saved with record {saved.head_seq}, but the episode's last "
            f"record is record {last.seq}: it was replaced or rolled back outside the log"
        )
    found = sha256_hex(saved.text)
    if last.seal is not None:
        if found != last.seal:
            return (
                f"{name} does not match the SHA-256 sealed in record {last.seq} of the chain "
                f"(it hashes to {found[:16]}…, the record seals {last.seal[:16]}…): it was "
                "edited outside the log"
            )
    elif found != rebuilt():
        return (
            f"{name} is not the one its records rebuild (record {last.seq}, the episode's "
            f"last, is of format {last.format} and seals no snapshot): it was edited outside "
            "the log"
        )
    if saved.steps != last.step + 1:
        return (
            f"{name} counts {saved.steps} steps, but the chain holds steps 0-{last.step} of the "
            "episode: its step count was edited outside the log"
        )
    return None


def rebuilt_seal(records: Iterable[AuditRecord], episode: str) -> str | None:
    """The seal of the snapshot `records` (the episode's, in order) rebuild, or None."""
    for stored in episodes_of(records):
        if stored.id == episode:
            return sha256_hex(canonical(stored.snapshot))
    return None


def episodes_of(records: Iterable[AuditRecord]) -> list[StoredEpisode]:
    """Rebuild the episodes' snapshots from their records (an import has records only)."""
    found: dict[str, dict[str, Any]] = {}
    counts: dict[str, tuple[int, int]] = {}
    for r in records:
        if r.step == 0:
            found[r.episode] = {
                "format": SNAPSHOT_FORMAT,
                "episode_id": r.episode,
                "guideline": r.guideline.to_json(),
                "patient": r.patient,
                "inputs": [],
                "state": r.target,
            }
        elif r.episode in found:
            # the input as `Episode.step` recorded it: the event, and what was known to follow
            later = r.decision.get("later")
            found[r.episode]["inputs"].append({**r.event, "later": later} if later else r.event)
            found[r.episode]["state"] = r.target
        counts[r.episode] = (counts.get(r.episode, (0, 0))[0] + 1, r.seq)
    return [
        StoredEpisode(episode_id, counts[episode_id][0], counts[episode_id][1], snapshot)
        for episode_id, snapshot in sorted(found.items())
    ]
