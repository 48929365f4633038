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
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from functools import partial
from typing import Any, NamedTuple, overload

import attrs

from . import model as m
from .criteria_codegen import compile_combinations, compile_guard
from .timeline import Patient, format_time

__all__ = [
    "CriteriaPlan",
    "Dose",
    "Evaluation",
    "Explained",
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
        #: the highest grade of each kind so far (kept as grades are added: `add_grade`).
        self.peaks: dict[str, int] = {}
        self.infection: tuple[datetime, str] | None = None
        self.antimicrobials: tuple[datetime, bool] | None = None
        self.responses: list[tuple[datetime, str]] = []
        self.doses: list[Dose] = []
        #: therapy key (drug class, or drug outside the formulary) -> the latest therapy.
        self.therapies: dict[str, Therapy] = {}
        #: treatments known to follow the current event (a retrospective run knows them).
        self.later: tuple[Dose, ...] = ()
        self.risk_factors = derived_risk_factors(patient, known_risk_factors)

    def copy(self) -> Facts:
        """A copy that changes apart from this one: every container is its own; what is never
        changed once made (the patient, events' values, doses, tuples) is shared. A therapy is
        copied (it changes as doses follow)."""
        new = object.__new__(Facts)
        new.__dict__.update(self.__dict__)
        new.baseline = dict(self.baseline)
        new.explicit_baseline = set(self.explicit_baseline)
        new.series = {code: (list(t), list(v)) for code, (t, v) in self.series.items()}
        new.findings = dict(self.findings)
        new.grades = {kind: list(items) for kind, items in self.grades.items()}
        new.peaks = dict(self.peaks)
        new.responses = list(self.responses)
        new.doses = list(self.doses)
        new.therapies = {
            key: attrs.evolve(t, raised=set(t.raised)) for key, t in self.therapies.items()
        }
        return new

    def add_observation(self, code: str, at: datetime, value: float) -> None:
        if at < self.infusion_at:
            # Before infusion: a baseline value. An explicit baseline in the patient wins.
            if code not in self.explicit_baseline:
                prev = self.baseline.get(code)
                if prev is None or prev[0] <= at:
                    self.baseline[code] = (at, value)
            return
        s = self.series.get(code)
        if s is None:
            s = self.series[code] = ([], [])
        s[0].append(at)
        s[1].append(value)

    def add_grade(self, of: str, at: datetime, grade: int) -> None:
        self.grades[of].append((at, grade))
        if grade > self.peaks.get(of, grade - 1):
            self.peaks[of] = grade

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

    def __init__(self, g: m.Guideline, *, compiled: bool = True) -> None:
        self.g = g
        p = g.parameters.get("lab_validity_hours")
        self.default_validity = p.value if p is not None else float("inf")
        c = g.parameters.get("therapy_continuity_hours")
        #: how long a therapy runs after its last dose (engine and `therapy` criteria).
        self.continuity = c.value if c is not None else 0.0  # no parameter: every dose alone
        self.nodes = {name: self._compile(name, c) for name, c in g.criteria.items()}
        #: each criterion's reader, bound to its node (the hot path of `Evaluation.value`).
        self.readers: dict[str, Callable[[Evaluation], tuple[Tri, Any]]] = {
            name: _bind(n) for name, n in self.nodes.items() if _KINDS[n.kind][0] is not None
        }
        self.compiled = compiled
        self._guards: dict[tuple[tuple[str, ...], tuple[str, ...]], Callable[[Evaluation], Tri]]
        self._guards = {}
        if compiled:  # combinations compiled to source, their children written out in line
            self.readers.update(compile_combinations(self.nodes, self.readers, (_T, _F, _U)))
            return
        # Interpreted (the reference the compiled readers are tested against).
        children: dict[str, list[tuple[str, Callable[[Evaluation], tuple[Tri, Any]]]]] = {}
        for name, n in self.nodes.items():
            if n.kind in _DECISIVE:  # reads its children's readers directly
                children[name] = []
                self.readers[name] = partial(
                    _read_kleene, _DECISIVE[n.kind], _DECISIVE[n.kind].negate(), children[name]
                )
        for name, kids in children.items():
            kids.extend((c, self.readers[c]) for c in self.nodes[name].children)

    def guard(self, when: tuple[str, ...], unless: tuple[str, ...]) -> Callable[[Evaluation], Tri]:
        """`Evaluation.guard(when, unless)` as a function of the evaluation, made once per
        guard (compiled to source, or the interpreted method)."""
        key = (when, unless)
        found = self._guards.get(key)
        if found is None:
            if self.compiled:
                found = compile_guard(when, unless, self.nodes, self.readers, (_T, _F, _U))
            else:
                found = partial(_interpreted_guard, when, unless)
            self._guards[key] = found
        return found

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
    """Evaluates the criteria over the facts at one moment; each criterion at most once.

    Deciding needs only values: `value` computes a criterion's value and keeps what it read
    (immutable readings, not the facts). The explanation (`Verdict`: detail, readings, what is
    missing) is built from those when asked for (`__call__`, `verdict`, `explained`), so a
    step pays for formatting only when its decision is rendered or recorded; it is the same
    explanation whenever it is built, because it reads only what was kept at the step."""

    __slots__ = (
        "_missing",
        "_payload",
        "_read",
        "_verdicts",
        "facts",
        "g",
        "line_start",
        "plan",
        "values",
    )

    def __init__(
        self,
        plan: CriteriaPlan | m.Guideline,
        facts: Facts,
        line_start: datetime | None = None,
    ) -> None:
        if type(plan) is not CriteriaPlan:
            plan = plan if isinstance(plan, CriteriaPlan) else CriteriaPlan(plan)
        self.plan = plan
        self.g = plan.g
        self.facts = facts
        #: when the current line started (default: the facts'); a route's later hop reads the
        #: criteria as they will be once its line has started.
        self.line_start = facts.line_started_at if line_start is None else line_start
        #: the value of each criterion evaluated, in the order they were decided (children
        #: before the criteria that combine them).
        self.values: dict[str, Tri] = {}
        self._payload: dict[str, Any] = {}
        self._read = plan.readers
        #: explanations and missing lists, made when first asked for.
        self._verdicts: dict[str, Verdict] | None = None
        self._missing: dict[str, tuple[str, ...]] | None = None

    def value(self, name: str) -> Tri:
        v = self.values.get(name)
        if v is None:
            v, self._payload[name] = self._read[name](self)
            self.values[name] = v
        return v

    def missing(self, name: str) -> tuple[str, ...]:
        """What an evaluated criterion lacks (the same as its verdict's `missing`, without
        building the explanation)."""
        if self.values[name] is not _U:
            return ()
        memo = self._missing
        if memo is None:
            memo = self._missing = {}
        else:
            found = memo.get(name)
            if found is not None:
                return found
        node = self.plan.nodes[name]
        if node.children:
            items: list[str] = []
            values = self.values
            for child in node.children[: self._payload[name]]:
                if values[child] is _U:
                    for x in self.missing(child):
                        if x not in items:
                            items.append(x)
            found = tuple(items)
        else:
            lacks = _LACKS.get(node.kind)
            if lacks is not None:  # a single criterion: what it lacks, without its explanation
                found = (lacks(node, self._payload[name]),)
            else:
                found = self.verdict(name).missing
        memo[name] = found
        return found

    def __call__(self, name: str) -> Verdict:
        self.value(name)
        return self.verdict(name)

    def verdict(self, name: str) -> Verdict:
        """The explanation of a criterion already evaluated."""
        memo = self._verdicts
        if memo is None:
            memo = self._verdicts = {}
        v = memo.get(name)
        if v is None:
            node = self.plan.nodes[name]
            v = _EXPLAIN[node.kind](self, node, self.values[name], self._payload[name])
            memo[name] = v
        return v

    @property
    def verdicts(self) -> dict[str, Verdict]:
        return {n: self.verdict(n) for n in self.values}

    def explained(self) -> Explained:
        """The verdicts of the criteria evaluated so far, built when first used."""
        return Explained(self, tuple(self.values))

    def guard(self, when: tuple[str, ...], unless: tuple[str, ...]) -> Tri:
        """Kleene `and` of `when` and of the negations of `unless`; every criterion named is
        evaluated (the explanation lists them all)."""
        result = Tri.TRUE
        for n in when:
            v = self.value(n)
            if v is not Tri.TRUE and result is not Tri.FALSE:
                result = v
        for n in unless:
            v = self.value(n)
            if v is not Tri.FALSE and result is not Tri.FALSE:
                result = Tri.UNKNOWN if v is Tri.UNKNOWN else Tri.FALSE
        return result

    def missing_for(self, names: tuple[str, ...]) -> tuple[str, ...]:
        """What to measure so that these (UNKNOWN) criteria can be decided."""
        out: list[str] = []
        for n in names:
            self.value(n)
            for item in self.missing(n):
                if item not in out:
                    out.append(item)
        return tuple(out)


def _interpreted_guard(when: tuple[str, ...], unless: tuple[str, ...], ev: Evaluation) -> Tri:
    return ev.guard(when, unless)


class Explained(Sequence[Verdict]):
    """The verdicts of an evaluation as they were when a decision was made (the criteria
    evaluated by then, in order), built on first use."""

    __slots__ = ("_evaluation", "_items", "_names")

    def __init__(self, evaluation: Evaluation, names: tuple[str, ...]) -> None:
        self._evaluation: Evaluation | None = evaluation
        self._names = names
        self._items: tuple[Verdict, ...] | None = None

    def _all(self) -> tuple[Verdict, ...]:
        if self._items is None:
            assert self._evaluation is not None
            self._items = tuple(self._evaluation.verdict(n) for n in self._names)
            self._evaluation = None
        return self._items

    @overload
    def __getitem__(self, index: int) -> Verdict: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[Verdict, ...]: ...
    def __getitem__(self, index: int | slice) -> Verdict | tuple[Verdict, ...]:
        return self._all()[index]

    def __len__(self) -> int:
        return len(self._names)

    def __iter__(self) -> Iterator[Verdict]:
        return iter(self._all())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Explained | tuple):
            return self._all() == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._all())

    def __repr__(self) -> str:
        return repr(self._all())


