"""A counterexample as a concrete timeline, and its replay through the real engine.

Each step of a counterexample names an event and the representative data that make the engine
take it (`verify_domains` points carry concrete values). `concretize` lays the steps out in time
(DESIGN.md's timeline JSON): the data of a step and its event form one order set (facts first,
then the treatment or the close), steps hours apart, a trend's earlier value in the order set
before, the time on a line or since infusion as the step's time requires. `replay_counterexample`
runs that timeline through `iechs.Engine` and checks the violation with the contract's own run
checker (`iechs.contract.check_run`), which reads no criterion; when the engine does not show it,
the counterexample says so ("not reproduced by the engine") rather than hiding it.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import attrs

from . import model as m
from .contract import Contract, check_run, decision_path
from .verify_domains import (
    DomainBuilder,
    FindingData,
    GradeData,
    InfectionData,
    ObsData,
    Point,
    ResponseData,
    RiskData,
    TimeData,
    TreatmentsData,
    Witness,
)

if TYPE_CHECKING:
    from .verify import Counterexample, Replay, Step

__all__ = ["concretize", "replay_counterexample", "witness_runs"]

INFUSION = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)
#: the first step comes on day 13 (IEC-HS typically appears around day 14) unless the
#: counterexample fixes the time since infusion.
FIRST_STEP_HOURS = 13 * 24.0
#: hours between steps when nothing fixes them.
GAP_HOURS = 6.0
PATIENT_ID = "verify-counterexample"


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _hours(a: datetime, b: datetime) -> float:
    return (b - a).total_seconds() / 3600


def _number(x: float) -> float | int:
    return int(x) if float(x).is_integer() else round(float(x), 6)


class _Timeline:
    """The concrete timeline being laid out, and what it holds so far."""

    def __init__(self, g: m.Guideline, c: Contract, domains: DomainBuilder | None = None) -> None:
        self.g, self.c = g, c
        self.events: list[dict[str, Any]] = []
        self.baseline: dict[str, float] = {}
        self.risk: tuple[str, ...] | None = None
        self.series: dict[str, list[tuple[datetime, float]]] = {}
        self.findings: dict[str, datetime] = {}
        self.peak: dict[str, int] = {}
        self.assessed: set[str] = set()
        self.responses: list[datetime] = []
        self.entry = INFUSION
        self.last: datetime | None = None
        self.notes: list[str] = []
        self.windows = _windows(g)
        self.domains = domains or DomainBuilder(g, None)

    def add(self, at: datetime, event: dict[str, Any]) -> None:
        self.events.append({"at": _iso(at), **event})

    # --- time -------------------------------------------------------------------------------

    def time_for(self, w: Witness) -> datetime:
        """When the step happens: as its time on the line or since infusion requires, else a
        few hours after the previous step (later still when data must have gone stale)."""
        fixed: datetime | None = None
        for p in w.values():
            d = p.data
            if isinstance(d, TimeData) and d.kind == "time_on_line":
                fixed = self.entry + timedelta(hours=d.hours)
            elif isinstance(d, TimeData) and fixed is None:
                fixed = INFUSION + timedelta(hours=d.hours)
        if fixed is not None:
            if self.last is not None and fixed <= self.last:
                self.notes.append(
                    f"the step at {_iso(fixed)} cannot come before the previous one; moved"
                )
                fixed = self.last + timedelta(minutes=15)
            return fixed
        t = (
            INFUSION + timedelta(hours=FIRST_STEP_HOURS)
            if self.last is None
            else self.last + timedelta(hours=GAP_HOURS)
        )
        for p in w.values():  # data that must have gone stale
            d = p.data
            if isinstance(d, ObsData) and d.latest is None and self.series.get(d.code):
                stale = self.series[d.code][-1][0] + timedelta(
                    hours=self.windows.get(d.code, 48.0) + 1
                )
                t = max(t, stale)
            if isinstance(d, FindingData) and d.state is None and d.code in self.findings:
                fd = self.g.findings.get(d.code)
                if fd is not None and fd.valid_hours is not None:
                    valid = self.g.param(fd.valid_hours)
                    if math.isfinite(valid):
                        t = max(t, self.findings[d.code] + timedelta(hours=valid + 1))
        return t

    # --- data -------------------------------------------------------------------------------

    def realise(self, w: Witness, at: datetime, previous_at: datetime | None) -> bool:
        """The events that give the step's data at `at`; False when none were needed."""
        assessment: dict[str, Any] = {}
        added = False
        for key in sorted(w):
            d = w[key].data
            if isinstance(d, ObsData):
                added |= self._observation(d, at, previous_at)
            elif isinstance(d, FindingData):
                if d.state is not None:
                    present, grade = d.state
                    ev: dict[str, Any] = {"kind": "finding", "code": d.code, "present": present}
                    if grade is not None:
                        ev["grade"] = grade
                    self.add(at, ev)
                    self.findings[d.code] = at
                    added = True
            elif isinstance(d, GradeData):
                if d.grades is not None:
                    latest, peak = d.grades
                    field = f"{d.of}_grade"
                    if peak > self.peak.get(d.of, -1) and peak != latest:
                        before = _between(previous_at, at)
                        self.add(before, {"kind": "assessment", field: peak})
                    self.peak[d.of] = max(self.peak.get(d.of, -1), peak)
                    assessment[field] = latest
                    self.assessed.add(d.of)
            elif isinstance(d, InfectionData):
                if d.status is not None:
                    assessment["infection"] = d.status
                    self.assessed.add("infection")
            elif isinstance(d, TreatmentsData):
                if d.flag is not None:
                    assessment["antimicrobials"] = d.flag
                for drug, _cls, age, indication in d.doses:
                    # just before the step: recorded before the step's own treatment is decided
                    given = at - max(timedelta(hours=age), timedelta(minutes=5))
                    self.add(given, {"kind": "treatment", "drug": drug, "indication": indication})
                    added = True
            elif isinstance(d, ResponseData):
                if d.value is not None:
                    self.add(at, {"kind": "response", "assessment": d.value})
                    self.responses.append(at)
                    added = True
                elif self.responses and self.responses[-1] >= self.entry:
                    self.notes.append("a response was recorded on this line already")
            elif isinstance(d, RiskData):
                self.risk = d.factors
        if assessment:
            self.add(at, {"kind": "assessment", **assessment})
            added = True
        return added

    def _observation(self, d: ObsData, at: datetime, previous_at: datetime | None) -> bool:
        unit = self.g.observations[d.code].unit
        if d.baseline is not None:
            self.baseline[d.code] = d.baseline
        if d.latest is None:
            return False
        taken = at - timedelta(hours=d.age)
        series = self.series.setdefault(d.code, [])
        if d.previous is not None and series and series[-1][1] != d.previous:
            # follow the timeline's last value rather than put an earlier one before the step
            d = self.domains.relatch(d, series[-1][1]) or d
        assert d.latest is not None
        if d.previous is not None and not (series and series[-1][1] == d.previous):
            when = previous_at if previous_at is not None and previous_at < taken else None
            if when is None or (series and series[-1][0] >= when):
                when = _between(series[-1][0] if series else None, taken)
            self.add(
                when,
                {"kind": "observation", "code": d.code, "value": _number(d.previous), "unit": unit},
            )
            series.append((when, d.previous))
        elif d.previous is None and series:
            self.notes.append(f"{d.code} has an earlier value: the trend is not unknown")
        self.add(
            taken, {"kind": "observation", "code": d.code, "value": _number(d.latest), "unit": unit}
        )
        series.append((taken, d.latest))
        return True

    def neutral(self, at: datetime) -> None:
        """A data event that changes nothing the guideline reads (new data, nothing else)."""
        read = {
            getattr(getattr(c, c.kind), "observation", None)
            for c in self.g.criteria.values()
            if len(c.kinds) == 1
        }
        for code, obs in self.g.observations.items():
            if code not in read:
                lo, hi = obs.plausible
                value = _number(lo + (hi - lo) / 2)
                self.add(
                    at, {"kind": "observation", "code": code, "value": value, "unit": obs.unit}
                )
                return
        read_findings = {c.finding.code for c in self.g.criteria.values() if c.finding}
        for code in self.g.findings:
            if code not in read_findings:
                self.add(at, {"kind": "finding", "code": code, "present": False})
                return
        self.add(at, {"kind": "assessment", "icans_grade": 0})
        self.notes.append("no neutral data event: an ICANS assessment stands in")

    def document(self) -> dict[str, Any]:
        patient: dict[str, Any] = {"id": PATIENT_ID, "infusion_at": _iso(INFUSION)}
        if self.risk:
            patient["risk_factors"] = list(self.risk)
        if self.baseline:
            patient["baseline"] = {
                code: {"value": _number(v), "unit": self.g.observations[code].unit}
                for code, v in sorted(self.baseline.items())
            }
        events = sorted(self.events, key=lambda e: e["at"])  # stable: an order set keeps its order
        return {"patient": patient, "events": events}


