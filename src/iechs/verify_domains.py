"""The verifier's abstraction of one moment: what the guideline's criteria and the contract's
facts can be, jointly, and a solver that finds such a moment (or proves there is none).

A guard is three-valued (Kleene: TRUE, FALSE, UNKNOWN) over *leaf* criteria. Leaves that read
the same quantity form one `Domain`: the latest value of an observation with the one before it
and the patient's baseline (thresholds, ratios and trends on it), a finding, the CRS or ICANS
grade with its peak, the infection status, the antimicrobials recorded, the latest response on
the line, the time on the line, ... The contract's facts (infection suspected or confirmed,
antimicrobial recorded, worsening recorded, minimum time on the line elapsed) live in the same
domains, computed from the same representative values, so a property and a guard always agree
on what the patient's data are.

Each domain has a finite set of *concrete* representative points (e.g. ferritin 14,000 ng/mL
measured now, 15,000 before it, baseline 400), including the unknown points the engine can meet
(no value, a stale value, a single value for a trend, a baseline missing, never assessed). A
point's truth values are computed with the engine's semantics from its concrete values, so every
point is realisable; the points are chosen around every limit, band and window of the leaves so
that every combination of truth values the leaves can take is met. Searching the points is then
exact for one moment. A point also says how to realise it in a timeline (`iechs.verify_witness`).
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from . import model as m

__all__ = [
    "FACTS",
    "Domain",
    "FindingData",
    "Formula",
    "FreeData",
    "GradeData",
    "InfectionData",
    "Kleene",
    "ObsData",
    "Point",
    "ResponseData",
    "RiskData",
    "Solver",
    "TimeData",
    "TreatmentsData",
    "Witness",
    "atom",
    "conj",
    "disj",
    "neg",
]

OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}

# --- formulas --------------------------------------------------------------------------------

# ("atom", name) | ("not", f) | ("and", (f, ...)) | ("or", (f, ...)) | ("atleast", k, (f, ...))
# | ("const", bool). Atoms: "T:<leaf>" (the leaf is TRUE), "F:<leaf>" (FALSE), "C:<fact>".
Formula = tuple[Any, ...]
TRUE: Formula = ("const", True)
FALSE: Formula = ("const", False)

#: The contract's facts, and the domain each lives in.
FACTS: dict[str, str] = {
    "infection_active": "infection",
    "antimicrobials_on": "treatments",
    "worsening": "response",
    "response_positive": "response",
    "min_time": "time_on_line",
}


def atom(name: str) -> Formula:
    return ("atom", name)


def neg(f: Formula) -> Formula:
    if f[0] == "const":
        return FALSE if f[1] else TRUE
    if f[0] == "not":
        return f[1]  # type: ignore[no-any-return]
    return ("not", f)


def _junction(op: str, parts: Iterable[Formula]) -> Formula:
    absorbing = op == "or"
    out: list[Formula] = []
    for p in parts:
        if p[0] == "const":
            if p[1] is absorbing:
                return p
            continue
        out.append(p)
    if not out:
        return ("const", not absorbing)
    return out[0] if len(out) == 1 else (op, tuple(out))


def conj(*parts: Formula) -> Formula:
    return _junction("and", parts)


def disj(*parts: Formula) -> Formula:
    return _junction("or", parts)


def atleast(k: int, parts: tuple[Formula, ...]) -> Formula:
    if k <= 0:
        return TRUE
    if k > len(parts):
        return FALSE
    return ("atleast", k, parts)


def atoms_of(f: Formula, out: dict[str, None] | None = None) -> dict[str, None]:
    out = {} if out is None else out
    op = f[0]
    if op == "atom":
        out[f[1]] = None
    elif op == "not":
        atoms_of(f[1], out)
    elif op in ("and", "or"):
        for x in f[1]:
            atoms_of(x, out)
    elif op == "atleast":
        for x in f[2]:
            atoms_of(x, out)
    return out


def simplify(f: Formula, env: dict[str, bool]) -> Formula:
    op = f[0]
    if op == "const":
        return f
    if op == "atom":
        v = env.get(f[1])
        return f if v is None else (TRUE if v else FALSE)
    if op == "not":
        return neg(simplify(f[1], env))
    if op in ("and", "or"):
        return _junction(op, (simplify(x, env) for x in f[1]))
    k, parts = f[1], [simplify(x, env) for x in f[2]]
    trues = sum(1 for x in parts if x == TRUE)
    open_ = tuple(x for x in parts if x[0] != "const")
    if trues >= k:
        return TRUE
    if trues + len(open_) < k:
        return FALSE
    return ("atleast", k - trues, open_)


class Kleene:
    """The guideline's criteria as pairs of two-valued formulas: "is TRUE" and "is FALSE" (a
    criterion is UNKNOWN when neither holds), over the atoms of its leaves."""

    def __init__(self, g: m.Guideline) -> None:
        self.g = g
        self._memo: dict[str, tuple[Formula, Formula]] = {}

    def pair(self, name: str) -> tuple[Formula, Formula]:
        got = self._memo.get(name)
        if got is not None:
            return got
        c = self.g.criteria[name]
        if c.all_of is not None:
            kids = [self.pair(n) for n in c.all_of]
            got = (conj(*(t for t, _ in kids)), disj(*(f for _, f in kids)))
        elif c.any_of is not None:
            kids = [self.pair(n) for n in c.any_of]
            got = (disj(*(t for t, _ in kids)), conj(*(f for _, f in kids)))
        elif c.not_ is not None:
            t, f = self.pair(c.not_)
            got = (f, t)
        elif c.count_of is not None:
            kids = [self.pair(n) for n in c.count_of.of]
            k, n = c.count_of.at_least, len(kids)
            got = (
                atleast(k, tuple(t for t, _ in kids)),
                atleast(n - k + 1, tuple(f for _, f in kids)),
            )
        else:
            got = (atom(f"T:{name}"), atom(f"F:{name}"))
        self._memo[name] = got
        return got

    def true(self, name: str) -> Formula:
        return self.pair(name)[0]

    def false(self, name: str) -> Formula:
        return self.pair(name)[1]

    def guard_true(self, when: Iterable[str], unless: Iterable[str] = ()) -> Formula:
        return conj(*(self.true(n) for n in when), *(self.false(n) for n in unless))

    def guard_false(self, when: Iterable[str], unless: Iterable[str] = ()) -> Formula:
        return disj(*(self.false(n) for n in when), *(self.true(n) for n in unless))

    def guard_unknown(self, when: Iterable[str], unless: Iterable[str] = ()) -> Formula:
        when, unless = tuple(when), tuple(unless)
        return conj(neg(self.guard_true(when, unless)), neg(self.guard_false(when, unless)))

    def leaves(self, names: Iterable[str], out: dict[str, None] | None = None) -> dict[str, None]:
        out = {} if out is None else out
        for n in names:
            c = self.g.criteria[n]
            if c.children:
                self.leaves(c.children, out)
            else:
                out[n] = None
        return out


# --- representative points -------------------------------------------------------------------


@attrs.frozen
class ObsData:
    """An observation: the latest value (None: never measured) measured `age` hours before
    the moment, the value before it, and the patient's baseline."""

    code: str
    latest: float | None
    age: float = 0.0
    previous: float | None = None
    baseline: float | None = None


