"""A log for a person: one table row per record (rich), and the results of verify and replay."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.rule import Rule
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from ..report import describe_event, text_console
from .chain import Verification, read_record
from .errors import AuditError, problem
from .export import unknown_episode
from .feedback import Feedback, feedback_of, is_feedback
from .records import RECORD_FORMAT_1, AuditRecord
from .replay import ReplayReport
from .stores import JsonlLog, Log, StoredRecord

__all__ = [
    "console",
    "print_log",
    "print_record",
    "print_replay",
    "print_verification",
    "print_warnings",
]

_SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}
_RESULT_STYLE = {"TRUE": "bold green", "FALSE": "red", "UNKNOWN": "bold yellow"}


def console() -> Console:
    """What the log holds, printed as it is (`iechs.report.text_console`, wider when piped)."""
    return text_console(piped_width=140)


def print_log(log: Log, episode: str | None = None, out: Console | None = None) -> int:
    """Print the records of `log` (of one episode when given); returns how many. An episode
    the log does not hold is an `AuditError` naming it."""
    out = out or console()
    count = 0
    with log.reading() as view:
        title = f"{log.location} — store {view.store_id}" + (
            f" — episode {episode}" if episode else ""
        )
        if view.only_episode is not None:
            title += f" — episode export of {view.only_episode} (not a whole chain)"
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
            if is_feedback(record):
                feedback = feedback_of(record)
                event = "CDS Hooks feedback: " + (
                    feedback.describe() if feedback is not None else str(record.reason)
                )
            else:
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
    if episode is not None and count == 0:
        raise AuditError(problem(unknown_episode(log, episode)), log.location)
    out.print(table)
    out.print(f"{count} records. Integrity: `iechs audit verify {log.location}`.")
    return count


def print_verification(v: Verification, out: Console | None = None) -> None:
    out = out or console()
    if v.episode is not None:
        _print_episode_verification(v, out)
        return
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
        if v.snapshots:
            out.print(
                f"Snapshots: the {v.snapshots} saved episode snapshot(s) are the ones the chain "
                "seals (or, for records of the prior format, the ones the records rebuild)."
            )
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
        matches = cp.get("matches")
        verdict = "not checked" if matches is None else "matches" if matches else "does not match"
        out.print(f"Checkpoint: record {cp['seq']}, signed by {key}: {verdict}.")
        uncovered = v.uncovered
        if uncovered:
            out.print(
                Text(
                    f"Not covered by the checkpoint: {uncovered} record(s) after its head ("
                    + (
                        f"record {v.count}"
                        if uncovered == 1
                        else f"records {cp['seq'] + 1}-{v.count}"
                    )
                    + "; see the warning).",
                    style="bold yellow",
                )
            )
        elif uncovered == 0:
            out.print("The checkpoint covers every record of the log.")
    elif v.ok:
        out.print(
            "No checkpoint given: a cut-off tail or a chain rewritten to its end cannot be "
            "ruled out (pass --checkpoint)."
        )


def print_warnings(v: Verification, out: Console) -> None:
    """The verification's warnings, one `WARNING (kind): ...` paragraph each (to standard error,
    where `iechs audit verify` prints them whatever the format)."""
    for w in v.warnings:
        out.print(Text(f"WARNING ({w.kind}): {w.message}", style="bold yellow"))


def _print_episode_verification(v: Verification, out: Console) -> None:
    out.print(
        f"Episode export {v.location} — episode {v.episode} of store {v.store_id}, taken at its "
        f"record {v.head.seq}"
    )
    if not v.ok:
        for f in v.findings:
            out.print(Text(f"TAMPERED ({f.kind}): {f.message}", style="bold red"))
        return
    steps = f"steps 0-{v.count - 1}" if v.count else "no steps"
    out.print(
        Text(
            f"INTACT: {v.count} records ({steps} of the episode, no gap); each matches its hash, "
            "and records next to each other in the chain link.",
            style="bold green",
        )
    )
    if v.against is not None:
        out.print(
            f"Against {v.against}: the log verifies, and the export holds exactly its records of "
            f"episode {v.episode} up to record {v.head.seq}, byte for byte."
        )
    else:
        out.print(
            "A partial export: its records are not a whole chain, so whether they are the "
            f"records of store {v.store_id}, and whether later steps were cut off, is not checked "
            "here (pass --against LOG, the full log)."
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


# --- one record in full ---------------------------------------------------------------------------


def print_record(log: Log, seq: int, out: Console | None = None) -> AuditRecord:
    """Print record `seq` of `log` in full: the event, the decision, every guard with the
    criteria it read (values, units, times, as stored), alerts, recommendations, actions, and
    CDS Hooks feedback as such; and when the store wrote it, marked as the unsealed metadata it
    is. A record the log does not hold is an `AuditError`."""
    out = out or console()
    with log.reading() as view:
        store_id = view.store_id
        record, item, defect = _find_record(view.records(), seq, log.location)
    if defect is not None:
        out.print(
            Text(f"THIS RECORD DOES NOT VERIFY: {defect} (`iechs audit verify`)", style="bold red")
        )
    _record_header(record, store_id, log.location, out)
    _print_write_time(item, export=isinstance(log, JsonlLog), out=out)
    feedback = is_feedback(record)
    if feedback:
        _print_feedback(record, feedback_of(record), out)
    if record.patient is not None:
        out.print(Rule("Patient (the episode's start)", align="left"))
        out.print(_fields_table(record.patient))
    _print_event(record, out, feedback=feedback)
    _print_decision(record.decision, out)
    return record


def _find_record(
    items: Iterable[StoredRecord], seq: int, location: str
) -> tuple[AuditRecord, StoredRecord, str | None]:
    """Record `seq`, as the log holds it, and what is wrong with it, if anything; `AuditError`
    when it is not there or cannot be read at all."""
    seen: list[int] = []
    for item in items:
        record, defect = read_record(item)
        number = record.seq if record is not None else item.seq
        if number is not None:
            seen.append(number)
        if number != seq:
            continue
        if record is None:
            raise AuditError(
                problem(f"record {seq} ({item.where}) is unreadable: {defect}"), location
            )
        return record, item, defect
    if not seen:
        held = "it holds no records"
    elif len(seen) == max(seen) - min(seen) + 1:
        held = f"it holds records {min(seen)}-{max(seen)}"
    else:
        held = f"it holds {len(seen)} records, from {min(seen)} to {max(seen)}"
    raise AuditError(problem(f"no record {seq} in the log; {held}"), location)


def _record_header(record: AuditRecord, store_id: str, location: str, out: Console) -> None:
    out.print(Rule(Text(f"Record {record.seq} — {location} (store {store_id})"), align="left"))
    out.print(
        f"episode {record.episode}, step {record.step}, at {record.at} (the event's time)",
        markup=False,
    )
    out.print(f"guideline {record.guideline.label}; engine {record.engine}", markup=False)
    link = "the chain's first record" if record.seq == 1 else f"record {record.seq - 1}"
    out.print(f"sha256 {record.hash}; links to {link} ({record.prev[:16]}…)")
    if record.format == RECORD_FORMAT_1:
        out.print(f"format {record.format}: no snapshot seal")
    if record.snapshot is not None:
        out.print(f"seals the episode's snapshot saved with it: sha256 {record.snapshot}")
    if (record.actor or record.reason) and not is_feedback(record):
        out.print(
            f"recorded by {record.actor or '(not named)'}: {record.reason or ''}", markup=False
        )


def _print_write_time(item: StoredRecord, *, export: bool, out: Console) -> None:
    """When the store wrote the record: metadata beside the chain, which the hashes do not
    cover (shown as such)."""
    if item.written_at is not None:
        out.print(
            Text(
                f"written {item.written_at} by the store's clock — unsealed metadata: kept beside "
                "the chain, not covered by its hashes (a checkpoint pins time); no decision reads "
                "it",
                style="dim",
            )
        )
    elif export:
        out.print(Text("write time: not in an export (the store keeps it)", style="dim"))
    else:
        out.print(
            Text("write time: none kept (written before the store kept write times)", style="dim")
        )


def _print_feedback(record: AuditRecord, feedback: Feedback | None, out: Console) -> None:
    out.print(Rule("CDS Hooks feedback", align="left"))
    if feedback is None:  # not in the service's form: as it was written
        out.print(f"by {record.actor or '(not named)'}: {record.reason}", markup=False)
    else:
        table = Table(show_header=False, box=None, pad_edge=False)
        table.add_column(style="bold")
        table.add_column()
        outcome = Text(
            feedback.outcome, style="bold yellow" if feedback.outcome == "overridden" else "green"
        )
        rows: list[tuple[str, str | Text]] = [
            ("card", feedback.card),
            ("issued by", feedback.service),
            (
                "topic",
                Text(
                    f"{feedback.topic} ({feedback.indicator})",
                    style=_SEVERITY_STYLE.get(feedback.indicator, ""),
                ),
            ),
            ("summary", feedback.summary),
            ("outcome", outcome),
            ("at", feedback.at),
            ("by", record.actor or "(not named)"),
        ]
        if feedback.accepted:
            rows.append(("accepted", ", ".join(f'"{label}"' for label in feedback.accepted)))
        if feedback.override_code is not None:
            code = f"{feedback.override_system or ''}#{feedback.override_code}"
            shown = f'"{feedback.override_display}" ({code})' if feedback.override_display else code
            rows.append(("override reason", shown))
        if feedback.comment:
            rows.append(("comment", f'"{feedback.comment}"'))
        for key, value in rows:
            table.add_row(key, value if isinstance(value, Text) else Text(value))
        out.print(table)
    out.print(
        "Recorded as the episode advanced to its last event's time: nothing clinical changes "
        "with feedback."
    )


def _value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _fields_table(fields: dict[str, Any]) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    for key in sorted(fields):
        table.add_row(key, Text(_value(fields[key])))
    return table


def _print_event(record: AuditRecord, out: Console, *, feedback: bool) -> None:
    if feedback:
        label = "the episode advanced to its last event's time, to record the feedback"
    else:
        label = describe_event(record.event)
    out.print(Rule(Text(f"Event: {label}"), align="left"))
    out.print("as the engine received it (canonical units, UTC):")
    out.print(_fields_table(record.event))
    later = record.decision.get("later")
    if later:
        out.print("known to follow it (a retrospective run's concurrency windows):")
        for event in later:
            out.print(f"  {describe_event(event)} at {event.get('at')}", markup=False)
    inferred = record.decision.get("inferred")
    if inferred:
        out.print(f"inferred: {_value(inferred)}", markup=False)


def _print_decision(decision: dict[str, Any], out: Console) -> None:
    source, target = decision.get("from"), decision.get("to")
    via = decision.get("via") or []
    if source is None:
        moved = Text(f"the episode starts in {target}", style="bold")
    elif source != target or via:
        moved = Text(" -> ".join([str(source), *via, str(target)]), style="bold green")
    else:
        moved = Text(f"stays in {target}")
    out.print(Rule("Decision", align="left"))
    out.print(moved)
    transition = decision.get("transition")
    if transition:
        cite = ", ".join(transition.get("cite", []))
        out.print(f"transition: {transition.get('label')} [{cite}]", markup=False)
    for note in decision.get("notes", []):
        out.print(f"note: {note}", markup=False)
    _print_guards(decision, out)
    _print_alerts(decision, out)
    _print_recommendations(decision, out)
    actions = decision.get("actions", [])
    if actions:
        out.print(Rule(f"Actions in force ({len(actions)})", align="left"))
        for a in actions:
            out.print(f"- {_action_text(a)}", markup=False)


def _criterion_label(name: str, verdict: dict[str, Any] | None) -> Text:
    if verdict is None:
        return Text(f"{name}: not evaluated (not needed)", style="dim")
    result = str(verdict.get("result"))
    text = Text(f"{name} ")
    text.append(result, style=_RESULT_STYLE.get(result, ""))
    text.append(f" — {verdict.get('detail', '')}")
    return text


def _reading(r: dict[str, Any]) -> str:
    text = f"read {r.get('what')} = {_value(r.get('value'))}"
    if r.get("unit") is not None:
        text += f" {r['unit']}"
    if r.get("at") is not None:
        text += f" at {r['at']}"
    return text


def _add_criterion(
    tree: Tree, name: str, criteria: dict[str, Any], shown: set[str], depth: int = 0
) -> None:
    verdict = criteria.get(name)
    if name in shown and verdict is not None and verdict.get("combines"):
        tree.add(Text(f"{name} {verdict.get('result')} (as above)", style="dim"))
        return
    branch = tree.add(_criterion_label(name, verdict))
    if verdict is None:
        return
    shown.add(name)
    for r in verdict.get("reads", []):
        branch.add(Text(_reading(r), style="cyan"))
    if verdict.get("missing"):
        branch.add(Text("missing: " + ", ".join(verdict["missing"]), style="yellow"))
    if depth < 12:  # criteria form a DAG; the depth bound only guards a damaged record
        for child in verdict.get("combines", []):
            _add_criterion(branch, child, criteria, shown, depth + 1)


def _print_guards(decision: dict[str, Any], out: Console) -> None:
    guards = decision.get("guards", [])
    criteria: dict[str, Any] = decision.get("criteria", {})
    shown: set[str] = set()
    out.print(Rule(f"Guards evaluated ({len(guards)})", align="left"))
    if not guards:
        out.print("none: no transition of the machine event was tried at this step")
    for g in guards:
        result = str(g.get("result"))
        head = Text(f"{g.get('transition')} on {g.get('event')}: ")
        head.append(result, style=_RESULT_STYLE.get(result, ""))
        head.append(f" — {g.get('label')}")
        tree = Tree(head)
        for key, title in (("when", "when (all must be TRUE)"), ("unless", "unless (any TRUE)")):
            names = g.get(key, [])
            if names:
                part = tree.add(Text(title, style="bold"))
                for name in names:
                    _add_criterion(part, name, criteria, shown)
        out.print(tree)
    rest = sorted(set(criteria) - shown)
    if rest:
        out.print(
            Rule(
                f"Other criteria evaluated ({len(rest)}: for rules, actions, alerts)", align="left"
            )
        )
        table = Table(expand=False)
        for column in ("criterion", "result", "detail", "values read"):
            table.add_column(column)
        for name in rest:
            verdict = criteria[name]
            result = str(verdict.get("result"))
            reads = [_reading(r).removeprefix("read ") for r in verdict.get("reads", [])]
            if verdict.get("missing"):
                reads.append("missing: " + ", ".join(verdict["missing"]))
            table.add_row(
                name,
                Text(result, style=_RESULT_STYLE.get(result, "")),
                Text(str(verdict.get("detail", ""))),
                Text("\n".join(reads)),
            )
        out.print(table)


def _print_alerts(decision: dict[str, Any], out: Console) -> None:
    alerts = decision.get("alerts", [])
    deviations = decision.get("deviations", [])
    if alerts:
        out.print(Rule(f"Alerts ({len(alerts)})", align="left"))
        for a in alerts:
            line = Text("- ")
            line.append(str(a.get("code")), style=_SEVERITY_STYLE.get(str(a.get("severity")), ""))
            line.append(f" ({a.get('severity')}, {a.get('at')}): {a.get('message')}")
            if a.get("measure"):
                line.append(f" — measure: {', '.join(a['measure'])}")
            if a.get("cite"):
                line.append(f" [{', '.join(a['cite'])}]")
            out.print(line)
    if deviations:
        out.print(Rule(f"Deviations ({len(deviations)})", align="left"))
        for d in deviations:
            out.print(
                f"- {d.get('drug')} ({d.get('drug_class')}): {d.get('reason')} "
                f"(alert {d.get('alert')})",
                markup=False,
            )


def _dose_text(item: dict[str, Any]) -> str:
    parts = []
    if item.get("drug"):
        parts.append(str(item["drug"]))
    dose = item.get("dose")
    if dose:
        parts.append(f"{dose.get('min'):g}-{dose.get('max'):g} {dose.get('unit')}")
    if item.get("route"):
        parts.append("/".join(item["route"]))
    if item.get("frequency"):
        parts.append(str(item["frequency"]))
    return " ".join(parts)


def _sources(item: dict[str, Any]) -> str:
    cite = ", ".join(item.get("cite", []))
    return f"[{cite}]" + ("" if item.get("verified") else " [unverified]")


def _action_text(a: dict[str, Any]) -> str:
    text = f"{a.get('code')}: {a.get('text')}"
    drug = _dose_text(a)
    if drug:
        text += f" ({drug})"
    if a.get("due_by"):
        text += f" due by {a['due_by']}"
    return f"{text} {_sources(a)}"


def _print_recommendations(decision: dict[str, Any], out: Console) -> None:
    recommendations = decision.get("recommendations", [])
    if not recommendations:
        return
    out.print(Rule(f"Recommendations ({len(recommendations)})", align="left"))
    for r in recommendations:
        drug = _dose_text(r)
        text = f"- {r.get('id')}: {r.get('text')}" + (f" ({drug})" if drug else "")
        out.print(f"{text} {_sources(r)}", markup=False)
