"""What changed between two guideline versions or profiles, in the guideline's own terms.

Not a text diff: states, the order of treatment lines, transitions, guards, thresholds (criteria,
institutional parameters and how long a finding stays valid), doses, recommendations, cautions
and other statements, actions, rules (alerts and deviations), indication rules, the order-set
sequence, citations, `verified` flags and quotes, and the safety contract the guideline names,
added, removed or changed. Transitions are matched by (source, event, target), so a reordered
list is not a change; recommendations by id, actions and rules by their id, statements by their
text. Indication rules are read in order (the first that matches wins), so they are matched by
what they match and give, and a new order of the same rules is a change.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import attrs

from ..model import ActionDef, Citable, Guideline, IndicationRule, Rule, StateDef, TransitionDef
from .describe import (
    action_due,
    concurrency,
    criterion_rule,
    finding_validity,
    indication_match,
    message_text,
    number,
    rule_trigger,
)
from .extract import dose_text

__all__ = ["CATEGORIES", "Change", "diff_guidelines", "diff_to_json", "diff_to_text"]

ChangeKind = Literal["added", "removed", "changed"]
#: Every category a change can have, in the order a report lists them.
CATEGORIES = (
    "metadata",
    "contract",
    "state",
    "line_order",
    "transition",
    "guard",
    "recommendation",
    "dose",
    "statement",
    "action",
    "rule",
    "indication",
    "order_set",
    "criterion",
    "threshold",
    "parameter",
    "citation",
    "verified",
    "quote",
    "source",
    "vocabulary",
    "property",
)
_SIGN = {"added": "+", "removed": "-", "changed": "~"}


@dataclass(frozen=True)
class Change:
    category: str
    change: ChangeKind
    #: where, in words a guideline author reads: `transition suspected --give_anakinra-->
    #: second_line_anakinra`, `recommendation anakinra-adult in second_line_anakinra`.
    where: str
    before: Any = None
    after: Any = None

    def to_json(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "change": self.change,
            "where": self.where,
            "before": self.before,
            "after": self.after,
        }

    def text(self) -> str:
        head = f"{_SIGN[self.change]} {self.category}: {self.where}"
        if self.change == "changed":
            return f"{head}: {_show(self.before)} -> {_show(self.after)}"
        value = self.after if self.change == "added" else self.before
        return head if value is None else f"{head}: {_show(value)}"


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return "[" + ", ".join(value) + "]"
    if isinstance(value, dict) and set(value) <= {"when", "unless"}:  # a guard
        words = " and ".join(value.get("when", ())) or "always"
        unless = value.get("unless")
        return f"{words} unless {' or '.join(unless)}" if unless else words
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


class _Diff:
    def __init__(self) -> None:
        self.changes: list[Change] = []

    def add(
        self, category: str, change: ChangeKind, where: str, before: Any = None, after: Any = None
    ) -> None:
        self.changes.append(Change(category, change, where, before, after))

    def value(self, category: str, where: str, before: Any, after: Any) -> None:
        if before != after:
            self.add(category, "changed", where, before, after)

    def cited(self, where: str, old: Citable, new: Citable) -> None:
        self.value("citation", where, list(old.cite), list(new.cite))
        self.value("verified", where, old.verified, new.verified)
        self.value("quote", where, _quote(old.quote), _quote(new.quote))

    def keyed(
        self,
        category: str,
        old: Mapping[str, Any],
        new: Mapping[str, Any],
        where: str,
        summary: Any,
    ) -> list[str]:
        """Report added and removed keys; return the keys both have."""
        for key in old:
            if key not in new:
                self.add(category, "removed", where.format(key), before=summary(old[key]))
        for key in new:
            if key not in old:
                self.add(category, "added", where.format(key), after=summary(new[key]))
        return [key for key in old if key in new]


def _transitions(s: StateDef, sid: str) -> dict[str, TransitionDef]:
    out: dict[str, TransitionDef] = {}
    for t in s.transitions:
        key = f"{sid} --{t.event}--> {t.to}"
        n = 2
        while key in out:  # the same move twice, with different guards
            key = f"{sid} --{t.event}--> {t.to} #{n}"
            n += 1
        out[key] = t
    return out


def _guard(t: TransitionDef | Rule | ActionDef) -> dict[str, list[str]]:
    out = {"when": list(t.when)}
    if t.unless:
        out["unless"] = list(t.unless)
    return out


def _quote(quote: str | None) -> str | None:
    """A quote with its line breaks and runs of spaces collapsed (YAML folding is no change)."""
    return " ".join(quote.split()) if quote is not None else None


def _plain(value: Any) -> Any:
    """JSON-friendly: tuples as lists, `None` entries of mappings dropped."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _fields(obj: Any, skip: Iterable[str] = ()) -> dict[str, Any]:
    """An attrs object's own values, JSON-friendly, without citation fields and `skip`."""
    drop = {"cite", "verified", *skip}
    values = _plain(attrs.asdict(obj, recurse=True))
    return {k: v for k, v in values.items() if k not in drop}