def _between(a: datetime | None, b: datetime) -> datetime:
    """A moment before `b` (after `a` when given)."""
    if a is None or _hours(a, b) > 2:
        return b - timedelta(hours=1)
    return a + (b - a) / 2


def _windows(g: m.Guideline) -> dict[str, float]:
    """The longest time a value of each observation stays fresh for some criterion."""
    p = g.parameters.get("lab_validity_hours")
    default = p.value if p is not None else 48.0
    out: dict[str, float] = {}
    for c in g.criteria.values():
        if len(c.kinds) != 1:
            continue
        spec = getattr(c, c.kind)
        if isinstance(spec, m.Threshold | m.Ratio):
            w = default if spec.within_hours is None else g.param(spec.within_hours)
        elif isinstance(spec, m.Trend):
            w = g.param(spec.window_hours)
        else:
            continue
        if math.isfinite(w):
            out[spec.observation] = max(out.get(spec.observation, 0.0), w)
    return out


def _drug_for(g: m.Guideline, c: Contract, event: str) -> str | None:
    classes = [cid for cid, dc in g.drug_classes.items() if dc.event == event]
    for drug, cls in c.drugs.items():
        if cls in classes and g.drugs.get(drug) is not None and g.drugs[drug].drug_class == cls:
            return drug
    for drug, d in g.drugs.items():
        if d.drug_class in classes:
            return drug
    return None


