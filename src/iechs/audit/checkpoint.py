"""Signed checkpoints of a chain head (Ed25519), kept outside the store.

A store's own head can be rewritten together with its records; a checkpoint signed with a key
the writer of the store does not hold cannot. Verifying a log against a checkpoint catches
records cut off after it (truncation) and a chain rewritten consistently after an edit.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import Any

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..jsonio import parse
from .errors import CheckpointError, problem
from .records import canonical

__all__ = [
    "CHECKPOINT_FORMAT",
    "Checkpoint",
    "generate_key",
    "key_id",
    "load_checkpoint",
    "load_private_key",
    "load_public_key",
    "public_key_path",
    "sign_checkpoint",
]

CHECKPOINT_FORMAT = "iechs.audit-checkpoint/1"


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    """A short name for a public key: the first 16 hex digits of the SHA-256 of its bytes."""
    return hashlib.sha256(_raw(key)).hexdigest()[:16]


@attrs.frozen(kw_only=True)
class Checkpoint:
    """A signed statement: store `store_id` had `count` records, the last `seq` hashing `head`."""

    store_id: str
    seq: int
    head: str
    count: int
    at: str | None
    public_key: Ed25519PublicKey = attrs.field(eq=False)
    signature: bytes

    def payload(self) -> dict[str, Any]:
        """What is signed: every field but the signature, canonically serialised."""
        return {
            "format": CHECKPOINT_FORMAT,
            "store_id": self.store_id,
            "seq": self.seq,
            "head": self.head,
            "count": self.count,
            "at": self.at,
            "public_key": base64.b64encode(_raw(self.public_key)).decode("ascii"),
        }

    @property
    def key_id(self) -> str:
        return key_id(self.public_key)

    def to_json(self) -> dict[str, Any]:
        return {
            **self.payload(),
            "key_id": self.key_id,
            "signature": base64.b64encode(self.signature).decode("ascii"),
        }

    def signature_problem(self, trusted: Ed25519PublicKey | None) -> str | None:
        """Why the signature cannot be trusted, or None when it holds."""
        if trusted is not None and _raw(trusted) != _raw(self.public_key):
            return (
                f"the checkpoint is signed with key {self.key_id}, not with the trusted key "
                f"{key_id(trusted)}"
            )
        try:
            self.public_key.verify(self.signature, canonical(self.payload()).encode("utf-8"))
        except InvalidSignature:
            return "the checkpoint's signature does not match its content (it was edited)"
        return None


def sign_checkpoint(
    key: Ed25519PrivateKey, *, store_id: str, seq: int, head: str, at: str | None
) -> Checkpoint:
    unsigned = Checkpoint(
        store_id=store_id,
        seq=seq,
        head=head,
        count=seq,
        at=at,
        public_key=key.public_key(),
        signature=b"",
    )
    signature = key.sign(canonical(unsigned.payload()).encode("utf-8"))
    return attrs.evolve(unsigned, signature=signature)


def load_checkpoint(path: str | Path) -> Checkpoint:
    shown = str(path)
    try:
        data = parse(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise CheckpointError(
            problem(f"cannot read the checkpoint: {exc.strerror}"), shown
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(problem(f"not a JSON checkpoint ({exc})"), shown) from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(problem(f"not an iechs checkpoint ({CHECKPOINT_FORMAT})"), shown)
    expected: dict[str, type | tuple[type, ...]] = {
        "store_id": str,
        "seq": int,
        "head": str,
        "count": int,
        "at": (str, type(None)),
        "public_key": str,
        "key_id": str,
        "signature": str,
    }
    for field, kind in expected.items():
        if not isinstance(data.get(field), kind) or isinstance(data.get(field), bool):
            raise CheckpointError(problem("missing or of the wrong type", f"$.{field}"), shown)
    try:
        public = Ed25519PublicKey.from_public_bytes(
            base64.b64decode(data["public_key"], validate=True)
        )
        signature = base64.b64decode(data["signature"], validate=True)
    except ValueError as exc:
        raise CheckpointError(problem(f"bad key or signature encoding ({exc})"), shown) from None
    checkpoint = Checkpoint(
        store_id=data["store_id"],
        seq=data["seq"],
        head=data["head"],
        count=data["count"],
        at=data["at"],
        public_key=public,
        signature=signature,
    )
    if checkpoint.key_id != data["key_id"]:
        raise CheckpointError(problem("key_id does not match public_key", "$.key_id"), shown)
    return checkpoint


def public_key_path(private: Path) -> Path:
    """`KEY.pem` -> `KEY.pub.pem` (the public half is written beside the private key)."""
    stem = private.name.removesuffix(".pem")
    return private.with_name(f"{stem}.pub.pem")


def generate_key(out: Path) -> tuple[Path, Ed25519PublicKey]:
    """Write a new Ed25519 private key to `out` (mode 0600) and its public key beside it."""
    public_path = public_key_path(out)
    for path in (out, public_path):
        if path.exists():
            raise CheckpointError(problem("exists already: refusing to overwrite a key"), str(path))
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(private_pem)
        public_path.write_bytes(public_pem)
    except OSError as exc:
        raise CheckpointError(problem(f"cannot write the key: {exc.strerror}"), str(out)) from None
    return public_path, key.public_key()


def _read_pem(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CheckpointError(
            problem(f"cannot read the {what}: {exc.strerror}"), str(path)
        ) from None


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    data = _read_pem(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(
            problem(f"not an unencrypted PEM private key ({exc})"), str(path)
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise CheckpointError(problem("not an Ed25519 key (`iechs audit keygen`)"), str(path))
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM public key (or the public half of a private key)."""
    data = _read_pem(path, "public key")
    if b"PRIVATE KEY" in data:
        return load_private_key(path).public_key()
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(problem(f"not a PEM public key ({exc})"), str(path)) from None
    if not isinstance(key, Ed25519PublicKey):
        raise CheckpointError(problem("not an Ed25519 public key"), str(path))
    return key
