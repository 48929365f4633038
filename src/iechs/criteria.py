"""Criteria as three-valued predicates over the facts of an episode.

A criterion is TRUE, FALSE or UNKNOWN (data missing or stale). UNKNOWN never acts as FALSE: the
verdict names what is missing so that the engine can ask for it. Combinators use Kleene logic
(`any` of TRUE and UNKNOWN is TRUE; `all` of TRUE and UNKNOWN is UNKNOWN). Each criterion is
evaluated at most once per step (`Evaluation` memoises), and every verdict records the values
it read, so a decision can explain itself.
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

import attrs

from . import model as m
from .timeline import Patient, format_time

__all__ = [
    "CriteriaPlan",
    "Dose",
    "Evaluation",
    "Facts",
    "Reading",
    "Therapy",
    "Tri",
    "Verdict",
    "derived_risk_factors",
]

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}


class Tri(enum.Enum):
    TRUE = "TRUE"
    FALSE = "FALSE"
    UNKNOWN = "UNKNOWN"

    @classmethod
    def of(cls, value: bool) -> Tri:
        return cls.TRUE if value else cls.FALSE

    def negate(self) -> Tri:
        if self is Tri.UNKNOWN:
            return self
        return Tri.FALSE if self is Tri.TRUE else Tri.TRUE


class Reading(NamedTuple):
    """One value a criterion read: what, its value (and unit), and when it was recorded.

    Verdicts and readings are built on every step: tuples, not attrs classes, for speed."""

    what: str
    value: Any
    unit: str | None = None
    at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"what": self.what, "value": self.value}
        if self.unit is not None:
            out["unit"] = self.unit
        if self.at is not None:
            out["at"] = format_time(self.at)
        return out


class Verdict(NamedTuple):
    """A criterion's value at one moment, with what it read and (if UNKNOWN) what is missing.

    For a combinator, `detail` names the operation and `child_values` hold the values of the
    children evaluated (in order, up to the one that decided it); `explanation` spells them
    out (built only when asked for)."""

    name: str
    value: Tri
    detail: str
    reads: tuple[Reading, ...] = ()
    missing: tuple[str, ...] = ()
    children: tuple[str, ...] = ()
    child_values: tuple[Tri, ...] = ()

    @property
    def explanation(self) -> str:
        if not self.children:
            return self.detail
        parts = [f"{c}={v.value}" for c, v in zip(self.children, self.child_values, strict=False)]
        skipped = len(self.children) - len(self.child_values)
        if skipped:
            parts.append(f"{skipped} more not needed")
        return f"{self.detail}: {', '.join(parts)}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"result": self.value.value, "detail": self.explanation}
        if self.reads:
            out["reads"] = [r.to_json() for r in self.reads]
        if self.missing:
            out["missing"] = list(self.missing)
        if self.children:
            out["combines"] = list(self.children)
        return out


def derived_risk_factors(
    patient: Patient, known: dict[str, m.RiskFactor] | None = None
) -> tuple[str, ...]:
    """Risk factors listed for the patient plus those the guideline says the product implies
    (`RiskFactor.product`)."""
    factors = list(patient.risk_factors)
    product = patient.product
    for rid, rf in (known or {}).items():
        match = rf.product
        if product is None or match is None:
            continue
        target = (product.target or "").strip().upper()
        domain = (product.costimulatory_domain or "").strip().upper()
        if (match.target is None or match.target.upper() in target) and (
            match.costimulatory_domain is None or match.costimulatory_domain.upper() == domain
        ):
            factors.append(rid)
    unique = sorted(set(factors))
    return tuple(f for f in unique if known is None or f in known)


class Dose(NamedTuple):
    """One recorded dose: when, which drug (and its class), for what indication."""

    at: datetime
    drug: str
    drug_class: str | None
    indication: str | None


@attrs.define
class Therapy:
    """Doses of one drug class (or of one drug outside the formulary) that follow each other
    within the therapy continuity time: one therapy, judged once, not once per dose."""

    key: str
    drug: str
    drug_class: str | None
    indication: str | None
    started_at: datetime
    last_at: datetime
    #: rule ids (and engine judgements) already raised for this therapy.
    raised: set[str] = attrs.field(factory=set)
    #: counted as an IEC-HS line (a therapy for another indication can be adopted).
    counted: bool = False
    #: the indication was given, not inferred (an inferred one may change for later doses).
    explicit: bool = False


class Facts:
    """What an episode knows so far, in event time. Mutated only by the engine."""

    def __init__(self, patient: Patient, known_risk_factors: dict[str, m.RiskFactor]) -> None:
        self.patient = patient
        self.infusion_at = patient.infusion_at
        self.now = patient.infusion_at
        self.line_started_at = patient.infusion_at
        self.baseline: dict[str, tuple[datetime, float]] = {
            code: (patient.infusion_at, meas.value) for code, meas in patient.baseline.items()
        }
        self.explicit_baseline = set(patient.baseline)
        #: observation code -> (times, values), in time order.
        self.series: dict[str, tuple[list[datetime], list[float]]] = {}
        self.findings: dict[str, tuple[datetime, bool, int | None]] = {}
        self.grades: dict[str, list[tuple[datetime, int]]] = {"crs": [], "icans": []}
        self.infection: tuple[datetime, str] | None = None
        self.antimicrobials: tuple[datetime, bool] | None = None
        self.responses: list[tuple[datetime, str]] = []
        self.doses: list[Dose] = []
        #: therapy key (drug class, or drug outside the formulary) -> the latest therapy.
        self.therapies: dict[str, Therapy] = {}
        #: treatments known to follow the current event (a retrospective run knows them).
        self.later: tuple[Dose, ...] = ()
        self.risk_factors = derived_risk_factors(patient, known_risk_factors)

    def add_observation(self, code: str, at: datetime, value: float) -> None:
        if at < self.infusion_at:
            # Before infusion: a baseline value. An explicit baseline in the patient wins.
            if code not in self.explicit_baseline:
                prev = self.baseline.get(code)
                if prev is None or prev[0] <= at:
                    self.baseline[code] = (at, value)
            return
        times, values = self.series.setdefault(code, ([], []))
        times.append(at)
        values.append(value)

    def latest(self, code: str, max_age_hours: float) -> tuple[datetime, float] | None:
        s = self.series.get(code)
        if not s or not s[0]:
            return None
        at, value = s[0][-1], s[1][-1]
        if (self.now - at).total_seconds() / 3600 > max_age_hours:
            return None
        return at, value

    def trend_points(self, code: str, fresh_hours: float) -> list[tuple[datetime, float]]:
        """The latest value, if at most `fresh_hours` old, and the value before it however old
        (a rise after a long gap is a rise)."""
        s = self.series.get(code)
        if not s or len(s[0]) < 2:
            return []
        times, values = s
        if (self.now - times[-1]).total_seconds() / 3600 > fresh_hours:
            return []
        return [(times[-2], values[-2]), (times[-1], values[-1])]

    def hours_since(self, t: datetime) -> float:
        return (self.now - t).total_seconds() / 3600

    def doses_within(
        self,
        hours: float,
        *,
        classes: tuple[str, ...] = (),
        drugs: tuple[str, ...] = (),
        indications: tuple[str, ...] = (),
        formulary: bool | None = None,
        both_ways: bool = False,
    ) -> list[Dose]:
        """Doses matching the filters within `hours` before now (the current order set
        included), and with `both_ways` also those known to follow within `hours`."""
        found = []
        pool: list[Dose] = list(self.doses)
        if both_ways:
            pool += self.later
        for d in pool:
            if (classes or drugs) and not (d.drug_class in classes or d.drug in drugs):
                continue
            if indications and d.indication not in indications:
                continue
            if formulary is not None and (d.drug_class is not None) != formulary:
                continue
            gap = (self.now - d.at).total_seconds() / 3600
            if -hours <= gap <= hours if both_ways else 0 <= gap <= hours:
                found.append(d)
        return found


@attrs.frozen
class _Node:
    """A criterion compiled once per guideline: kind, spec and every number resolved."""

    name: str
    kind: str
    spec: Any
    children: tuple[str, ...]
    #: resolved numbers and units, by kind (see CriteriaPlan._resolve).
    args: tuple[Any, ...]


class CriteriaPlan:
    """The guideline's criteria, compiled once and shared by every episode of an engine."""

    def __init__(self, g: m.Guideline) -> None:
        self.g = g
        p = g.parameters.get("lab_validity_hours")
        self.default_validity = p.value if p is not None else float("inf")
        c = g.parameters.get("therapy_continuity_hours")
        #: how long a therapy runs after its last dose (engine and `therapy` criteria).
        self.continuity = c.value if c is not None else 0.0  # no parameter: every dose alone
        self.nodes = {name: self._compile(name, c) for name, c in g.criteria.items()}

    def _compile(self, name: str, c: m.Criterion) -> _Node:
        kind = c.kind
        spec = getattr(c, kind)
        return _Node(name, kind, spec, c.children, self._resolve(kind, spec))

    def _validity(self, within: m.Number | None) -> float:
        return self.default_validity if within is None else self.g.param(within)

    def _resolve(self, kind: str, spec: Any) -> tuple[Any, ...]:
        g = self.g
        if kind == "threshold":
            obs = g.observations[spec.observation]
            limit = g.param(spec.value) * (obs.units[spec.unit] if spec.unit else 1.0)
            return (_OPS[spec.op], limit, self._validity(spec.within_hours), obs.unit)
        if kind == "ratio":
            obs = g.observations[spec.observation]
            if spec.reference == "baseline":
                ref: float | None = None
                ref_name = "baseline"
            else:
                ref, ref_name = g.param(spec.reference), spec.reference.removeprefix("$")
            return (
                _OPS[spec.op],
                g.param(spec.factor),
                ref,
                ref_name,
                self._validity(spec.within_hours),
                obs.unit,
            )
        if kind == "trend":
            return (
                g.param(spec.window_hours),
                g.observations[spec.observation].unit,
                g.param(spec.min_change_pct) / 100,
            )
        if kind == "finding":
            f = g.findings[spec.code]
            valid = float("inf") if f.valid_hours is None else g.param(f.valid_hours)
            return (f.unrecorded == "absent", valid)
        if kind == "therapy":
            return (self.continuity if spec.hours is None else g.param(spec.hours),)
        if kind in ("time_on_line", "time_since_infusion"):
            return (_OPS[spec.op], g.param(spec.hours))
        if kind == "risk":
            return (g.param(spec.at_least),)
        if kind == "grade":
            if spec.within_hours is not None:
                return (_OPS[spec.op], g.param(spec.within_hours))
            p = g.parameters.get("assessment_validity_hours")
            return (_OPS[spec.op], p.value if p is not None else float("inf"))
        return ()