def _missing(name: str, what: str, detail: str, reads: tuple[Reading, ...] = ()) -> Verdict:
    return Verdict(name, Tri.UNKNOWN, detail, reads, (what,))


# What a single criterion whose value is UNKNOWN lacks, from what its reader kept: one text,
# the `missing` of its explanation (the explainers use these), found without building it.


def _lacks_value(n: _Node, kept: Any) -> str:
    return str(n.spec.observation)


def _lacks_ratio(n: _Node, kept: Any) -> str:
    if kept is None:
        return str(n.spec.observation)
    return f"baseline {n.spec.observation} (value at infusion)"  # a value, and no baseline


def _lacks_trend(n: _Node, kept: Any) -> str:
    return f"{n.spec.observation} (a fresh value and an earlier one, for a trend)"


def _lacks_finding(n: _Node, kept: Any) -> str:
    rec, expired = kept
    if rec is None or expired:
        return f"finding {n.spec.code}"
    return f"grade of {n.spec.code}"  # present, grade unknown


def _lacks_grade(n: _Node, kept: Any) -> str:
    return f"{n.spec.of.upper()} grade (assessment)"


def _lacks_infection(n: _Node, kept: Any) -> str:
    return "infection status (assessment)"


def _lacks_response(n: _Node, kept: Any) -> str:
    return "response assessment on the current line"


