"""`iechs compare`: what a guideline edit changes for a cohort of patients.

Both guidelines (a file, or a git revision of one: `HEAD~1:guideline/iec-hs.yaml`) are run over
every timeline of the cohort (a folder of `.json` files in name order, or a `.jsonl` file; native
or FHIR Bundle). Each timeline is parsed once per guideline, since units and codes may differ.
A patient's course *changes* when some step's decision differs in `to`, `via`, `alerts`,
`deviations` or `actions` (the decision JSON of `iechs run`; the guideline's identity is never
compared). For each such patient the report gives:

- `path` and `final_state` before and after (`iechs.outcomes.summarise`);
- alerts, actions and deviations added and removed, compared as multisets by identity:
  an alert is `(code, at)`; a deviation is `(code, drug, at)`, its code being its alert's; an
  action is `(code, drug, at)`, `at` being the first step of a run of consecutive steps that ask
  for it (as `iechs.outcomes` counts drug actions, extended to actions without a drug). The
  same path entered at other times is kind `timing`; a course whose only change is in wording,
  dose, due time, order or what to measure (same identities) is kind `details`;
- the first divergence: the first step whose decision differs, with on each side the state it
  went to, the transition taken, every guard evaluated there (with its result), the alerts,
  deviations and actions, and the criteria whose value (TRUE, FALSE, UNKNOWN) differs there
  (null on a side that did not evaluate it).

A timeline that parses under one guideline and not the other is a change of kind `input`. One
that is bad under both is bad input: the command exits 2 naming every such item (file or
`file.jsonl:line`) and the JSON path, and reports nothing else.
"""

# ruff: noqa: PLC0415
# (a command module imports its heavy modules inside functions, so `iechs --help` stays fast)

from __future__ import annotations

import argparse
import html
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .decision import Decision
    from .engine import Engine, Episode
    from .errors import Problem
    from .timeline import Timeline

__all__ = [
    "COMPARED",
    "COMPARE_FORMAT",
    "HELP",
    "KINDS",
    "action_runs",
    "compare_cohort",
    "compare_course",
    "configure",
    "divergence",
    "print_text",
    "render_html",
    "report",
    "run",
]

HELP = "what a guideline edit changes for a cohort: paths, alerts, actions, deviations"

#: the `format` of the JSON report; bumped when a field changes meaning.
COMPARE_FORMAT = "iechs.compare/1"

#: Kinds of change, in the order reports list them.
KINDS = (
    "input",
    "path",
    "final_state",
    "timing",
    "alerts_added",
    "alerts_removed",
    "actions_added",
    "actions_removed",
    "deviations_added",
    "deviations_removed",
    "details",
)

#: The parts of a step's decision JSON whose difference is a change of course.
COMPARED = ("to", "via", "alerts", "deviations", "actions")

SIDES = ("baseline", "guideline")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cohort", help="a folder of timeline .json files, or a .jsonl file")
    parser.add_argument(
        "--baseline",
        required=True,
        metavar="OLD",
        help="the guideline before the edit: a file, or a git revision REV:PATH",
    )
    parser.add_argument(
        "--guideline",
        metavar="NEW",
        help="the guideline after the edit: a file or REV:PATH (default: bundled iec-hs.yaml)",
    )
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument("--html", metavar="FILE", help="also write an offline HTML page")


# --- the comparison (pure: decisions in, JSON out) --------------------------------------------


def _key(item: dict[str, Any]) -> tuple[str, str, str]:
    return (item["at"], item["code"], item.get("drug") or "")


def _multiset_diff(
    before: Iterable[dict[str, Any]], after: Iterable[dict[str, Any]]
) -> dict[str, list[dict[str, Any]]]:
    """`added` and `removed` items of two multisets of identity dicts, in time order."""

    def frozen(items: Iterable[dict[str, Any]]) -> Counter[tuple[tuple[str, Any], ...]]:
        return Counter(tuple(sorted(item.items())) for item in items)

    old, new = frozen(before), frozen(after)
    added = [dict(k) for k in (new - old).elements()]
    removed = [dict(k) for k in (old - new).elements()]
    return {"added": sorted(added, key=_key), "removed": sorted(removed, key=_key)}