@attrs.frozen
class FindingData:
    code: str
    #: None: never recorded; else (present, CTCAE grade or None)
    state: tuple[bool, int | None] | None


@attrs.frozen
class GradeData:
    of: str
    #: None: never assessed; else (latest, peak so far)
    grades: tuple[int, int] | None


@attrs.frozen
class InfectionData:
    status: str | None


@attrs.frozen
class ResponseData:
    #: None: no response recorded since the line started
    value: str | None


@attrs.frozen
class TimeData:
    kind: str  # time_on_line | time_since_infusion
    hours: float


@attrs.frozen
class RiskData:
    factors: tuple[str, ...]


@attrs.frozen
class TreatmentsData:
    """What was given: the latest assessment's antimicrobials flag (None: never assessed),
    and doses (drug, class, hours before the moment, indication)."""

    flag: bool | None
    doses: tuple[tuple[str, str | None, float, str], ...] = ()


@attrs.frozen
class FreeData:
    name: str
    tri: str


@attrs.frozen
class Point:
    """One representative value of a domain: its truth value for each of the domain's leaves
    ("T", "F", "U") and facts, a label for people, and what realises it."""

    label: str
    tri: tuple[str, ...]
    facts: tuple[bool, ...]
    data: Any


@attrs.frozen
class Domain:
    key: str
    leaves: tuple[str, ...]
    facts: tuple[str, ...]
    points: tuple[Point, ...]


Witness = dict[str, Point]


def _finite(x: float) -> bool:
    return isinstance(x, float | int) and math.isfinite(x)