class Evaluation:
    """Evaluates the criteria over the facts at one moment; each criterion at most once."""

    def __init__(
        self,
        plan: CriteriaPlan | m.Guideline,
        facts: Facts,
        line_start: datetime | None = None,
    ) -> None:
        self.plan = plan if isinstance(plan, CriteriaPlan) else CriteriaPlan(plan)
        self.g = self.plan.g
        self.facts = facts
        #: when the current line started (default: the facts'); a route's later hop reads the
        #: criteria as they will be once its line has started.
        self.line_start = facts.line_started_at if line_start is None else line_start
        self.verdicts: dict[str, Verdict] = {}

    def __call__(self, name: str) -> Verdict:
        v = self.verdicts.get(name)
        if v is None:
            node = self.plan.nodes[name]
            v = _EVALUATORS[node.kind](self, node)
            self.verdicts[name] = v
        return v

    def guard(self, when: tuple[str, ...], unless: tuple[str, ...]) -> Tri:
        parts = [self(n).value for n in when] + [self(n).value.negate() for n in unless]
        return _and(parts)

    def missing_for(self, names: tuple[str, ...]) -> tuple[str, ...]:
        """What to measure so that these (UNKNOWN) criteria can be decided."""
        out: list[str] = []
        for n in names:
            for item in self(n).missing:
                if item not in out:
                    out.append(item)
        return tuple(out)