def _state(d: _Diff, g_old: Guideline, g_new: Guideline, sid: str) -> None:
    old, new = g_old.states[sid], g_new.states[sid]
    for field in ("name", "phase", "line", "initial", "final", "description"):
        d.value("state", f"state {sid} {field}", getattr(old, field), getattr(new, field))
    recs_old = {r.id: r for r in old.recommendations}
    recs_new = {r.id: r for r in new.recommendations}
    where = "recommendation {} in " + sid
    for rid in d.keyed("recommendation", recs_old, recs_new, where, lambda r: r.text):
        ro, rn = recs_old[rid], recs_new[rid]
        here = where.format(rid)
        for field in ("text", "drug", "route", "frequency", "population"):
            before, after = getattr(ro, field), getattr(rn, field)
            d.value("recommendation", f"{here} {field}", _json(before), _json(after))
        d.value("dose", here, dose_text(g_old, ro), dose_text(g_new, rn))
        d.cited(here, ro, rn)
    for field in ("supportive_care", "monitoring", "cautions"):
        items_old = {s.text: s for s in getattr(old, field)}
        items_new = {s.text: s for s in getattr(new, field)}
        where = f"{field.replace('_', ' ')} in {sid}: " + "{}"
        for text in d.keyed("statement", items_old, items_new, where, lambda _: None):
            d.cited(where.format(text), items_old[text], items_new[text])
    ts_old, ts_new = _transitions(old, sid), _transitions(new, sid)
    for key in d.keyed("transition", ts_old, ts_new, "transition {}", lambda t: t.label):
        to, tn = ts_old[key], ts_new[key]
        here = f"transition {key}"
        d.value("guard", here, _guard(to), _guard(tn))
        d.value("transition", f"{here} label", to.label, tn.label)
        d.value("transition", f"{here} note", to.note, tn.note)
        d.cited(here, to, tn)


