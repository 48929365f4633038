"""Verifying a log: every record matches its hash and links to the one before, in order.

The walk stops at the first bad record and says what is wrong with it:

| kind | what was found |
|---|---|
| `altered` | a record's content does not match its hash (or is not a record at all) |
| `broken_link` | a record does not link to the one before (that one altered and rehashed) |
| `missing` | a record is absent: the sequence jumps over it |
| `reordered` | a record is stored before one with a lower number |
| `duplicated` | a record number appears twice |
| `forged_tail` | records past the head the store recorded: appended behind the log's back |
| `truncated` | the log ends before the store's head or the checkpoint's record |
| `rewritten` | the record a head or checkpoint vouches for hashes otherwise: chain rewritten |
| `checkpoint` | the checkpoint is for another store, or its signature does not hold |
| `snapshot` | an episode's saved snapshot is not the one the chain seals: edited, replaced |
| `against` | an episode export's full log does not verify, or is another store or an older copy |

After the chain, every saved episode snapshot of a store is checked against the chain
(`iechs.audit.snapshots`): each one that fails is a `snapshot` finding naming its episode.

Without a checkpoint, a chain rewritten from an edit to its end (head included) is
indistinguishable from a genuine one; a checkpoint signed before the edit catches it. Records
appended after the checkpoint's head are not covered by it: the verification counts them
(`Verification.uncovered`) and warns, since a record appended with the head moved along cannot
be told from a genuine one until a later checkpoint covers it. A checkpoint checked without a
pinned public key (`trusted_key`) proves only that whoever wrote it held the key embedded in it:
the verification warns about that too (`Verification.warnings`).

The write time a store keeps beside each record (`written_at`) is not part of the record, so
the chain does not cover it and this walk does not check it: the chain proves the records'
content and order, not when they were written (a checkpoint, signed at a known time, pins that).

An episode export (`iechs audit export --episode`) holds one episode's records, not a whole
chain. Alone it is checked for what it can show: every record matches its hash, belongs to the
episode, and comes in order; the episode's steps run from 0 without a gap; records adjacent in
the chain link; the header's record count holds. That they are the records of the store's
chain is checked against the full log it was taken from (`against`): the log must verify, and
hold exactly these records for the episode up to the export's head, byte for byte.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..jsonio import parse
from .checkpoint import Checkpoint, key_id
from .errors import AuditError, problem
from .records import GENESIS, AuditRecord, canonical, parse_record, sha256_hex
from .snapshots import LastRecord, last_record, rebuilt_seal, snapshot_problem
from .stores import Head, JsonlLog, Log, LogView, StoredRecord

__all__ = ["Finding", "Verification", "read_record", "verify_log"]


@attrs.frozen
class Finding:
    """What is wrong, at which record (`seq`, when it can be named)."""

    kind: str
    seq: int | None
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "seq": self.seq, "message": self.message}


@attrs.frozen(kw_only=True)
class Verification:
    location: str
    store_id: str
    count: int
    head: Head
    head_at: str | None
    findings: tuple[Finding, ...]
    #: what the checkpoint vouched for, when one was given: seq, key id, trusted or embedded,
    #: and the records after its head (`uncovered`, when the chain verified that far).
    checkpoint: dict[str, Any] | None = None
    #: how many saved episode snapshots were checked against the chain (None: not checked, e.g.
    #: an export holds none, or the chain itself did not verify).
    snapshots: int | None = None
    #: what does not make the log tampered but limits what this verification proves.
    warnings: tuple[Finding, ...] = ()
    #: an episode export: its episode (`head` is then the head of the log it was taken from,
    #: as its header says), and the full log it was compared with, if any.
    episode: str | None = None
    against: str | None = None

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def uncovered(self) -> int | None:
        """Records after the checkpoint's head (None: no checkpoint, or not counted)."""
        if self.checkpoint is None:
            return None
        value = self.checkpoint.get("uncovered")
        return value if isinstance(value, int) else None

    @property
    def upto(self) -> int | None:
        """The last record number of a whole log this verification covered (None: an episode
        export, whose records are those verified)."""
        return None if self.episode is not None else self.count

    def to_json(self) -> dict[str, Any]:
        out = {
            "format": "iechs.audit-verification/1",
            "log": self.location,
            "store_id": self.store_id,
            "ok": self.ok,
            "records": self.count,
            "head": self.head.to_json(),
            "findings": [f.to_json() for f in self.findings],
            "checkpoint": self.checkpoint,
            "snapshots_checked": self.snapshots,
            "warnings": [w.to_json() for w in self.warnings],
        }
        if self.episode is not None:
            out["episode_export"] = {"episode": self.episode, "against": self.against}
        return out