def _treatment(g: m.Guideline, drug: str) -> dict[str, Any]:
    ev: dict[str, Any] = {"kind": "treatment", "drug": drug}
    for s in g.states.values():
        for r in s.recommendations:
            if r.drug == drug and r.dose is not None and "/" not in r.dose.unit:
                ev.update(dose=_number(r.dose.min), unit=r.dose.unit)
                if r.route:
                    ev["route"] = r.route[0]
                ev["indication"] = "iec_hs"
                return ev
    ev["indication"] = "iec_hs"
    return ev


def concretize(
    g: m.Guideline, c: Contract, steps: tuple[Step, ...], domains: DomainBuilder | None = None
) -> tuple[dict[str, Any], list[str]]:
    """The steps as a timeline (DESIGN.md's JSON), and notes on what could not be laid out
    exactly as the abstract steps ask."""
    tl = _Timeline(g, c, domains)
    previous_at: datetime | None = None
    pending: Witness = {}
    for i, step in enumerate(steps):
        w: Witness = {**step.witness, **pending} if pending else dict(step.witness)
        if step.how == "through" and i + 1 < len(steps):
            pending = w  # decided with the treatment that goes through it
            continue
        pending = {}
        at = tl.time_for(w)
        added = tl.realise(w, at, previous_at)
        if step.event == c.events.close:
            tl.add(at, {"kind": "close", "reason": "follow_up_complete"})
        elif step.event == c.events.data:
            if not added:
                tl.neutral(at)
        else:
            drug = step.drug or _drug_for(g, c, step.event)
            if drug is None:
                tl.notes.append(f"no drug sends {step.event!r}")
            else:
                tl.add(at, _treatment(g, drug))
        if step.target != step.source:
            tl.entry = at
        tl.last = at
        previous_at = at
    return tl.document(), tl.notes


# --- replay ----------------------------------------------------------------------------------


def _abstract_path(steps: tuple[Step, ...]) -> list[str]:
    path = [steps[0].source] if steps else []
    for s in steps:
        if s.target != path[-1]:
            path.append(s.target)
    return path


def _engine_path(decisions: list[Any]) -> list[str]:
    path: list[str] = []
    for d in decisions:
        for s in decision_path(d):
            if not path or path[-1] != s:
                path.append(s)
    return path


def _determinism(g: m.Guideline, episode: Any, step: Step, cx: Counterexample) -> tuple[bool, str]:
    """Both transitions' guards TRUE at the last step, read by the engine's own criteria."""
    from .criteria import Evaluation  # noqa: PLC0415 - the engine's evaluator

    edges = [t for t in g.states[step.source].transitions if t.event == step.event]
    entry = None
    for d in episode.decisions:
        for s in decision_path(d)[1:]:
            if s == step.source:
                entry = d.at
    ev = Evaluation(episode.engine.plan, episode.facts, entry)
    values = [(t.to, t.label, ev.guard(t.when, t.unless).value) for t in edges]
    true = [v for v in values if v[2] == "TRUE"]
    targets = {v[0] for v in true}
    shown = "; ".join(f"-> {to} [{label}]: {value}" for to, label, value in values)
    return len(targets) > 1, shown