def _missing(name: str, what: str, detail: str, reads: tuple[Reading, ...] = ()) -> Verdict:
    return Verdict(name, Tri.UNKNOWN, detail, reads, (what,))


def _threshold(ev: Evaluation, n: _Node) -> Verdict:
    t: m.Threshold = n.spec
    op, limit, validity, unit = n.args
    latest = ev.facts.latest(t.observation, validity)
    if latest is None:
        return _missing(n.name, t.observation, f"no recent {t.observation} value")
    at, value = latest
    return Verdict(
        n.name,
        Tri.of(op(value, limit)),
        f"{t.observation} {value:g} {t.op} {limit:g} {unit}",
        (Reading(t.observation, value, unit, at),),
    )


def _ratio(ev: Evaluation, n: _Node) -> Verdict:
    r: m.Ratio = n.spec
    op, factor, ref, ref_name, validity, unit = n.args
    latest = ev.facts.latest(r.observation, validity)
    if latest is None:
        return _missing(n.name, r.observation, f"no recent {r.observation} value")
    at, value = latest
    read = Reading(r.observation, value, unit, at)
    base = ev.facts.baseline.get(r.observation)
    if ref is None:
        if base is None:
            return _missing(
                n.name,
                f"baseline {r.observation} (value at infusion)",
                f"no baseline {r.observation}",
                (read,),
            )
        ref, ref_name = base[1], "baseline"
        ref_read = Reading(f"baseline {r.observation}", ref, unit, base[0])
    elif r.baseline_if_abnormal and base is not None and op(base[1], ref):
        # The value at infusion was itself beyond the limit: compare with it instead.
        ref_read = Reading(
            f"baseline {r.observation} (abnormal at infusion)", base[1], unit, base[0]
        )
        ref, ref_name = base[1], "abnormal baseline"
    else:
        ref_read = Reading(ref_name, ref, unit)
    return Verdict(
        n.name,
        Tri.of(op(value, factor * ref)),
        f"{r.observation} {value:g} {r.op} {factor:g} x {ref_name} {ref:g} {unit}",
        (read, ref_read),
    )


