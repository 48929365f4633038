"""Moving a log between stores: JSON Lines export and import, and the FHIR export.

An export is a faithful copy: it is written only from a log that verifies, every line is in
canonical form and the header keeps the store id, so a checkpoint of the store also vouches
for its export. An import verifies the export and fills an empty store, rebuilding the
episodes' snapshots from the records.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, TextIO

from .chain import Verification, read_record, verify_log
from .errors import AuditError, problem
from .fhir import to_bundle
from .recorder import episodes_of
from .records import AuditRecord, canonical
from .stores import EXPORT_FORMAT, AuditStore, JsonlLog, Log

__all__ = ["UnverifiedLogError", "export_fhir", "export_jsonl", "import_jsonl", "sound_records"]


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
    verification = verify_log(log)
    if not verification.ok:
        raise UnverifiedLogError(verification)
    return verification


def sound_records(
    log: Log, episode: str | None = None, upto: int | None = None
) -> Iterator[AuditRecord]:
    """The records of a log, in order, each read and checked (`AuditError` on an unsound one);
    `upto` stops after that record number (what a verification covered)."""
    with log.reading() as view:
        for item in view.records(episode):
            record, defect = read_record(item)
            if record is None or defect is not None:
                raise AuditError(
                    problem(f"{item.where}: {defect}; run `iechs audit verify`"), log.location
                )
            if upto is not None and record.seq > upto:
                return
            yield record


def export_jsonl(log: Log, out: TextIO) -> int:
    """Write the header line and one `{"hash", "record"}` line per record; returns the count."""
    verification = _verified(log)
    header: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "store_id": verification.store_id,
        "head": verification.head.to_json(),
    }
    out.write(canonical(header) + "\n")
    count = 0
    for record in sound_records(log, upto=verification.count):
        out.write(canonical({"hash": record.hash, "record": record.content()}) + "\n")
        count += 1
    return count


def export_fhir(log: Log, out: TextIO, episode: str | None = None) -> int:
    """Write a FHIR R4 Bundle (AuditEvent + GuidanceResponse per record); returns the count."""
    verification = _verified(log)
    records = list(sound_records(log, episode, upto=verification.count))
    bundle = to_bundle(records, verification.store_id)
    out.write(json.dumps(bundle, sort_keys=True, indent=2, ensure_ascii=False) + "\n")
    return len(records)


def import_jsonl(export: JsonlLog, store: AuditStore) -> int:
    """Copy a verified export into an empty store (same store id); returns the count."""
    verification = _verified(export)
    records = list(sound_records(export))
    store.load_copy(verification.store_id, records, episodes_of(records))
    return len(records)
