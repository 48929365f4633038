"""The engine: an `Engine` per guideline, an `Episode` per patient, a `Decision` per event.

One step: record the event in the episode's facts; raise time-based alerts (reassessment
overdue, escalation due) at the first event past the deadline; send the matching machine event
to the compiled statechart, whose guards evaluate the guideline's criteria; classify treatments
the guideline does not sanction at that point as deviations (never transitions); attach the
recommendations in force. Time is always the events' time: nothing here reads the clock.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

import attrs

from .compiler import CompiledGuideline, TransitionRef, compile_guideline
from .criteria import CriteriaPlan, Evaluation, Facts, Tri, Verdict
from .decision import Alert, Decision, Deviation, GuardResult
from .errors import EpisodeError, Problem
from .loader import load_guideline
from .model import Guideline
from .timeline import (
    AssessmentEvent,
    CloseEvent,
    Event,
    FindingEvent,
    ObservationEvent,
    Patient,
    ResponseEvent,
    Timeline,
    TreatmentEvent,
    event_to_json,
    format_time,
    parse_event,
    parse_patient,
    parse_time,
    patient_to_json,
)

__all__ = ["SNAPSHOT_FORMAT", "Engine", "Episode"]

SNAPSHOT_FORMAT = "iechs.episode/1"
TOCILIZUMAB = "tocilizumab"


Runtime = Literal["statechart", "table"]


class Engine:
    """Compiles a guideline once; starts and restores episodes that share it.

    `runtime="statechart"` (the default and the reference semantics) sends each machine event
    to a python-statemachine instance. `runtime="table"` takes the same transitions from a
    compiled table (source, event) -> transitions in declaration order, first enabled guard
    wins: the statechart's semantics for this flat chart, without its per-event cost. A
    differential Hypothesis test holds the two to the same decisions, byte for byte.
    """

    def __init__(
        self, guideline: Guideline | None = None, *, runtime: Runtime = "statechart"
    ) -> None:
        self.runtime = runtime
        self.guideline = guideline if guideline is not None else load_guideline()
        self.compiled: CompiledGuideline = compile_guideline(self.guideline)
        self.plan = CriteriaPlan(self.guideline)
        g = self.guideline
        self.known_risk_factors = set(g.risk_factors)
        #: treatment line of each drug class: the line of the state its event leads to.
        self.class_line: dict[str, int] = {}
        for cid, cls in g.drug_classes.items():
            lines = [
                g.states[t.to].line
                for s in g.states.values()
                for t in s.transitions
                if t.event == cls.event and g.states[t.to].line is not None
            ]
            if cls.event is not None and lines:
                self.class_line[cid] = min(x for x in lines if x is not None)
        self.outgoing: dict[tuple[str, str], tuple[TransitionRef, ...]] = {}
        for ref in self.compiled.transitions:
            key = (ref.source, ref.event)
            self.outgoing[key] = (*self.outgoing.get(key, ()), ref)

    @property
    def identity(self) -> dict[str, str]:
        meta = self.guideline.guideline
        return {"id": meta.id, "version": meta.version, "sha256": self.guideline.sha256}

    def start(self, patient: Patient, episode_id: str | None = None) -> Episode:
        return Episode(self, patient, episode_id or patient.id)

    def run(self, timeline: Timeline) -> Episode:
        """Start an episode and step every event of the timeline through it."""
        episode = self.start(timeline.patient)
        for i, event in enumerate(timeline.events):
            try:
                episode.step(event)
            except EpisodeError as exc:  # name the event as the file has it
                where = timeline.positions[i] if timeline.positions else i
                raise EpisodeError(
                    [Problem(p.message, f"$.events[{where}]") for p in exc.problems],
                    timeline.file,
                ) from None
        return episode

    def restore(self, snapshot: Any, file: str | None = None) -> Episode:
        """Rebuild an episode from `Episode.snapshot()`, replaying its recorded inputs."""
        problems = _snapshot_problems(snapshot, self.identity)
        if problems:
            raise EpisodeError(problems, file)
        patient = parse_patient(snapshot["patient"], self.guideline, file)
        episode = self.start(patient, snapshot["episode_id"])
        for i, item in enumerate(snapshot["inputs"]):
            path = f"$.inputs[{i}]"
            if isinstance(item, dict) and item.get("kind") == "advance":
                try:
                    episode.advance(parse_time(item.get("at")))
                except ValueError as exc:
                    raise EpisodeError([Problem(str(exc), f"{path}.at")], file) from None
            else:
                episode.step(parse_event(item, self.guideline, path, file))
        if episode.state != snapshot["state"]:
            raise EpisodeError(
                [
                    Problem(
                        f"replaying the inputs ends in {episode.state!r}, the snapshot says "
                        f"{snapshot['state']!r}",
                        "$.state",
                    )
                ],
                file,
            )
        return episode


def _snapshot_problems(snap: Any, identity: dict[str, str]) -> list[Problem]:
    if not isinstance(snap, dict):
        return [Problem("expected a saved episode (a JSON object)")]
    if snap.get("format") != SNAPSHOT_FORMAT:
        return [
            Problem(
                f"not a saved episode (format {snap.get('format')!r}, expected "
                f"{SNAPSHOT_FORMAT!r})",
                "$.format",
            )
        ]
    problems = [
        Problem(f"missing {key!r}", f"$.{key}")
        for key in ("episode_id", "guideline", "patient", "inputs", "state")
        if key not in snap
    ]
    if problems:
        return problems
    if snap["guideline"] != identity:
        return [
            Problem(
                f"saved with guideline {snap['guideline']}, this engine runs "
                f"{identity}: restore it with the guideline it was saved with",
                "$.guideline",
            )
        ]
    if not isinstance(snap["inputs"], list):
        return [Problem("expected a list", "$.inputs")]
    return []


@attrs.define
class _StepContext:
    """Handed to the compiled guards: evaluates their criteria and records each verdict."""

    evaluation: Evaluation
    results: list[GuardResult] = attrs.field(factory=list)

    def check(self, ref: TransitionRef) -> bool:
        t = ref.definition
        tri = self.evaluation.guard(t.when, t.unless)
        self.results.append(
            GuardResult(ref.source, t.to, t.event, t.label, tri.value, t.when, t.unless)
        )
        return tri is Tri.TRUE


class Episode:
    """One patient's course through the guideline. Not thread-safe; one writer at a time."""

    def __init__(self, engine: Engine, patient: Patient, episode_id: str) -> None:
        self.engine = engine
        self.g = engine.guideline
        self.episode_id = episode_id
        self.patient = patient
        self.facts = Facts(patient, engine.known_risk_factors)
        self.machine = engine.compiled.chart() if engine.runtime == "statechart" else None
        self._state = self.g.initial_state
        self.decisions: list[Decision] = []
        self.inputs: list[dict[str, Any]] = []
        self._last_at: datetime | None = None
        self._cycle_line = 0
        self._last_reassessment: datetime | None = None
        self._overdue_flagged: datetime | None = None
        self._escalation_flagged: datetime | None = None
        self._missing_raised: set[str] = set()
        self._start()

    # --- public ------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self._state

    @property
    def closed(self) -> bool:
        return self.g.states[self.state].final

    @property
    def alerts(self) -> list[Alert]:
        return [a for d in self.decisions for a in d.alerts]

    def step(self, event: Event) -> Decision:
        """Record one event and decide; events arrive in time order."""
        self._check_time(event.at, event.kind)
        ev_json = event_to_json(event)
        self.inputs.append(ev_json)
        at = event.at
        state = self.state
        if at < self.facts.infusion_at:
            if isinstance(event, ObservationEvent):
                assert event.code is not None
                self.facts.add_observation(event.code, at, event.value)
            return self._unchanged(at, ev_json)
        self.facts.now = at
        # Closing ends the duties: no "overdue" at the close itself.
        alerts = [] if isinstance(event, CloseEvent) else self._overdue(at)
        self._ingest(event)
        evaluation = Evaluation(self.engine.plan, self.facts)
        machine_event, inferred, indication = self._machine_event(event, evaluation)
        ctx = _StepContext(evaluation)
        if machine_event is not None:
            self._state = self._send(machine_event, ctx)
        target = self._state
        fired = self._fired(state, target, machine_event, ctx.results)
        if fired is not None:
            self._enter(target, at)
        deviations: list[Deviation] = []
        if isinstance(event, TreatmentEvent):
            deviations, treat_alerts = self._treatment_checks(
                event, indication, fired, ctx.results, evaluation
            )
            alerts += treat_alerts
        alerts += self._missing_data(at, ctx.results, evaluation)
        if fired is None:
            alerts += self._escalation_due(at, evaluation)
        return self._record(
            Decision(
                step=len(self.decisions),
                at=at,
                event=ev_json,
                source=state,
                target=target,
                machine_event=machine_event,
                transition_label=fired.definition.label if fired else None,
                transition_cite=fired.definition.cite if fired else (),
                inferred=inferred,
                guards=tuple(ctx.results),
                criteria=tuple(evaluation.verdicts.values()),
                recommendations=self._recs(target),
                alerts=tuple(alerts),
                deviations=tuple(deviations),
            )
        )

    def advance(self, to: datetime) -> Decision:
        """What is due at time `to` (no new clinical data): time-based alerts only."""
        self._check_time(to, "advance")
        self.inputs.append({"kind": "advance", "at": format_time(to)})
        alerts: list[Alert] = []
        if to >= self.facts.infusion_at:
            self.facts.now = to
            alerts = self._overdue(to)
            evaluation = Evaluation(self.engine.plan, self.facts)
            alerts += self._escalation_due(to, evaluation)
            criteria = tuple(evaluation.verdicts.values())
        else:
            criteria = ()
        return self._unchanged(to, {"kind": "advance", "at": format_time(to)}, criteria, alerts)

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready saved episode; `Engine.restore` continues it exactly."""
        return {
            "format": SNAPSHOT_FORMAT,
            "episode_id": self.episode_id,
            "guideline": self.engine.identity,
            "patient": patient_to_json(self.patient),
            "inputs": list(self.inputs),
            "state": self.state,
        }

    # --- steps -------------------------------------------------------------------------------

    def _start(self) -> None:
        at = self.facts.infusion_at
        evaluation = Evaluation(self.engine.plan, self.facts)
        alerts: list[Alert] = []
        if "high_risk" in self.g.criteria:
            verdict = evaluation("high_risk")
            if verdict.value is Tri.TRUE:
                names = [self.g.risk_factors[f].text.rstrip(".") for f in self.facts.risk_factors]
                alerts.append(
                    Alert(
                        "high_risk_patient",
                        at,
                        "High risk of IEC-HS: " + "; ".join(names) + ".",
                        self.g.criteria["high_risk"].cite,
                    )
                )
        state = self.state
        self._record(
            Decision(
                step=0,
                at=at,
                event={"kind": "start", "patient": self.patient.id},
                source=None,
                target=state,
                criteria=tuple(evaluation.verdicts.values()),
                recommendations=self._recs(state),
                alerts=tuple(alerts),
            )
        )

    def _unchanged(
        self,
        at: datetime,
        event: dict[str, Any],
        criteria: tuple[Verdict, ...] = (),
        alerts: list[Alert] | None = None,
    ) -> Decision:
        """A decision that moves nothing: a baseline value, or time passing."""
        state = self.state
        return self._record(
            Decision(
                step=len(self.decisions),
                at=at,
                event=event,
                source=state,
                target=state,
                criteria=criteria,
                recommendations=self._recs(state),
                alerts=tuple(alerts or ()),
            )
        )

    def _record(self, decision: Decision) -> Decision:
        self.decisions.append(decision)
        return decision

    def _check_time(self, at: datetime, what: str) -> None:
        if self.closed:
            raise EpisodeError(
                [Problem(f"the episode is closed; cannot record {what} at {format_time(at)}")]
            )
        if self._last_at is not None and at < self._last_at:
            raise EpisodeError(
                [
                    Problem(
                        f"{what} at {format_time(at)} is earlier than the previous event at "
                        f"{format_time(self._last_at)}: events arrive in time order"
                    )
                ]
            )
        self._last_at = at

    def _ingest(self, event: Event) -> None:
        f = self.facts
        at = event.at
        if isinstance(event, ObservationEvent):
            assert event.code is not None
            f.add_observation(event.code, at, event.value)
        elif isinstance(event, FindingEvent):
            f.findings[event.code] = (at, event.present, event.grade)
        elif isinstance(event, AssessmentEvent):
            if event.crs_grade is not None:
                f.grades["crs"].append((at, event.crs_grade))
            if event.icans_grade is not None:
                f.grades["icans"].append((at, event.icans_grade))
            if event.infection is not None:
                f.infection = (at, event.infection)
            if event.antimicrobials is not None:
                f.antimicrobials = (at, event.antimicrobials)
            self._reassessed(at)
        elif isinstance(event, ResponseEvent):
            f.responses.append((at, event.assessment))
            self._reassessed(at)
        elif isinstance(event, TreatmentEvent):
            cls = self.g.drug_class_of(event.drug)
            if cls == "antimicrobial" or (cls is None and event.indication == "infection"):
                f.antimicrobials = (at, True)
            if cls == "corticosteroid":
                f.last_corticosteroid_at = at

    def _reassessed(self, at: datetime) -> None:
        if self._last_reassessment is not None:
            self._last_reassessment = at

    def _machine_event(
        self, event: Event, evaluation: Evaluation
    ) -> tuple[str | None, dict[str, str] | None, str | None]:
        if isinstance(event, CloseEvent):
            return "close", None, None
        if not isinstance(event, TreatmentEvent):
            return "reassess", None, None
        cls = self.g.drug_class_of(event.drug)
        inferred = None
        indication: str | None = event.indication
        if indication is None:
            indication, reason = self._infer_indication(cls, evaluation)
            inferred = {"indication": indication, "reason": reason}
        event_name = None
        if indication == "iec_hs" and cls is not None:
            event_name = self.g.drug_classes[cls].event
        return event_name, inferred, indication

    def _infer_indication(self, cls: str | None, evaluation: Evaluation) -> tuple[str, str]:
        """DESIGN.md: drugs given while CRS or ICANS is active and IEC-HS criteria are not met
        treat CRS/ICANS (outside this guideline); during IEC-HS treatment they treat IEC-HS."""
        if cls == "antimicrobial":
            return "infection", "antimicrobial drug"
        if cls is None:
            return "other", "drug not in the guideline's formulary"
        state = self.g.states[self.state]
        if state.line is not None or (state.phase == "outcome" and not state.final):
            return "iec_hs", f"IEC-HS treatment in progress ({self.state})"
        if (
            "iec_hs_identified" in self.g.criteria
            and evaluation("iec_hs_identified").value is Tri.TRUE
        ):
            return "iec_hs", "IEC-HS criteria met"
        if self.facts.crs_active():
            return (
                "crs",
                "CRS active and IEC-HS criteria not met: treats CRS (outside this guideline)",
            )
        if self.facts.icans_active():
            return "icans", (
                "ICANS active and IEC-HS criteria not met: treats ICANS (outside this guideline)"
            )
        if state.phase == "diagnosis":
            return "iec_hs", f"IEC-HS suspected ({self.state})"
        return "other", "no IEC-HS, CRS or ICANS at this time"

    def _send(self, machine_event: str, ctx: _StepContext) -> str:
        if self.machine is not None:
            self.machine.send(machine_event, ctx=ctx)
            return str(next(iter(self.machine.configuration)).id)
        for ref in self.engine.outgoing.get((self._state, machine_event), ()):
            d = ref.definition
            if not (d.when or d.unless) or ctx.check(ref):
                return d.to
        return self._state

    def _fired(
        self, source: str, target: str, machine_event: str | None, results: list[GuardResult]
    ) -> TransitionRef | None:
        if machine_event is None or source == target:
            return None
        for ref in self.engine.outgoing.get((source, machine_event), ()):
            d = ref.definition
            if d.to == target and (
                not (d.when or d.unless)
                or any(r.target == target and r.result == "TRUE" for r in results)
            ):
                return ref
        return None  # pragma: no cover - the chart only moves along a declared transition

    def _enter(self, target: str, at: datetime) -> None:
        s = self.g.states[target]
        self.facts.line_started_at = at
        self._missing_raised = set()
        if s.line is not None:
            self._cycle_line = max(self._cycle_line, s.line)
        elif s.phase in ("surveillance", "diagnosis"):
            self._cycle_line = 0
        active = s.phase in ("diagnosis", "treatment")
        self._last_reassessment = at if active else None
        self._overdue_flagged = None

    def _current_line(self) -> int:
        s = self.g.states[self.state]
        return s.line if s.line is not None else self._cycle_line

    # --- alerts ------------------------------------------------------------------------------

    def _overdue(self, at: datetime) -> list[Alert]:
        last = self._last_reassessment
        interval = self.g.parameters.get("reassessment_interval_hours")
        if last is None or interval is None:
            return []
        deadline = last + timedelta(hours=interval.value)
        if at <= deadline or self._overdue_flagged == deadline:
            return []
        self._overdue_flagged = deadline
        return [
            Alert(
                "reassessment_overdue",
                at,
                f"Reassessment overdue: last at {format_time(last)}, due by "
                f"{format_time(deadline)} (every {interval.value:g} h).",
                interval.cite,
            )
        ]

    def _escalation_due(self, at: datetime, evaluation: Evaluation) -> list[Alert]:
        state = self.state
        if (
            self.g.states[state].phase != "treatment"
            or self._escalation_flagged == self.facts.line_started_at
        ):
            return []
        escalation_events = {c.event for c in self.g.drug_classes.values() if c.event}
        for t in self.g.states[state].transitions:
            if (
                t.event in escalation_events
                and (t.when or t.unless)
                and evaluation.guard(t.when, t.unless) is Tri.TRUE
            ):
                self._escalation_flagged = self.facts.line_started_at
                return [
                    Alert(
                        "escalation_due",
                        at,
                        f"Escalation due: {t.label} -> {self.g.states[t.to].name}.",
                        t.cite,
                    )
                ]
        return []

    def _missing_data(
        self, at: datetime, results: list[GuardResult], evaluation: Evaluation
    ) -> list[Alert]:
        unknown = [r for r in results if r.result == Tri.UNKNOWN.value]
        if not unknown:
            return []
        names = tuple(
            n for r in unknown for n in (*r.when, *r.unless) if evaluation(n).value is Tri.UNKNOWN
        )
        measure = evaluation.missing_for(names)
        if not set(measure) - self._missing_raised:
            return []  # already asked for in this state
        self._missing_raised |= set(measure)
        labels = "; ".join(r.label for r in unknown)
        return [
            Alert(
                "missing_data",
                at,
                f"Cannot decide ({labels}): measure or assess {', '.join(measure)}.",
                measure=measure,
            )
        ]

    def _treatment_checks(
        self,
        event: TreatmentEvent,
        indication: str | None,
        fired: TransitionRef | None,
        results: list[GuardResult],
        evaluation: Evaluation,
    ) -> tuple[list[Deviation], list[Alert]]:
        g, f, at = self.g, self.facts, event.at
        cls = g.drug_class_of(event.drug)
        alerts: list[Alert] = []
        deviations: list[Deviation] = []
        if event.drug == TOCILIZUMAB and f.icans_active():
            alerts.append(
                Alert(
                    "tocilizumab_with_icans",
                    at,
                    "Tocilizumab while ICANS is present: it may worsen neurologic "
                    "symptoms; use with caution.",
                    ("seed-summary",),
                )
            )
        if indication != "iec_hs":
            return deviations, alerts
        if cls is None:
            alerts.append(
                Alert(
                    "off_guideline_therapy",
                    at,
                    f"{event.drug} is not in the guideline's IEC-HS formulary.",
                )
            )
            deviations.append(
                Deviation(event.drug, None, "not in the formulary", "off_guideline_therapy")
            )
            return deviations, alerts
        dc = g.drug_classes[cls]
        infection_blocks = dc.immunosuppressive and f.infection_untreated()
        if infection_blocks:
            status = f.infection[1] if f.infection else "suspected"
            alerts.append(
                Alert(
                    "immunosuppression_before_antimicrobials",
                    at,
                    f"{event.drug} (immunosuppression) while infection is {status} and "
                    "antimicrobials have not started: start antimicrobials first.",
                    ("seed-summary",),
                )
            )
        if cls == "il6_blockade":
            il6_alert, il6_dev = self._il6_check(event.drug, at)
            alerts.append(il6_alert)
            deviations.append(il6_dev)
            return deviations, alerts
        if infection_blocks and fired is None:
            deviations.append(
                Deviation(
                    event.drug,
                    cls,
                    "infection not yet treated",
                    "immunosuppression_before_antimicrobials",
                )
            )
            return deviations, alerts
        line = self.engine.class_line.get(cls)
        if fired is not None or line is None or line <= self._current_line():
            return deviations, alerts
        current = self._current_line()
        if line > current + 1:
            reason = f"skips a line: line {line} while on line {current}"
        else:
            failed = [r for r in results if r.result != Tri.TRUE.value]
            reason = (
                "; ".join(f"{r.label}: guard {r.result}" for r in failed)
                or "not sanctioned from this state"
            )
        alerts.append(
            Alert(
                "off_guideline_therapy",
                at,
                f"{event.drug} ({dc.name}) not sanctioned now ({reason}): recorded "
                "as a deviation, the state does not change.",
            )
        )
        deviations.append(Deviation(event.drug, cls, reason, "off_guideline_therapy"))
        return deviations, alerts

    def _il6_check(self, drug: str, at: datetime) -> tuple[Alert, Deviation]:
        """IL-6 blockade for IEC-HS is never a line here; alone it is a critical alert."""
        window = self.g.parameters.get("concurrent_steroid_window_hours")
        hours = window.value if window else 24.0
        last = self.facts.last_corticosteroid_at
        if last is None or (at - last) > timedelta(hours=hours):
            return (
                Alert(
                    "il6_monotherapy",
                    at,
                    f"{drug} without a corticosteroid in the last {hours:g} h: IL-6 "
                    "blockade is not recommended as monotherapy for IEC-HS.",
                    ("seed-news-2026",),
                ),
                Deviation(
                    drug, "il6_blockade", "IL-6 blockade without corticosteroid", "il6_monotherapy"
                ),
            )
        return (
            Alert(
                "off_guideline_therapy",
                at,
                f"{drug}: IL-6 blockade is not part of this guideline's IEC-HS treatment.",
                ("seed-news-2026",),
            ),
            Deviation(
                drug,
                "il6_blockade",
                "IL-6 blockade is not a line of this guideline",
                "off_guideline_therapy",
            ),
        )

    def _recs(self, state: str) -> tuple[Any, ...]:
        return self.g.states[state].recommendations