def read_record(item: StoredRecord) -> tuple[AuditRecord | None, str | None]:
    """Parse and check one stored record: the record, or why it is not a sound one."""
    record, _, defect = _read(item)
    return record, defect


def _read(item: StoredRecord) -> tuple[AuditRecord | None, str, str | None]:
    """`read_record`, with the hash of the body (computed once: it is the costly part)."""
    digest = sha256_hex(item.body)
    if item.defect is not None:
        return None, digest, item.defect
    try:
        content = parse(item.body)
    except ValueError as exc:
        return None, digest, f"its content is not JSON ({exc})"
    try:
        record = parse_record(content)
    except ValueError as exc:
        return None, digest, f"its content is not a valid record ({exc})"
    try:
        if canonical(content) != item.body:
            return record, digest, "its content is not in canonical form (it was edited)"
    except ValueError:
        return record, digest, "its content is not plain JSON"
    if item.hash is not None and digest != item.hash:
        return record, digest, "its content does not match its stored hash"
    return record, digest, None


def _index_problem(item: StoredRecord, record: AuditRecord) -> str | None:
    """The index columns beside a sound record disagree with its content."""
    if item.seq is not None and item.seq != record.seq:
        return f"it is indexed as record {item.seq} but its content says {record.seq}"
    if item.episode is not None and item.episode != record.episode:
        return (
            f"it is indexed under episode {item.episode!r} but its content says {record.episode!r}"
        )
    return None


def _seq_of(item: StoredRecord) -> int | None:
    try:
        seq = parse(item.body).get("seq")
    except (ValueError, AttributeError):
        return None
    return seq if isinstance(seq, int) else None


def _out_of_sequence(expected: int, got: int, later: Iterator[StoredRecord]) -> Finding:
    if got < expected:
        return Finding("duplicated", got, f"record {got} appears again after record {expected - 1}")
    rest = {_seq_of(item) for item in later}
    if expected in rest:
        return Finding(
            "reordered",
            got,
            f"records are out of order: record {got} is stored before record {expected}",
        )
    gone = f"record {expected} is" if got == expected + 1 else f"records {expected}-{got - 1} are"
    return Finding(
        "missing",
        expected,
        f"{gone} missing: the log goes from record {expected - 1} to record {got}",
    )


@attrs.define
class _Walk:
    """What walking a whole chain found: how far it got, and what the later checks need."""

    findings: list[Finding] = attrs.Factory(list)
    count: int = 0
    prev: str = GENESIS
    last_at: str | None = None
    #: the hash of the record the checkpoint names, and the episodes of the records after it.
    checkpointed: str | None = None
    tail: dict[str, None] = attrs.Factory(dict)
    #: each episode's last record.
    last: dict[str, LastRecord] = attrs.Factory(dict)


def _walk(view: LogView, checkpoint_seq: int | None) -> _Walk:
    """Walk the chain from its first record; stop at the first bad one."""
    walk = _Walk()
    expected = 1
    items = view.records()
    for item in items:
        record, digest, defect = _read(item)
        if record is None:
            walk.findings.append(
                Finding("altered", expected, f"record {expected} ({item.where}): {defect}")
            )
            break
        if defect is not None:
            # The body is not to be trusted: name the record by where it is stored.
            where = (
                record.where()
                if record.seq == expected
                else f"record {expected} ({item.where}; its altered body claims {record.seq})"
            )
            walk.findings.append(Finding("altered", expected, f"{where}: {defect}"))
            break
        if record.seq != expected:
            walk.findings.append(_out_of_sequence(expected, record.seq, items))
            break
        defect = _index_problem(item, record)
        if defect is not None:
            walk.findings.append(Finding("altered", record.seq, f"{record.where()}: {defect}"))
            break
        if record.prev != walk.prev:
            walk.findings.append(
                Finding(
                    "broken_link",
                    record.seq,
                    f"{record.where()} does not link to record {record.seq - 1}: it names "
                    f"{record.prev[:16]}…, record {record.seq - 1} hashes to {walk.prev[:16]}…; "
                    f"record {record.seq - 1} was altered and rehashed, or record "
                    f"{record.seq} was forged",
                )
            )
            break
        # The body is canonical (checked above), so its hash is the record's hash.
        walk.prev, walk.last_at = digest, record.at
        walk.last[record.episode] = last_record(record)
        if checkpoint_seq is not None:
            if record.seq == checkpoint_seq:
                walk.checkpointed = digest
            elif record.seq > checkpoint_seq:
                walk.tail[record.episode] = None
        expected += 1
    walk.count = expected - 1
    return walk