def nice(x: float, lo: float, hi: float) -> float:
    """A round number strictly between lo and hi, as close to x as rounding allows."""
    if not (_finite(x) and lo < x < hi):
        return x
    for digits in range(1, 10):
        if x == 0:
            return 0.0
        scale = 10 ** (digits - 1 - math.floor(math.log10(abs(x))))
        r = round(x * scale) / scale
        if lo < r < hi:
            return float(r)
    return float(x)


def cut_points(limits: Iterable[float], lo: float, hi: float) -> list[float]:
    """Values around and between limits, within [lo, hi], highest first: every side of every
    limit (and the limit itself, for == and >=) is met."""
    ls = sorted({float(x) for x in limits if _finite(x) and lo <= x <= hi})
    if not ls:
        mid = 100.0 if lo < 100.0 < hi else (lo + hi) / 2
        return [nice(mid, lo, hi)]
    pts = list(ls)
    pts += [nice((a + b) / 2, a, b) for a, b in itertools.pairwise(ls)]
    top = ls[-1]
    above = top * 1.1 if top > 0 else top + 1.0
    above = min(above, hi)
    if above > top:
        pts.append(nice(above, top, hi + (1 if above == hi else 0)) if above < hi else hi)
    bottom = ls[0]
    if bottom > lo:
        below = bottom / 2 if bottom > 0 and bottom / 2 >= lo else lo
        pts.append(nice(below, lo - 1, bottom) if below > lo else lo)
    return sorted({round(p, 6) for p in pts}, reverse=True)


def leaf_key(c: m.Criterion) -> str:
    spec = getattr(c, c.kind)
    if isinstance(spec, m.Threshold | m.Ratio | m.Trend):
        return f"obs:{spec.observation}"
    if isinstance(spec, m.FindingTest):
        return f"finding:{spec.code}"
    if isinstance(spec, m.GradeTest):
        return f"grade:{spec.of}"
    simple = {
        "infection": "infection",
        "assessed": "treatments",
        "response": "response",
        "therapy": "treatments",
        "risk": "risk",
        "time_on_line": "time_on_line",
        "time_since_infusion": "time_since_infusion",
    }
    return simple.get(c.kind, f"free:{c.kind}")