_LACKS: dict[str, Callable[[_Node, Any], str]] = {
    "threshold": _lacks_value,
    "ratio": _lacks_ratio,
    "trend": _lacks_trend,
    "finding": _lacks_finding,
    "grade": _lacks_grade,
    "infection": _lacks_infection,
    "response": _lacks_response,
}


# Each kind of criterion has a reader, `(node, evaluation) -> (value, kept)`, which decides
# and keeps what it read (immutable values, never the facts), and an explainer,
# `(evaluation, node, value, kept) -> Verdict`, which spells it out when asked for.

_T, _F, _U = Tri.TRUE, Tri.FALSE, Tri.UNKNOWN


def _read_threshold(n: _Node) -> Read:
    op, limit, validity, _ = n.args
    code = n.spec.observation

    def read(ev: Evaluation) -> tuple[Tri, Any]:
        latest = ev.facts.latest(code, validity)
        if latest is None:
            return _U, None
        return (_T if op(latest[1], limit) else _F), latest

    return read


def _threshold(ev: Evaluation, n: _Node, value: Tri, latest: Any) -> Verdict:
    t: m.Threshold = n.spec
    _, limit, _, unit = n.args
    if latest is None:
        return _missing(n.name, _lacks_value(n, latest), f"no recent {t.observation} value")
    at, v = latest
    return Verdict(
        n.name,
        value,
        f"{t.observation} {v:g} {t.op} {limit:g} {unit}",
        (Reading(t.observation, v, unit, at),),
    )


