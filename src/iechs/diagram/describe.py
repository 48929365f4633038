"""Short texts about guideline items, shared by the review page and the diff."""

from __future__ import annotations

from ..model import Citable, Criterion, Guideline, Number, Recommendation, Statement

__all__ = ["citable_text", "criterion_rule", "identity", "number"]


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
    for attr in ("label", "description", "name"):
        value = getattr(item, attr, None)
        if isinstance(value, str):
            return value
    return ""


def identity(g: Guideline) -> str:
    """`iec-hs 0.1.0 (draft), sha256 29cd1820a9e7`."""
    m = g.guideline
    return f"{m.id} {m.version} ({m.status}), sha256 {g.sha256[:12]}"