def _trend(ev: Evaluation, n: _Node) -> Verdict:
    t: m.Trend = n.spec
    hours, unit, flat = n.args
    # The direction now: the latest fresh value against the one before it, however old (an
    # older value from before a peak must not hide a fall; a rise after a gap is a rise).
    points = ev.facts.trend_points(t.observation, hours)
    if not points:
        return _missing(
            n.name,
            f"{t.observation} (a fresh value and an earlier one, for a trend)",
            f"fewer than two {t.observation} values, or the latest older than {hours:g} h",
        )
    (t0, first), (t1, last) = points
    band = abs(first) * flat  # changes within the band are flat
    if t.direction == "rising":
        ok = last > first + band
    elif t.direction == "falling":
        ok = last < first - band
    else:
        ok = last >= first - band
    return Verdict(
        n.name,
        Tri.of(ok),
        f"{t.observation} {first:g} -> {last:g} {unit} (latest against the one before) "
        f"({t.direction.replace('_', ' ')}: {'yes' if ok else 'no'})",
        (Reading(t.observation, first, unit, t0), Reading(t.observation, last, unit, t1)),
    )


def _finding(ev: Evaluation, n: _Node) -> Verdict:
    f: m.FindingTest = n.spec
    absent_unless_recorded, valid = n.args
    rec = ev.facts.findings.get(f.code)
    expired = rec is not None and ev.facts.hours_since(rec[0]) > valid
    if rec is None or expired:
        why = f"expired (recorded {format_time(rec[0])}, valid {valid:g} h)" if rec else None
        if absent_unless_recorded:
            detail = f"{f.code} {why or 'not recorded'} (counts as absent)"
            return Verdict(n.name, Tri.FALSE, detail)
        return _missing(n.name, f"finding {f.code}", f"{f.code} {why or 'not assessed'}")
    at, present, grade = rec
    shown: Any = False
    if present:
        shown = True if grade is None else f"present, grade {grade}"
    read = (Reading(f.code, shown, None, at),)
    if not present:
        return Verdict(n.name, Tri.FALSE, f"{f.code} absent", read)
    if f.min_grade is None:
        return Verdict(n.name, Tri.TRUE, f"{f.code} present", read)
    if grade is None:
        return _missing(n.name, f"grade of {f.code}", f"{f.code} present, grade unknown", read)
    ok = grade >= f.min_grade
    return Verdict(
        n.name,
        Tri.of(ok),
        f"{f.code} grade {grade} >= {f.min_grade}: {'yes' if ok else 'no'}",
        read,
    )


