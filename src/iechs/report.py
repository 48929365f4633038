"""Text rendering of a run for people: a table of steps, then the alerts (rich)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .decision import Action, Decision
from .model import Guideline

__all__ = [
    "describe_action",
    "describe_event",
    "plain_console",
    "print_run",
    "print_unverified",
    "print_validation",
    "text_console",
]

_SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}


def describe_event(ev: dict[str, Any]) -> str:
    """One line for an event in its canonical JSON form."""
    kind = ev.get("kind")
    if kind == "observation":
        return f"{ev.get('code')} {ev.get('value'):g} {ev.get('unit')}"
    if kind == "assessment":
        parts = []
        for key, label in (("crs_grade", "CRS"), ("icans_grade", "ICANS")):
            if key in ev:
                parts.append(f"{label} {ev[key]}")
        if "infection" in ev:
            parts.append(f"infection {ev['infection']}")
        if "antimicrobials" in ev:
            parts.append("antimicrobials " + ("yes" if ev["antimicrobials"] else "no"))
        return "assessment: " + ", ".join(parts)
    if kind == "finding":
        state = "present" if ev.get("present") else "absent"
        grade = f", grade {ev['grade']}" if "grade" in ev else ""
        return f"{ev.get('code')} {state}{grade}"
    if kind == "treatment":
        dose = f" {ev['dose']:g} {ev.get('unit', '')}".rstrip() if "dose" in ev else ""
        route = f" {ev['route']}" if "route" in ev else ""
        why = f" for {ev['indication']}" if "indication" in ev else ""
        return f"{ev.get('drug')}{dose}{route}{why}"
    if kind == "response":
        return f"response: {ev.get('assessment')}"
    if kind == "close":
        return f"episode closed: {ev.get('reason')}"
    if kind == "start":
        return f"infusion (patient {ev.get('patient')})"
    if kind == "advance":
        return "time passes (what is due?)"
    return str(kind)


def describe_action(a: Action) -> str:
    """One line for an action: what to do, the drug and dose, when it is due, its sources."""
    parts = [f"{a.code}: {a.text}"]
    if a.drug is not None:
        drug = a.drug
        if a.dose is not None:
            drug += f" {a.dose.min:g}-{a.dose.max:g} {a.dose.unit}"
        if a.route:
            drug += " " + "/".join(a.route)
        if a.frequency:
            drug += f" {a.frequency}"
        parts.append(f"({drug})")
    if a.due_by is not None:
        parts.append(f"due by {a.due_by.strftime('%Y-%m-%d %H:%M')}")
    if a.cite:
        parts.append(f"[{', '.join(a.cite)}]" + ("" if a.verified else " [unverified]"))
    return " ".join(parts)


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """The reader stopped reading (`iechs run x.json | head`): rich's own handling exits 1,
        which a script reads as a problem found; `iechs.cli.main` ends it as it ends every
        command whose reader is gone."""
        self.quiet = True
        raise BrokenPipeError


def plain_console(
    *, width: int | None = None, stderr: bool = False, soft_wrap: bool = False
) -> Console:
    """A console that prints text as it is: rich reads no markup (`[red]`) and no emoji codes
    (`:one:`) in what it prints, because most of it comes from the input (patient ids, drug
    names, file paths) or from the log; a style is given as `Text`. Long lines are kept whole
    (unless `soft_wrap`); a reader that stops early ends the command quietly (`_Console`)."""
    return _Console(
        highlight=False, markup=False, emoji=False, soft_wrap=soft_wrap, width=width, stderr=stderr
    )


def text_console(piped_width: int = 120) -> Console:
    """The console of iechs's text reports (`plain_console`); piped or captured, a stable,
    readable width (`piped_width`)."""
    console = plain_console()
    return console if console.is_terminal else plain_console(width=piped_width)


def print_run(title: str, decisions: list[Decision], console: Console | None = None) -> None:
    console = console or text_console()
    # What comes from the input (the title's path and patient id, the events' text) is given
    # as Text: shown as written on any console, a caller's own included (`text_console` reads
    # no markup; a console a caller passes may).
    table = Table(
        title=Text(title, style="table.title"),
        title_justify="left",
        show_lines=False,
        expand=False,
    )
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("time (UTC)", no_wrap=True)
    table.add_column("event")
    table.add_column("state")
    table.add_column("alerts")
    for d in decisions:
        if d.changed:
            state = Text(f"{d.source} -> {d.target}", style="bold green")
        else:
            state = Text(d.target, style="dim")
        alerts = Text()
        for i, a in enumerate(d.alerts):
            if i:
                alerts.append("\n")
            alerts.append(a.code, style=_SEVERITY_STYLE[a.severity])
        table.add_row(
            Text(str(d.step)),
            Text(d.at.strftime("%Y-%m-%d %H:%M")),
            Text(describe_event(d.event)),
            state,
            alerts,
        )
    console.print(table)
    all_alerts = [a for d in decisions for a in d.alerts]
    if all_alerts:
        console.print("Alerts:")
        for a in all_alerts:
            line = Text("  ")
            line.append(f"{a.severity:<8}", style=_SEVERITY_STYLE[a.severity])
            line.append(f" {a.at.strftime('%Y-%m-%d %H:%M')}  {a.code}: {a.message}")
            console.print(line)
    final = decisions[-1]
    console.print(Text.assemble("Final state: ", (final.target, "bold")))
    if final.actions:
        console.print("Next actions:")
        for i, action in enumerate(final.actions, 1):
            console.print(f"  {i}. {describe_action(action)}", markup=False)
    if final.recommendations:
        console.print("Recommendations in force:")
        for r in final.recommendations:
            flag = "" if r.verified else " [unverified]"
            console.print(f"  - {r.text} [{', '.join(r.cite)}]{flag}", markup=False)
    console.print()


def print_validation(g: Guideline, console: Console | None = None) -> None:
    console = console or text_console()
    transitions = sum(len(s.transitions) for s in g.states.values())
    recs = sum(len(s.recommendations) for s in g.states.values())
    meta = g.guideline
    console.print(
        f"{g.file}: ok — {meta.id} {meta.version} ({meta.status}), sha256 {g.sha256[:16]}…",
        markup=False,
    )
    console.print(
        f"  {len(g.states)} states, {transitions} transitions, {len(g.criteria)} "
        f"criteria, {recs} recommendations, {len(g.parameters)} parameters "
        f"({sum(p.local for p in g.parameters.values())} local)",
        markup=False,
    )
    unverified = count_unverified(g)
    console.print(
        f"  {unverified} statement(s) not yet verified against their source (verified: false)",
        markup=False,
    )


def count_unverified(g: Guideline) -> int:
    from .checks import citables  # noqa: PLC0415 - `iechs run` needs no checks

    return sum(1 for _, item in citables(g) if not item.verified)


def _statement_text(item: object) -> str:
    for field in ("text", "description", "label", "name"):
        value = getattr(item, field, None)
        if isinstance(value, str):
            return " ".join(value.split())
    return ""


def print_unverified(g: Guideline, console: Console | None = None) -> None:
    """Every statement still `verified: false`, with its place and sources."""
    console = console or text_console()
    from .checks import citables  # noqa: PLC0415 - `iechs run` needs no checks

    for path, item in citables(g):
        if not item.verified:
            console.print(
                f"  {path}: {_statement_text(item)} [{', '.join(item.cite)}]", markup=False
            )