class DomainBuilder:
    """Builds each domain of a guideline once, with every leaf reading it and its facts."""

    def __init__(
        self,
        g: m.Guideline,
        min_hours: float | None,
        amx_classes: Iterable[str] = (),
        suppressive: Iterable[str] | None = None,
    ) -> None:
        self.g = g
        self.min_hours = min_hours
        self.amx_classes = tuple(amx_classes)
        #: classes that suppress immunity (never an antimicrobial, even given for infection)
        self.suppressive = frozenset(
            suppressive
            if suppressive is not None
            else (cid for cid, dc in g.drug_classes.items() if dc.immunosuppressive)
        )
        p = g.parameters.get("lab_validity_hours")
        self.validity = p.value if p is not None else math.inf
        p = g.parameters.get("therapy_continuity_hours")
        self.continuity = p.value if p is not None else 24.0
        self.by_key: dict[str, list[str]] = {}
        for name, c in g.criteria.items():
            if c.children or len(c.kinds) != 1:
                continue
            key = leaf_key(c)
            if key.startswith("free:"):
                key = f"free:{name}"
            self.by_key.setdefault(key, []).append(name)
        for key in FACTS.values():
            self.by_key.setdefault(key, [])

    def num(self, ref: m.Number | None, default: float = math.inf) -> float:
        if ref is None:
            return default
        try:
            return float(self.g.param(ref))
        except KeyError:
            return math.nan

    def build(self, key: str) -> Domain:
        names = tuple(self.by_key.get(key, ()))
        facts = tuple(f for f, k in FACTS.items() if k == key)
        kind, _, arg = key.partition(":")
        specs = [getattr(self.g.criteria[n], self.g.criteria[n].kind) for n in names]
        maker = getattr(self, f"_{kind}")
        values, label, truth, fact = maker(arg, names, specs)
        seen: dict[tuple[tuple[str, ...], tuple[bool, ...]], Point] = {}
        for v in values:
            tri = truth(v)
            fx = fact(v)
            seen.setdefault((tri, fx), Point(label(v), tri, fx, v))
        return Domain(key, names, facts, tuple(seen.values()))

    # --- one method per domain kind: (values, label, truth, facts) ------------------------------

    def _obs(self, code: str, names: tuple[str, ...], specs: list[Any]) -> Any:
        obs = self.g.observations[code]
        lo, hi = (float(x) for x in obs.plausible)
        if not (_finite(lo) and _finite(hi) and lo < hi):
            lo, hi = 0.0, 1e9
        plan = self._obs_plan(obs, specs)
        pcts = plan.pcts

        def label(d: ObsData) -> str:
            if d.latest is None:
                text = f"no fresh {code} value"
            else:
                text = f"{code} {d.latest:,g} {obs.unit}"
                if d.age:
                    text += f" measured {d.age:g} h before"
                if d.previous is not None and pcts:
                    text += f" (previous {d.previous:,g})"
            if d.baseline is not None:
                text += f", baseline {d.baseline:,g}"
            return text

        def truth(d: ObsData) -> tuple[str, ...]:
            return tuple(_obs_tri(kind, a, d) for kind, a in plan.leaves)

        return _obs_values(code, plan, lo, hi), label, truth, lambda d: ()

    def relatch(self, d: ObsData, previous: float) -> ObsData | None:
        """A value to follow `previous` (the timeline's last value) that gives every leaf on
        this observation the truth value `d` gives it: so `d` needs no value of its own before
        it. None when no such value exists."""
        names = self.by_key.get(f"obs:{d.code}", [])
        obs = self.g.observations[d.code]
        plan = self._obs_plan(
            obs, [getattr(self.g.criteria[n], self.g.criteria[n].kind) for n in names]
        )
        want = tuple(_obs_tri(kind, a, d) for kind, a in plan.leaves)
        lo, hi = (float(x) for x in obs.plausible)
        rel = [f * d.baseline for f in plan.base_factors if d.baseline is not None]
        moves = [previous * (1 + sign * p) for p in plan.pcts for sign in (1, -1)]
        for v in cut_points([*plan.abs_limits, *rel, *moves, previous], lo, hi):
            cand = ObsData(d.code, v, d.age, previous, d.baseline)
            if tuple(_obs_tri(kind, a, cand) for kind, a in plan.leaves) == want:
                return cand
        return None

    def _obs_plan(self, obs: m.ObservationDef, specs: list[Any]) -> _ObsPlan:
        """Each leaf with its numbers resolved, and the limits, bands and windows they set."""
        leaves: list[tuple[str, tuple[Any, ...]]] = []
        abs_limits: list[float] = []
        base_factors: list[float] = []
        abnormal_refs: list[float] = []
        for spec in specs:
            if isinstance(spec, m.Threshold):
                factor = obs.units.get(spec.unit, math.nan) if spec.unit else 1.0
                limit = self.num(spec.value) * factor
                leaves.append(
                    ("thr", (OPS[spec.op], limit, self.num(spec.within_hours, self.validity)))
                )
                abs_limits.append(limit)
            elif isinstance(spec, m.Ratio):
                factor = self.num(spec.factor)
                valid = self.num(spec.within_hours, self.validity)
                if spec.reference == "baseline":
                    leaves.append(("base", (OPS[spec.op], factor, valid)))
                    base_factors.append(factor)
                    continue
                ref = self.num(spec.reference)
                leaves.append(
                    ("ratio", (OPS[spec.op], factor, ref, valid, spec.baseline_if_abnormal))
                )
                abs_limits.append(factor * ref)
                if spec.baseline_if_abnormal:
                    abnormal_refs.append(ref)
                    base_factors.append(factor)
            else:
                pct = self.num(spec.min_change_pct, 0.0) / 100
                leaves.append(("trend", (spec.direction, self.num(spec.window_hours), pct)))
        windows = sorted({w for w in (_window(*x) for x in leaves) if _finite(w) and w >= 0})
        return _ObsPlan(
            tuple(leaves),
            tuple(abs_limits),
            tuple(base_factors),
            tuple(abnormal_refs),
            tuple(sorted({x[1][2] for x in leaves if x[0] == "trend"})),
            (0.0, *(w + 1.0 for w in windows[:-1])),
        )

    def _finding(self, code: str, names: tuple[str, ...], specs: list[Any]) -> Any:
        fd = self.g.findings.get(code)
        graded = fd.graded if fd else True
        unknown = fd is not None and fd.unrecorded == "unknown"
        states: list[tuple[bool, int | None] | None] = [(True, None), (False, None)]
        if graded:
            states += [(True, grade) for grade in range(5, 0, -1)]
        # a finding never recorded counts as absent (unless it must be looked for): then
        # "not recorded" is the simplest witness of "absent"
        states.insert(len(states) if unknown else 0, None)

        def truth(v: FindingData) -> tuple[str, ...]:
            out = []
            for s in specs:
                if v.state is None:
                    out.append("U" if unknown else "F")
                    continue
                present, grade = v.state
                if not present:
                    out.append("F")
                elif s.min_grade is None:
                    out.append("T")
                elif grade is None:
                    out.append("U")
                else:
                    out.append("T" if grade >= s.min_grade else "F")
            return tuple(out)

        def label(v: FindingData) -> str:
            if v.state is None:
                return f"{code} not recorded"
            present, grade = v.state
            if not present:
                return f"{code} absent"
            return f"{code} present" + (f", grade {grade}" if grade else "")

        return [FindingData(code, s) for s in states], label, truth, lambda v: ()

    def _grade(self, of: str, names: tuple[str, ...], specs: list[Any]) -> Any:
        pairs: list[tuple[int, int] | None] = [
            (latest, peak) for peak in range(5) for latest in range(peak + 1)
        ]
        pairs.append(None)

        def truth(v: GradeData) -> tuple[str, ...]:
            if v.grades is None:
                return tuple("U" for _ in specs)
            latest, peak = v.grades
            return tuple(
                "T" if OPS[s.op](latest, peak if s.peak else s.value) else "F" for s in specs
            )

        def label(v: GradeData) -> str:
            if v.grades is None:
                return f"{of.upper()} not assessed"
            latest, peak = v.grades
            return f"{of.upper()} grade {latest}" + (f" (peak {peak})" if peak != latest else "")

        return [GradeData(of, p) for p in pairs], label, truth, lambda v: ()

    def _infection(self, _: str, names: tuple[str, ...], specs: list[Any]) -> Any:
        def truth(v: InfectionData) -> tuple[str, ...]:
            if v.status is None:
                return tuple("U" for _ in specs)
            return tuple("T" if v.status in s.status else "F" for s in specs)

        return (
            [InfectionData(s) for s in ("none", "suspected", "confirmed", None)],
            lambda v: "infection not assessed" if v.status is None else f"infection {v.status}",
            truth,
            lambda v: (v.status in ("suspected", "confirmed"),),
        )

    def _response(self, _: str, names: tuple[str, ...], specs: list[Any]) -> Any:
        def truth(v: ResponseData) -> tuple[str, ...]:
            if v.value is None:
                return tuple("F" if s.unrecorded == "false" else "U" for s in specs)
            return tuple("T" if v.value in s.among else "F" for s in specs)

        def label(v: ResponseData) -> str:
            if v.value is None:
                return "no response recorded on the line"
            return f"response on the line: {v.value}"

        values = ("improving", "stable", "worsening", "resolved", None)
        return (
            [ResponseData(x) for x in values],
            label,
            truth,
            lambda v: (v.value == "worsening", v.value in ("improving", "resolved")),
        )

    def _time_on_line(self, _: str, names: tuple[str, ...], specs: list[Any]) -> Any:
        return self._time("time_on_line", specs, self.min_hours)

    def _time_since_infusion(self, _: str, names: tuple[str, ...], specs: list[Any]) -> Any:
        return self._time("time_since_infusion", specs, None)

    def _time(self, kind: str, specs: list[Any], min_hours: float | None) -> Any:
        limits = [self.num(s.hours) for s in specs]
        if min_hours is not None:
            limits.append(min_hours)
        top = max([x for x in limits if _finite(x)] + [1.0])
        pts = cut_points(limits, 0.0, top * 4 + 24)

        def truth(v: TimeData) -> tuple[str, ...]:
            return tuple(
                "T" if OPS[s.op](v.hours, lim) else "F"
                for s, lim in zip(specs, limits, strict=False)
            )

        def fact(v: TimeData) -> tuple[bool, ...]:
            if kind != "time_on_line":
                return ()
            ok = min_hours is not None and _finite(min_hours) and v.hours >= min_hours
            return (ok,)

        what = "on the current line" if kind == "time_on_line" else "since infusion"
        return [TimeData(kind, p) for p in pts], lambda v: f"{v.hours:g} h {what}", truth, fact

    def _risk(self, _: str, names: tuple[str, ...], specs: list[Any]) -> Any:
        factors = list(self.g.risk_factors)
        need = [self.num(s.at_least) for s in specs]
        subsets: list[tuple[str, ...]] = []
        if len(factors) <= 10:
            for k in range(len(factors) + 1):
                subsets += list(itertools.combinations(factors, k))
        else:
            subsets = [tuple(factors[:k]) for k in range(len(factors) + 1)]

        def truth(v: RiskData) -> tuple[str, ...]:
            return tuple(
                "T" if len([f for f in v.factors if not s.among or f in s.among]) >= n else "F"
                for s, n in zip(specs, need, strict=True)
            )

        def label(v: RiskData) -> str:
            return f"{len(v.factors)} risk factor(s)" + (
                f": {', '.join(v.factors)}" if v.factors else ""
            )

        return [RiskData(s) for s in subsets], label, truth, lambda v: ()

    def _treatments(self, _: str, names: tuple[str, ...], specs: list[Any]) -> Any:
        """The antimicrobials flag of the latest assessment, and the doses given: one drug of
        every class (and one outside the formulary), for every indication, now or just too
        long ago for each therapy window. Every leaf (and the contract's "antimicrobial
        recorded") asks whether some dose matches, so a set of doses with one dose per TRUE
        leaf meets every combination: doses are grouped by the leaves they make TRUE, and
        sets of groups (as many as there are leaves) are the representative values."""
        g = self.g
        therapy = [s for s in specs if isinstance(s, m.TherapyTest)]
        reps: dict[str, str | None] = {}
        for cid in g.drug_classes:
            # the class's last drug: a treatment step gives its first (or pinned) one
            found = [d for d, dd in g.drugs.items() if dd.drug_class == cid]
            if found:
                reps.setdefault(found[-1], cid)
        for s in therapy:
            for d in s.drugs:
                reps.setdefault(d, g.drug_class_of(d))
        reps.setdefault("unlisted drug", None)
        hours = sorted({self.num(s.hours, self.continuity) for s in therapy})
        ages = [0.0] + [h + 1.0 for h in hours if _finite(h)]
        indications = ["crs", "infection", "other", "icans", "iec_hs"]

        def running(s: m.TherapyTest, doses: Iterable[tuple[str, str | None, float, str]]) -> bool:
            h = self.num(s.hours, self.continuity)
            return any(
                ((not s.classes and not s.drugs) or cls in s.classes or drug in s.drugs)
                and age <= h
                and (not s.indication or ind in s.indication)
                and (s.formulary is None or (cls is not None) == s.formulary)
                for drug, cls, age, ind in doses
            )

        def dosed(doses: Iterable[tuple[str, str | None, float, str]]) -> bool:
            return any(self.is_antimicrobial(cls, ind) for _, cls, _, ind in doses)

        groups: dict[tuple[bool, ...], tuple[str, str | None, float, str]] = {}
        for age in ages:
            for ind in indications:
                for drug, cls in reps.items():
                    item = (drug, cls, age, ind)
                    sig = (*(running(s, [item]) for s in therapy), dosed([item]))
                    if any(sig):
                        groups.setdefault(sig, item)
        items = list(groups.values())
        dose_sets: list[tuple[tuple[str, str | None, float, str], ...]] = []
        for k in range(min(len(therapy) + 1, len(items)) + 1):
            dose_sets += list(itertools.combinations(items, k))
        values = [
            TreatmentsData(flag, doses) for doses in dose_sets for flag in (False, True, None)
        ]

        def truth(v: TreatmentsData) -> tuple[str, ...]:
            out = []
            for s in specs:
                if isinstance(s, m.Assessed):
                    out.append("T" if bool(v.flag) == s.antimicrobials else "F")
                else:
                    out.append("T" if running(s, v.doses) else "F")
            return tuple(out)

        def fact(v: TreatmentsData) -> tuple[bool, ...]:
            return (bool(v.flag) or dosed(v.doses),)

        def label(v: TreatmentsData) -> str:
            parts = []
            if v.flag is not None:
                started = "started" if v.flag else "not started"
                parts.append(f"antimicrobials {started} (assessment)")
            parts += [f"{drug} for {ind} {age:g} h before" for drug, _, age, ind in v.doses]
            if not any(fact(v)):
                parts.append("no antimicrobial recorded")
            return "; ".join(parts)

        return values, label, truth, fact

    def is_antimicrobial(self, cls: str | None, indication: str) -> bool:
        if cls is not None and cls in self.amx_classes:
            return True
        return indication == "infection" and (cls is None or cls not in self.suppressive)

    def _free(self, name: str, names: tuple[str, ...], specs: list[Any]) -> Any:
        return (
            [FreeData(name, t) for t in ("T", "F", "U")],
            lambda v: f"{v.name} {_TRI_WORDS[v.tri]}",
            lambda v: (v.tri,),
            lambda v: (),
        )


