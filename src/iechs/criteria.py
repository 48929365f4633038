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
from bisect import bisect_left
from collections.abc import Callable
from datetime import datetime
from typing import Any

import attrs

from . import model as m
from .timeline import Patient, format_time

__all__ = ["Evaluation", "Facts", "Reading", "Tri", "Verdict", "derived_risk_factors"]

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


@attrs.frozen
class Reading:
    """One value a criterion read: what, its value (and unit), and when it was recorded."""

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


@attrs.frozen
class Verdict:
    name: str
    value: Tri
    detail: str
    reads: tuple[Reading, ...] = ()
    missing: tuple[str, ...] = ()
    children: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"result": self.value.value, "detail": self.detail}
        if self.reads:
            out["reads"] = [r.to_json() for r in self.reads]
        if self.missing:
            out["missing"] = list(self.missing)
        if self.children:
            out["combines"] = list(self.children)
        return out


def derived_risk_factors(patient: Patient, known: set[str] | None = None) -> tuple[str, ...]:
    """Risk factors listed for the patient plus those the product implies (CD28, CD22)."""
    factors = list(patient.risk_factors)
    product = patient.product
    if product is not None:
        if (product.costimulatory_domain or "").strip().upper() == "CD28":
            factors.append("cd28_costimulation")
        if "CD22" in (product.target or "").upper():
            factors.append("cd22_target")
    unique = sorted(set(factors))
    return tuple(f for f in unique if known is None or f in known)


class Facts:
    """What an episode knows so far, in event time. Mutated only by the engine."""

    def __init__(self, patient: Patient, known_risk_factors: set[str]) -> None:
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
        self.last_corticosteroid_at: datetime | None = None
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

    def window(self, code: str, hours: float) -> list[tuple[datetime, float]]:
        s = self.series.get(code)
        if not s:
            return []
        times, values = s
        start = bisect_left(times, self.now.timestamp() - hours * 3600, key=lambda t: t.timestamp())
        return list(zip(times[start:], values[start:], strict=True))

    def hours_since(self, t: datetime) -> float:
        return (self.now - t).total_seconds() / 3600

    def antimicrobials_started(self) -> tuple[datetime, bool] | None:
        return self.antimicrobials

    def infection_untreated(self) -> bool:
        """Infection suspected or confirmed and no antimicrobials: the engine's safety check."""
        if self.infection is None or self.infection[1] not in ("suspected", "confirmed"):
            return False
        return not (self.antimicrobials is not None and self.antimicrobials[1])

    def icans_active(self) -> bool:
        g = self.grades["icans"]
        return bool(g) and g[-1][1] >= 1

    def crs_active(self) -> bool:
        g = self.grades["crs"]
        return bool(g) and g[-1][1] >= 1


