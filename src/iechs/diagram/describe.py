"""Short texts about guideline items, shared by the review page and the diff."""

from __future__ import annotations

import re

from ..model import (
    ActionDef,
    Citable,
    Concurrent,
    Criterion,
    FindingDef,
    Guideline,
    IndicationRule,
    Number,
    Recommendation,
    Rule,
    Statement,
    TreatmentMatch,
)

__all__ = [
    "action_due",
    "citable_text",
    "concurrency",
    "criterion_rule",
    "finding_validity",
    "hours",
    "identity",
    "indication_match",
    "message_text",
    "number",
    "rule_trigger",
    "treatment_match",
    "words_list",
]


def number(value: Number) -> str:
    """`10000` for 10000.0; a `$parameter` reference as written."""
    return value if isinstance(value, str) else f"{value:g}"


def criterion_rule(c: Criterion) -> str:
    """The criterion's definition in one line: `ferritin > 10000 ng/mL`, `all of: a, b`."""
    if c.threshold is not None:
        t = c.threshold
        unit = f" {t.unit}" if t.unit else ""
        within = f" (value within {number(t.within_hours)} h)" if t.within_hours else ""
        return f"{t.observation} {t.op} {number(t.value)}{unit}{within}"
    if c.ratio is not None:
        r = c.ratio
        return f"{r.observation} {r.op} {number(r.factor)} × {r.reference}"
    if c.trend is not None:
        return f"{c.trend.observation} {c.trend.direction} over {number(c.trend.window_hours)} h"
    if c.finding is not None:
        grade = f", grade ≥ {c.finding.min_grade}" if c.finding.min_grade is not None else ""
        return f"finding {c.finding.code}{grade}"
    if c.grade is not None:
        gr = c.grade
        ref = "its peak so far" if gr.peak else str(gr.value)
        return f"{gr.of.upper()} grade {gr.op} {ref}"
    if c.infection is not None:
        return f"infection {' or '.join(c.infection.status)}"
    if c.assessed is not None:
        return "antimicrobials started" if c.assessed.antimicrobials else "no antimicrobials"
    if c.response is not None:
        return f"latest response on this line: {' or '.join(c.response.among)}"
    if c.therapy is not None:
        th = c.therapy
        what = " or ".join((*th.classes, *th.drugs))
        window = number(th.hours) if th.hours is not None else "$therapy_continuity_hours"
        given = f", given for {' or '.join(th.indication)}" if th.indication else ""
        return f"therapy running: {what} (a dose within {window} h{given})"
    if c.risk is not None:
        among = f" among {', '.join(c.risk.among)}" if c.risk.among else ""
        return f"at least {number(c.risk.at_least)} risk factors{among}"
    if c.time_on_line is not None:
        return f"time on the current line {c.time_on_line.op} {number(c.time_on_line.hours)} h"
    if c.time_since_infusion is not None:
        d = c.time_since_infusion
        return f"time since infusion {d.op} {number(d.hours)} h"
    if c.all_of is not None:
        return f"all of: {', '.join(c.all_of)}"
    if c.any_of is not None:
        return f"any of: {', '.join(c.any_of)}"
    if c.not_ is not None:
        return f"not: {c.not_}"
    if c.count_of is not None:
        return f"at least {c.count_of.at_least} of: {', '.join(c.count_of.of)}"
    return "(no definition)"


def citable_text(item: Citable) -> str:
    """What a citable item says, in words."""
    if isinstance(item, Statement | Recommendation):
        return item.text
    for attr in ("text", "label", "description", "message", "reason", "name"):
        value = getattr(item, attr, None)
        if isinstance(value, str):
            return value
    return ""


def identity(g: Guideline) -> str:
    """`iec-hs 0.1.0 (draft), sha256 29cd1820a9e7`."""
    m = g.guideline
    return f"{m.id} {m.version} ({m.status}), sha256 {g.sha256[:12]}"


# --- rules, actions, indications: in words ----------------------------------------------------
#
# With a guideline `g` (the review page) parameters show their value and name, drug classes and
# states their names; without one (the diff) everything is shown as written in the YAML, so a
# change of a parameter's value is reported once, as the parameter's change.


def words_list(items: tuple[str, ...] | list[str], word: str = "or") -> str:
    """`a`, `a or b`, `a, b or c`."""
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} {word} {items[-1]}"


