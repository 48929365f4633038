"""`iechs audit`: verify, replay, show, export, import and checkpoint a transition log.

Registered in `iechs.cli.EXTERNAL_COMMANDS`. This module stays light (argparse only) so that
`iechs --help` is fast; the commands themselves live in `iechs.audit.commands`.

LOG is a SQLite store (`PATH.db`), a PostgreSQL store (`postgresql://...`) or a JSON Lines
export (`.jsonl`, of the whole log or of one episode); `--store LOG` says the same. Exit codes:
0 intact / same; 1 tampering or a differing decision found; 2 bad input (an episode or record
the log does not hold included).
"""

from __future__ import annotations

import argparse
import importlib

__all__ = ["HELP", "configure", "run"]

HELP = "verify, replay, show, export and checkpoint the tamper-evident transition log"


def _log_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("log", nargs="?", metavar="LOG", help="PATH.db, postgresql://... or .jsonl")
    p.add_argument("--store", metavar="LOG", help="the same as LOG (as `iechs run --store`)")


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="audit_command", required=True, metavar="ACTION")

    p = sub.add_parser(
        "verify",
        help="check every record's hash and link, and every episode's saved snapshot against "
        "the chain; exit 1 on tampering",
    )
    _log_arguments(p)
    p.add_argument(
        "--checkpoint",
        metavar="C.json",
        help="a signed checkpoint to check against (records after its head are counted and "
        "warned about: no checkpoint covers them yet)",
    )
    p.add_argument(
        "--public-key",
        metavar="KEY.pub.pem",
        help="the signer's public key, kept apart from the store: what stops a forged "
        "checkpoint (without it, the key embedded in the checkpoint is trusted, with a warning)",
    )
    p.add_argument(
        "--against",
        metavar="LOG",
        help="an episode export: also compare it with the full log it was taken from",
    )
    p.add_argument("--format", choices=("text", "json"), default="text")

    p = sub.add_parser("replay", help="re-run the logged events; exit 1 if a decision differs")
    _log_arguments(p)
    p.add_argument(
        "--guideline",
        action="append",
        default=[],
        metavar="G.yaml",
        help="a guideline the log may name by sha256 (repeatable; the bundled one is tried too)",
    )
    p.add_argument("--format", choices=("text", "json"), default="text")

    p = sub.add_parser(
        "show", help="print the log as a readable timeline, or one record in full (--record)"
    )
    _log_arguments(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--episode", help="only this episode")
    which.add_argument(
        "--record",
        type=int,
        metavar="N",
        help="record N in full: its event, decision, each guard and the values it read",
    )

    p = sub.add_parser("export", help="write the log as JSON Lines or as FHIR R4 resources")
    _log_arguments(p)
    p.add_argument("--format", choices=("jsonl", "fhir"), default="jsonl")
    p.add_argument(
        "--episode",
        help="only this episode (JSON Lines: an episode export, which verifies on its own and "
        "against the full log, but cannot be imported)",
    )
    p.add_argument("--out", metavar="FILE", help="write here (default: standard output)")

    p = sub.add_parser(
        "import",
        help="copy a JSON Lines export into a new store (each record's write time is the "
        "import's: when this store wrote it)",
    )
    p.add_argument("export", metavar="EXPORT.jsonl")
    p.add_argument("--store", required=True, metavar="LOG", help="PATH.db or postgresql://...")

    p = sub.add_parser("checkpoint", help="sign the log's head with an Ed25519 key")
    _log_arguments(p)
    p.add_argument("--key", required=True, metavar="KEY.pem", help="private key (audit keygen)")
    p.add_argument("--out", required=True, metavar="C.json")

    p = sub.add_parser("keygen", help="write a new Ed25519 key pair (KEY.pem and KEY.pub.pem)")
    p.add_argument("--out", required=True, metavar="KEY.pem")


def run(args: argparse.Namespace) -> int:
    # Imported here, not at the top: the commands pull in the engine, rich, cryptography.
    commands = importlib.import_module("iechs.audit.commands")
    result: int = commands.dispatch(args)
    return result
