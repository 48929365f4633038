"""Three baselines that make the engine's decisions with the same guards over the same facts.

The benchmark (`benchmarks/bench.py`) compares the engine with these, so they must do the same
work, not replay the engine's answer:

- the guideline's criteria are compiled here, independently of `iechs.criteria`, into plain
  closures over a small `Facts` object that each baseline keeps up to date from the timeline's
  events; every closure returns True, False or None (UNKNOWN: data missing or stale), with
  Kleene logic for `all_of` / `any_of` / `not_` / `count_of`;
- a transition's guard is the Kleene AND of its `when` criteria and of its negated `unless`
  criteria; a machine event takes the first transition whose guard is TRUE, or, for a treatment
  event, the first whose guard is UNKNOWN when none is TRUE (the engine's docstring);
- which machine events an input event sends (its drug class's event, `reassess`, `close`, a
  route through a state, nothing for a fact whose order set is not complete yet) is the engine's
  semantics: it is taken from the engine's decisions as a trace (`trace_of`), together with the
  indication the engine recorded for each dose. The baselines send those machine events and
  choose every target with their own guards; `Step.target` (the engine's state after the event)
  is only used to check that they agree;
- after every event the engine decides, each baseline also decides the actions (what to do
  next) as `Episode._actions` does: every action the guideline lists in the state it is in
  after the event, with the same Kleene guard over its `when` and `unless` criteria (read
  after the event's transitions, with the line start they set): TRUE lists the action's code
  (in document order), UNKNOWN makes the engine list one `measure` action, FALSE nothing. An
  event the engine only records (a fact whose order set continues, a value before the
  infusion) decides nothing and keeps the previous actions; which events those are is again
  the engine's semantics, taken from its decisions (`Step.decided`). The engine's action codes
  (`Step.actions`, `Step.measure`) are only used to check that they agree. (The engine's
  `measure` action also comes from transitions taken on UNKNOWN guards and waiting for fresh
  data, which the baselines do not model: a baseline that lists `measure` must find one in the
  engine's decision, not the other way round.)

The three machines: `Floor` (a plain dict table `{(state, event): [(target, when, unless)]}`),
`PsmBaseline` (a python-statemachine chart whose transitions have `cond` callables evaluating
the same guards) and `TransitionsBaseline` (pytransitions with `conditions` doing the same).
Each starts an episode per patient (`start`, which decides the actions at the infusion as the
engine's start does) whose `step(step)` records the event's facts, sends its machine events and
decides the actions; `state` is where it is, `actions` the codes of its TRUE actions (`measure`
aside) and `measure` whether it lists a `measure` action. `Floor(plan, actions=False)` is the
floor without the actions (the state only, as the benchmark's first floor was).
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, NamedTuple, Protocol

from iechs import Engine
from iechs import model as m
from iechs.decision import Decision
from iechs.timeline import (
    AssessmentEvent,
    Event,
    FindingEvent,
    ObservationEvent,
    Patient,
    ResponseEvent,
    Timeline,
    TreatmentEvent,
)

__all__ = [
    "CLOSE",
    "MEASURE",
    "REASSESS",
    "Facts",
    "Floor",
    "Hop",
    "Plan",
    "PsmBaseline",
    "Step",
    "TransitionsBaseline",
    "agrees",
    "compile_criteria",
    "decide_actions",
    "decided",
    "engine_trace",
    "trace_of",
]

#: the machine events the engine sends for data and for closing (src/iechs/engine.py).
REASSESS, CLOSE = "reassess", "close"
#: the code of the engine's `measure` action (also the code of guideline actions that ask to
#: measure, e.g. `screen` and `monitor-response`).
MEASURE = "measure"

#: a three-valued result: True, False, or None for UNKNOWN.
Tri = bool | None
Criterion = Callable[["Facts"], Tri]

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}
_INF = float("inf")


# --- facts ----------------------------------------------------------------------------------


class Facts:
    """What one patient's episode knows, in seconds since the infusion (negative before it).

    Updated by `record` from each event; read by the compiled criteria. `line_start` is when
    the current treatment line started (set when a transition is taken)."""

    __slots__ = (
        "antimicrobials",
        "baseline",
        "doses",
        "explicit_baseline",
        "findings",
        "grades",
        "infection",
        "infusion_at",
        "line_start",
        "now",
        "peak",
        "response",
        "risk_factors",
        "series",
        "therapies",
    )

    def __init__(self, patient: Patient, risk_factors: tuple[str, ...]) -> None:
        self.infusion_at = patient.infusion_at
        self.now = 0.0
        self.line_start = 0.0
        #: observation code -> (time, value) of the value at infusion.
        self.baseline: dict[str, tuple[float, float]] = {
            code: (0.0, meas.value) for code, meas in patient.baseline.items()
        }
        self.explicit_baseline = frozenset(patient.baseline)
        #: observation code -> (times, values) after the infusion, in time order.
        self.series: dict[str, tuple[list[float], list[float]]] = {}
        #: finding code -> (time, present, grade) of its latest record.
        self.findings: dict[str, tuple[float, bool, int | None]] = {}
        #: "crs" / "icans" -> [(time, grade)], and the highest grade so far.
        self.grades: dict[str, list[tuple[float, int]]] = {"crs": [], "icans": []}
        self.peak: dict[str, int] = {}
        self.infection: tuple[float, str] | None = None
        self.antimicrobials: tuple[float, bool] | None = None
        #: the latest response assessment (time, kind).
        self.response: tuple[float, str] | None = None
        #: (time, drug, drug class, indication) of every dose after the infusion.
        self.doses: list[tuple[float, str, str | None, str | None]] = []
        #: therapy key -> [drug class, indication, started, last dose] (doses of one class that
        #: follow each other within the continuity time are one therapy).
        self.therapies: dict[str, list[Any]] = {}
        self.risk_factors = risk_factors


def risk_factors_of(patient: Patient, known: dict[str, m.RiskFactor]) -> tuple[str, ...]:
    """The patient's listed risk factors plus those its product implies (`RiskFactor.product`:
    the target contains the given text, the costimulatory domain equals it), known ones only."""
    found = set(patient.risk_factors)
    product = patient.product
    if product is not None:
        target = (product.target or "").strip().upper()
        domain = (product.costimulatory_domain or "").strip().upper()
        for rid, rf in known.items():
            match = rf.product
            if match is None:
                continue
            if (match.target is None or match.target.upper() in target) and (
                match.costimulatory_domain is None or match.costimulatory_domain.upper() == domain
            ):
                found.add(rid)
    return tuple(sorted(f for f in found if f in known))


# --- criteria -------------------------------------------------------------------------------


def compile_criteria(g: m.Guideline) -> dict[str, Criterion]:
    """Every criterion of the guideline as a closure `Facts -> True | False | None`.

    Semantics (DESIGN.md and the guideline model): a lab value older than its validity (the
    criterion's `within_hours`, else parameter `lab_validity_hours`) is missing; a trend compares
    the latest fresh value with the one before it, however old, with changes within
    `min_change_pct` of the earlier value counting as flat; an unrecorded or expired finding is
    FALSE or UNKNOWN as the finding's `unrecorded` says; a grade older than its validity is
    missing; a response counts only when charted after the current line started; a therapy
    criterion is TRUE when a matching dose was given within its hours; combinators are Kleene."""
    p = g.parameters.get("lab_validity_hours")
    lab_validity = p.value if p is not None else _INF
    p = g.parameters.get("assessment_validity_hours")
    grade_validity = p.value if p is not None else _INF
    p = g.parameters.get("therapy_continuity_hours")
    continuity = p.value if p is not None else 0.0
    compiled: dict[str, Criterion] = {}

    def validity(within: m.Number | None) -> float:
        return lab_validity if within is None else g.param(within)

    def build(name: str) -> Criterion:
        done = compiled.get(name)
        if done is not None:
            return done
        c = g.criteria[name]
        kind = c.kind
        fn: Criterion
        if kind == "threshold":
            assert c.threshold is not None
            fn = _threshold(g, c.threshold, validity(c.threshold.within_hours))
        elif kind == "ratio":
            assert c.ratio is not None
            fn = _ratio(g, c.ratio, validity(c.ratio.within_hours))
        elif kind == "trend":
            assert c.trend is not None
            fn = _trend(g, c.trend)
        elif kind == "finding":
            assert c.finding is not None
            fn = _finding(g, c.finding)
        elif kind == "grade":
            assert c.grade is not None
            gt = c.grade
            fn = _grade(gt, grade_validity if gt.within_hours is None else g.param(gt.within_hours))
        elif kind == "infection":
            assert c.infection is not None
            fn = _infection(c.infection)
        elif kind == "assessed":
            assert c.assessed is not None
            fn = _assessed(c.assessed)
        elif kind == "response":
            assert c.response is not None
            fn = _response(c.response)
        elif kind == "therapy":
            assert c.therapy is not None
            t = c.therapy
            fn = _therapy(t, continuity if t.hours is None else g.param(t.hours))
        elif kind == "risk":
            assert c.risk is not None
            fn = _risk(c.risk, g.param(c.risk.at_least))
        elif kind in ("time_on_line", "time_since_infusion"):
            d = c.time_on_line if kind == "time_on_line" else c.time_since_infusion
            assert d is not None
            fn = _duration(kind == "time_on_line", _OPS[d.op], g.param(d.hours))
        else:
            children = tuple(build(child) for child in c.children)
            if kind == "all_of":
                fn = _all_of(children)
            elif kind == "any_of":
                fn = _any_of(children)
            elif kind == "not_":
                fn = _not(children[0])
            else:
                assert c.count_of is not None
                fn = _count_of(children, c.count_of.at_least)
        compiled[name] = fn
        return fn

    for name in g.criteria:
        build(name)
    return compiled


def _latest(f: Facts, code: str, max_age_hours: float) -> float | None:
    s = f.series.get(code)
    if s is None or (f.now - s[0][-1]) / 3600 > max_age_hours:
        return None
    return s[1][-1]


def _threshold(g: m.Guideline, t: m.Threshold, max_age: float) -> Criterion:
    obs = t.observation
    op = _OPS[t.op]
    limit = g.param(t.value) * (g.observations[obs].units[t.unit] if t.unit else 1.0)

    def threshold(f: Facts) -> Tri:
        value = _latest(f, obs, max_age)
        return None if value is None else op(value, limit)

    return threshold


def _ratio(g: m.Guideline, r: m.Ratio, max_age: float) -> Criterion:
    obs = r.observation
    op = _OPS[r.op]
    factor = g.param(r.factor)
    to_baseline = r.reference == "baseline"
    limit = 0.0 if to_baseline else g.param(r.reference)
    if_abnormal = r.baseline_if_abnormal

    def ratio(f: Facts) -> Tri:
        value = _latest(f, obs, max_age)
        if value is None:
            return None
        base = f.baseline.get(obs)
        if to_baseline:
            if base is None:
                return None
            ref = base[1]
        elif if_abnormal and base is not None and op(base[1], limit):
            ref = base[1]  # abnormal at infusion: compared with the patient's own value
        else:
            ref = limit
        return op(value, factor * ref)

    return ratio


def _trend(g: m.Guideline, t: m.Trend) -> Criterion:
    obs = t.observation
    hours = g.param(t.window_hours)
    flat = g.param(t.min_change_pct) / 100
    direction = t.direction

    def trend(f: Facts) -> Tri:
        s = f.series.get(obs)
        if s is None or len(s[0]) < 2 or (f.now - s[0][-1]) / 3600 > hours:
            return None
        values = s[1]
        first, last = values[-2], values[-1]
        band = abs(first) * flat
        if direction == "rising":
            return last > first + band
        if direction == "falling":
            return last < first - band
        return last >= first - band

    return trend


def _finding(g: m.Guideline, t: m.FindingTest) -> Criterion:
    code = t.code
    d = g.findings[code]
    absent_unless_recorded = d.unrecorded == "absent"
    valid = _INF if d.valid_hours is None else g.param(d.valid_hours)
    min_grade = t.min_grade

    def finding(f: Facts) -> Tri:
        rec = f.findings.get(code)
        if rec is None or (f.now - rec[0]) / 3600 > valid:
            return False if absent_unless_recorded else None
        _, present, grade = rec
        if not present:
            return False
        if min_grade is None:
            return True
        return None if grade is None else grade >= min_grade

    return finding


def _grade(t: m.GradeTest, validity: float) -> Criterion:
    of, op, value, peak = t.of, _OPS[t.op], t.value, t.peak

    def grade(f: Facts) -> Tri:
        grades = f.grades[of]
        if not grades:
            return None
        at, latest = grades[-1]
        if (f.now - at) / 3600 > validity:
            return None
        return op(latest, f.peak[of] if peak else value)

    return grade


def _infection(t: m.InfectionTest) -> Criterion:
    status = t.status

    def infection(f: Facts) -> Tri:
        rec = f.infection
        return None if rec is None else rec[1] in status

    return infection


def _assessed(t: m.Assessed) -> Criterion:
    wanted = t.antimicrobials

    def assessed(f: Facts) -> Tri:
        rec = f.antimicrobials
        return (rec is not None and rec[1]) == wanted

    return assessed


def _response(t: m.ResponseTest) -> Criterion:
    among = t.among
    unrecorded: Tri = False if t.unrecorded == "false" else None

    def response(f: Facts) -> Tri:
        rec = f.response
        # one charted at the line's start belongs to the order set that started the line
        if rec is None or rec[0] <= f.line_start:
            return unrecorded
        return rec[1] in among

    return response


def _therapy(t: m.TherapyTest, hours: float) -> Criterion:
    classes, drugs, indications, formulary = t.classes, t.drugs, t.indication, t.formulary
    by_name = bool(classes or drugs)

    def therapy(f: Facts) -> Tri:
        now = f.now
        for at, drug, cls, indication in reversed(f.doses):  # newest first
            gap = (now - at) / 3600
            if gap > hours:
                return False  # every older dose is older still
            if gap < 0:
                continue
            if by_name and not (cls in classes or drug in drugs):
                continue
            if indications and indication not in indications:
                continue
            if formulary is not None and (cls is not None) != formulary:
                continue
            return True
        return False

    return therapy


def _risk(t: m.RiskTest, need: float) -> Criterion:
    among = t.among

    def risk(f: Facts) -> Tri:
        return len([r for r in f.risk_factors if not among or r in among]) >= need

    return risk


def _duration(on_line: bool, op: Callable[[Any, Any], bool], limit: float) -> Criterion:
    if on_line:

        def time_on_line(f: Facts) -> Tri:
            return op((f.now - f.line_start) / 3600, limit)

        return time_on_line

    def time_since_infusion(f: Facts) -> Tri:
        return op(f.now / 3600, limit)

    return time_since_infusion


def _all_of(children: tuple[Criterion, ...]) -> Criterion:
    def all_of(f: Facts) -> Tri:
        unknown = False
        for child in children:
            v = child(f)
            if v is False:
                return False
            if v is None:
                unknown = True
        return None if unknown else True

    return all_of


def _any_of(children: tuple[Criterion, ...]) -> Criterion:
    def any_of(f: Facts) -> Tri:
        unknown = False
        for child in children:
            v = child(f)
            if v is True:
                return True
            if v is None:
                unknown = True
        return None if unknown else False

    return any_of


def _not(child: Criterion) -> Criterion:
    def not_(f: Facts) -> Tri:
        v = child(f)
        return None if v is None else not v

    return not_


def _count_of(children: tuple[Criterion, ...], at_least: int) -> Criterion:
    def count_of(f: Facts) -> Tri:
        values = [child(f) for child in children]
        true = values.count(True)
        if true >= at_least:
            return True
        return False if true + values.count(None) < at_least else None

    return count_of


def guard_value(when: Sequence[Criterion], unless: Sequence[Criterion], f: Facts) -> Tri:
    """Kleene AND of the `when` criteria and the negated `unless` ones (empty: TRUE)."""
    unknown = False
    for c in when:
        v = c(f)
        if v is False:
            return False
        if v is None:
            unknown = True
    for c in unless:
        v = c(f)
        if v is True:
            return False
        if v is None:
            unknown = True
    return None if unknown else True


def decide_actions(
    candidates: Iterable[tuple[str | None, Sequence[Criterion], Sequence[Criterion]]], f: Facts
) -> tuple[tuple[str, ...], bool]:
    """The actions in force (`Plan.actions_in` of the current state): the codes of those whose
    guard is TRUE, in order, `measure` ones aside; and whether a `measure` action is listed
    (one whose code is `measure` is TRUE, or any is UNKNOWN)."""
    codes: list[str] = []
    measure = False
    for code, when, unless in candidates:
        v = guard_value(when, unless, f)
        if v is True:
            if code is None:
                measure = True
            else:
                codes.append(code)
        elif v is None:
            measure = True
    return tuple(codes), measure


# --- the plan: what every baseline shares ---------------------------------------------------

Candidate = tuple[str, tuple[Criterion, ...], tuple[Criterion, ...]]
#: an action in a state: (code, when, unless); code None for an action whose code is
#: `measure` (listed as the decision's `measure` action).
ActionCandidate = tuple[str | None, tuple[Criterion, ...], tuple[Criterion, ...]]


class Plan:
    """The guideline compiled once for the baselines: criteria, the transition table, the
    drug classes, and how to record an event's facts."""

    def __init__(self, g: m.Guideline) -> None:
        self.g = g
        self.initial = g.initial_state
        self.condition = g.guideline.condition
        self.criteria = compile_criteria(g)
        #: (state, machine event) -> [(target, when, unless)], in document order.
        self.table: dict[tuple[str, str], list[Candidate]] = {}
        for sid, s in g.states.items():
            for t in s.transitions:
                self.table.setdefault((sid, t.event), []).append(
                    (
                        t.to,
                        tuple(self.criteria[n] for n in t.when),
                        tuple(self.criteria[n] for n in t.unless),
                    )
                )
        self.drug_class = {name: d.drug_class for name, d in g.drugs.items()}
        self.class_event = {cid: c.event for cid, c in g.drug_classes.items()}
        p = g.parameters.get("therapy_continuity_hours")
        self.continuity = p.value if p is not None else 0.0
        #: a route's first hop from state a to state b: the event it takes (a recurrence goes
        #: through `reassess`; a therapy for another indication counted as a line, through
        #: that therapy's event).
        self.route_event: dict[tuple[str, str], str] = {}
        for sid, s in g.states.items():
            for t in s.transitions:
                key = (sid, t.to)
                if key not in self.route_event or t.event == REASSESS:
                    self.route_event[key] = t.event
        #: state -> the actions listed in it, in document order (`guideline.actions`).
        self.actions_in: dict[str, tuple[ActionCandidate, ...]] = {
            sid: tuple(
                (
                    None if a.code == MEASURE else a.code,
                    tuple(self.criteria[n] for n in a.when),
                    tuple(self.criteria[n] for n in a.unless),
                )
                for a in g.actions.values()
                if sid in a.states
            )
            for sid in g.states
        }

    def facts(self, patient: Patient) -> Facts:
        return Facts(patient, risk_factors_of(patient, self.g.risk_factors))

    def record(self, f: Facts, event: Event, indication: str | None) -> None:
        """Record an event's facts (a value before the infusion is a baseline; anything else
        before it is ignored, as the engine does)."""
        t = (event.at - f.infusion_at).total_seconds()
        if t < 0:
            if isinstance(event, ObservationEvent) and event.code is not None:
                code = event.code
                if code not in f.explicit_baseline:
                    prev = f.baseline.get(code)
                    if prev is None or prev[0] <= t:
                        f.baseline[code] = (t, event.value)
            return
        f.now = t
        if isinstance(event, ObservationEvent):
            assert event.code is not None
            s = f.series.get(event.code)
            if s is None:
                f.series[event.code] = ([t], [event.value])
            else:
                s[0].append(t)
                s[1].append(event.value)
        elif isinstance(event, AssessmentEvent):
            if event.crs_grade is not None:
                self._grade(f, "crs", t, event.crs_grade)
            if event.icans_grade is not None:
                self._grade(f, "icans", t, event.icans_grade)
            if event.infection is not None:
                f.infection = (t, event.infection)
            if event.antimicrobials is not None:
                f.antimicrobials = (t, event.antimicrobials)
        elif isinstance(event, FindingEvent):
            f.findings[event.code] = (t, event.present, event.grade)
        elif isinstance(event, ResponseEvent):
            f.response = (t, event.assessment)
        elif isinstance(event, TreatmentEvent):
            drug = event.drug
            cls = self.drug_class.get(drug.strip().lower())
            key = cls or f"drug:{drug}"
            running = f.therapies.get(key)
            if (
                running is not None
                and (t - running[3]) / 3600 <= self.continuity
                and event.indication in (None, running[1])
            ):
                running[1] = indication
                running[3] = t
            else:
                f.therapies[key] = [cls, indication, t, t]
            f.doses.append((t, drug, cls, indication))

    @staticmethod
    def _grade(f: Facts, of: str, t: float, grade: int) -> None:
        f.grades[of].append((t, grade))
        if grade > f.peak.get(of, -1):
            f.peak[of] = grade

    def line_start(self, f: Facts, hop: Hop) -> float:
        """When the line entered by `hop` started: now, or for a therapy given for another
        indication and counted as a line, when that therapy started."""
        if hop.line_from is not None:
            for cls, indication, started, last in f.therapies.values():
                if (
                    cls is not None
                    and self.class_event.get(cls) == hop.line_from
                    and indication != self.condition
                    and (f.now - last) / 3600 <= self.continuity
                ):
                    return float(started)
        return f.now


# --- the trace ------------------------------------------------------------------------------


class Hop(NamedTuple):
    """One machine event to send. `unknown_ok`: a treatment's event (or a route's hop) takes
    the first UNKNOWN guard when none is TRUE; `through`: only transitions to a state that
    takes this event (a route); `line_from`: the line entered started with the running therapy
    of the class whose event this is (a therapy for another indication counted as a line)."""

    event: str
    unknown_ok: bool
    through: str | None = None
    line_from: str | None = None


class Step(NamedTuple):
    """One timeline event for a baseline: the event, the indication recorded for a dose, the
    machine events to send, whether the engine decided at it (else it only recorded the event
    and kept the previous actions); and, only to check agreement, the engine's state after it,
    its action codes (`measure` aside, in order) and whether it listed a `measure` action."""

    event: Event
    indication: str | None
    hops: tuple[Hop, ...]
    target: str
    decided: bool
    actions: tuple[str, ...]
    measure: bool


def decided(event: Event, d: Decision, infusion_at: datetime) -> bool:
    """Whether the engine decided at `event` (`Episode.step` past `_recorded_only`) or only
    recorded it (`Episode._unchanged`: a fact with more of its order set to follow, or anything
    before the infusion), keeping the previous decision's actions. Every event the engine
    decides sends a machine event (`reassess` for data, `close`, a drug class's event), except
    a dose that sends none (given for another indication, or outside the formulary), and a dose
    is always decided on its own unless it precedes the infusion. An empty `criteria` is no
    signal: a dose for another indication in `resolved` evaluates no criterion and is decided
    (the tests hold this rule to the engine's `_unchanged`)."""
    return d.machine_event is not None or (
        isinstance(event, TreatmentEvent) and event.at >= infusion_at
    )


def trace_of(
    plan: Plan, events: Sequence[Event], decisions: Sequence[Decision], infusion_at: datetime
) -> list[Step]:
    """The steps of a run from the engine's decisions (one per event, in order): the machine
    event each sent (`Decision.machine_event`), the states it passed through (`via`), where
    it ended (`target`), the indication it read for a dose (`inferred`, or the event's),
    whether it decided (`decided`) and the actions it listed (`actions`)."""
    steps: list[Step] = []
    for event, d in zip(events, decisions, strict=True):
        indication: str | None = None
        if isinstance(event, TreatmentEvent):
            indication = d.inferred["indication"] if d.inferred else event.indication
        me = d.machine_event
        hops: tuple[Hop, ...] = ()
        if me is not None:
            last = Hop(me, me not in (REASSESS, CLOSE))
            if d.via:
                assert d.source is not None
                path = (d.source, *d.via, d.target)
                first: list[Hop] = []
                for a, b in itertools.pairwise(path[:-1]):
                    e = plan.route_event[(a, b)]
                    if e == REASSESS:
                        first.append(Hop(e, True, through=me))
                    else:
                        first.append(Hop(e, True, line_from=e))
                hops = (*first, last)
            else:
                hops = (last,)
        codes = tuple(a.code for a in d.actions if a.code != MEASURE)
        measure = len(codes) != len(d.actions)
        steps.append(
            Step(
                event,
                indication,
                hops,
                d.target,
                decided(event, d, infusion_at),
                codes,
                measure,
            )
        )
    return steps


def engine_trace(engine: Engine, plan: Plan, timeline: Timeline) -> list[Step]:
    """Run the timeline through the engine (retrospectively, `Engine.run`) and take its trace."""
    episode = engine.run(timeline)
    return trace_of(  # [0]: the start
        plan, timeline.events, episode.decisions[1:], timeline.patient.infusion_at
    )


# --- the machines ---------------------------------------------------------------------------


class BaselineEpisode(Protocol):
    @property
    def state(self) -> str: ...

    @property
    def actions(self) -> tuple[str, ...]: ...

    @property
    def measure(self) -> bool: ...

    def step(self, step: Step) -> None: ...


class Floor:
    """The floor: a plain dict table and a loop, no library. `actions=False`: the state only,
    no actions decided (the benchmark's first floor)."""

    def __init__(self, plan: Plan, *, actions: bool = True) -> None:
        self.plan = plan
        self.decides_actions = actions
        self.name = (
            "plain dict table (the floor)"
            if actions
            else "plain dict table, state only (the first floor)"
        )

    def start(self, patient: Patient) -> FloorEpisode:
        return FloorEpisode(self.plan, patient, decides=self.decides_actions)


class FloorEpisode:
    """`decides`: whether it decides the actions (else they stay empty: the state-only floor)."""

    __slots__ = (
        "actions",
        "actions_in",
        "decides",
        "facts",
        "measure",
        "plan",
        "record",
        "state",
        "table",
    )

    def __init__(self, plan: Plan, patient: Patient, *, decides: bool = True) -> None:
        self.plan = plan
        self.table = plan.table
        self.record = plan.record
        self.actions_in = plan.actions_in
        self.decides = decides
        self.facts = plan.facts(patient)
        self.state = plan.initial
        self.actions: tuple[str, ...] = ()
        self.measure = False
        if decides:
            self.actions, self.measure = decide_actions(self.actions_in[self.state], self.facts)

    def step(self, step: Step) -> None:
        f = self.facts
        self.record(f, step.event, step.indication)
        table = self.table
        for hop in step.hops:
            candidates = table.get((self.state, hop.event))
            if candidates is None:
                continue
            chosen: str | None = None
            unknown: str | None = None
            through = hop.through
            for target, when, unless in candidates:
                if through is not None and (target, through) not in table:
                    continue
                v = guard_value(when, unless, f)
                if v is True:
                    chosen = target
                    break
                if v is None and unknown is None and hop.unknown_ok:
                    unknown = target
            if chosen is None:
                chosen = unknown
            if chosen is not None:
                self.state = chosen
                f.line_start = self.plan.line_start(f, hop)
        if step.decided and self.decides:
            self.actions, self.measure = decide_actions(self.actions_in[self.state], f)


def _conditions(
    plan: Plan, state: str, event: str, index: int
) -> tuple[Callable[[Facts, Hop], bool], Callable[[Facts, Hop], None]]:
    """The condition of the `index`-th transition on `event` from `state`, for a library
    that tries a state's transitions in order and takes the first whose condition holds:
    TRUE guard, or UNKNOWN guard (when the hop allows it) with no later sibling TRUE; and the
    action on taking it (the line start)."""
    table = plan.table
    candidates = table[(state, event)]
    target, when, unless = candidates[index]
    later = candidates[index + 1 :]

    def condition(facts: Facts, hop: Hop) -> bool:
        through = hop.through
        if through is not None and (target, through) not in table:
            return False
        v = guard_value(when, unless, facts)
        if v is True:
            return True
        if v is None and hop.unknown_ok:
            return not any(
                guard_value(w, u, facts) is True
                for t, w, u in later
                if through is None or (t, through) in table
            )
        return False

    def entered(facts: Facts, hop: Hop) -> None:
        facts.line_start = plan.line_start(facts, hop)

    return condition, entered


class PsmBaseline:
    """A python-statemachine chart with the guideline's states and transitions; each
    transition's `cond` evaluates its guard over the facts handed to `send`."""

    name = "python-statemachine with guards"
    decides_actions = True

    def __init__(self, plan: Plan) -> None:
        from statemachine.io.class_factory import create_machine_class_from_definition

        self.plan = plan
        g = plan.g
        states: dict[str, Any] = {}
        for sid, s in g.states.items():
            definition: dict[str, Any] = {"name": s.name}
            if s.initial:
                definition["initial"] = True
            if s.final:
                definition["final"] = True
            on: dict[str, list[dict[str, Any]]] = {}
            for t in s.transitions:
                index = len(on.get(t.event, []))
                cond, entered = _conditions(plan, sid, t.event, index)
                cond_fn = _psm_callback(cond, f"cond_{sid}_{t.event}_{index}")
                on_fn = _psm_callback(entered, f"on_{sid}_{t.event}_{index}")
                on.setdefault(t.event, []).append({"target": t.to, "cond": cond_fn, "on": on_fn})
            if on:
                definition["on"] = on
            states[sid] = definition
        self.chart = create_machine_class_from_definition(
            "PsmBaseline",
            states=states,
            catch_errors_as_events=False,
            allow_event_without_transition=True,
        )

    def start(self, patient: Patient) -> PsmEpisode:
        return PsmEpisode(self.plan, self.chart(), patient)


def _psm_callback(fn: Callable[[Facts, Hop], Any], name: str) -> Callable[..., Any]:
    """python-statemachine hands callbacks the keyword arguments of `send` by name."""

    def callback(facts: Facts, hop: Hop) -> Any:
        return fn(facts, hop)

    callback.__name__ = callback.__qualname__ = name
    return callback


class PsmEpisode:
    def __init__(self, plan: Plan, machine: Any, patient: Patient) -> None:
        self.record = plan.record
        self.actions_in = plan.actions_in
        self.machine = machine
        self.send = machine.send
        self.facts = plan.facts(patient)
        self.actions, self.measure = decide_actions(self.actions_in[self.state], self.facts)

    @property
    def state(self) -> str:
        return str(next(iter(self.machine.configuration)).id)

    def step(self, step: Step) -> None:
        f = self.facts
        self.record(f, step.event, step.indication)
        for hop in step.hops:
            self.send(hop.event, facts=f, hop=hop)
        if step.decided:
            self.actions, self.measure = decide_actions(self.actions_in[self.state], f)


class TransitionsBaseline:
    """pytransitions with the guideline's states and transitions; each transition's
    `conditions` evaluate its guard over the facts handed to the trigger."""

    name = "pytransitions with guards"
    decides_actions = True

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        g = plan.g
        self.states = list(g.states)
        self.transitions: list[dict[str, Any]] = []
        counts: dict[tuple[str, str], int] = {}
        for sid, s in g.states.items():
            for t in s.transitions:
                index = counts.get((sid, t.event), 0)
                counts[(sid, t.event)] = index + 1
                cond, entered = _conditions(plan, sid, t.event, index)
                self.transitions.append(
                    {
                        "trigger": t.event,
                        "source": sid,
                        "dest": t.to,
                        "conditions": [_keyword_callback(cond)],
                        "after": [_keyword_callback(entered)],
                    }
                )

    def start(self, patient: Patient) -> TransitionsEpisode:
        from transitions import Machine

        machine = Machine(
            states=self.states,
            transitions=self.transitions,
            initial=self.plan.initial,
            auto_transitions=False,
            send_event=False,
            ignore_invalid_triggers=True,
        )
        return TransitionsEpisode(self.plan, machine, patient)


def _keyword_callback(fn: Callable[[Facts, Hop], Any]) -> Callable[..., Any]:
    """pytransitions (send_event=False) hands callbacks the trigger's keyword arguments."""

    def callback(*, facts: Facts, hop: Hop) -> Any:
        return fn(facts, hop)

    return callback


class TransitionsEpisode:
    def __init__(self, plan: Plan, machine: Any, patient: Patient) -> None:
        self.record = plan.record
        self.actions_in = plan.actions_in
        self.machine = machine
        self.trigger = machine.trigger
        self.facts = plan.facts(patient)
        self.actions, self.measure = decide_actions(self.actions_in[self.state], self.facts)

    @property
    def state(self) -> str:
        return str(self.machine.state)

    def step(self, step: Step) -> None:
        f = self.facts
        self.record(f, step.event, step.indication)
        for hop in step.hops:
            self.trigger(hop.event, facts=f, hop=hop)
        if step.decided:
            self.actions, self.measure = decide_actions(self.actions_in[self.state], f)


def agrees(episode: BaselineEpisode, step: Step, *, actions: bool = True) -> bool:
    """Whether a baseline episode, after `step`, made the engine's decision: its state, and
    (with `actions`) its TRUE action codes, with a `measure` action in the engine's decision
    when it lists one (the engine may list one the baselines do not model: see above)."""
    return episode.state == step.target and (
        not actions or (episode.actions == step.actions and (step.measure or not episode.measure))
    )


def mismatches(episode: BaselineEpisode, steps: Iterable[Step], *, actions: bool = True) -> int:
    """Step a baseline episode through a trace; the number of events after which it does not
    make the engine's decision (`agrees`)."""
    wrong = 0
    for s in steps:
        episode.step(s)
        if not agrees(episode, s, actions=actions):
            wrong += 1
    return wrong