def replay_counterexample(g: m.Guideline, c: Contract, cx: Counterexample) -> Counterexample:
    """The counterexample with its concrete timeline and what the engine did with it."""
    from .verify import Replay  # noqa: PLC0415 - a cycle otherwise

    if not cx.steps or not cx.shows:
        why = (
            "nothing to replay: no run can show it (it is about what the guideline says, or "
            "about what can never happen)"
        )
        return attrs.evolve(cx, replay=Replay(None, why))
    timeline, notes = concretize(g, c, cx.steps)
    cx = attrs.evolve(cx, timeline=timeline)
    try:
        from .engine import Engine  # noqa: PLC0415 - the engine is loaded only to replay
        from .timeline import parse_timeline  # noqa: PLC0415

        parsed = parse_timeline(timeline, g)
        episode = Engine(g).run(parsed)
    except Exception as exc:  # the engine under test may fail: say so, do not hide it
        detail = f"not reproduced by the engine: the run failed ({type(exc).__name__}: {exc})"
        return attrs.evolve(cx, replay=Replay(False, " ".join(detail.split())))
    decisions = list(episode.decisions)
    want, got = _abstract_path(cx.steps), _engine_path(decisions)
    diverged = ""
    if got[: len(want)] != want:
        diverged = (
            f"; the engine went {' -> '.join(got)} where the counterexample goes "
            f"{' -> '.join(want)}"
        )
    extra = f" ({'; '.join(notes)})" if notes else ""
    if cx.kind == "determinism":
        both, shown = _determinism(g, episode, cx.steps[-1], cx)
        if both:
            return attrs.evolve(
                cx, replay=Replay(True, f"reproduced by the engine: its guards read {shown}")
            )
        return attrs.evolve(
            cx,
            replay=Replay(
                False, f"not reproduced by the engine: its guards read {shown}{diverged}{extra}"
            ),
        )
    if not cx.contract:
        ok = not diverged
        detail = (
            "reproduced by the engine (it follows the counterexample's path)"
            if ok
            else (f"not reproduced by the engine{diverged}{extra}")
        )
        return attrs.evolve(cx, replay=Replay(ok, detail))
    found = [v for v in check_run(c, g, parsed.events, decisions) if v.property == cx.property]
    if found:
        v = found[0]
        return attrs.evolve(
            cx,
            replay=Replay(True, f"reproduced by the engine at {_iso(v.at)}: {v.message}"),
        )
    return attrs.evolve(
        cx,
        replay=Replay(
            False,
            "not reproduced by the engine: its run keeps the property"
            + (diverged or f" (path {' -> '.join(got)})")
            + extra,
        ),
    )


def witness_runs(g: m.Guideline, c: Contract, examples: list[tuple[Step, ...]]) -> Replay:
    """Run the witnesses of an existence property through the engine: each must follow its
    path (the abstraction over-approximates; a witness run makes the proof concrete)."""
    from .engine import Engine  # noqa: PLC0415 - the engine is loaded only to replay
    from .timeline import parse_timeline  # noqa: PLC0415
    from .verify import Replay  # noqa: PLC0415 - a cycle otherwise

    try:
        engine = Engine(g)
    except Exception as exc:  # e.g. the statechart library refuses the chart
        detail = f"no witness run: the engine cannot run this guideline ({exc})"
        return Replay(False, " ".join(detail.split()))
    missed: list[str] = []
    domains = DomainBuilder(g, None)
    for steps in examples:
        want = _abstract_path(steps)
        timeline, _ = concretize(g, c, steps, domains)
        try:
            got = _engine_path(list(engine.run(parse_timeline(timeline, g)).decisions))
        except Exception as exc:  # the engine under test may fail: say so
            missed.append(f"{' -> '.join(want)} (the run failed: {type(exc).__name__})")
            continue
        if got[: len(want)] != want:
            missed.append(f"{' -> '.join(want)} (the engine went {' -> '.join(got)})")
    if missed:
        return Replay(
            False,
            f"{len(examples) - len(missed)} of {len(examples)} witness run(s) followed by the "
            f"engine; not reproduced: {'; '.join(missed)}",
        )
    return Replay(True, f"{len(examples)} witness run(s) followed by the engine")


def _point_labels(w: Witness) -> list[str]:  # pragma: no cover - debugging aid
    return [p.label for p in w.values() if isinstance(p, Point)]