def action_runs(steps: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each run of an action `(code, drug)` over consecutive steps: `{code, at[, drug]}`, `at`
    being the time of the step that first asks for it."""
    runs: list[dict[str, Any]] = []
    open_keys: set[tuple[str, str | None]] = set()
    for step in steps:
        asked = {(a["code"], a.get("drug")) for a in step["actions"]}
        for code, drug in sorted(asked - open_keys, key=lambda k: (k[0], k[1] or "")):
            run = {"code": code, "at": step["at"]}
            if drug is not None:
                run["drug"] = drug
            runs.append(run)
        open_keys = asked
    return runs


def _projection(step: dict[str, Any]) -> dict[str, Any]:
    return {key: step.get(key, []) for key in COMPARED}


def _side_of_step(step: dict[str, Any]) -> dict[str, Any]:
    transition = step.get("transition")
    return {
        "from": step["from"],
        "to": step["to"],
        "via": step.get("via", []),
        "transition": None if transition is None else transition["label"],
        "guards": step["guards"],
        "alerts": [a["code"] for a in step["alerts"]],
        "deviations": [f"{d['alert']} ({d['drug']})" for d in step["deviations"]],
        "actions": [_action_text(a) for a in step["actions"]],
    }


def _action_text(action: dict[str, Any]) -> str:
    """`add_anakinra anakinra`, `reassess (due 2026-01-12T20:00:00Z)`."""
    text = str(action["code"]) + (f" {action['drug']}" if "drug" in action else "")
    return text + (f" (due {action['due_by']})" if "due_by" in action else "")


def divergence(
    before: Sequence[dict[str, Any]],
    after: Sequence[dict[str, Any]],
    positions: Sequence[int] = (),
) -> dict[str, Any] | None:
    """The first step whose decision differs in `COMPARED`, both sides of it, and the criteria
    whose value differs there; None when the two runs decide alike at every step.
    `positions[i]` is where the event of step i+1 stands in the input (`$.events[k]`)."""
    for i in range(max(len(before), len(after))):
        b = before[i] if i < len(before) else None
        a = after[i] if i < len(after) else None
        if b is not None and a is not None and _projection(b) == _projection(a):
            continue
        shown = b if b is not None else a
        assert shown is not None
        out: dict[str, Any] = {
            "step": i,
            "at": shown["at"],
            "event": shown["event"],
            "event_path": (
                None if i == 0 or i > len(positions) else f"$.events[{positions[i - 1]}]"
            ),
            "differs": [
                key
                for key in COMPARED
                if b is None or a is None or b.get(key, []) != a.get(key, [])
            ],
        }
        for name, step in zip(SIDES, (b, a), strict=True):
            side = None if step is None else _side_of_step(step)
            if side is not None and step is not None and step["event"] != shown["event"]:
                side["event"] = step["event"]
            out[name] = side
        criteria: dict[str, Any] = {}
        old = b["criteria"] if b is not None else {}
        new = a["criteria"] if a is not None else {}
        for crit in sorted(set(old) | set(new)):
            values = [c.get(crit) for c in (old, new)]
            results = [v["result"] if v is not None else None for v in values]
            if results[0] != results[1]:
                criteria[crit] = {
                    side: None if v is None else {"result": v["result"], "detail": v["detail"]}
                    for side, v in zip(SIDES, values, strict=True)
                }
        out["criteria"] = criteria
        return out
    return None


def compare_course(
    source: str,
    patient: str,
    before: Sequence[Decision],
    after: Sequence[Decision],
    positions: Sequence[int] = (),
) -> dict[str, Any] | None:
    """The change of one patient's course between two runs, or None when it does not change."""
    from .outcomes import summarise

    steps_b = [d.to_json() for d in before]
    steps_a = [d.to_json() for d in after]
    first = divergence(steps_b, steps_a, positions)
    if first is None:
        return None
    sb, sa = summarise(source, patient, before), summarise(source, patient, after)
    alerts = _multiset_diff(sb["alerts"], sa["alerts"])
    actions = _multiset_diff(action_runs(steps_b), action_runs(steps_a))
    deviations = _multiset_diff(sb["deviation_events"], sa["deviation_events"])
    kinds = []
    if sb["path"] != sa["path"]:
        kinds.append("path")
    if sb["final_state"] != sa["final_state"]:
        kinds.append("final_state")
    if sb["path"] == sa["path"] and sb["entered"] != sa["entered"]:
        kinds.append("timing")
    for name, diff in (("alerts", alerts), ("actions", actions), ("deviations", deviations)):
        kinds.extend(f"{name}_{how}" for how in ("added", "removed") if diff[how])
    if not kinds:
        kinds.append("details")
    return {
        "source": source,
        "patient": patient,
        "kinds": kinds,
        "path": {"baseline": sb["path"], "guideline": sa["path"]},
        "final_state": {"baseline": sb["final_state"], "guideline": sa["final_state"]},
        "entered": {"baseline": sb["entered"], "guideline": sa["entered"]},
        "alerts": alerts,
        "actions": actions,
        "deviations": deviations,
        "divergence": first,
    }


def _input_change(source: str, patient: str, errors: Sequence[str | None]) -> dict[str, Any]:
    return {
        "source": source,
        "patient": patient,
        "kinds": ["input"],
        "input": {
            side: {"ok": error is None, "error": error}
            for side, error in zip(SIDES, errors, strict=True)
        },
    }


def _place(problem: Problem, key: str, where: str) -> Problem:
    """A problem of cohort item `key`, named by `where` (the file, or `file.jsonl:line`)."""
    import attrs

    file = where if problem.file in (None, key) else problem.file
    return attrs.evolve(problem, file=file)


def compare_cohort(
    items: Iterable[tuple[str, str]],
    engines: tuple[Engine, Engine],
    where: Callable[[str], str] = str,
) -> tuple[int, list[dict[str, Any]]]:
    """(number of patients, changes) of running both engines over the cohort `items` (key,
    JSON text). An item bad under both guidelines raises one `IechsError` naming all such
    items, each by `where(key)`, with the place in it."""
    from .cohort import timeline_of
    from .errors import IechsError

    count = 0
    changes: list[dict[str, Any]] = []
    bad: list[Problem] = []
    for key, text in items:
        count += 1
        runs: list[tuple[Timeline, Episode] | None] = []
        errors: list[IechsError | None] = []
        for engine in engines:
            try:
                timeline = timeline_of(key, text, engine.guideline)
                runs.append((timeline, engine.run(timeline)))
                errors.append(None)
            except IechsError as exc:
                runs.append(None)
                errors.append(exc)
        old, new = runs
        if old is None and new is None:
            seen: list[Problem] = []
            for error in errors:
                assert error is not None
                seen.extend(p for p in error.problems if p not in seen)
            bad.extend(_place(p, key, where(key)) for p in seen)
        elif old is None or new is None:
            parsed = old if old is not None else new
            assert parsed is not None
            patient = parsed[0].patient.id
            rendered = [None if e is None else e.render() for e in errors]
            changes.append(_input_change(key, patient, rendered))
        else:
            (timeline, before), (_, after) = old, new
            change = compare_course(
                key, timeline.patient.id, before.decisions, after.decisions, timeline.positions
            )
            if change is not None:
                changes.append(change)
    if bad:
        raise IechsError(bad)
    return count, changes


def report(
    identities: tuple[dict[str, str], dict[str, str]], count: int, changes: list[dict[str, Any]]
) -> dict[str, Any]:
    """The `iechs.compare/1` document."""
    summary = dict.fromkeys(KINDS, 0)
    for change in changes:
        for kind in change["kinds"]:
            summary[kind] += 1
    return {
        "format": COMPARE_FORMAT,
        "baseline": identities[0],
        "guideline": identities[1],
        "patients": count,
        "changed": len(changes),
        "summary": summary,
        "changes": changes,
    }


# --- rendering ------------------------------------------------------------------------------


def _identity_line(ident: dict[str, str]) -> str:
    return f"{ident['id']} {ident['version']} (sha256 {ident['sha256'][:12]}) — {ident['spec']}"


def _item_line(item: dict[str, Any]) -> str:
    drug = f" {item['drug']}" if "drug" in item else ""
    return f"{item['at']}  {item['code']}{drug}"


def _guard_line(guard: dict[str, Any]) -> str:
    return f"{guard['transition']} [{guard['event']}] {guard['result']}: {guard['label']}"


def _describe(event: dict[str, Any]) -> str:
    from .report import describe_event

    try:
        return describe_event(event)
    except (TypeError, ValueError):  # a describer that does not know this event's shape
        return str(event.get("kind"))


def _details(change: dict[str, Any]) -> Iterator[str]:
    """The lines describing one patient's change, in plain text (shared by text and HTML)."""
    if "input" in change:
        for side in SIDES:
            state = change["input"][side]
            yield f"{side}: " + ("read and run" if state["ok"] else f"bad input: {state['error']}")
        return
    path = change["path"]
    yield "path before: " + " -> ".join(path["baseline"])
    yield "path after:  " + " -> ".join(path["guideline"])
    for name in ("alerts", "actions", "deviations"):
        for how, sign in (("added", "+"), ("removed", "-")):
            for item in change[name][how]:
                yield f"{name} {how}: {sign} {_item_line(item)}"
    first = change["divergence"]
    where = f", {first['event_path']}" if first["event_path"] else ""
    yield (
        f"first divergence: step {first['step']} at {first['at']}{where} "
        f"({_describe(first['event'])}); differs in {', '.join(first['differs'])}"
    )
    for side in SIDES:
        step = first[side]
        if step is None:
            yield f"  {side}: no such step"
            continue
        via = "".join(f"{s} -> " for s in step["via"])
        taken = f" by '{step['transition']}'" if step["transition"] else ""
        yield f"  {side}: {step['from']} -> {via}{step['to']}{taken}"
        for guard in step["guards"]:
            yield f"    guard {_guard_line(guard)}"
        for key in ("alerts", "deviations", "actions"):
            if step[key]:
                yield f"    {key}: {', '.join(step[key])}"
    for name, values in first["criteria"].items():
        shown = [
            "not evaluated" if v is None else f"{v['result']} ({v['detail']})"
            for v in (values["baseline"], values["guideline"])
        ]
        yield f"  criterion {name}: {shown[0]} -> {shown[1]}"


def _before_after(values: dict[str, Any] | None) -> str:
    if values is None:
        return ""
    before, after = values["baseline"], values["guideline"]
    return str(before) if before == after else f"{before} -> {after}"


def print_text(doc: dict[str, Any]) -> None:
    """The report for people: the two guidelines, a table of changed patients, then each
    change in a few lines (long lines are not wrapped, so they can be searched)."""
    from rich.table import Table

    from .report import text_console

    console = text_console()
    console.print(f"baseline:  {_identity_line(doc['baseline'])}", markup=False, soft_wrap=True)
    console.print(f"guideline: {_identity_line(doc['guideline'])}", markup=False, soft_wrap=True)
    console.print(f"{doc['patients']} patients, {doc['changed']} with a changed course")
    if not doc["changes"]:
        return
    counts = ", ".join(f"{k} {n}" for k, n in doc["summary"].items() if n)
    console.print(f"changes by kind: {counts}", markup=False)
    table = Table(expand=False)
    table.add_column("source", no_wrap=True)
    table.add_column("patient", no_wrap=True)
    table.add_column("kinds")
    table.add_column("final state")
    table.add_column("diverges at step", justify="right", no_wrap=True)
    for change in doc["changes"]:
        first = change.get("divergence")
        final = change.get("final_state")
        table.add_row(
            change["source"],
            change["patient"],
            "\n".join(change["kinds"]),
            _before_after(final),
            "" if first is None else str(first["step"]),
        )
    console.print(table)
    for change in doc["changes"]:
        console.print()
        console.print(f"{change['source']} — patient {change['patient']}", markup=False)
        for line in _details(change):
            console.print(f"  {line}", markup=False, soft_wrap=True)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 70em; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #eee; }
section { border-top: 2px solid #888; margin-top: 1.5em; }
.added { color: #1a7f37; } .removed { color: #b42318; }
code, pre { font-family: ui-monospace, monospace; font-size: 0.92em; }
pre { background: #f6f6f6; padding: 0.6em; white-space: pre-wrap; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _html_divergence(first: dict[str, Any]) -> list[str]:
    """The first divergence as a table, baseline and guideline side by side."""
    where = f", {first['event_path']}" if first["event_path"] else ""
    out = [
        f"<p>First divergence: step {_e(first['step'])} at {_e(first['at'])}{_e(where)} "
        f"({_e(_describe(first['event']))}); differs in {_e(', '.join(first['differs']))}.</p>",
        "<table><tr><th></th><th>baseline</th><th>guideline</th></tr>",
    ]
    sides = [first[side] for side in SIDES]

    def row(label: str, cell: Callable[[dict[str, Any]], list[str]]) -> None:
        cells = "".join(
            "<td>no such step</td>"
            if side is None
            else "<td>" + "<br>".join(_e(line) for line in cell(side)) + "</td>"
            for side in sides
        )
        out.append(f"<tr><th>{_e(label)}</th>{cells}</tr>")

    def state(s: dict[str, Any]) -> list[str]:
        return [" → ".join([s["from"] or "(start)", *s["via"], s["to"]])]

    row("state", state)
    row("transition taken", lambda s: [s["transition"] or "none"])
    row("guards", lambda s: [_guard_line(g) for g in s["guards"]])
    row("alerts", lambda s: list(s["alerts"]))
    row("deviations", lambda s: list(s["deviations"]))
    row("actions", lambda s: list(s["actions"]))
    out.append("</table>")
    if first["criteria"]:
        out.append("<table><tr><th>criterion</th><th>baseline</th><th>guideline</th></tr>")
        for name, values in first["criteria"].items():
            cells = "".join(
                "<td>not evaluated</td>"
                if v is None
                else f"<td><b>{_e(v['result'])}</b> {_e(v['detail'])}</td>"
                for v in (values["baseline"], values["guideline"])
            )
            out.append(f"<tr><td>{_e(name)}</td>{cells}</tr>")
        out.append("</table>")
    return out


def _html_change(change: dict[str, Any]) -> list[str]:
    out = [
        "<section>",
        f"<h2>{_e(change['patient'])} <small>({_e(change['source'])})</small></h2>",
        f"<p>Kinds of change: {_e(', '.join(change['kinds']))}</p>",
    ]
    if "input" in change:
        out.append("<ul>")
        for side in SIDES:
            state = change["input"][side]
            text = "read and run" if state["ok"] else f"bad input: {state['error']}"
            out.append(f"<li>{_e(side)}: {_e(text)}</li>")
        out.append("</ul></section>")
        return out
    out.append("<table>")
    for side in SIDES:
        path = " → ".join(change["path"][side])
        out.append(f"<tr><th>{_e(side)} path</th><td>{_e(path)}</td></tr>")
    out.append("</table>")
    for name in ("alerts", "actions", "deviations"):
        for how, sign in (("added", "+"), ("removed", "−")):
            items = change[name][how]
            if items:
                lis = "".join(f"<li>{_e(sign)} {_e(_item_line(i))}</li>" for i in items)
                out.append(
                    f'<p class="{how}">{_e(name)} {_e(how)}:</p><ul class="{how}">{lis}</ul>'
                )
    out.extend(_html_divergence(change["divergence"]))
    out.append("</section>")
    return out


def render_html(doc: dict[str, Any]) -> str:
    """A self-contained page (no scripts, no links, no external resources); every text from
    the guidelines and the cohort is escaped."""
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>iechs compare</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>What the guideline edit changes</h1>",
        "<table><tr><th></th><th>id</th><th>version</th><th>sha256</th><th>given as</th></tr>",
    ]
    for side in SIDES:
        ident = doc[side]
        cells = "".join(f"<td>{_e(ident[k])}</td>" for k in ("id", "version", "sha256", "spec"))
        out.append(f"<tr><th>{_e(side)}</th>{cells}</tr>")
    out.append("</table>")
    out.append(
        f"<p>{_e(doc['patients'])} patients, {_e(doc['changed'])} with a changed course.</p>"
    )
    out.append("<table><tr><th>kind of change</th><th>patients</th></tr>")
    out.extend(
        f"<tr><td>{_e(kind)}</td><td>{_e(n)}</td></tr>" for kind, n in doc["summary"].items()
    )
    out.append("</table>")
    for change in doc["changes"]:
        out.extend(_html_change(change))
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# --- the command ----------------------------------------------------------------------------


def _load(spec: str | None, stack: ExitStack) -> tuple[Engine, dict[str, str]]:
    """The engine of the guideline `spec` names (a file, a git revision `REV:PATH`, or None
    for the bundled guideline) and its identity, with `spec` as given."""
    import tempfile

    from .engine import Engine
    from .loader import DEFAULT_GUIDELINE, load_guideline
    from .revisions import guideline_at

    if spec is None:
        engine = Engine(load_guideline())
        return engine, {**engine.identity, "spec": f"guideline/{DEFAULT_GUIDELINE}"}
    workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="iechs-compare-"))
    path = stack.enter_context(guideline_at(spec, Path(workdir)))
    engine = Engine(load_guideline(path, shown=spec))
    return engine, {**engine.identity, "spec": spec}


def _where(source: Path) -> Any:
    """How messages name a cohort item: the file in the folder, or `file.jsonl:line`."""
    if source.is_dir():
        return lambda key: str(source / key)
    return lambda key: str(source.with_name(key))


def run(args: argparse.Namespace) -> int:
    from .cohort import iter_cohort
    from .errors import IechsError, Problem

    source = Path(args.cohort)
    if not source.exists():
        raise IechsError([Problem("no such file or folder")], str(source))
    with ExitStack() as stack:
        # A revision is written out to a temporary folder, removed once it is loaded.
        old = _load(args.baseline, stack)
        new = _load(args.guideline, stack)
    try:
        count, changes = compare_cohort(iter_cohort(source), (old[0], new[0]), _where(source))
    except OSError as exc:
        raise IechsError([Problem(f"cannot read: {exc.strerror}")], str(source)) from None
    except UnicodeDecodeError as exc:
        raise IechsError([Problem(f"not UTF-8 text ({exc.reason})")], str(source)) from None
    if count == 0:
        raise IechsError([Problem("the cohort holds no timeline")], str(source))
    doc = report((old[1], new[1]), count, changes)
    if args.html:
        try:
            Path(args.html).write_text(render_html(doc), encoding="utf-8")
        except OSError as exc:
            raise IechsError([Problem(f"cannot write: {exc.strerror}")], args.html) from None
    if args.format == "json":
        sys.stdout.write(json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False) + "\n")
    else:
        print_text(doc)
    return 0