def _json(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _lines(d: _Diff, old: Guideline, new: Guideline) -> None:
    """The lines one of which must come before each line (declared, or the line before)."""
    for sid in old.states:
        if sid in new.states:
            before, after = old.line_after(sid), new.line_after(sid)
            d.value("line_order", f"line {sid} comes after", list(before), list(after))


def _rules(d: _Diff, old: Guideline, new: Guideline) -> None:
    where = "rule {}"
    for key in d.keyed("rule", old.rules, new.rules, where, _rule_summary):
        ro, rn = old.rules[key], new.rules[key]
        here = where.format(key)
        for field in ("alert", "severity", "deviation"):
            d.value("rule", f"{here} {field}", getattr(ro, field), getattr(rn, field))
        d.value("rule", f"{here} message", message_text(ro.message), message_text(rn.message))
        d.value("rule", f"{here} trigger", rule_trigger(ro), rule_trigger(rn))
        d.value("rule", f"{here} criteria", _guard(ro), _guard(rn))
        d.value("rule", f"{here} concurrency", concurrency(ro), concurrency(rn))
        d.cited(here, ro, rn)


def _rule_summary(r: Rule) -> str:
    return f"alert {r.alert} ({r.severity}), {rule_trigger(r)}"


def _indication_key(r: IndicationRule) -> str:
    return f"{r.indication} if {indication_match(r)}"


def _indications(d: _Diff, old: Guideline, new: Guideline) -> None:
    """Indication rules by what they match and give; their order is a change of its own."""
    o, n = _numbered(old.indications), _numbered(new.indications)
    where = "indication rule {}"
    pos_o = {key: i for i, key in enumerate(o, 1)}
    pos_n = {key: i for i, key in enumerate(n, 1)}
    for key in o:
        if key not in n:
            before = f"rule {pos_o[key]}: {o[key].reason}"
            d.add("indication", "removed", where.format(key), before=before)
    for key in n:
        if key not in o:
            after = f"rule {pos_n[key]}: {n[key].reason}"
            d.add("indication", "added", where.format(key), after=after)
    common = [key for key in o if key in n]
    for key in common:
        here = where.format(key)
        d.value("indication", f"{here} reason", o[key].reason, n[key].reason)
        d.cited(here, o[key], n[key])
    # the same rules in another order: another one may match first
    d.value("indication", "indication rules order", common, [key for key in n if key in o])


def _numbered(rules: tuple[IndicationRule, ...]) -> dict[str, IndicationRule]:
    out: dict[str, IndicationRule] = {}
    for r in rules:
        key, n = _indication_key(r), 2
        while key in out:  # the same rule twice (only the first can ever match)
            key = f"{_indication_key(r)} #{n}"
            n += 1
        out[key] = r
    return out


def _order_sets(d: _Diff, old: Guideline, new: Guideline) -> None:
    so, sn = old.order_sets, new.order_sets
    if so is None or sn is None:
        if so is not None:
            d.add("order_set", "removed", "order sets", before=list(so.sequence))
        if sn is not None:
            d.add("order_set", "added", "order sets", after=list(sn.sequence))
        return
    d.value("order_set", "order sets sequence", list(so.sequence), list(sn.sequence))
    d.value("order_set", "order sets description", so.description, sn.description)
    d.cited("order sets", so, sn)


def _actions(d: _Diff, old: Guideline, new: Guideline) -> None:
    where = "action {}"
    for key in d.keyed("action", old.actions, new.actions, where, _action_summary):
        ao, an = old.actions[key], new.actions[key]
        here = where.format(key)
        for field in ("code", "recommendation"):
            d.value("action", f"{here} {field}", getattr(ao, field), getattr(an, field))
        d.value("action", f"{here} text", " ".join(ao.text.split()), " ".join(an.text.split()))
        d.value("action", f"{here} states", list(ao.states), list(an.states))
        d.value("action", f"{here} criteria", _guard(ao), _guard(an))
        d.value("action", f"{here} due", action_due(ao), action_due(an))
        d.cited(here, ao, an)


def _action_summary(a: ActionDef) -> str:
    return f"{a.code} in [{', '.join(a.states)}]: {' '.join(a.text.split())}"


_THRESHOLD_KINDS = {"threshold", "ratio", "trend", "grade", "risk", "time_on_line"}
_THRESHOLD_KINDS |= {"time_since_infusion"}


def diff_guidelines(old: Guideline, new: Guideline) -> list[Change]:
    """Every change from `old` to `new`, in a stable order."""
    d = _Diff()
    mo, mn = old.guideline, new.guideline
    for field in ("id", "title", "version", "status", "effective", "authors"):
        d.value(
            "metadata", f"guideline {field}", _json(getattr(mo, field)), _json(getattr(mn, field))
        )
    d.value("contract", "guideline contract", mo.contract, mn.contract)
    for key in d.keyed("source", old.sources, new.sources, "source {}", lambda s: s.citation):
        d.value("source", f"source {key}", _fields(old.sources[key]), _fields(new.sources[key]))
    where = "parameter {}"
    for key in d.keyed("parameter", old.parameters, new.parameters, where, lambda p: p.value):
        po, pn = old.parameters[key], new.parameters[key]
        d.value(
            "threshold", where.format(key), _param(po.value, po.unit), _param(pn.value, pn.unit)
        )
        d.value("parameter", f"parameter {key} description", po.description, pn.description)
        d.value("parameter", f"parameter {key} local", po.local, pn.local)
        d.cited(where.format(key), po, pn)
    where = "criterion {}"
    for key in d.keyed("criterion", old.criteria, new.criteria, where, criterion_rule):
        co, cn = old.criteria[key], new.criteria[key]
        rule_o, rule_n = criterion_rule(co), criterion_rule(cn)
        leaf = co.kind == cn.kind and co.kind in _THRESHOLD_KINDS
        d.value("threshold" if leaf else "criterion", where.format(key), rule_o, rule_n)
        d.value("criterion", f"criterion {key} description", co.description, cn.description)
        d.value("criterion", f"criterion {key} local", co.local, cn.local)
        d.cited(where.format(key), co, cn)
    for key in d.keyed("state", old.states, new.states, "state {}", lambda s: s.name):
        _state(d, old, new, key)
    _lines(d, old, new)
    _actions(d, old, new)
    _rules(d, old, new)
    _indications(d, old, new)
    _order_sets(d, old, new)
    for section in ("events", "observations", "findings", "drug_classes", "drugs"):
        o, n = getattr(old, section), getattr(new, section)
        where = f"{section.replace('_', ' ')[:-1]} " + "{}"
        for key in d.keyed("vocabulary", o, n, where, lambda _: None):
            skip = ["valid_hours"] if section == "findings" else []
            d.value("vocabulary", where.format(key), _fields(o[key], skip), _fields(n[key], skip))
            if section == "findings":  # how long a finding counts: a threshold of criteria
                here = f"{where.format(key)} validity"
                d.value("threshold", here, finding_validity(o[key]), finding_validity(n[key]))
            if isinstance(o[key], Citable):
                d.cited(where.format(key), o[key], n[key])
    o_rf, n_rf = old.risk_factors, new.risk_factors
    for key in d.keyed("vocabulary", o_rf, n_rf, "risk factor {}", lambda r: r.text):
        d.value("vocabulary", f"risk factor {key}", o_rf[key].text, n_rf[key].text)
        d.cited(f"risk factor {key}", o_rf[key], n_rf[key])
    where = "property {}"
    for key in d.keyed("property", old.properties, new.properties, where, lambda p: p.description):
        so, sn = old.properties[key], new.properties[key]
        spec_o, spec_n = _fields(so, ["description"]), _fields(sn, ["description"])
        d.value("property", where.format(key), spec_o, spec_n)
        d.value("property", f"property {key} description", so.description, sn.description)
        d.cited(where.format(key), so, sn)
    order = {c: i for i, c in enumerate(CATEGORIES)}
    return sorted(d.changes, key=lambda c: order[c.category])


def _param(value: float, unit: str | None) -> str:
    return f"{number(value)} {unit}" if unit else number(value)


def _ident(g: Guideline) -> dict[str, str]:
    m = g.guideline
    return {"id": m.id, "version": m.version, "sha256": g.sha256}


def diff_to_json(old: Guideline, new: Guideline, changes: list[Change]) -> dict[str, Any]:
    """The `iechs diff --format json` document."""
    counts = Counter(c.category for c in changes)
    return {
        "format": "iechs.diff/1",
        "old": _ident(old),
        "new": _ident(new),
        "summary": {c: counts[c] for c in CATEGORIES if counts[c]},
        "changes": [c.to_json() for c in changes],
    }


def diff_to_text(old: Guideline, new: Guideline, changes: list[Change]) -> str:
    """The `iechs diff` text: a header, then one line per change (+ added, - removed,
    ~ changed)."""
    mo, mn = old.guideline, new.guideline
    head = (
        f"{mo.id} {mo.version} (sha256 {old.sha256[:12]}) -> "
        f"{mn.id} {mn.version} (sha256 {new.sha256[:12]}): "
    )
    if not changes:
        return head + "no changes\n"
    counts = Counter(c.category for c in changes)
    summary = ", ".join(f"{counts[c]} {c}" for c in CATEGORIES if counts[c])
    lines = [head + f"{len(changes)} change{'s' if len(changes) != 1 else ''} ({summary})"]
    lines += [c.text() for c in changes]
    return "\n".join(lines) + "\n"
