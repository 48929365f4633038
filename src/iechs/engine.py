"""The engine: an `Engine` per guideline, an `Episode` per patient, a `Decision` per event.

One step: record the event in the episode's facts; raise the reassessment duty at the first
event past its deadline; choose the transition the event takes (a route, when it passes
through a state); send it to the compiled statechart; apply the guideline's rules (alerts and
deviations, as data); say what to do next (the guideline's actions). The Python here holds no
drug name and no clinical threshold: those are the guideline's. Time is always the events' time.

Semantics (DESIGN.md, "Time, order sets and therapies"):

- Data events send `reassess`: the first transition whose guard is TRUE fires.
- A treatment given for the guideline's condition sends its drug class's event. The first
  transition whose guard is TRUE fires; failing that, the first whose guard is UNKNOWN fires
  with `treatment_unconfirmed` (UNKNOWN never makes care off-guideline), and later fresh data
  confirms it or records the deviation. With no such transition the treatment may go through a
  state: a `reassess` transition to a state that takes it (a recurrence: resolved -> suspected
  -> first line), or a running therapy given for another indication counted as the earlier
  line. Otherwise a new therapy the guideline does not sanction is a deviation, once.
- Doses of one drug class within the continuity time are one therapy, judged once; a therapy
  keeps the indication it started with.
- Events at one time are one order set (`timeline.canonical_order`); in a retrospective run
  (`Engine.run`) the treatments that follow within the rules' windows are known (`later`).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal, NamedTuple

import attrs

from .compiler import CompiledGuideline, TransitionRef, compile_guideline, transition_refs
from .criteria import CriteriaPlan, Dose, Evaluation, Facts, Therapy, Tri, Verdict
from .decision import Action, Alert, Decision, Deviation, GuardResult, make_decision
from .errors import EpisodeError, Problem
from .loader import load_guideline
from .model import ActionDef, Guideline, Recommendation, Rule
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
#: the machine events the engine sends for data and for closing (DESIGN.md).
REASSESS, CLOSE = "reassess", "close"

Runtime = Literal["statechart", "table"]


class Hop(NamedTuple):
    """One transition of a route, with its guard's value and the line start it sets."""

    ref: TransitionRef
    value: Tri
    line_start: datetime
    note: str | None = None


class Choice(NamedTuple):
    """A transition as `_choose` reads it: its guard, and its guard's result for each value
    (TRUE, FALSE, UNKNOWN: picked by identity, not by hashing the value)."""

    ref: TransitionRef
    guard: Callable[[Evaluation], Tri] | None
    on_true: GuardResult
    on_false: GuardResult
    on_unknown: GuardResult


class ActionEntry(NamedTuple):
    """An action as `Episode._actions` reads it: its guard, and what its UNKNOWN reading
    names (the criteria to look into, the action as the `measure` action says it waits)."""

    definition: ActionDef
    guard: Callable[[Evaluation], Tri]
    names: tuple[str, ...]
    waiting: str


