"""The tamper-evident transition log: one hash-chained record per engine step.

>>> from iechs.audit import GENESIS, canonical, sha256_hex
>>> canonical({"b": 1, "a": [1.5, "é"]})
'{"a":[1.5,"é"],"b":1}'
>>> len(sha256_hex("")) == len(GENESIS) == 64
True

Record episodes with `RecordedEpisode` (or `iechs run TIMELINE --store PATH.db`), check them
with `verify_log` (`iechs audit verify`), re-decide them with `replay_log` (`iechs audit
replay`), sign a head with `sign_checkpoint` (`iechs audit checkpoint`), export one episode
(`export_jsonl(log, out, episode=...)`, `iechs audit export --episode`) and read back the CDS
Hooks feedback the service recorded (`feedback_of`).

Each episode's saved snapshot is sealed in the chain (`iechs.audit.snapshots`): `verify_log`
checks it, and a store refuses to load one the chain does not vouch for (`SnapshotSealError`).
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .chain import Finding, Verification, verify_log
    from .checkpoint import Checkpoint, generate_key, load_checkpoint, sign_checkpoint
    from .errors import AuditError, CheckpointError, SnapshotSealError, StoreError
    from .export import export_fhir, export_jsonl, import_jsonl
    from .feedback import Feedback, feedback_of, parse_feedback
    from .recorder import RecordedEpisode, run_recorded
    from .records import (
        GENESIS,
        AuditRecord,
        GuidelineIdentity,
        RecordDraft,
        canonical,
        sha256_hex,
    )
    from .replay import Difference, ReplayReport, replay_log
    from .stores import (
        AuditStore,
        Head,
        JsonlLog,
        PostgresStore,
        SqliteStore,
        open_log,
        open_store,
    )

#: public name -> the module that defines it. Loaded on first use, so that importing
#: `iechs.audit.cli` (as `iechs --help` does) does not load cryptography and the stores.
_HOME = {
    "Finding": "chain",
    "Verification": "chain",
    "verify_log": "chain",
    "Checkpoint": "checkpoint",
    "generate_key": "checkpoint",
    "load_checkpoint": "checkpoint",
    "sign_checkpoint": "checkpoint",
    "AuditError": "errors",
    "CheckpointError": "errors",
    "SnapshotSealError": "errors",
    "StoreError": "errors",
    "export_fhir": "export",
    "export_jsonl": "export",
    "import_jsonl": "export",
    "Feedback": "feedback",
    "feedback_of": "feedback",
    "parse_feedback": "feedback",
    "RecordedEpisode": "recorder",
    "run_recorded": "recorder",
    "GENESIS": "records",
    "AuditRecord": "records",
    "GuidelineIdentity": "records",
    "RecordDraft": "records",
    "canonical": "records",
    "sha256_hex": "records",
    "Difference": "replay",
    "ReplayReport": "replay",
    "replay_log": "replay",
    "AuditStore": "stores",
    "Head": "stores",
    "JsonlLog": "stores",
    "PostgresStore": "stores",
    "SqliteStore": "stores",
    "open_log": "stores",
    "open_store": "stores",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{home}", __name__), name)


__all__ = [
    "GENESIS",
    "AuditError",
    "AuditRecord",
    "AuditStore",
    "Checkpoint",
    "CheckpointError",
    "Difference",
    "Feedback",
    "Finding",
    "GuidelineIdentity",
    "Head",
    "JsonlLog",
    "PostgresStore",
    "RecordDraft",
    "RecordedEpisode",
    "ReplayReport",
    "SnapshotSealError",
    "SqliteStore",
    "StoreError",
    "Verification",
    "canonical",
    "export_fhir",
    "export_jsonl",
    "feedback_of",
    "generate_key",
    "import_jsonl",
    "load_checkpoint",
    "open_log",
    "open_store",
    "parse_feedback",
    "replay_log",
    "run_recorded",
    "sha256_hex",
    "sign_checkpoint",
    "verify_log",
]