_TRI_WORDS = {"T": "TRUE", "F": "FALSE", "U": "UNKNOWN"}


@attrs.frozen
class _ObsPlan:
    """The leaves reading one observation, with what their representative values must meet."""

    leaves: tuple[tuple[str, tuple[Any, ...]], ...]
    abs_limits: tuple[float, ...]
    base_factors: tuple[float, ...]
    abnormal_refs: tuple[float, ...]
    pcts: tuple[float, ...]
    #: how old the latest value is: fresh, and just stale for each window but the longest
    ages: tuple[float, ...]


def _obs_tri(kind: str, a: tuple[Any, ...], d: ObsData) -> str:
    """One observation leaf on a representative value, with the engine's semantics."""
    window = _window(kind, a)
    if d.latest is None or d.age > window:
        return "U"
    if kind == "thr":
        op, limit, _ = a
        return "T" if op(d.latest, limit) else "F"
    if kind == "ratio":
        op, factor, ref, _, abnormal = a
        if abnormal and d.baseline is not None and op(d.baseline, ref):
            ref = d.baseline  # the value at infusion was itself beyond the limit
        return "T" if op(d.latest, factor * ref) else "F"
    if kind == "base":
        op, factor, _ = a
        if d.baseline is None:
            return "U"
        return "T" if op(d.latest, factor * d.baseline) else "F"
    direction, _, pct = a
    if d.previous is None:
        return "U"
    band = abs(d.previous) * pct  # a change inside the band is flat
    if direction == "rising":
        ok = d.latest > d.previous + band
    elif direction == "falling":
        ok = d.latest < d.previous - band
    else:
        ok = d.latest >= d.previous - band
    return "T" if ok else "F"