def verify_log(
    log: Log,
    checkpoint: Checkpoint | None = None,
    trusted_key: Ed25519PublicKey | None = None,
    *,
    against: Log | None = None,
    snapshots: bool = True,
) -> Verification:
    """Walk the chain; compare it with the store's head, check every saved episode snapshot
    against the chain (unless `snapshots` is False: e.g. an export copies records only) and,
    when given, compare the chain with a signed checkpoint.

    An episode export is checked as one (see the module's text); `against` is the full log to
    compare it with. A checkpoint vouches for a whole chain and cannot check an episode export.
    """
    checked: int | None = None
    with log.reading() as view:
        if view.only_episode is not None:
            if checkpoint is not None:
                raise AuditError(
                    problem(
                        f"an episode export (episode {view.only_episode!r}) is not a whole chain: "
                        "a checkpoint cannot vouch for it; check the full log with the checkpoint, "
                        "and the export with --against LOG"
                    ),
                    log.location,
                )
            claimed = log.exported_records if isinstance(log, JsonlLog) else None
            return _verify_episode_export(log.location, view, claimed, against)
        if against is not None:
            raise AuditError(
                problem(
                    "--against compares an episode export with the log it was taken from; "
                    "this is a whole log: verify it alone"
                ),
                log.location,
            )
        store_id, head = view.store_id, view.head
        walk = _walk(view, None if checkpoint is None else checkpoint.seq)
        findings = walk.findings
        if not findings and head is not None:
            findings += _head_findings(head, walk.count, walk.prev)
        if not findings and snapshots and not isinstance(log, JsonlLog):  # an export has none
            found, checked = _snapshot_findings(view, walk.last)
            findings += found
    warnings: list[Finding] = []
    cp_info = None
    if checkpoint is not None:
        cp_info = _against_checkpoint(
            checkpoint, trusted_key, store_id, walk, findings=findings, warnings=warnings
        )
    return Verification(
        location=log.location,
        store_id=store_id,
        count=walk.count,
        head=Head(walk.count, walk.prev),
        head_at=walk.last_at,
        findings=tuple(findings),
        checkpoint=cp_info,
        snapshots=checked,
        warnings=tuple(warnings),
    )


def _against_checkpoint(
    checkpoint: Checkpoint,
    trusted_key: Ed25519PublicKey | None,
    store_id: str,
    walk: _Walk,
    *,
    findings: list[Finding],
    warnings: list[Finding],
) -> dict[str, Any]:
    """Compare the walked chain with the checkpoint: its findings and warnings are added to
    `findings` and `warnings`; returns what the verification reports of the checkpoint."""
    info: dict[str, Any] = {
        "seq": checkpoint.seq,
        "head": checkpoint.head,
        "key_id": checkpoint.key_id,
        "trusted_key": None if trusted_key is None else key_id(trusted_key),
        "key_pinned": trusted_key is not None,
        "matches": None,
        "uncovered": None,
    }
    if trusted_key is None:
        warnings.append(_embedded_key_warning(checkpoint))
    # An edited snapshot leaves the chain whole: the checkpoint is still compared with it.
    if all(f.kind == "snapshot" for f in findings):
        count = walk.count
        found = _checkpoint_findings(checkpoint, trusted_key, store_id, count, walk.checkpointed)
        findings += found
        info["matches"] = not found
        if not found:
            info["uncovered"] = count - checkpoint.seq
            if count > checkpoint.seq:
                warnings.append(_uncovered_warning(checkpoint.seq, count, list(walk.tail)))
    return info