def _grade(ev: Evaluation, n: _Node) -> Verdict:
    gt: m.GradeTest = n.spec
    op, validity = n.args
    grades = ev.facts.grades[gt.of]
    label = f"{gt.of.upper()} grade"
    if not grades:
        return _missing(n.name, f"{label} (assessment)", f"{label} not assessed")
    at, latest = grades[-1]
    if ev.facts.hours_since(at) > validity:
        return _missing(
            n.name,
            f"{label} (assessment)",
            f"{label} last assessed {format_time(at)}, older than {validity:g} h",
        )
    read = Reading(f"{gt.of}_grade", latest, None, at)
    if gt.peak:
        peak = max(g for _, g in grades)
        return Verdict(
            n.name,
            Tri.of(op(latest, peak)),
            f"{label} {latest} {gt.op} peak {peak}",
            (read, Reading(f"peak {gt.of}_grade", peak)),
        )
    return Verdict(
        n.name, Tri.of(op(latest, gt.value)), f"{label} {latest} {gt.op} {gt.value}", (read,)
    )


def _infection(ev: Evaluation, n: _Node) -> Verdict:
    i: m.InfectionTest = n.spec
    rec = ev.facts.infection
    if rec is None:
        return _missing(n.name, "infection status (assessment)", "infection not assessed")
    return Verdict(
        n.name,
        Tri.of(rec[1] in i.status),
        f"infection {rec[1]}",
        (Reading("infection", rec[1], None, rec[0]),),
    )


def _assessed(ev: Evaluation, n: _Node) -> Verdict:
    a: m.Assessed = n.spec
    rec = ev.facts.antimicrobials
    started = rec is not None and rec[1]
    reads = (Reading("antimicrobials", rec[1], None, rec[0]),) if rec else ()
    detail = "antimicrobials started" if started else "no antimicrobials recorded"
    return Verdict(n.name, Tri.of(started == a.antimicrobials), detail, reads)


def _response(ev: Evaluation, n: _Node) -> Verdict:
    r: m.ResponseTest = n.spec
    since = ev.line_start
    responses = ev.facts.responses
    # A response charted at the time the line started belongs to the order set that started
    # it, whose facts come before its treatments: it is not a response on this line.
    if not responses or responses[-1][0] <= since:
        if r.unrecorded == "false":
            return Verdict(n.name, Tri.FALSE, "no response assessment since the line started")
        return _missing(
            n.name,
            "response assessment on the current line",
            "no response assessment since the line started",
        )
    at, kind = responses[-1]
    return Verdict(
        n.name,
        Tri.of(kind in r.among),
        f"latest response {kind}",
        (Reading("response", kind, None, at),),
    )