class Engine:
    """Compiles a guideline once; starts and restores episodes that share it.

    `runtime="statechart"` (the default) sends each machine event to a python-statemachine
    instance, which follows the transition the engine chose; `runtime="table"` takes it from a
    compiled table. A differential test holds the two to the same decisions, byte for byte.
    """

    def __init__(
        self, guideline: Guideline | None = None, *, runtime: Runtime = "statechart"
    ) -> None:
        self.runtime = runtime
        self.guideline = guideline if guideline is not None else load_guideline()
        #: every transition, in declaration order; the statechart's guards call back with these.
        self.transitions = transition_refs(self.guideline)
        self._compiled: CompiledGuideline | None = None
        if runtime == "statechart":  # build (and check) the chart now; the table needs none
            self._compiled = compile_guideline(self.guideline, self.transitions)
        self.plan = plan = CriteriaPlan(self.guideline)
        g = self.guideline
        self.known_risk_factors = g.risk_factors
        #: treatment line of each drug class: the lowest line its event leads to.
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
        for ref in self.transitions:
            key = (ref.source, ref.event)
            self.outgoing[key] = (*self.outgoing.get(key, ()), ref)
        self._guard_results: dict[tuple[int, Tri], GuardResult] = {}
        #: per (state, machine event): each transition, its guard (None: it has none) and how
        #: its guard can read (`_choose`, the hot path).
        self.choices: dict[tuple[str, str], tuple[Choice, ...]] = {
            key: tuple(
                Choice(
                    ref,
                    plan.guard(ref.definition.when, ref.definition.unless)
                    if ref.definition.when or ref.definition.unless
                    else None,
                    *(self.guard_result(ref, v) for v in (Tri.TRUE, Tri.FALSE, Tri.UNKNOWN)),
                )
                for ref in refs
            )
            for key, refs in self.outgoing.items()
        }
        self.rules_on: dict[str, list[tuple[str, Rule]]] = {
            "start": [],
            "treatment": [],
            "step": [],
        }
        for rid, rule in g.rules.items():
            self.rules_on[rule.upon].append((rid, rule))
        #: how far a retrospective run looks ahead for concurrent treatments.
        self.lookahead_hours = max(
            (
                g.param(c.hours)
                for r in g.rules.values()
                for c in (r.with_, r.without)
                if c is not None
            ),
            default=0.0,
        )
        self._lookahead = timedelta(hours=self.lookahead_hours)
        interval = g.parameters.get("reassessment_interval_hours")
        self.reassessment_interval = interval
        self.reassessment_delta = None if interval is None else timedelta(hours=interval.value)
        self._measure_actions: dict[tuple[tuple[str, ...], ...], Action] = {}
        self._charts = threading.local()
        #: the guideline's actions and `upon: step` rules that apply in each state, in order.
        #: (each with its guard, compiled).
        entries = {
            code: ActionEntry(
                a,
                plan.guard(a.when, a.unless),
                (*a.when, *a.unless),
                " ".join(a.text.split()).rstrip("."),
            )
            for code, a in g.actions.items()
        }
        self.actions_in: dict[str, tuple[ActionEntry, ...]] = {
            sid: tuple(e for code, e in entries.items() if sid in g.actions[code].states)
            for sid in g.states
        }
        self.step_rules_in: dict[str, tuple[tuple[str, Rule, Callable[[Evaluation], Tri]], ...]] = {
            sid: tuple(
                (rid, r, plan.guard(r.when, r.unless))
                for rid, r in self.rules_on["step"]
                if not r.states or sid in r.states
            )
            for sid in g.states
        }

    def measure_action(self, missing: list[str], waiting: list[str], cites: list[str]) -> Action:
        """The `measure` action: what to measure, for what (immutable: made once per content)."""
        key = (tuple(missing), tuple(waiting), tuple(cites))
        found = self._measure_actions.get(key)
        if found is None:
            found = Action(
                "measure",
                f"Measure or assess {', '.join(missing)}: needed to decide "
                + "; ".join(dict.fromkeys(waiting))
                + ".",
                key[2],
                measure=key[0],
            )
            if len(self._measure_actions) < 4096:  # bounded: a long-running service
                self._measure_actions[key] = found
        return found

    def guard_result(self, ref: TransitionRef, value: Tri) -> GuardResult:
        """How a transition's guard read (immutable: one object per transition and value)."""
        key = (id(ref), value)  # the engine holds every ref: ids are stable
        found = self._guard_results.get(key)
        if found is None:
            d = ref.definition
            found = GuardResult(ref.source, d.to, d.event, d.label, value.value, d.when, d.unless)
            self._guard_results[key] = found
        return found

    @property
    def compiled(self) -> CompiledGuideline:
        """The guideline's StateChart class (built on first use by the table runtime)."""
        if self._compiled is None:
            self._compiled = compile_guideline(self.guideline, self.transitions)
        return self._compiled

    def chart(self) -> Any:
        """This thread's python-statemachine chart of the guideline (`Episode.machine`)."""
        machine = getattr(self._charts, "machine", None)
        if machine is None or machine.is_terminated:  # a chart stops in a final state
            machine = self._charts.machine = self.compiled.chart()
        return machine

    @property
    def identity(self) -> dict[str, str]:
        meta = self.guideline.guideline
        return {"id": meta.id, "version": meta.version, "sha256": self.guideline.sha256}

    def start(self, patient: Patient, episode_id: str | None = None) -> Episode:
        return Episode(self, patient, episode_id or patient.id)

    def run(self, timeline: Timeline) -> Episode:
        """Start an episode and step every event of the timeline through it, retrospectively:
        each treatment decision knows the treatments that follow within the rules' windows."""
        episode = self.start(timeline.patient)
        events = timeline.events
        for i, event in enumerate(events):
            try:
                episode.step(event, later=self.later(events, i))
            except EpisodeError as exc:  # name the event as the file has it
                where = timeline.positions[i] if timeline.positions else i
                raise EpisodeError(
                    [Problem(p.message, f"$.events[{where}]") for p in exc.problems],
                    timeline.file,
                ) from None
        return episode

    def later(self, events: Sequence[Event], i: int) -> tuple[Event, ...]:
        """What a retrospective run knows follows `events[i]`: the rest of its order set (the
        events at the same time), and for a treatment the treatments within the lookahead."""
        event = events[i]
        at = event.at
        if not (isinstance(event, TreatmentEvent) and self.lookahead_hours > 0):
            end, n = i + 1, len(events)  # the rest of its order set: the events at its time
            while end < n and events[end].at == at:
                end += 1
            return tuple(events[i + 1 : end]) if end > i + 1 else ()
        horizon = at + self._lookahead
        found: list[Event] = []
        for j in range(i + 1, len(events)):
            other = events[j]
            if other.at == at:
                found.append(other)
            elif other.at > horizon:
                break
            elif isinstance(other, TreatmentEvent):
                found.append(other)
        return tuple(found)

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
                event, later = self.parse_input(item, path, file)
                episode.step(event, later=later)
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

    def parse_input(
        self, item: Any, path: str, file: str | None
    ) -> tuple[Event, tuple[Event, ...]]:
        """A recorded input: the event, and what was known to follow it (`Episode.step`)."""
        later: list[Event] = []
        if isinstance(item, dict) and "later" in item:
            item = dict(item)
            raw = item.pop("later")
            if not isinstance(raw, list):
                raise EpisodeError([Problem("expected a list", f"{path}.later")], file)
            later = [
                parse_event(other, self.guideline, f"{path}.later[{k}]", file)
                for k, other in enumerate(raw)
            ]
        return parse_event(item, self.guideline, path, file), tuple(later)


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
class _Follow:
    """Handed to the compiled guards: the chart takes exactly the transition chosen."""

    chosen: TransitionRef

    def check(self, ref: TransitionRef) -> bool:
        return ref == self.chosen