def _read_ratio(n: _Node) -> Read:
    r: m.Ratio = n.spec
    op, factor, fixed, _, validity, _ = n.args
    code, if_abnormal = r.observation, r.baseline_if_abnormal

    def read(ev: Evaluation) -> tuple[Tri, Any]:
        facts = ev.facts
        latest = facts.latest(code, validity)
        if latest is None:
            return _U, None
        base = facts.baseline.get(code)
        ref = fixed
        if ref is None:
            if base is None:
                return _U, (latest, None)
            ref = base[1]
        elif if_abnormal and base is not None and op(base[1], ref):
            ref = base[1]
        return (_T if op(latest[1], factor * ref) else _F), (latest, base)

    return read


def _ratio(ev: Evaluation, n: _Node, value: Tri, kept: Any) -> Verdict:
    r: m.Ratio = n.spec
    op, factor, ref, ref_name, _, unit = n.args
    if kept is None:
        return _missing(n.name, _lacks_ratio(n, kept), f"no recent {r.observation} value")
    (at, v), base = kept
    read = Reading(r.observation, v, unit, at)
    if ref is None:
        if base is None:
            return _missing(n.name, _lacks_ratio(n, kept), f"no baseline {r.observation}", (read,))
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
        value,
        f"{r.observation} {v:g} {r.op} {factor:g} x {ref_name} {ref:g} {unit}",
        (read, ref_read),
    )


def _read_trend(n: _Node) -> Read:
    t: m.Trend = n.spec
    hours, _, flat = n.args
    code, direction = t.observation, t.direction

    def read(ev: Evaluation) -> tuple[Tri, Any]:
        # The direction now: the latest fresh value against the one before it, however old
        # (an older value from before a peak must not hide a fall; a rise after a gap is a
        # rise).
        points = ev.facts.trend_points(code, hours)
        if not points:
            return _U, None
        (_, first), (_, last) = points
        band = abs(first) * flat  # changes within the band are flat
        if direction == "rising":
            ok = last > first + band
        elif direction == "falling":
            ok = last < first - band
        else:
            ok = last >= first - band
        return (_T if ok else _F), points

    return read