def _snapshot_findings(view: LogView, last: dict[str, LastRecord]) -> tuple[list[Finding], int]:
    """Every saved snapshot against the chain just walked (`last`: each episode's last record):
    a `snapshot` finding per episode whose snapshot the chain does not vouch for."""
    findings: list[Finding] = []
    checked = 0
    for saved in view.snapshots():
        checked += 1

        def rebuilt(episode: str = saved.id) -> str | None:
            records = []
            for item in view.records(episode):
                record, _ = read_record(item)  # the chain verified: every record is sound
                if record is not None:
                    records.append(record)
            return rebuilt_seal(records, episode)

        why = snapshot_problem(saved, last.get(saved.id), rebuilt)
        if why is not None:
            seq = last[saved.id].seq if saved.id in last else None
            findings.append(Finding("snapshot", seq, f"episode {saved.id!r}: {why}"))
    return findings, checked


def _embedded_key_warning(checkpoint: Checkpoint) -> Finding:
    return Finding(
        "embedded_key",
        None,
        f"no --public-key: the checkpoint was checked with the key embedded in it "
        f"({checkpoint.key_id}), so it proves only that its writer held that key; anyone who can "
        "write a checkpoint file can sign a forged one with a key of their own. Pin the signer's "
        "public key, kept apart from the store and the checkpoints: --public-key KEY.pub.pem",
    )


def _uncovered_warning(seq: int, count: int, episodes: list[str]) -> Finding:
    n = count - seq
    which = f"record {count}" if n == 1 else f"records {seq + 1}-{count}"
    shown = ", ".join(episodes[:10]) + (", ..." if len(episodes) > 10 else "")
    plural = "s" if len(episodes) != 1 else ""
    records, lie, them = ("1 record", "lies", "it") if n == 1 else (f"{n} records", "lie", "them")
    return Finding(
        "uncovered",
        seq + 1,
        f"{records} ({which}; episode{plural} {shown}) {lie} after the checkpoint's head (record "
        f"{seq}): no checkpoint vouches for {them}, and a record appended behind the log's back, "
        "with the head moved along, cannot be told from a genuine one until a later checkpoint "
        "covers it. Sign a new checkpoint (`iechs audit checkpoint`) and keep it off this host",
    )


def _head_findings(head: Head, count: int, last_hash: str) -> list[Finding]:
    if head.seq < count:
        return [
            Finding(
                "forged_tail",
                head.seq + 1,
                f"records {head.seq + 1}-{count} lie past the head the store recorded (record "
                f"{head.seq}): they were added behind the log's back",
            )
        ]
    if head.seq > count:
        return [
            Finding(
                "truncated",
                count + 1,
                f"the log ends at record {count} but the store's head is record {head.seq}: "
                f"records {count + 1}-{head.seq} were cut off",
            )
        ]
    if head.hash != last_hash:
        return [
            Finding(
                "rewritten",
                count,
                f"record {count} hashes to {last_hash[:16]}… but the store's head says "
                f"{head.hash[:16]}…: the last record was rewritten",
            )
        ]
    return []


def _checkpoint_findings(
    checkpoint: Checkpoint,
    trusted_key: Ed25519PublicKey | None,
    store_id: str,
    count: int,
    checkpointed: str | None,
) -> list[Finding]:
    why = checkpoint.signature_problem(trusted_key)
    if why is not None:
        return [Finding("checkpoint", None, why)]
    if checkpoint.store_id != store_id:
        return [
            Finding(
                "checkpoint",
                None,
                f"the checkpoint is for store {checkpoint.store_id}, this log is store {store_id}",
            )
        ]
    if count < checkpoint.seq:
        return [
            Finding(
                "truncated",
                count + 1,
                f"the log ends at record {count} but the signed checkpoint vouches for "
                f"{checkpoint.count} records: records {count + 1}-{checkpoint.seq} were cut off",
            )
        ]
    if checkpoint.seq > 0 and checkpointed != checkpoint.head:
        return [
            Finding(
                "rewritten",
                checkpoint.seq,
                f"record {checkpoint.seq} hashes to {(checkpointed or '')[:16]}… but the signed "
                f"checkpoint says {checkpoint.head[:16]}…: the chain was rewritten at or before "
                f"record {checkpoint.seq} (every hash after the edit recomputed)",
            )
        ]
    return []


# --- episode exports -----------------------------------------------------------------------------