def _obs_values(code: str, plan: _ObsPlan, lo: float, hi: float) -> list[ObsData]:
    """Representative values: baselines that put each ratio's limit on every side of the
    absolute limits; latest values around every limit; earlier values in every trend region;
    ages fresh and just stale; and no value at all."""
    baselines: list[float | None] = [None]
    if plan.base_factors:
        cands: set[float] = set()
        for r in plan.abnormal_refs:
            if _finite(r):
                cands |= {r, nice(r * 2, r, hi), nice(r / 2, lo, r)}
        for x in cut_points(plan.abs_limits, lo, hi):
            for f in plan.base_factors:
                if _finite(f) and f > 0:
                    cands.add(nice(x / f, lo, hi) if x / f < hi else x / f)
        baselines += sorted(c for c in cands if _finite(c) and lo <= c <= hi)
    out: list[ObsData] = []
    for b in baselines:
        rel = [f * b for f in plan.base_factors if b is not None and _finite(f)]
        for v in cut_points([*plan.abs_limits, *rel], lo, hi):
            prevs: list[float | None] = []
            if plan.pcts:
                prevs += _previous_values(v, list(plan.pcts), lo, hi)
            prevs.append(None)
            out += [ObsData(code, v, age, p, b) for p in prevs for age in plan.ages]
    out += [ObsData(code, None, 0.0, None, b) for b in baselines]
    return out