def _trend(ev: Evaluation, n: _Node, value: Tri, points: Any) -> Verdict:
    t: m.Trend = n.spec
    hours, unit, _ = n.args
    if points is None:
        return _missing(
            n.name,
            _lacks_trend(n, points),
            f"fewer than two {t.observation} values, or the latest older than {hours:g} h",
        )
    (t0, first), (t1, last) = points
    return Verdict(
        n.name,
        value,
        f"{t.observation} {first:g} -> {last:g} {unit} (latest against the one before) "
        f"({t.direction.replace('_', ' ')}: {'yes' if value is _T else 'no'})",
        (Reading(t.observation, first, unit, t0), Reading(t.observation, last, unit, t1)),
    )


def _read_finding(n: _Node, ev: Evaluation) -> tuple[Tri, Any]:
    f: m.FindingTest = n.spec
    absent_unless_recorded, valid = n.args
    rec = ev.facts.findings.get(f.code)
    expired = rec is not None and ev.facts.hours_since(rec[0]) > valid
    if rec is None or expired:
        return (_F if absent_unless_recorded else _U), (rec, expired)
    _, present, grade = rec
    if not present:
        return _F, (rec, expired)
    if f.min_grade is None:
        return _T, (rec, expired)
    if grade is None:
        return _U, (rec, expired)
    return (_T if grade >= f.min_grade else _F), (rec, expired)


def _finding(ev: Evaluation, n: _Node, value: Tri, kept: Any) -> Verdict:
    f: m.FindingTest = n.spec
    absent_unless_recorded, valid = n.args
    rec, expired = kept
    if rec is None or expired:
        why = f"expired (recorded {format_time(rec[0])}, valid {valid:g} h)" if rec else None
        if absent_unless_recorded:
            detail = f"{f.code} {why or 'not recorded'} (counts as absent)"
            return Verdict(n.name, Tri.FALSE, detail)
        return _missing(n.name, _lacks_finding(n, kept), f"{f.code} {why or 'not assessed'}")
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
        what = _lacks_finding(n, kept)
        return _missing(n.name, what, f"{f.code} present, grade unknown", read)
    return Verdict(
        n.name,
        value,
        f"{f.code} grade {grade} >= {f.min_grade}: {'yes' if value is _T else 'no'}",
        read,
    )


def _read_grade(n: _Node) -> Read:
    gt: m.GradeTest = n.spec
    op, validity = n.args
    of, peak_wanted, value = gt.of, gt.peak, gt.value

    def read(ev: Evaluation) -> tuple[Tri, Any]:
        facts = ev.facts
        grades = facts.grades[of]
        if not grades:
            return _U, None
        last = grades[-1]
        if facts.hours_since(last[0]) > validity:
            return _U, (last, None)
        if peak_wanted:
            peak = facts.peaks[of]
            return (_T if op(last[1], peak) else _F), (last, peak)
        return (_T if op(last[1], value) else _F), (last, None)

    return read


def _grade(ev: Evaluation, n: _Node, value: Tri, kept: Any) -> Verdict:
    gt: m.GradeTest = n.spec
    _, validity = n.args
    label = f"{gt.of.upper()} grade"
    if kept is None:
        return _missing(n.name, _lacks_grade(n, kept), f"{label} not assessed")
    (at, latest), peak = kept
    if value is _U:
        return _missing(
            n.name,
            _lacks_grade(n, kept),
            f"{label} last assessed {format_time(at)}, older than {validity:g} h",
        )
    read = Reading(f"{gt.of}_grade", latest, None, at)
    if gt.peak:
        return Verdict(
            n.name,
            value,
            f"{label} {latest} {gt.op} peak {peak}",
            (read, Reading(f"peak {gt.of}_grade", peak)),
        )
    return Verdict(n.name, value, f"{label} {latest} {gt.op} {gt.value}", (read,))


def _read_infection(n: _Node, ev: Evaluation) -> tuple[Tri, Any]:
    rec = ev.facts.infection
    if rec is None:
        return _U, None
    return (_T if rec[1] in n.spec.status else _F), rec