class Evaluation:
    """Evaluates criteria of one guideline over the facts at one moment; memoised."""

    def __init__(self, g: m.Guideline, facts: Facts) -> None:
        self.g = g
        self.facts = facts
        self.verdicts: dict[str, Verdict] = {}

    def __call__(self, name: str) -> Verdict:
        v = self.verdicts.get(name)
        if v is None:
            v = self._evaluate(name, self.g.criteria[name])
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

    # --- leaves ------------------------------------------------------------------------------

    def _evaluate(self, name: str, c: m.Criterion) -> Verdict:
        kind = c.kind
        spec = getattr(c, kind)
        if kind in ("all_of", "any_of", "not_", "count_of"):
            return self._combine(name, c)
        method: Callable[[str, Any], Verdict] = getattr(self, f"_{kind}")
        return method(name, spec)

    def _validity(self, within: m.Number | None) -> float:
        if within is not None:
            return self.g.param(within)
        p = self.g.parameters.get("lab_validity_hours")
        return p.value if p is not None else float("inf")

    def _unit(self, code: str) -> str:
        return self.g.observations[code].unit

    def _threshold(self, name: str, t: m.Threshold) -> Verdict:
        latest = self.facts.latest(t.observation, self._validity(t.within_hours))
        obs = self.g.observations[t.observation]
        limit = self.g.param(t.value) * (obs.units[t.unit] if t.unit else 1.0)
        if latest is None:
            return self._missing(name, t.observation, f"no recent {t.observation} value")
        at, value = latest
        ok = _OPS[t.op](value, limit)
        return Verdict(
            name,
            Tri.of(ok),
            f"{t.observation} {value:g} {t.op} {limit:g} {obs.unit}",
            (Reading(t.observation, value, obs.unit, at),),
        )

    def _ratio(self, name: str, r: m.Ratio) -> Verdict:
        latest = self.facts.latest(r.observation, self._validity(r.within_hours))
        unit = self._unit(r.observation)
        if latest is None:
            return self._missing(name, r.observation, f"no recent {r.observation} value")
        at, value = latest
        reads = [Reading(r.observation, value, unit, at)]
        factor = self.g.param(r.factor)
        if r.reference == "baseline":
            base = self.facts.baseline.get(r.observation)
            if base is None:
                return self._missing(
                    name,
                    f"baseline {r.observation} (value at infusion)",
                    f"no baseline {r.observation}",
                    tuple(reads),
                )
            ref, ref_name = base[1], "baseline"
            reads.append(Reading(f"baseline {r.observation}", ref, unit, base[0]))
        else:
            ref, ref_name = self.g.param(r.reference), r.reference.removeprefix("$")
            reads.append(Reading(ref_name, ref, unit))
        ok = _OPS[r.op](value, factor * ref)
        return Verdict(
            name,
            Tri.of(ok),
            f"{r.observation} {value:g} {r.op} {factor:g} x {ref_name} {ref:g} {unit}",
            tuple(reads),
        )

    def _trend(self, name: str, t: m.Trend) -> Verdict:
        hours = self.g.param(t.window_hours)
        points = self.facts.window(t.observation, hours)
        unit = self._unit(t.observation)
        if len(points) < 2:
            return self._missing(
                name,
                f"{t.observation} (repeat within {hours:g} h for a trend)",
                f"fewer than two {t.observation} values in {hours:g} h",
            )
        (t0, first), (t1, last) = points[0], points[-1]
        ok = {"rising": last > first, "falling": last < first, "not_falling": last >= first}[
            t.direction
        ]
        return Verdict(
            name,
            Tri.of(ok),
            f"{t.observation} {first:g} -> {last:g} {unit} over {hours:g} h "
            f"({t.direction.replace('_', ' ')}: {'yes' if ok else 'no'})",
            (Reading(t.observation, first, unit, t0), Reading(t.observation, last, unit, t1)),
        )

    def _finding(self, name: str, f: m.FindingTest) -> Verdict:
        rec = self.facts.findings.get(f.code)
        if rec is None:
            if self.g.findings[f.code].unrecorded == "absent":
                return Verdict(name, Tri.FALSE, f"{f.code} not recorded (counts as absent)")
            return self._missing(name, f"finding {f.code}", f"{f.code} not assessed")
        at, present, grade = rec
        read = (
            Reading(
                f.code,
                present if grade is None else f"present, grade {grade}" if present else False,
                None,
                at,
            ),
        )
        if not present:
            return Verdict(name, Tri.FALSE, f"{f.code} absent", read)
        if f.min_grade is None:
            return Verdict(name, Tri.TRUE, f"{f.code} present", read)
        if grade is None:
            return self._missing(
                name, f"grade of {f.code}", f"{f.code} present, grade unknown", read
            )
        ok = grade >= f.min_grade
        return Verdict(
            name,
            Tri.of(ok),
            f"{f.code} grade {grade} >= {f.min_grade}: {'yes' if ok else 'no'}",
            read,
        )

    def _grade(self, name: str, gt: m.GradeTest) -> Verdict:
        grades = self.facts.grades[gt.of]
        label = f"{gt.of.upper()} grade"
        if not grades:
            return self._missing(name, f"{label} (assessment)", f"{label} not assessed")
        at, latest = grades[-1]
        reads = [Reading(f"{gt.of}_grade", latest, None, at)]
        if gt.peak:
            peak = max(g for _, g in grades)
            reads.append(Reading(f"peak {gt.of}_grade", peak))
            ok = _OPS[gt.op](latest, peak)
            return Verdict(name, Tri.of(ok), f"{label} {latest} {gt.op} peak {peak}", tuple(reads))
        assert gt.value is not None
        ok = _OPS[gt.op](latest, gt.value)
        return Verdict(name, Tri.of(ok), f"{label} {latest} {gt.op} {gt.value}", tuple(reads))

    def _infection(self, name: str, i: m.InfectionTest) -> Verdict:
        rec = self.facts.infection
        if rec is None:
            return self._missing(name, "infection status (assessment)", "infection not assessed")
        ok = rec[1] in i.status
        return Verdict(
            name, Tri.of(ok), f"infection {rec[1]}", (Reading("infection", rec[1], None, rec[0]),)
        )

    def _assessed(self, name: str, a: m.Assessed) -> Verdict:
        rec = self.facts.antimicrobials
        started = rec is not None and rec[1]
        reads = (Reading("antimicrobials", rec[1], None, rec[0]),) if rec else ()
        detail = "antimicrobials started" if started else "no antimicrobials recorded"
        return Verdict(name, Tri.of(started == a.antimicrobials), detail, reads)

    def _response(self, name: str, r: m.ResponseTest) -> Verdict:
        since = self.facts.line_started_at
        recent = [x for x in self.facts.responses if x[0] >= since]
        if not recent:
            return self._missing(
                name,
                "response assessment on the current line",
                "no response assessment since the line started",
            )
        at, kind = recent[-1]
        return Verdict(
            name,
            Tri.of(kind in r.among),
            f"latest response {kind}",
            (Reading("response", kind, None, at),),
        )

    def _risk(self, name: str, r: m.RiskTest) -> Verdict:
        factors = [f for f in self.facts.risk_factors if not r.among or f in r.among]
        need = self.g.param(r.at_least)
        ok = len(factors) >= need
        return Verdict(
            name,
            Tri.of(ok),
            f"{len(factors)} risk factor(s) (need {need:g}): {', '.join(factors) or 'none'}",
            (Reading("risk_factors", factors),),
        )

    def _time_on_line(self, name: str, d: m.Duration) -> Verdict:
        hours = self.facts.hours_since(self.facts.line_started_at)
        limit = self.g.param(d.hours)
        ok = _OPS[d.op](hours, limit)
        return Verdict(
            name,
            Tri.of(ok),
            f"{hours:g} h on the current line {d.op} {limit:g} h",
            (Reading("hours_on_line", round(hours, 3), "h", self.facts.line_started_at),),
        )

    def _time_since_infusion(self, name: str, d: m.Duration) -> Verdict:
        hours = self.facts.hours_since(self.facts.infusion_at)
        limit = self.g.param(d.hours)
        ok = _OPS[d.op](hours, limit)
        return Verdict(
            name,
            Tri.of(ok),
            f"{hours:g} h since infusion {d.op} {limit:g} h",
            (Reading("hours_since_infusion", round(hours, 3), "h", self.facts.infusion_at),),
        )

    def _missing(
        self, name: str, what: str, detail: str, reads: tuple[Reading, ...] = ()
    ) -> Verdict:
        return Verdict(name, Tri.UNKNOWN, detail, reads, (what,))

    # --- combinators -------------------------------------------------------------------------

    def _combine(self, name: str, c: m.Criterion) -> Verdict:
        children = c.children
        verdicts = [self(n) for n in children]
        values = [v.value for v in verdicts]
        if c.all_of is not None:
            value, op = _and(values), "all of"
        elif c.any_of is not None:
            value, op = _or(values), "any of"
        elif c.not_ is not None:
            value, op = values[0].negate(), "not"
        else:
            assert c.count_of is not None
            k = c.count_of.at_least
            t = values.count(Tri.TRUE)
            u = values.count(Tri.UNKNOWN)
            value = Tri.TRUE if t >= k else Tri.FALSE if t + u < k else Tri.UNKNOWN
            op = f"at least {k} of"
        missing: list[str] = []
        if value is Tri.UNKNOWN:
            for v in verdicts:
                if v.value is Tri.UNKNOWN:
                    missing.extend(x for x in v.missing if x not in missing)
        summary = ", ".join(f"{n}={v.value.value}" for n, v in zip(children, verdicts, strict=True))
        return Verdict(name, value, f"{op}: {summary}", (), tuple(missing), children)


def _and(values: list[Tri]) -> Tri:
    if Tri.FALSE in values:
        return Tri.FALSE
    return Tri.UNKNOWN if Tri.UNKNOWN in values else Tri.TRUE


def _or(values: list[Tri]) -> Tri:
    if Tri.TRUE in values:
        return Tri.TRUE
    return Tri.UNKNOWN if Tri.UNKNOWN in values else Tri.FALSE