def _window(kind: str, args: tuple[Any, ...]) -> float:
    """How old the latest value may be for a resolved observation leaf."""
    return float(args[{"thr": 2, "base": 2, "ratio": 3, "trend": 1}[kind]])


def _previous_values(v: float, pcts: list[float], lo: float, hi: float) -> list[float]:
    """Values before `v` that put the change v/previous in every region of the trend bands
    (rising beyond each band, inside each band, exactly flat, falling beyond each band)."""
    if v <= 0:
        return [0.0, nice(max(hi / 1000, 1.0), lo, hi)] if hi > 0 else [0.0]
    marks = sorted({1.0, *(1 + p for p in pcts), *(1 - p for p in pcts if p < 1)})
    ratios = [marks[-1] * 1.25]
    ratios += [(a + b) / 2 for a, b in itertools.pairwise(marks)]
    if marks[0] > 0:
        ratios.append(marks[0] * 0.75)
    out = [v]  # exactly flat
    bounds = [0.0, *marks, math.inf]
    for r in ratios:
        # the region of r, to round the previous value inside it
        i = next(j for j in range(len(bounds) - 1) if bounds[j] < r < bounds[j + 1])
        r_lo, r_hi = bounds[i], bounds[i + 1]
        p_lo = v / r_hi if r_hi != math.inf else 0.0
        p_hi = v / r_lo if r_lo > 0 else math.inf
        p = nice(v / r, p_lo, p_hi)
        if lo <= p <= hi:
            out.append(p)
    return out


