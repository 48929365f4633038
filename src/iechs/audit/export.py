"""Moving a log between stores: JSON Lines export and import, and the FHIR export.

An export is a faithful copy of the chain: it is written only from a log whose chain verifies,
every line is in canonical form and the header keeps the store id, so a checkpoint of the store
also vouches for its export. It holds no episode snapshots, so a store whose chain is sound but
one of whose saved snapshots was edited can still be exported: importing the export makes a
store whose snapshots are rebuilt from the records, each checked against the seal its records
carry.

An export holds the records and nothing the store keeps beside them: no write times. Records
carry no clock reading, so two stores fed the same input export the same record lines, byte for
byte (their headers differ only in the store id). An import writes the time of the import as
every record's write time (`written_at`): when that store wrote it. The FHIR export gives a
store's write times as `Provenance.recorded` (see `iechs.audit.fhir`); exported from a JSON Lines
copy, it has none to give.

An episode export (`episode=`) holds the records of one episode, each as in a whole export
(its hash, and its content with the link to the record before it in the chain), under a header
that says so: `{format: EPISODE_EXPORT_FORMAT, store_id, head, episode, records}`. An episode's
records are not a contiguous chain (other episodes' records lie between them), so the export is
a partial copy: `iechs audit verify` checks what it can alone (hashes, order, every step of the
episode from 0, links between neighbours) and, with `--against LOG`, that it holds exactly the
log's records of that episode up to its head. It can be shown, replayed and exported as FHIR,
but not imported into a store (a store holds a whole chain) nor exported again as JSON Lines.
"""

from __future__ import annotations

import difflib
import functools
import json
from collections.abc import Iterator
from typing import Any, TextIO

from .chain import Verification, read_record, verify_log
from .errors import AuditError, StoreError, problem
from .fhir import to_bundle
from .records import AuditRecord, canonical, sha256_hex
from .snapshots import episodes_of, last_record, snapshot_problem
from .stores import (
    EPISODE_EXPORT_FORMAT,
    EXPORT_FORMAT,
    AuditStore,
    JsonlLog,
    Log,
    SavedSnapshot,
    StoredRecord,
)

__all__ = [
    "UnverifiedLogError",
    "export_fhir",
    "export_jsonl",
    "import_jsonl",
    "refuse_episode_export",
    "sound_items",
    "sound_records",
    "unknown_episode",
]


class UnverifiedLogError(AuditError):
    """The log does not verify: an export or import of it would not be a faithful copy."""

    def __init__(self, verification: Verification) -> None:
        self.verification = verification
        messages = "; ".join(f.message for f in verification.findings)
        super().__init__(
            problem(f"the log does not verify ({messages}); run `iechs audit verify`"),
            verification.location,
        )


def _verified(log: Log) -> Verification:
    """The log's chain verifies (its saved snapshots are not exported, so not checked here)."""
    verification = verify_log(log, snapshots=False)
    if not verification.ok:
        raise UnverifiedLogError(verification)
    return verification


def sound_records(
    log: Log, episode: str | None = None, upto: int | None = None
) -> Iterator[AuditRecord]:
    """The records of a log, in order, each read and checked (`AuditError` on an unsound one);
    `upto` stops after that record number (what a verification covered)."""
    for record, _ in sound_items(log, episode, upto):
        yield record


def sound_items(
    log: Log, episode: str | None = None, upto: int | None = None
) -> Iterator[tuple[AuditRecord, StoredRecord]]:
    """`sound_records`, each with what the log keeps beside it (e.g. its write time)."""
    with log.reading() as view:
        for item in view.records(episode):
            record, defect = read_record(item)
            if record is None or defect is not None:
                raise AuditError(
                    problem(f"{item.where}: {defect}; run `iechs audit verify`"), log.location
                )
            if upto is not None and record.seq > upto:
                return
            yield record, item