def _infection(ev: Evaluation, n: _Node, value: Tri, rec: Any) -> Verdict:
    if rec is None:
        return _missing(n.name, _lacks_infection(n, rec), "infection not assessed")
    return Verdict(
        n.name, value, f"infection {rec[1]}", (Reading("infection", rec[1], None, rec[0]),)
    )


def _read_assessed(n: _Node, ev: Evaluation) -> tuple[Tri, Any]:
    rec = ev.facts.antimicrobials
    started = rec is not None and rec[1]
    return (_T if started == n.spec.antimicrobials else _F), rec


def _assessed(ev: Evaluation, n: _Node, value: Tri, rec: Any) -> Verdict:
    started = rec is not None and rec[1]
    reads = (Reading("antimicrobials", rec[1], None, rec[0]),) if rec else ()
    detail = "antimicrobials started" if started else "no antimicrobials recorded"
    return Verdict(n.name, value, detail, reads)


def _read_response(n: _Node, ev: Evaluation) -> tuple[Tri, Any]:
    r: m.ResponseTest = n.spec
    responses = ev.facts.responses
    # A response charted at the time the line started belongs to the order set that started
    # it, whose facts come before its treatments: it is not a response on this line.
    if not responses or responses[-1][0] <= ev.line_start:
        return (_F if r.unrecorded == "false" else _U), None
    last = responses[-1]
    return (_T if last[1] in r.among else _F), last


def _response(ev: Evaluation, n: _Node, value: Tri, last: Any) -> Verdict:
    if last is None:
        if value is _F:
            return Verdict(n.name, Tri.FALSE, "no response assessment since the line started")
        return _missing(
            n.name, _lacks_response(n, last), "no response assessment since the line started"
        )
    at, kind = last
    return Verdict(n.name, value, f"latest response {kind}", (Reading("response", kind, None, at),))


def _read_therapy(n: _Node, ev: Evaluation) -> tuple[Tri, Any]:
    t: m.TherapyTest = n.spec
    found = ev.facts.doses_within(
        n.args[0], classes=t.classes, drugs=t.drugs, indications=t.indication, formulary=t.formulary
    )
    return (_T, found[-1]) if found else (_F, None)


def _therapy(ev: Evaluation, n: _Node, value: Tri, d: Any) -> Verdict:
    t: m.TherapyTest = n.spec
    (hours,) = n.args
    if d is None:
        what = ", ".join((*t.classes, *t.drugs))
        return Verdict(n.name, Tri.FALSE, f"no {what} within {hours:g} h")
    return Verdict(
        n.name,
        Tri.TRUE,
        f"{d.drug} at {format_time(d.at)} (within {hours:g} h)",
        (Reading("dose", d.drug, None, d.at),),
    )


def _read_risk(n: _Node, ev: Evaluation) -> tuple[Tri, Any]:
    among = n.spec.among
    factors = [f for f in ev.facts.risk_factors if not among or f in among]
    return (_T if len(factors) >= n.args[0] else _F), factors


def _risk(ev: Evaluation, n: _Node, value: Tri, factors: Any) -> Verdict:
    (need,) = n.args
    return Verdict(
        n.name,
        value,
        f"{len(factors)} risk factor(s) (need {need:g}): {', '.join(factors) or 'none'}",
        (Reading("risk_factors", factors),),
    )


def _duration(
    since: str, what: str, reading: str
) -> tuple[Callable[[_Node, Evaluation], tuple[Tri, Any]], Explainer]:
    def read(n: _Node, ev: Evaluation) -> tuple[Tri, Any]:
        op, limit = n.args
        start: datetime = ev.line_start if since == "line_started_at" else ev.facts.infusion_at
        hours = ev.facts.hours_since(start)
        return (_T if op(hours, limit) else _F), (hours, start)

    def explain(ev: Evaluation, n: _Node, value: Tri, kept: Any) -> Verdict:
        d: m.Duration = n.spec
        _, limit = n.args
        hours, start = kept
        return Verdict(
            n.name,
            value,
            f"{hours:g} h {what} {d.op} {limit:g} h",
            (Reading(reading, round(hours, 3), "h", start),),
        )

    return read, explain


