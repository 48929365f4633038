"""The `iechs audit` actions (parsed by `iechs.audit.cli`). Only here are files written."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console

from ..loader import load_guideline
from ..model import Guideline
from ..report import plain_console
from .chain import verify_log
from .checkpoint import (
    generate_key,
    key_id,
    load_checkpoint,
    load_private_key,
    load_public_key,
    sign_checkpoint,
)
from .errors import AuditError, problem
from .export import (
    UnverifiedLogError,
    export_fhir,
    export_jsonl,
    import_jsonl,
    refuse_episode_export,
)
from .replay import replay_log
from .show import (
    console,
    print_log,
    print_record,
    print_replay,
    print_verification,
    print_warnings,
)
from .stores import JsonlLog, Log, open_log, open_store

__all__ = ["dispatch"]

EXIT_OK, EXIT_PROBLEM = 0, 1


def _location(args: argparse.Namespace) -> str:
    log, store = args.log, args.store
    if log and store and log != store:
        raise AuditError(problem(f"LOG {log!r} and --store {store!r} differ: give one"))
    location: str | None = log or store
    if not location:
        raise AuditError(problem("name the log: LOG or --store (PATH.db, postgresql://, .jsonl)"))
    return location


def _dump(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False) + "\n")


def _verify(args: argparse.Namespace) -> int:
    checkpoint = load_checkpoint(args.checkpoint) if args.checkpoint else None
    trusted = load_public_key(args.public_key) if args.public_key else None
    if trusted is not None and checkpoint is None:
        raise AuditError(problem("--public-key checks a checkpoint: give --checkpoint too"))
    log = open_log(_location(args))
    against = open_log(args.against) if args.against else None
    try:
        verification = verify_log(log, checkpoint, trusted, against=against)
    finally:
        log.close()
        if against is not None:
            against.close()
    if args.format == "json":
        _dump(verification.to_json())
    else:
        print_verification(verification)
    print_warnings(verification, _stderr())
    return EXIT_OK if verification.ok else EXIT_PROBLEM


def _replay(args: argparse.Namespace) -> int:
    guidelines: list[Guideline] = [load_guideline(path) for path in args.guideline]
    guidelines.append(load_guideline())
    log = open_log(_location(args))
    try:
        report = replay_log(log, guidelines)
    finally:
        log.close()
    if args.format == "json":
        _dump(report.to_json())
    else:
        print_replay(report)
    return EXIT_OK if report.ok else EXIT_PROBLEM


def _show(args: argparse.Namespace) -> int:
    log = open_log(_location(args))
    try:
        if args.record is not None:
            print_record(log, args.record)
        else:
            print_log(log, args.episode)
    finally:
        log.close()
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    log = open_log(_location(args))
    try:
        if args.out is None:
            _write(log, args, sys.stdout)
        else:
            path = Path(args.out)
            partial = path.with_name(path.name + ".partial")
            try:
                with partial.open("w", encoding="utf-8", newline="\n") as out:
                    count = _write(log, args, out)
                partial.replace(path)
            except OSError as exc:
                raise AuditError(problem(f"cannot write: {exc.strerror}"), args.out) from None
            finally:
                partial.unlink(missing_ok=True)
            what = f"{args.format}, episode {args.episode}" if args.episode else args.format
            _stderr().print(f"Exported {count} records to {args.out} ({what}).")
    except UnverifiedLogError as refused:
        print_verification(refused.verification, _stderr())
        return EXIT_PROBLEM
    finally:
        log.close()
    return EXIT_OK


def _write(log: Log, args: argparse.Namespace, out: TextIO) -> int:
    if args.format == "fhir":
        return export_fhir(log, out, args.episode)
    return export_jsonl(log, out, args.episode)


def _stderr() -> Console:
    return plain_console(stderr=True, width=140)


def _import(args: argparse.Namespace) -> int:
    export = JsonlLog(args.export)
    refuse_episode_export(export)  # before the store is created
    with open_store(args.store, create=True) as store:
        try:
            count = import_jsonl(export, store)
        except UnverifiedLogError as refused:
            print_verification(refused.verification, _stderr())
            return EXIT_PROBLEM
    _stderr().print(f"Imported {count} records into {args.store} (store {export.store_id}).")
    return EXIT_OK


def _checkpoint(args: argparse.Namespace) -> int:
    key = load_private_key(args.key)
    log = open_log(_location(args))
    try:
        verification = verify_log(log)
    finally:
        log.close()
    if verification.episode is not None:
        raise AuditError(
            problem(
                f"an episode export (episode {verification.episode!r}) has no head of its own "
                "to sign: sign the full log's"
            ),
            log.location,
        )
    if not verification.ok:
        print_verification(verification, _stderr())
        _stderr().print("Refusing to sign the head of a log that does not verify.")
        return EXIT_PROBLEM
    checkpoint = sign_checkpoint(
        key,
        store_id=verification.store_id,
        seq=verification.head.seq,
        head=verification.head.hash,
        at=verification.head_at,
    )
    try:
        Path(args.out).write_text(
            json.dumps(checkpoint.to_json(), sort_keys=True, indent=2) + "\n", encoding="utf-8"
        )
    except OSError as exc:
        raise AuditError(problem(f"cannot write: {exc.strerror}"), args.out) from None
    console().print(
        f"Checkpoint of store {checkpoint.store_id} at record {checkpoint.seq} "
        f"(sha256 {checkpoint.head}) signed by key {checkpoint.key_id}: {args.out}"
    )
    return EXIT_OK


def _keygen(args: argparse.Namespace) -> int:
    public_path, public = generate_key(Path(args.out))
    console().print(
        f"Private key: {args.out} (keep it away from the store). Public key: {public_path} "
        f"(key id {key_id(public)})."
    )
    return EXIT_OK


_ACTIONS: dict[str, Callable[[argparse.Namespace], int]] = {
    "verify": _verify,
    "replay": _replay,
    "show": _show,
    "export": _export,
    "import": _import,
    "checkpoint": _checkpoint,
    "keygen": _keygen,
}


def dispatch(args: argparse.Namespace) -> int:
    return _ACTIONS[args.audit_command](args)