# --- the solver ------------------------------------------------------------------------------


class Solver:
    """Finds representative points of the domains that make a formula true, or proves that
    none does (the search over each domain's points is exhaustive)."""

    def __init__(
        self,
        g: m.Guideline,
        min_hours: float | None,
        amx_classes: Iterable[str] = (),
        suppressive: Iterable[str] | None = None,
    ) -> None:
        self.g = g
        self.kleene = Kleene(g)
        self.builder = DomainBuilder(g, min_hours, amx_classes, suppressive)
        self.leaf_key: dict[str, str] = {}
        for key, names in self.builder.by_key.items():
            for n in names:
                self.leaf_key[n] = key
        self._domains: dict[str, Domain] = {}
        self._projected: dict[tuple[str, frozenset[str]], list[tuple[Point, dict[str, bool]]]] = {}
        self.queries = 0
        self.valuations = 0

    def domain(self, key: str) -> Domain:
        d = self._domains.get(key)
        if d is None:
            d = self.builder.build(key)
            self._domains[key] = d
        return d

    def _key_of(self, a: str) -> str:
        kind, _, name = a.partition(":")
        if kind == "C":
            return FACTS[name]
        return self.leaf_key[name]

    def _project(self, key: str, needed: frozenset[str]) -> list[tuple[Point, dict[str, bool]]]:
        got = self._projected.get((key, needed))
        if got is not None:
            return got
        d = self.domain(key)
        seen: dict[tuple[bool, ...], tuple[Point, dict[str, bool]]] = {}
        for p in d.points:
            env: dict[str, bool] = {}
            for leaf, t in zip(d.leaves, p.tri, strict=True):
                if f"T:{leaf}" in needed:
                    env[f"T:{leaf}"] = t == "T"
                if f"F:{leaf}" in needed:
                    env[f"F:{leaf}"] = t == "F"
            for fact, v in zip(d.facts, p.facts, strict=True):
                if f"C:{fact}" in needed:
                    env[f"C:{fact}"] = v
            vec = tuple(env[a] for a in sorted(env))
            seen.setdefault(vec, (p, env))
        got = list(seen.values())
        self._projected[(key, needed)] = got
        return got

    def env(self, w: Witness) -> dict[str, bool]:
        """Every atom the points of a witness decide."""
        out: dict[str, bool] = {}
        for key, p in w.items():
            d = self.domain(key)
            for leaf, t in zip(d.leaves, p.tri, strict=True):
                out[f"T:{leaf}"] = t == "T"
                out[f"F:{leaf}"] = t == "F"
            for fact, v in zip(d.facts, p.facts, strict=True):
                out[f"C:{fact}"] = v
        return out

    def solve(self, f: Formula) -> Witness | None:
        """A witness {domain key: point}, or None when no moment makes `f` true."""
        self.queries += 1
        groups: dict[str, set[str]] = {}
        for a in atoms_of(f):
            groups.setdefault(self._key_of(a), set()).add(a)
        points = {key: self._project(key, frozenset(atoms)) for key, atoms in groups.items()}
        owner = {a: key for key, atoms in groups.items() for a in atoms}
        chosen: Witness = {}
        failed: set[Formula] = set()
        if self._search(f, points, owner, chosen, failed):
            return chosen
        return None

    def _search(
        self,
        f: Formula,
        points: dict[str, list[tuple[Point, dict[str, bool]]]],
        owner: dict[str, str],
        chosen: Witness,
        failed: set[Formula],
    ) -> bool:
        if f[0] == "const":
            self.valuations += 1
            return bool(f[1])
        if f in failed:
            return False
        # branch on the domain the formula leans on most (atoms near the top count more)
        weight: dict[str, float] = {}
        _weigh(f, owner, weight, 1.0)
        key = max(weight, key=lambda k: (weight[k], -len(points[k])))
        for p, env in points[key]:
            if self._search(simplify(f, env), points, owner, chosen, failed):
                chosen[key] = p
                return True
        failed.add(f)
        return False


def _weigh(f: Formula, owner: dict[str, str], out: dict[str, float], w: float) -> None:
    op = f[0]
    if op == "atom":
        key = owner[f[1]]
        out[key] = out.get(key, 0.0) + w
    elif op == "not":
        _weigh(f[1], owner, out, w)
    elif op in ("and", "or"):
        for x in f[1]:
            _weigh(x, owner, out, w / 2)
    elif op == "atleast":
        for x in f[2]:
            _weigh(x, owner, out, w / 2)