def export_jsonl(log: Log, out: TextIO, episode: str | None = None) -> int:
    """Write the header line and one `{"hash", "record"}` line per record; returns the count.

    With `episode`, an episode export: only that episode's records (`AuditError` when the log
    has none)."""
    if isinstance(log, JsonlLog) and log.only_episode is not None:
        raise AuditError(
            problem(
                f"this is an episode export (episode {log.only_episode!r}), not a whole log: "
                "copy the file, or export from the full log"
            ),
            log.location,
        )
    verification = _verified(log)
    header: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "store_id": verification.store_id,
        "head": verification.head.to_json(),
    }
    records: Iterator[AuditRecord] | list[AuditRecord]
    if episode is None:
        records = sound_records(log, upto=verification.count)
    else:
        records = list(sound_records(log, episode, upto=verification.count))
        if not records:
            raise AuditError(problem(unknown_episode(log, episode)), log.location)
        header.update(format=EPISODE_EXPORT_FORMAT, episode=episode, records=len(records))
    out.write(canonical(header) + "\n")
    count = 0
    for record in records:
        out.write(canonical({"hash": record.hash, "record": record.content()}) + "\n")
        count += 1
    return count


def unknown_episode(log: Log, episode: str) -> str:
    """`no episode 'P9' in the log (did you mean 'P1'?); it holds 2 episodes: P1, P2`."""
    known: dict[str, None] = {}
    with log.reading() as view:
        for item in view.records():
            record, _ = read_record(item)
            name = item.episode or (record.episode if record is not None else None)
            if name is not None:
                known[name] = None
    if not known:
        return f"no episode {episode!r}: the log holds no records"
    close = difflib.get_close_matches(episode, list(known), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    listed = ", ".join(list(known)[:10]) + (", ..." if len(known) > 10 else "")
    return f"no episode {episode!r} in the log{hint}; it holds {len(known)} episode(s): {listed}"


def export_fhir(log: Log, out: TextIO, episode: str | None = None) -> int:
    """Write a FHIR R4 Bundle (AuditEvent, GuidanceResponse and Provenance per record, the
    Provenance `recorded` at the record's write time where the log keeps one); returns the
    count."""
    verification = _verified(log)
    items = list(sound_items(log, episode, upto=verification.upto))
    records = [record for record, _ in items]
    written_at = {record.seq: item.written_at for record, item in items}
    bundle = to_bundle(records, verification.store_id, written_at)
    out.write(json.dumps(bundle, sort_keys=True, indent=2, ensure_ascii=False) + "\n")
    return len(records)


def refuse_episode_export(export: JsonlLog) -> None:
    """`AuditError` for an episode export, which no store can be made of."""
    if export.only_episode is not None:
        raise AuditError(
            problem(
                f"an episode export (episode {export.only_episode!r}, "
                f"{export.exported_records} records) is not a whole chain, so no store can be "
                "made of it: import a whole export (`iechs audit export LOG`, without --episode)"
            ),
            export.location,
        )


def import_jsonl(export: JsonlLog, store: AuditStore) -> int:
    """Copy a verified export into an empty store (same store id); returns the count. Every
    record's write time is the time of the import (the export carries none). An episode export
    is refused (`AuditError`): a store holds a whole chain."""
    refuse_episode_export(export)
    verification = _verified(export)
    records = list(sound_records(export))
    episodes = episodes_of(records)
    last = {r.episode: last_record(r) for r in records}
    for episode in episodes:
        text = canonical(episode.snapshot)
        saved = SavedSnapshot(episode.id, episode.steps, episode.head_seq, text)
        # The snapshot is the one its records rebuild: the fallback for unsealed records holds.
        why = snapshot_problem(saved, last.get(episode.id), functools.partial(sha256_hex, text))
        if why is not None:
            raise StoreError(
                problem(f"episode {episode.id!r}: rebuilt from its records, {why}"),
                export.location,
            )
    store.load_copy(verification.store_id, records, episodes)
    return len(records)
