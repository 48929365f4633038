"""A log for a person: one table row per record (rich), and the results of verify and replay."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..report import describe_event
from .chain import Verification, read_record
from .replay import ReplayReport
from .stores import Log

__all__ = ["console", "print_log", "print_replay", "print_verification"]

_SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}


def console() -> Console:
    out = Console(highlight=False, soft_wrap=False)
    if not out.is_terminal:  # piped or captured: a stable, readable width
        out = Console(highlight=False, soft_wrap=False, width=140)
    return out


def print_log(log: Log, episode: str | None = None, out: Console | None = None) -> int:
    """Print the records of `log` (of one episode when given); returns how many."""
    out = out or console()
    count = 0
    with log.reading() as view:
        title = f"{log.location} — store {view.store_id}" + (
            f" — episode {episode}" if episode else ""
        )
        table = Table(title=title, title_justify="left", expand=False)
        for name in ("#", "episode", "step", "time (UTC)", "event", "state", "alerts", "by"):
            table.add_column(name, no_wrap=name in ("#", "step", "time (UTC)"))
        for item in view.records(episode):
            count += 1
            record, defect = read_record(item)
            if record is None:
                table.add_row(
                    str(item.seq or "?"),
                    item.episode or "?",
                    "",
                    "",
                    Text(f"unreadable: {defect}", style="bold red"),
                    "",
                    "",
                    "",
                )
                continue
            if record.source is not None and record.source != record.target:
                state = Text(f"{record.source} -> {record.target}", style="bold green")
            else:
                state = Text(record.target)
            alerts = Text()
            for alert in record.alerts:
                if alerts:
                    alerts.append("\n")
                code = str(alert.get("code"))
                alerts.append(code, style=_SEVERITY_STYLE.get(str(alert.get("severity")), ""))
            by = record.actor or ""
            if record.reason:
                by += f" ({record.reason})"
            event = describe_event(record.event)
            if defect is not None:
                event += f"\n[{defect}]"
            table.add_row(
                str(record.seq),
                record.episode,
                str(record.step),
                record.at,
                event,
                state,
                alerts,
                by,
            )
    out.print(table)
    out.print(f"{count} records. Integrity: `iechs audit verify {log.location}`.")
    return count


def print_verification(v: Verification, out: Console | None = None) -> None:
    out = out or console()
    out.print(f"Log {v.location} — store {v.store_id}")
    if v.ok:
        out.print(
            Text(
                f"INTACT: {v.count} records; each matches its hash and links to the one before.",
                style="bold green",
            )
        )
        if v.count:
            out.print(f"Head: record {v.head.seq} ({v.head_at}), sha256 {v.head.hash}")
    else:
        for f in v.findings:
            out.print(Text(f"TAMPERED ({f.kind}): {f.message}", style="bold red"))
    if v.checkpoint is not None:
        cp = v.checkpoint
        key = (
            f"the trusted key {cp['trusted_key']}"
            if cp["trusted_key"]
            else f"the key embedded in it ({cp['key_id']}; pass --public-key to pin the signer)"
        )
        verdict = "matches" if v.ok else "checked"
        out.print(f"Checkpoint: record {cp['seq']}, signed by {key}: {verdict}.")
    elif v.ok:
        out.print(
            "No checkpoint given: a cut-off tail or a chain rewritten to its end cannot be "
            "ruled out (pass --checkpoint)."
        )


def print_replay(report: ReplayReport, out: Console | None = None, limit: int = 20) -> None:
    out = out or console()
    out.print(
        f"Replayed {report.records} records of {len(report.episodes)} episodes with "
        f"{', '.join(report.guidelines) or 'no guideline'}."
    )
    if report.ok:
        out.print(Text("SAME: every replayed decision equals the logged one.", style="bold green"))
        return
    out.print(Text(f"DIFFERENT: {len(report.differences)} decisions differ.", style="bold red"))
    for d in report.differences[:limit]:
        out.print(f"- {d.message}")
        if d.path != "$" or d.recorded is not None or d.replayed is not None:
            out.print(f"    logged:   {d.recorded!r}\n    replayed: {d.replayed!r}")
    if len(report.differences) > limit:
        out.print(f"... and {len(report.differences) - limit} more (--format json lists all).")