# Kleene logic over the children: `all_of` stops at a FALSE child, `any_of` at a TRUE one
# (when the result is UNKNOWN nothing decided it, so every child was evaluated and names what
# is missing). Each keeps how many children it evaluated.


Kids = list[tuple[str, Callable[[Evaluation], tuple[Tri, Any]]]]
#: the child value that decides each short-circuiting combinator.
_DECISIVE = {"all_of": _F, "any_of": _T}


def _read_kleene(decisive: Tri, result: Tri, kids: Kids, ev: Evaluation) -> tuple[Tri, Any]:
    values, payloads = ev.values, ev._payload
    k = 0
    for child, read in kids:
        v = values.get(child)
        if v is None:
            v, payloads[child] = read(ev)
            values[child] = v
        k += 1
        if v is decisive:
            return v, k
        if v is _U:
            result = _U
    return result, k


def _read_not(node: _Node, ev: Evaluation) -> tuple[Tri, Any]:
    values = [ev.value(c) for c in node.children]
    return values[0].negate(), len(values)


def _read_count(node: _Node, ev: Evaluation) -> tuple[Tri, Any]:
    values = [ev.value(c) for c in node.children]
    need = node.spec.at_least
    t, u = values.count(_T), values.count(_U)
    return (_T if t >= need else _F if t + u < need else _U), len(values)


def _combine(ev: Evaluation, n: _Node, value: Tri, k: Any) -> Verdict:
    kind = n.kind
    evaluated = n.children[:k]
    if kind == "all_of":
        op = "all of"
    elif kind == "any_of":
        op = "any of"
    elif kind == "not_":
        op = "not"
    else:
        op = f"at least {n.spec.at_least} of"
    values = tuple(ev.values[c] for c in evaluated)
    return Verdict(n.name, value, op, (), ev.missing(n.name), n.children, values)


Reader = Callable[[_Node, Evaluation], tuple[Tri, Any]]
#: a reader bound to its node.
Read = Callable[[Evaluation], tuple[Tri, Any]]
Explainer = Callable[[Evaluation, _Node, Tri, Any], Verdict]

_ON_LINE = _duration("line_started_at", "on the current line", "hours_on_line")
_SINCE_INFUSION = _duration("infusion_at", "since infusion", "hours_since_infusion")
#: kind -> (its reader, or a function binding it to a node (`_BOUND`); its explainer).
_KINDS: dict[str, tuple[Reader | Callable[[_Node], Read] | None, Explainer]] = {
    "threshold": (_read_threshold, _threshold),
    "ratio": (_read_ratio, _ratio),
    "trend": (_read_trend, _trend),
    "finding": (_read_finding, _finding),
    "grade": (_read_grade, _grade),
    "infection": (_read_infection, _infection),
    "assessed": (_read_assessed, _assessed),
    "response": (_read_response, _response),
    "therapy": (_read_therapy, _therapy),
    "risk": (_read_risk, _risk),
    "time_on_line": _ON_LINE,
    "time_since_infusion": _SINCE_INFUSION,
    "all_of": (None, _combine),  # compiled, or `_read_kleene` bound to its children's readers
    "any_of": (None, _combine),
    "not_": (_read_not, _combine),
    "count_of": (_read_count, _combine),
}
#: the hottest kinds bind their node's numbers once, in a closure.
_BOUND = frozenset({"threshold", "ratio", "trend", "grade"})


def _bind(n: _Node) -> Read:
    """The reader of a single criterion, bound to its node."""
    reader = _KINDS[n.kind][0]
    assert reader is not None
    if n.kind in _BOUND:
        return reader(n)  # type: ignore[call-arg,return-value]
    return partial(reader, n)  # type: ignore[return-value]


_EXPLAIN: dict[str, Explainer] = {kind: pair[1] for kind, pair in _KINDS.items()}