def hours(value: Number, g: Guideline | None = None) -> str:
    """`24 h`; a parameter: `$name h`, or with `g` `24 h (parameter name)`."""
    if isinstance(value, str) and g is not None:
        name = value.removeprefix("$")
        if name in g.parameters:
            return f"{number(g.param(value))} h (parameter {name})"
    return f"{number(value)} h"


def _class(g: Guideline | None, code: str) -> str:
    if g is not None and code in g.drug_classes:
        return f"{g.drug_classes[code].name} ({code})"
    return code


def _state(g: Guideline | None, sid: str) -> str:
    return g.states[sid].name if g is not None and sid in g.states else sid


def treatment_match(t: TreatmentMatch | None, g: Guideline | None = None) -> str:
    """`a drug of class IL-6 blockade (il6_blockade), given for iec_hs`, `tocilizumab`."""
    if t is None:
        return "any treatment"
    adjective = {None: "", True: "immunosuppressive ", False: "non-immunosuppressive "}
    adj = adjective[t.immunosuppressive]
    a = "an" if adj.startswith("i") else "a"
    subjects = []
    if t.classes:
        subjects.append(f"{a} {adj}drug of class {words_list([_class(g, c) for c in t.classes])}")
    if t.drugs:
        drugs = words_list(list(t.drugs))
        subjects.append(f"{drugs} ({adj.strip()})" if adj and not t.classes else drugs)
    text = " or ".join(subjects) or f"{a} {adj}drug"
    if t.indications:
        text += f", given for {words_list(list(t.indications))}"
    return text


def rule_trigger(r: Rule, g: Guideline | None = None) -> str:
    """When a rule is looked at: `once per new therapy with ...`, `once, when the episode
    starts`, `once per stay in ...`."""
    states = words_list([_state(g, s) for s in r.states])
    if r.upon == "step":
        return f"once per stay in {states}" if r.states else "once per step"
    if r.upon == "start":
        text = "once, when the episode starts"
    else:
        text = f"once per new therapy with {treatment_match(r.treatment, g)}"
    return f"{text}, while in {states}" if r.states else text


def concurrency(r: Rule, g: Guideline | None = None) -> str | None:
    """`without a dose of Corticosteroid (corticosteroid) within 24 h ...`, or None."""
    parts = []
    for word, c in (("with", r.with_), ("without", r.without)):
        if c is not None:
            parts.append(_concurrent(word, c, g))
    return "; ".join(parts) or None


def _concurrent(word: str, c: Concurrent, g: Guideline | None) -> str:
    classes = words_list([_class(g, k) for k in c.classes])
    return f"{word} a dose of {classes} within {hours(c.hours, g)} of it"


_PARAM_PLACEHOLDER = re.compile(r"\{\$([A-Za-z_][A-Za-z0-9_]*)\}")


def message_text(message: str, g: Guideline | None = None) -> str:
    """A rule's message with `{$parameter}` placeholders given their value (with `g`); the
    other placeholders (`{drug}`, `{state}`, ...) stay as written."""
    text = " ".join(message.split())
    if g is None:
        return text

    def value(m: re.Match[str]) -> str:
        name = m.group(1)
        return number(g.parameters[name].value) if name in g.parameters else m.group(0)

    return _PARAM_PLACEHOLDER.sub(value, text)


def indication_match(r: IndicationRule, g: Guideline | None = None) -> str:
    """When an indication rule applies: `drug of class ...; in ...; when ...`."""
    parts = []
    if r.classes:
        parts.append("a drug of class " + words_list([_class(g, c) for c in r.classes]))
    if r.formulary is not None:
        parts.append("a drug in the formulary" if r.formulary else "a drug not in the formulary")
    if r.states:
        parts.append("in " + words_list([_state(g, s) for s in r.states]))
    if r.when:
        parts.append("when " + words_list(list(r.when), "and"))
    return "; ".join(parts) or "any treatment"


def finding_validity(f: FindingDef, g: Guideline | None = None) -> str:
    """`168 h (parameter finding_validity_hours)`, or `never expires`."""
    if f.valid_hours is None:
        return "never expires"
    return hours(f.valid_hours, g)


def action_due(a: ActionDef, g: Guideline | None = None) -> str | None:
    """When an action is due, in words, or None."""
    if a.due is None:
        return None
    if a.due == "reassessment":
        interval = "reassessment interval"
        if g is not None and "reassessment_interval_hours" in g.parameters:
            interval = hours("$reassessment_interval_hours", g)
        return f"by the last reassessment + {interval}"
    return str(a.due)
