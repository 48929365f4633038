"""Errors of the audit log: every one is an `IechsError`, so the CLI exits 2 with a message."""

from __future__ import annotations

from ..errors import IechsError, Problem

__all__ = ["AuditError", "CheckpointError", "SnapshotSealError", "StoreError", "problem"]


class AuditError(IechsError, ValueError):
    """An audit log, export or request that cannot be used as given."""


class StoreError(AuditError):
    """A store cannot be opened, is not an iechs store, or refused a write."""


class SnapshotSealError(StoreError):
    """An episode's saved snapshot is not the one its records seal in the chain (edited,
    replaced or rolled back outside the log): the episode is not restored from it.

    `episode` names the episode; `seq` the record that seals (or should seal) its snapshot."""

    def __init__(self, message: str, location: str, *, episode: str, seq: int | None) -> None:
        self.episode = episode
        self.seq = seq
        super().__init__(problem(message), location)


class CheckpointError(AuditError):
    """A checkpoint or key file cannot be read or written."""


def problem(message: str, path: str = "$") -> list[Problem]:
    """One `Problem`, as the error constructors take them."""
    return [Problem(message, path)]