@attrs.define
class _Pending:
    """A transition taken on an UNKNOWN guard, waiting for fresh data to confirm it."""

    hop: Hop
    drug: str
    therapy: str


#: events decided on their own, never with the rest of their order set (a class tuple: a
#: `X | Y` union would be built again at every call).
_DECIDED_AT_ONCE = (TreatmentEvent, CloseEvent)
_UNKNOWN = Tri.UNKNOWN.value
_TRUE, _UNKNOWN_TRI = Tri.TRUE, Tri.UNKNOWN
#: machine events that never follow an UNKNOWN guard (only treatments do).
_NO_UNKNOWN = (REASSESS, CLOSE)

_PLACEHOLDER = re.compile(r"\{(\$?[a-z_]+)\}")


class Episode:
    """One patient's course through the guideline. Not thread-safe; one writer at a time."""

    def __init__(self, engine: Engine, patient: Patient, episode_id: str) -> None:
        self.engine = engine
        self.g = engine.guideline
        self.condition = self.g.guideline.condition
        self.episode_id = episode_id
        self.patient = patient
        self.facts = Facts(patient, engine.known_risk_factors)
        self._state = self.g.initial_state
        self._closed = self.g.states[self._state].final
        self.decisions: list[Decision] = []
        #: what was recorded, in order: an event with what followed it, rendered as JSON on
        #: first use (`inputs`), or an `advance`.
        self._inputs: list[Any] = []
        self._rendered = 0
        self._last_at: datetime | None = None
        self._cycle_line = 0
        self._last_reassessment: datetime | None = None
        self._overdue_flagged: datetime | None = None
        #: what was asked for (missing data) and not yet provided -> the criteria that lacked it.
        self._missing_raised: dict[str, tuple[str, ...]] = {}
        #: `upon: step` rules already raised since the state was entered.
        self._step_raised: set[str] = set()
        self._pending: list[_Pending] = []
        #: actions made so far (immutable), by code and due time: the same action is one object.
        self._action_memo: dict[tuple[str, datetime | None], Action] = {}
        self._start()

    # --- public ------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self._state

    @property
    def machine(self) -> Any:
        """The statechart runtime's python-statemachine chart, in this episode's state (None
        for the table runtime). Charts are the engine's, one per thread, placed in the
        episode's state before each use (a flat chart holds nothing else); a chart that reached
        a final state has stopped and is replaced. An open episode costs no chart of its own."""
        if self.engine.runtime != "statechart":
            return None
        machine = self.engine.chart()
        machine.current_state_value = self._state
        return machine

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def alerts(self) -> list[Alert]:
        return [a for d in self.decisions for a in d.alerts]

    @property
    def inputs(self) -> list[dict[str, Any]]:
        """What was recorded, as `snapshot()` saves it (the same list, rendered on first use)."""
        items = self._inputs
        for i in range(self._rendered, len(items)):
            item = items[i]
            if isinstance(item, tuple):
                event, later = item
                rendered = event_to_json(event)
                items[i] = (
                    {**rendered, "later": [event_to_json(e) for e in later]} if later else rendered
                )
        self._rendered = len(items)
        return items

    def step(self, event: Event, *, later: Sequence[Event] = ()) -> Decision:  # noqa: PLR0915 - the hot path, in one frame
        """Record one event and decide; events arrive in time order. `later`: what is known to
        follow it (a retrospective run): the rest of its order set, whose facts are decided
        together at the set's last fact, and the treatments within the rules' windows."""
        at = event.at
        last = self._last_at
        if self._closed or (last is not None and at < last):
            self._check_time(at, event.kind)  # raises
        self._last_at = at
        if type(later) is not tuple:
            later = tuple(later)
        self._inputs.append((event, later))
        early = self._recorded_only(event, later)
        if early is not None:
            return early
        state = self._state
        f = self.facts
        # Closing ends the duties: no "overdue" at the close itself.
        alerts = (
            []
            if self._last_reassessment is None or isinstance(event, CloseEvent)
            else self._overdue(at)
        )
        self._ingest(event)
        notes: list[str] = []
        deviations: list[Deviation] = []
        results: list[GuardResult] = []
        plan = self.engine.plan
        evaluation = Evaluation(plan, f)
        inferred: dict[str, str] | None = None
        therapy: Therapy | None = None
        new_therapy = False
        machine_event: str | None = REASSESS
        if isinstance(event, CloseEvent):
            machine_event = CLOSE
        elif isinstance(event, TreatmentEvent):
            therapy, new_therapy, inferred = self._therapy(event, evaluation, notes)
            machine_event = self._treatment_event(therapy)
            evaluation = Evaluation(plan, f)  # the dose is now on record
        route: list[Hop] = []
        if machine_event is not None:
            route = self._route(machine_event, therapy, evaluation, results)
        for hop in route:
            self._take(hop, therapy)
            if hop.note:
                notes.append(hop.note)
        target = self._state
        fired = route[-1] if route else None
        post = Evaluation(plan, f) if route else evaluation
        if isinstance(event, TreatmentEvent) and therapy is not None:
            self._judge_treatment(
                event,
                therapy,
                (route, new_therapy, state),
                evaluation=evaluation,
                results=results,
                alerts=alerts,
                deviations=deviations,
            )
        elif machine_event == REASSESS and self._pending:
            confirmed, pending_devs, pending_alerts = self._confirm(at)
            notes += confirmed
            deviations += pending_devs
            alerts += pending_alerts
        asked = bool(self._missing_raised)  # something asked for, or a guard read UNKNOWN
        if not asked:
            for r in results:
                if r.result == _UNKNOWN:
                    asked = True
                    break
        if asked:
            alerts += self._missing_data(at, results, evaluation, prune=machine_event == REASSESS)
        alerts += self._step_rules(at, post)
        actions = self._actions(post)  # before the verdicts are listed: it reads criteria too
        definition = fired.ref.definition if fired else None
        return self._record(
            make_decision(
                len(self.decisions),
                at,
                event,
                state,
                target,
                machine_event,
                definition.label if definition else None,
                definition.cite if definition else (),
                inferred,
                tuple(results),
                evaluation.explained(),
                self.g.states[target].recommendations,
                tuple(alerts),
                tuple(deviations),
                tuple(h.ref.target for h in route[:-1]) if len(route) > 1 else (),
                actions,
                tuple(notes),
                later,
            )
        )

    def _treatment_event(self, therapy: Therapy) -> str | None:
        """The machine event a therapy sends: its drug class's, when it is given for the
        guideline's condition."""
        cls = therapy.drug_class
        if therapy.indication == self.condition and cls is not None:
            return self.g.drug_classes[cls].event
        return None

    def _recorded_only(
        self,
        event: Event,
        later: tuple[Event, ...],
    ) -> Decision | None:
        """A value from before the infusion (a baseline), or a fact with more of its order set
        to follow (decided together, at the set's last fact): recorded, nothing decided."""
        at, f = event.at, self.facts
        if at < f.infusion_at:
            if isinstance(event, ObservationEvent):
                assert event.code is not None
                f.add_observation(event.code, at, event.value)
            return self._unchanged(at, event)
        f.now = at
        if not isinstance(event, _DECIDED_AT_ONCE):
            for e in later:
                if e.at == at and not isinstance(e, _DECIDED_AT_ONCE):
                    self._ingest(event)  # more facts of its order set follow
                    return self._unchanged(at, event, later=later)
        f.later = (
            tuple(self._dose(e, e.indication) for e in later if isinstance(e, TreatmentEvent))
            if later
            else ()
        )
        return None

    def advance(self, to: datetime) -> Decision:
        """What is due at time `to` (no new clinical data): time-based alerts and actions."""
        self._check_time(to, "advance")
        self._inputs.append({"kind": "advance", "at": format_time(to)})
        alerts: list[Alert] = []
        criteria: Sequence[Verdict] = ()
        actions: tuple[Action, ...] = ()
        if to >= self.facts.infusion_at:
            self.facts.now = to
            self.facts.later = ()
            alerts = self._overdue(to)
            evaluation = Evaluation(self.engine.plan, self.facts)
            alerts += self._step_rules(to, evaluation)
            actions = self._actions(evaluation)
            criteria = evaluation.explained()
        return self._unchanged(
            to,
            {"kind": "advance", "at": format_time(to)},
            criteria=criteria,
            alerts=alerts,
            actions=actions,
        )

    def fork(self) -> Episode:
        """A copy that can be stepped without changing this episode (e.g. to see what a
        draft order would do): the engine, the guideline, the patient and the decisions made
        so far are shared (never changed once made); the facts and every list, set and dict of
        the episode are the copy's own. Far cheaper than a deep copy: the episode's values are
        not copied."""
        new = object.__new__(Episode)
        new.__dict__.update(self.__dict__)
        new.facts = self.facts.copy()
        new.decisions = list(self.decisions)
        new._inputs = list(self._inputs)
        new._missing_raised = dict(self._missing_raised)
        new._step_raised = set(self._step_raised)
        new._pending = list(self._pending)
        new._action_memo = dict(self._action_memo)
        return new

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready saved episode; `Engine.restore` continues it exactly."""
        return {
            "format": SNAPSHOT_FORMAT,
            "episode_id": self.episode_id,
            "guideline": self.engine.identity,
            "patient": patient_to_json(self.patient),
            "inputs": list(self.inputs),
            "state": self._state,
        }

    # --- steps -------------------------------------------------------------------------------

    def _start(self) -> None:
        at = self.facts.infusion_at
        evaluation = Evaluation(self.engine.plan, self.facts)
        alerts = [
            self._alert(rule, at, evaluation)
            for _, rule in self.engine.rules_on["start"]
            if evaluation.guard(rule.when, rule.unless) is Tri.TRUE
        ]
        state = self._state
        actions = self._actions(evaluation)
        self._record(
            Decision(
                step=0,
                at=at,
                event={"kind": "start", "patient": self.patient.id},
                source=None,
                target=state,
                criteria=evaluation.explained(),
                recommendations=self._recs(state),
                alerts=tuple(alerts),
                actions=actions,
            )
        )

    def _unchanged(
        self,
        at: datetime,
        event: Event | dict[str, Any],
        *,
        criteria: Sequence[Verdict] = (),
        alerts: list[Alert] | None = None,
        actions: tuple[Action, ...] | None = None,
        later: tuple[Event, ...] = (),
    ) -> Decision:
        """A decision that moves nothing: a baseline value, a fact decided with the rest of its
        order set, or time passing."""
        state = self._state
        decisions = self.decisions
        if actions is None:
            actions = decisions[-1].actions if decisions else ()
        decision = make_decision(
            len(decisions), at, event, state, state, None, None, (), None, (), criteria,
            self.g.states[state].recommendations, tuple(alerts) if alerts else (), (), (),
            actions, (), later,
        )  # fmt: skip
        decisions.append(decision)
        return decision

    def _record(self, decision: Decision) -> Decision:
        self.decisions.append(decision)
        return decision

    def _check_time(self, at: datetime, what: str) -> None:
        if self._closed:
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
                f.add_grade("crs", at, event.crs_grade)
            if event.icans_grade is not None:
                f.add_grade("icans", at, event.icans_grade)
            if event.infection is not None:
                f.infection = (at, event.infection)
            if event.antimicrobials is not None:
                f.antimicrobials = (at, event.antimicrobials)
            self._reassessed(at)
        elif isinstance(event, ResponseEvent):
            f.responses.append((at, event.assessment))
            self._reassessed(at)

    def _reassessed(self, at: datetime) -> None:
        if self._last_reassessment is not None:
            self._last_reassessment = at

    def _judge_treatment(
        self,
        event: TreatmentEvent,
        therapy: Therapy,
        context: tuple[list[Hop], bool, str],
        *,
        evaluation: Evaluation,
        results: list[GuardResult],
        alerts: list[Alert],
        deviations: list[Deviation],
    ) -> None:
        """The rules about a treatment, an unconfirmed transition, or an unsanctioned one."""
        route, new_therapy, state = context
        unknown = [h for h in route if h.value is Tri.UNKNOWN]
        if unknown:
            unconfirmed = self._unconfirmed(event.drug, unknown, evaluation)
            alerts.append(unconfirmed)
            for item in unconfirmed.measure:  # asked for here: no second prompt for it
                self._missing_raised[item] = tuple(
                    n for h in unknown for n in (*h.ref.definition.when, *h.ref.definition.unless)
                )
        rule_devs, rule_alerts = self._treatment_rules(event, therapy, evaluation, state)
        deviations += rule_devs
        alerts += rule_alerts
        if not route and therapy.indication == self.condition and new_therapy and not rule_devs:
            found = self._unsanctioned(event.drug, therapy, results)
            if found is not None:
                deviations.append(found[0])
                alerts.append(found[1])

    # --- therapies and indications -----------------------------------------------------------

    def _dose(self, event: TreatmentEvent, indication: str | None) -> Dose:
        return Dose(event.at, event.drug, self.g.drug_class_of(event.drug), indication)

    def _therapy(
        self, event: TreatmentEvent, evaluation: Evaluation, notes: list[str]
    ) -> tuple[Therapy, bool, dict[str, str] | None]:
        """Record the dose: it continues a running therapy of its class, or starts one. A
        continuing dose keeps the therapy's indication (never revised backwards)."""
        f = self.facts
        cls = self.g.drug_class_of(event.drug)
        key = cls or f"drug:{event.drug}"
        running = f.therapies.get(key)
        continuing = (
            running is not None
            and f.hours_since(running.last_at) <= self.engine.plan.continuity
            and event.indication in (None, running.indication)
        )
        inferred: dict[str, str] | None = None
        if running is not None and continuing:
            therapy = running
            therapy.last_at = event.at
            if event.indication is None:
                reason = (
                    f"continues the {therapy.drug} therapy started at "
                    f"{format_time(therapy.started_at)}"
                )
                if not therapy.explicit:  # an inferred reading may change from now on
                    reread, why = self._infer_indication(cls, evaluation)
                    if reread != therapy.indication:
                        notes.append(
                            f"{event.drug}: read as {reread} from now on ({why}); the "
                            f"earlier doses stay {therapy.indication}"
                        )
                        therapy.indication = reread
                        reason = why
                inferred = {"indication": str(therapy.indication), "reason": reason}
        else:
            indication: str | None = event.indication
            if indication is None:
                indication, reason = self._infer_indication(cls, evaluation)
                inferred = {"indication": str(indication), "reason": reason}
            therapy = Therapy(key, event.drug, cls, indication, event.at, event.at)
            therapy.explicit = event.indication is not None
            f.therapies[key] = therapy
            if running is not None and running.indication != indication:
                notes.append(
                    f"{event.drug} starts a new therapy for {indication} (the {running.drug} "
                    f"therapy for {running.indication} keeps its indication)"
                )
        f.doses.append(self._dose(event, therapy.indication))
        return therapy, not continuing, inferred

    def _infer_indication(self, cls: str | None, evaluation: Evaluation) -> tuple[str, str]:
        """The guideline's indication rules, first match (DESIGN.md: drugs given while CRS or
        ICANS is active and the condition's criteria are not met treat CRS/ICANS)."""
        for rule in self.g.indications:
            if rule.classes and cls not in rule.classes:
                continue
            if rule.formulary is not None and (cls is not None) != rule.formulary:
                continue
            if rule.states and self._state not in rule.states:
                continue
            if rule.when and evaluation.guard(rule.when, ()) is not Tri.TRUE:
                continue
            return rule.indication, rule.reason
        return "other", "no indication rule matches"

    # --- routes ------------------------------------------------------------------------------

    def _choose(
        self,
        state: str,
        machine_event: str,
        evaluation: Evaluation,
        results: list[GuardResult] | None,
        line_start: datetime,
    ) -> Hop | None:
        """The transition `machine_event` takes from `state`: the first TRUE guard, else (for a
        treatment) the first UNKNOWN one."""
        unknown: Hop | None = None
        for ref, guard, on_true, on_false, on_unknown in self.engine.choices.get(
            (state, machine_event), ()
        ):
            if guard is None:
                return Hop(ref, _TRUE, line_start)
            value = guard(evaluation)
            if value is _TRUE:
                if results is not None:
                    results.append(on_true)
                return Hop(ref, value, line_start)
            if value is _UNKNOWN_TRI:
                if results is not None:
                    results.append(on_unknown)
                if unknown is None and machine_event not in _NO_UNKNOWN:
                    unknown = Hop(ref, value, line_start)
            elif results is not None:
                results.append(on_false)
        return unknown

    def _evaluation_from(self, line_start: datetime) -> Evaluation:
        """Criteria as they read once a line started at `line_start` (a route's later hop)."""
        return Evaluation(self.engine.plan, self.facts, line_start)

    def _route(
        self,
        machine_event: str,
        therapy: Therapy | None,
        evaluation: Evaluation,
        results: list[GuardResult],
    ) -> list[Hop]:
        at = self.facts.now
        state = self._state
        direct = self._choose(state, machine_event, evaluation, results, at)
        if direct is not None or machine_event in (REASSESS, CLOSE):
            return [direct] if direct is not None else []
        # Through a state: a reassessment transition to a state that takes this treatment.
        for first in self._candidates(
            state, REASSESS, evaluation, through=machine_event, results=results
        ):
            then = self._choose(
                first.ref.target, machine_event, self._evaluation_from(at), None, at
            )
            if then is not None:
                return [first._replace(note=f"passes through {first.ref.target}"), then]
        # A running therapy given for another indication, counted as the earlier line.
        assert therapy is not None
        line = self.engine.class_line.get(therapy.drug_class or "")
        for other in sorted(
            self.facts.therapies.values(),
            key=lambda t: self.engine.class_line.get(t.drug_class or "", 0),
        ):
            if other is therapy or other.indication == self.condition or other.drug_class is None:
                continue
            other_line = self.engine.class_line.get(other.drug_class)
            other_event = self.g.drug_classes[other.drug_class].event
            running = self.facts.hours_since(other.last_at) <= self.engine.plan.continuity
            if not running or other_event is None or other_line is None or line is None:
                continue
            if other_line >= line:
                continue
            first_hop = self._choose(state, other_event, evaluation, None, other.started_at)
            if first_hop is None:
                continue
            then = self._choose(
                first_hop.ref.target,
                machine_event,
                self._evaluation_from(other.started_at),
                None,
                at,
            )
            if then is not None:
                other.counted = True
                note = (
                    f"{other.drug} (given for {other.indication} since "
                    f"{format_time(other.started_at)}) counted as {first_hop.ref.target}"
                )
                return [first_hop._replace(note=note), then]
        return []

    def _candidates(
        self,
        state: str,
        machine_event: str,
        evaluation: Evaluation,
        *,
        through: str,
        results: list[GuardResult],
    ) -> list[Hop]:
        """The transitions on `machine_event` from `state` to a state that takes `through` (a
        treatment's event), whose guard is not FALSE (TRUE ones first): routes through another
        state. Each guard read goes into `results`."""
        found: list[Hop] = []
        at = self.facts.now
        for ref in self.engine.outgoing.get((state, machine_event), ()):
            d = ref.definition
            if not self.engine.outgoing.get((d.to, through)):
                continue  # that state does not take the treatment either
            value = Tri.TRUE if not (d.when or d.unless) else evaluation.guard(d.when, d.unless)
            results.append(self.engine.guard_result(ref, value))
            if value is not Tri.FALSE:
                found.append(Hop(ref, value, at))
        return sorted(found, key=lambda h: h.value is not Tri.TRUE)

    def _take(self, hop: Hop, therapy: Therapy | None) -> None:
        ref = hop.ref
        machine = self.machine
        if machine is not None:
            machine.send(ref.event, ctx=_Follow(ref))
            reached = str(next(iter(machine.configuration)).id)
            assert reached == ref.target, (reached, ref.target)
        self._state = ref.target
        self._closed = self.g.states[ref.target].final
        self._enter(ref.target, hop.line_start)
        if hop.value is Tri.UNKNOWN and therapy is not None:
            self._pending.append(_Pending(hop, therapy.drug, therapy.key))

    def _enter(self, target: str, line_start: datetime) -> None:
        s = self.g.states[target]
        self.facts.line_started_at = line_start
        self._missing_raised = {}
        self._step_raised = set()
        if s.line is not None:
            self._cycle_line = max(self._cycle_line, s.line)
        else:
            self._cycle_line = 0
            self._pending = []
        active = s.phase in ("diagnosis", "treatment")
        self._last_reassessment = self.facts.now if active else None
        self._overdue_flagged = None

    # --- alerts ------------------------------------------------------------------------------

    def _alert(self, rule: Rule, at: datetime, evaluation: Evaluation, **values: str) -> Alert:
        f = self.facts
        values.setdefault("state", self.g.states[self._state].name)
        values.setdefault("infection", f.infection[1] if f.infection else "not assessed")
        values.setdefault(
            "risk_factors",
            "; ".join(self.g.risk_factors[r].text.rstrip(".") for r in f.risk_factors),
        )

        def fill(m: re.Match[str]) -> str:
            key = m.group(1)
            if key.startswith("$"):
                return f"{self.g.param(key):g}"
            return values.get(key, m.group(0))

        message = _PLACEHOLDER.sub(fill, " ".join(rule.message.split()))
        message = message[:1].upper() + message[1:]
        return Alert(rule.alert, at, message, rule.cite, level=rule.severity)

    def _treatment_rules(
        self, event: TreatmentEvent, therapy: Therapy, evaluation: Evaluation, state: str
    ) -> tuple[list[Deviation], list[Alert]]:
        """The guideline's treatment rules, each at most once per therapy."""
        deviations: list[Deviation] = []
        alerts: list[Alert] = []
        cls = therapy.drug_class
        for rid, rule in self.engine.rules_on["treatment"]:
            match = rule.treatment
            if rid in therapy.raised or match is None:
                continue
            if match.classes and cls not in match.classes:
                continue
            if match.drugs and event.drug not in match.drugs:
                continue
            if match.indications and therapy.indication not in match.indications:
                continue
            if match.immunosuppressive is not None and (
                cls is None or self.g.drug_classes[cls].immunosuppressive != match.immunosuppressive
            ):
                continue
            if rule.states and state not in rule.states:
                continue
            if (rule.when or rule.unless) and evaluation.guard(
                rule.when, rule.unless
            ) is not Tri.TRUE:
                continue
            if rule.with_ is not None and not self._concurrent(
                rule.with_.classes, rule.with_.hours
            ):
                continue
            if rule.without is not None and self._concurrent(
                rule.without.classes, rule.without.hours
            ):
                continue
            therapy.raised.add(rid)
            alert = self._alert(
                rule,
                event.at,
                evaluation,
                drug=event.drug,
                indication=str(therapy.indication),
                **{"class": self.g.drug_classes[cls].name if cls else "not in the formulary"},
            )
            alerts.append(alert)
            if rule.deviation is not None:
                deviations.append(Deviation(event.drug, cls, rule.deviation, rule.alert))
        return deviations, alerts

    def _concurrent(self, classes: tuple[str, ...], hours: Any) -> bool:
        return bool(self.facts.doses_within(self.g.param(hours), classes=classes, both_ways=True))

    def _unsanctioned(
        self, drug: str, therapy: Therapy, results: list[GuardResult]
    ) -> tuple[Deviation, Alert] | None:
        """A new therapy for the condition that moved nothing: off-guideline, unless its class
        belongs to a line already entered (a therapy that continues, e.g. steroids on line 2)."""
        cls = therapy.drug_class
        at = self.facts.now
        if "unsanctioned" in therapy.raised:
            return None
        if cls is None:
            reason = "not in the formulary"
            message = f"{drug} is not in the guideline's formulary."
        else:
            line = self.engine.class_line.get(cls)
            if line is None or line <= self._cycle_line:
                return None
            current = self._cycle_line
            event = self.g.drug_classes[cls].event
            failed = [r for r in results if r.result != Tri.TRUE.value]
            if line > current + 1 and not any(r.event == event for r in results):
                reason = f"skips a line: line {line} while on line {current}"
            elif failed:
                reason = "; ".join(f"{r.label}: guard {r.result}" for r in failed)
            else:
                reason = f"not sanctioned from {self._state}"
            message = (
                f"{drug} ({self.g.drug_classes[cls].name}) not sanctioned now ({reason}): "
                "recorded as a deviation, the state does not change."
            )
        therapy.raised.add("unsanctioned")
        return (
            Deviation(drug, cls, reason, "off_guideline_therapy"),
            Alert("off_guideline_therapy", at, message),
        )

    def _unconfirmed(self, drug: str, hops: list[Hop], evaluation: Evaluation) -> Alert:
        names = tuple(
            n
            for h in hops
            for n in (*h.ref.definition.when, *h.ref.definition.unless)
            if evaluation.value(n) is Tri.UNKNOWN
        )
        measure = evaluation.missing_for(names)
        labels = "; ".join(h.ref.definition.label for h in hops)
        return Alert(
            "treatment_unconfirmed",
            self.facts.now,
            f"{drug} recorded; the guideline cannot confirm it yet ({labels}): measure or "
            f"assess {', '.join(measure)}. The state follows the treatment until fresh data "
            "confirms it or records a deviation.",
            measure=measure,
        )

    def _confirm(self, at: datetime) -> tuple[list[str], list[Deviation], list[Alert]]:
        """Fresh data decides the transitions taken on UNKNOWN guards."""
        if not self._pending:
            return [], [], []
        notes: list[str] = []
        deviations: list[Deviation] = []
        alerts: list[Alert] = []
        keep: list[_Pending] = []
        for p in self._pending:
            d = p.hop.ref.definition
            value = self._evaluation_from(p.hop.line_start).guard(d.when, d.unless)
            if value is Tri.UNKNOWN:
                keep.append(p)
            elif value is Tri.TRUE:
                notes.append(f"{p.drug}: {d.label} confirmed by fresh data")
            else:
                cls = self.g.drug_class_of(p.drug)
                reason = f"not confirmed by fresh data ({d.label}: guard FALSE)"
                deviations.append(Deviation(p.drug, cls, reason, "off_guideline_therapy"))
                alerts.append(
                    Alert(
                        "off_guideline_therapy",
                        at,
                        f"{p.drug}: the fresh data do not support it ({d.label}): recorded "
                        "as a deviation.",
                    )
                )
        self._pending = keep
        return notes, deviations, alerts

    def _overdue(self, at: datetime) -> list[Alert]:
        last = self._last_reassessment
        interval = self.engine.reassessment_interval
        if last is None or interval is None:
            return []
        assert self.engine.reassessment_delta is not None
        deadline = last + self.engine.reassessment_delta
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

    def _step_rules(self, at: datetime, evaluation: Evaluation) -> list[Alert]:
        """`upon: step` rules of the current state, each once per entry into the state."""
        rules = self.engine.step_rules_in[self._state]
        if not rules:
            return []
        out: list[Alert] = []
        for rid, rule, guard in rules:
            if rid in self._step_raised:
                continue
            if guard(evaluation) is Tri.TRUE:
                self._step_raised.add(rid)
                out.append(self._alert(rule, at, evaluation))
        return out

    def _missing_data(
        self, at: datetime, results: list[GuardResult], evaluation: Evaluation, *, prune: bool
    ) -> list[Alert]:
        if prune and self._missing_raised:  # provided since asked for: asked again anew
            still: dict[tuple[str, ...], tuple[str, ...]] = {}  # items raised together share
            for item, names in list(self._missing_raised.items()):
                lacking = still.get(names)
                if lacking is None:
                    lacking = still[names] = evaluation.missing_for(
                        tuple(n for n in names if evaluation.value(n) is Tri.UNKNOWN)
                    )
                if item not in lacking:
                    del self._missing_raised[item]
        unknown = [r for r in results if r.result == _UNKNOWN]
        if not unknown:
            return []
        names = tuple(
            n for r in unknown for n in (*r.when, *r.unless) if evaluation.value(n) is Tri.UNKNOWN
        )
        measure = evaluation.missing_for(names)
        if not set(measure) - set(self._missing_raised):
            return []  # already asked for
        for item in measure:
            self._missing_raised[item] = names
        labels = "; ".join(r.label for r in unknown)
        return [
            Alert(
                "missing_data",
                at,
                f"Cannot decide ({labels}): measure or assess {', '.join(measure)}.",
                measure=measure,
            )
        ]

    # --- actions -----------------------------------------------------------------------------

    def _actions(self, evaluation: Evaluation) -> tuple[Action, ...]:
        """What the guideline says to do now, in its order; an action whose criteria are
        UNKNOWN becomes one `measure` action naming what to measure."""
        out: list[Action] = []
        missing: list[str] | None = None  # None: nothing to measure
        waiting: list[str] = []
        cites: list[str] = []
        measure_at = 0
        for a, guard, names, waiting_for in self.engine.actions_in[self._state]:
            value = guard(evaluation)
            if value is _TRUE:
                out.append(self._action(a.code, a, evaluation))
            elif value is _UNKNOWN_TRI:
                if missing is None:
                    missing, measure_at = [], len(out)
                unknown = tuple(n for n in names if evaluation.value(n) is _UNKNOWN_TRI)
                missing += [x for x in evaluation.missing_for(unknown) if x not in missing]
                waiting.append(waiting_for)
                cites += [c for c in a.cite if c not in cites]
        for p in self._pending:
            d = p.hop.ref.definition
            pending = self._evaluation_from(p.hop.line_start)
            unknown = tuple(n for n in (*d.when, *d.unless) if pending.value(n) is _UNKNOWN_TRI)
            items = [x for x in pending.missing_for(unknown) if x not in (missing or ())]
            if items:
                if missing is None:
                    missing, measure_at = [], 0
                missing += items
                waiting.append(f"whether {p.drug} is confirmed ({d.label})")
                cites += [c for c in d.cite if c not in cites]
        if missing is not None:
            out.insert(measure_at, self.engine.measure_action(missing, waiting, cites))
        return tuple(out)

    def _population_recommendation(self, a: ActionDef) -> tuple[Recommendation | None, bool]:
        """The action's recommendation that fits the patient (adult or paediatric, by the
        parameter `paediatric_below_age_years`; a patient of unknown age is taken as an adult),
        and whether it fits: with none that fits, the first one, for its drug only."""
        limit = self.g.parameters.get("paediatric_below_age_years")
        age = self.patient.age_years
        child = limit is not None and age is not None and age < limit.value
        population = "paediatric" if child else "adult"
        ids = (a.recommendation,) if a.recommendation else ()
        found = [r for rid in (*ids, *a.recommendations) if (r := self.g.recommendation(rid))]
        for rec in found:
            if rec.population in (population, "all"):
                return rec, True
        return (found[0], False) if found else (None, True)

    def _action(self, code: str, a: ActionDef, evaluation: Evaluation) -> Action:
        due = None
        delta = self.engine.reassessment_delta
        if a.due == "reassessment" and self._last_reassessment is not None and delta:
            due = self._last_reassessment + delta
        key = (code, due)
        found = self._action_memo.get(key)
        if found is None:
            found = self._action_memo[key] = self._new_action(code, a, due)
        return found

    def _new_action(self, code: str, a: ActionDef, due: datetime | None) -> Action:
        rec, fits = self._population_recommendation(a)
        text = " ".join(a.text.split())
        if not fits and rec is not None:
            text += (
                f" No {rec.drug} dose from the sources fits this patient's age: dose per "
                "institutional protocol."
            )
        cite = tuple(dict.fromkeys((*a.cite, *(rec.cite if rec else ()))))
        dosed = rec if fits else None
        return Action(
            code,
            text,
            cite,
            a.verified and (dosed is None or dosed.verified),
            drug=rec.drug if rec else None,
            dose=dosed.dose if dosed else None,
            route=dosed.route if dosed else (),
            frequency=dosed.frequency if dosed else None,
            due_by=due,
            measure=a.measure,
        )

    def _recs(self, state: str) -> tuple[Any, ...]:
        return self.g.states[state].recommendations