def _therapy(ev: Evaluation, n: _Node) -> Verdict:
    t: m.TherapyTest = n.spec
    (hours,) = n.args
    found = ev.facts.doses_within(
        hours, classes=t.classes, drugs=t.drugs, indications=t.indication, formulary=t.formulary
    )
    what = ", ".join((*t.classes, *t.drugs))
    if not found:
        return Verdict(n.name, Tri.FALSE, f"no {what} within {hours:g} h")
    d = found[-1]
    return Verdict(
        n.name,
        Tri.TRUE,
        f"{d.drug} at {format_time(d.at)} (within {hours:g} h)",
        (Reading("dose", d.drug, None, d.at),),
    )


def _risk(ev: Evaluation, n: _Node) -> Verdict:
    r: m.RiskTest = n.spec
    (need,) = n.args
    factors = [f for f in ev.facts.risk_factors if not r.among or f in r.among]
    return Verdict(
        n.name,
        Tri.of(len(factors) >= need),
        f"{len(factors)} risk factor(s) (need {need:g}): {', '.join(factors) or 'none'}",
        (Reading("risk_factors", factors),),
    )


def _duration(since: str, what: str, reading: str) -> Callable[[Evaluation, _Node], Verdict]:
    def evaluate(ev: Evaluation, n: _Node) -> Verdict:
        d: m.Duration = n.spec
        op, limit = n.args
        start: datetime = ev.line_start if since == "line_started_at" else ev.facts.infusion_at
        hours = ev.facts.hours_since(start)
        return Verdict(
            n.name,
            Tri.of(op(hours, limit)),
            f"{hours:g} h {what} {d.op} {limit:g} h",
            (Reading(reading, round(hours, 3), "h", start),),
        )

    return evaluate


def _combine(ev: Evaluation, n: _Node) -> Verdict:
    kind = n.kind
    verdicts: list[Verdict] = []
    if kind in ("all_of", "any_of"):
        # Short-circuit once decided: FALSE decides `all`, TRUE decides `any`. When the result
        # is UNKNOWN nothing decided it, so every child was evaluated and names what is missing.
        decisive = Tri.FALSE if kind == "all_of" else Tri.TRUE
        for child in n.children:
            v = ev(child)
            verdicts.append(v)
            if v.value is decisive:
                break
    else:
        verdicts = [ev(c) for c in n.children]
    values = tuple(v.value for v in verdicts)
    if kind == "all_of":
        value, op = _and(values), "all of"
    elif kind == "any_of":
        value, op = _or(values), "any of"
    elif kind == "not_":
        value, op = values[0].negate(), "not"
    else:
        k = n.spec.at_least
        t = values.count(Tri.TRUE)
        u = values.count(Tri.UNKNOWN)
        value = Tri.TRUE if t >= k else Tri.FALSE if t + u < k else Tri.UNKNOWN
        op = f"at least {k} of"
    missing: tuple[str, ...] = ()
    if value is Tri.UNKNOWN:
        found: list[str] = []
        for v in verdicts:
            if v.value is Tri.UNKNOWN:
                found.extend(x for x in v.missing if x not in found)
        missing = tuple(found)
    return Verdict(n.name, value, op, (), missing, n.children, values)


_EVALUATORS: dict[str, Callable[[Evaluation, _Node], Verdict]] = {
    "threshold": _threshold,
    "ratio": _ratio,
    "trend": _trend,
    "finding": _finding,
    "grade": _grade,
    "infection": _infection,
    "assessed": _assessed,
    "response": _response,
    "therapy": _therapy,
    "risk": _risk,
    "time_on_line": _duration("line_started_at", "on the current line", "hours_on_line"),
    "time_since_infusion": _duration("infusion_at", "since infusion", "hours_since_infusion"),
    "all_of": _combine,
    "any_of": _combine,
    "not_": _combine,
    "count_of": _combine,
}


def _and(values: Sequence[Tri]) -> Tri:
    if Tri.FALSE in values:
        return Tri.FALSE
    return Tri.UNKNOWN if Tri.UNKNOWN in values else Tri.TRUE


def _or(values: Sequence[Tri]) -> Tri:
    if Tri.TRUE in values:
        return Tri.TRUE
    return Tri.UNKNOWN if Tri.UNKNOWN in values else Tri.FALSE