def _verify_episode_export(
    location: str, view: LogView, claimed: int | None, against: Log | None
) -> Verification:
    episode = view.only_episode
    assert episode is not None
    findings: list[Finding] = []
    hashes: dict[int, str] = {}
    last: AuditRecord | None = None
    last_hash = GENESIS
    head = view.head or Head(0, GENESIS)
    for item in view.records():
        record, digest, defect = _read(item)
        if record is None:
            findings.append(Finding("altered", None, f"{item.where}: {defect}"))
            break
        where = f"{record.where()} ({item.where})"
        if defect is not None:
            findings.append(Finding("altered", record.seq, f"{where}: {defect}"))
            break
        if record.episode != episode:
            findings.append(
                Finding(
                    "altered",
                    record.seq,
                    f"{where} belongs to episode {record.episode!r}, not to episode {episode!r} "
                    "that the export holds",
                )
            )
            break
        if last is not None and record.seq <= last.seq:
            kind = "duplicated" if record.seq == last.seq else "reordered"
            findings.append(
                Finding(kind, record.seq, f"{where} comes after record {last.seq} in the export")
            )
            break
        if record.step != len(hashes):
            before = f"after {last.where()}" if last is not None else "at the start"
            findings.append(
                Finding(
                    "missing" if record.step > len(hashes) else "duplicated",
                    record.seq,
                    f"step {len(hashes)} of episode {episode!r} is missing: {before}, the export "
                    f"has {where}",
                )
            )
            break
        neighbour = record.seq == 1 or (last is not None and record.seq == last.seq + 1)
        if neighbour and record.prev != last_hash:
            findings.append(
                Finding(
                    "broken_link",
                    record.seq,
                    f"{where} does not link to record {record.seq - 1} before it in the export: "
                    f"it names {record.prev[:16]}…, that record hashes to {last_hash[:16]}…",
                )
            )
            break
        if record.seq > head.seq:
            findings.append(
                Finding(
                    "forged_tail",
                    record.seq,
                    f"{where} lies past the head of the log the export was taken from (record "
                    f"{head.seq}): it was added behind the export's back",
                )
            )
            break
        hashes[record.seq] = digest
        last, last_hash = record, digest
    if not findings and claimed is not None and claimed != len(hashes):
        findings.append(
            Finding(
                "truncated" if len(hashes) < claimed else "forged_tail",
                None,
                f"the export's header says {claimed} records, it holds {len(hashes)}",
            )
        )
    if not findings and against is not None:
        findings += _against_log(view.store_id, head, episode, hashes, against)
    return Verification(
        location=location,
        store_id=view.store_id,
        count=len(hashes),
        head=head,
        head_at=last.at if last is not None else None,
        findings=tuple(findings),
        episode=episode,
        against=against.location if against is not None else None,
    )


def _against_log(
    store_id: str, head: Head, episode: str, hashes: dict[int, str], log: Log
) -> list[Finding]:
    """An episode export against the full log: the same store, a log that verifies, and the
    same records of the episode, up to the export's head."""
    full = verify_log(log)
    if not full.ok:
        reasons = "; ".join(f.message for f in full.findings)
        return [Finding("against", None, f"{log.location} does not verify ({reasons})")]
    if full.store_id != store_id:
        return [
            Finding(
                "against",
                None,
                f"the export is of store {store_id}, {log.location} is store {full.store_id}",
            )
        ]
    if full.count < head.seq:
        return [
            Finding(
                "against",
                None,
                f"the export was taken at record {head.seq}, {log.location} ends at record "
                f"{full.count}: it is an older copy of the log",
            )
        ]
    findings: list[Finding] = []
    logged: dict[int, str] = {}
    with log.reading() as view:
        for item in view.records():
            record, digest, _ = _read(item)
            if record is None or record.seq > head.seq:
                break
            if record.seq == head.seq and digest != head.hash:
                findings.append(
                    Finding(
                        "rewritten",
                        head.seq,
                        f"the export names record {head.seq} of the log as its head "
                        f"(sha256 {head.hash[:16]}…), the log's record {head.seq} hashes to "
                        f"{digest[:16]}…",
                    )
                )
            if record.episode == episode:
                logged[record.seq] = digest
    for seq in sorted(set(logged) | set(hashes)):
        if seq not in hashes:
            findings.append(
                Finding(
                    "missing",
                    seq,
                    f"record {seq} of episode {episode!r} is in {log.location}, not in the export",
                )
            )
        elif seq not in logged:
            findings.append(
                Finding(
                    "altered",
                    seq,
                    f"record {seq} of the export is not a record of episode {episode!r} in "
                    f"{log.location}",
                )
            )
        elif logged[seq] != hashes[seq]:
            findings.append(
                Finding(
                    "altered",
                    seq,
                    f"record {seq} of the export differs from record {seq} of {log.location}",
                )
            )
    return findings
