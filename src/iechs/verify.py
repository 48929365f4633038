"""Prove a guideline against its safety contract over every path, or give the shortest
counterexample, replayed through the real engine as a concrete timeline.

The model of the engine. Each step, an event arrives with whatever data the patient then has:
at every step the data are free (`verify_domains` gives the representative moments, jointly for
the guideline's criteria and the contract's facts, with every unknown point the engine meets).
One moment is modelled exactly; what ties moments together (a trend's earlier value is the
last step's, a CRS peak never falls, the baseline and risk factors are fixed, time on a line
grows) is not, which over-approximates the engine: sound for the safety properties (no
violation is missed), while each counterexample is checked on a concrete run (replay) and each
existence property's witnesses are run through the engine (`Outcome.witnessed`).
Guards are three-valued (Kleene) and the engine's choice is modelled as it makes it:

- on new data (`reassess`) and on `close`, the first transition whose guard is TRUE fires;
- on a treatment event (the machine event of a drug class), the first TRUE one fires, else the
  first UNKNOWN one (`treatment_unconfirmed`); so a treatment edge can fire while its guard is
  not FALSE;
- a treatment with no transition that is not FALSE may go *through* a state: a `reassess`
  transition whose guard is not FALSE to a state that takes the treatment (a recurrence), or a
  therapy of another indication counted as the earlier line. Both are compositions of declared
  transitions, each firing on a guard that is not FALSE: the first hop of such a route is an
  edge of the model too, so per-edge properties remain the unit of proof.

The explored space is (state, treatment states entered since the episode last entered
surveillance or diagnosis, and the histories of the guideline's own `order_of_lines`
properties), built breadth-first from the initial state, so the first violation found is one of
the shortest. Properties come from the guideline's contract (`iechs.contract`), with meanings
fixed here, plus any the guideline adds (`properties:`, the kinds of `model.SafetyProperty`).
"""

from __future__ import annotations

import builtins
import itertools
import math
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import attrs

from . import model as m
from .checks import citables
from .contract import Contract, contract_for
from .verify_domains import (
    TRUE,
    Formula,
    Solver,
    Witness,
    atom,
    conj,
    disj,
    neg,
    simplify,
)

__all__ = [
    "Counterexample",
    "Edge",
    "Outcome",
    "Replay",
    "Report",
    "Solver",
    "Step",
    "verify",
]


# --- edges and steps -------------------------------------------------------------------------


@attrs.frozen
class Edge:
    source: str
    index: int
    transition: m.TransitionDef

    @property
    def target(self) -> str:
        return self.transition.to

    @property
    def event(self) -> str:
        return self.transition.event


@attrs.frozen
class Step:
    """One step of a counterexample: an event in a state, with the data that make it fire."""

    source: str
    event: str
    target: str
    label: str
    witness: Witness = attrs.field(factory=dict, eq=False)
    #: how the engine takes it: "" (a TRUE guard), "unconfirmed" (UNKNOWN guard, treatment),
    #: "through" (first hop of a treatment's route through a state)
    how: str = ""
    #: the drug a treatment step gives (default: one of the class whose event it is)
    drug: str | None = None

    @property
    def values(self) -> tuple[str, ...]:
        return tuple(sorted(p.label for p in self.witness.values()))

    def describe(self) -> str:
        how = {"unconfirmed": " (guard UNKNOWN: treatment_unconfirmed)", "through": " (on the way)"}
        arrow = f"{self.source} --{self.event}{f' ({self.drug})' if self.drug else ''}--> "
        return f"{arrow}{self.target}   [{self.label}]{how.get(self.how, '')}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "from": self.source,
            "event": self.event,
            "to": self.target,
            "label": self.label,
            "values": list(self.values),
        }
        if self.how:
            out["how"] = self.how
        if self.drug:
            out["drug"] = self.drug
        return out


@attrs.frozen
class Replay:
    """A counterexample run through the real engine."""

    #: True: the engine shows the same violation; False: it does not; None: not replayable
    #: (the property is not about a behaviour a run shows).
    reproduced: bool | None
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"reproduced": self.reproduced, "detail": self.detail}


@attrs.frozen
class Counterexample:
    property: str
    kind: str
    description: str
    problem: str
    steps: tuple[Step, ...] = ()
    #: the concrete timeline (DESIGN.md's JSON) that shows it, when the property is behavioural
    timeline: dict[str, Any] | None = attrs.field(default=None, eq=False)
    replay: Replay | None = attrs.field(default=None, eq=False)
    #: the contract's (True) or one the guideline adds (False)
    contract: bool = True
    #: the last step is a behaviour a run shows (a timeline can reproduce it); False when the
    #: property fails for what the guideline says or for what can never happen
    shows: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "property": self.property,
            "kind": self.kind,
            "contract": self.contract,
            "description": self.description,
            "problem": self.problem,
            "steps": [s.to_json() for s in self.steps],
            "timeline": self.timeline,
        }
        if self.replay is not None:
            out["replay"] = self.replay.to_json()
        return out


@attrs.frozen
class Outcome:
    """One property: proved, or its counterexample."""

    property: str
    kind: str
    description: str
    contract: bool
    counterexample: Counterexample | None = None
    #: what the proof rests on, for people (e.g. "8 edges into treatment states")
    note: str = ""
    #: for an existence property: its witnesses run through the engine (None: not run)
    witnessed: Replay | None = None

    @builtins.property
    def proved(self) -> bool:
        return self.counterexample is None


@attrs.frozen
class Report:
    guideline: dict[str, str]
    contract: dict[str, str]
    outcomes: tuple[Outcome, ...]
    abstract_states: int
    edges: int
    queries: int
    valuations: int

    @property
    def proved(self) -> tuple[str, ...]:
        return tuple(o.property for o in self.outcomes if o.proved)

    @property
    def counterexamples(self) -> tuple[Counterexample, ...]:
        return tuple(o.counterexample for o in self.outcomes if o.counterexample is not None)

    @property
    def ok(self) -> bool:
        return not self.counterexamples

    def to_json(self) -> dict[str, Any]:
        return {
            "guideline": self.guideline,
            "contract": self.contract,
            "ok": self.ok,
            "proved": list(self.proved),
            "properties": [_outcome_json(o) for o in self.outcomes],
            "violated": [c.to_json() for c in self.counterexamples],
            "explored": {
                "abstract_states": self.abstract_states,
                "edges": self.edges,
                "sat_queries": self.queries,
                "valuations_decided": self.valuations,
            },
        }


def _outcome_json(o: Outcome) -> dict[str, Any]:
    out: dict[str, Any] = {
        "property": o.property,
        "kind": o.kind,
        "contract": o.contract,
        "description": o.description,
        "proved": o.proved,
    }
    if o.note:
        out["note"] = o.note
    if o.witnessed is not None:
        out["witnessed"] = o.witnessed.to_json()
    return out


# --- the model of the engine -----------------------------------------------------------------

History = tuple[frozenset[str], ...]
Node = tuple[str, History]


def _finite_param(g: m.Guideline, name: str) -> float | None:
    p = g.parameters.get(name)
    return p.value if p is not None and math.isfinite(p.value) else None


class Model:
    """The guideline's chart under the engine's semantics, explored breadth-first."""

    def __init__(self, g: m.Guideline, c: Contract) -> None:
        self.g, self.c = g, c
        self.min_hours = _finite_param(g, "min_hours_before_escalation")
        self.solver = Solver(
            g, self.min_hours, c.antimicrobial_classes(), c.immunosuppressive_classes(g)
        )
        self.k = self.solver.kleene
        self.data_event, self.close_event = c.events.data, c.events.close
        self.treatment_events = {dc.event for dc in g.drug_classes.values() if dc.event}
        self.treatment_states = set(c.treatment_states(g))
        self.resets = set(c.reset_states(g))
        self.out: dict[str, list[Edge]] = {}
        for sid, s in g.states.items():
            self.out[sid] = [
                Edge(sid, i, t) for i, t in enumerate(s.transitions) if t.to in g.states
            ]
        self.orders = [
            (pid, p.order_of_lines) for pid, p in g.properties.items() if p.order_of_lines
        ]
        self._witness: dict[tuple[Edge, str, Formula], Witness | None] = {}
        self.parent: dict[Node, tuple[Node, Edge] | None] = {}
        self.nodes: list[Node] = []
        self.first: dict[str, Node] = {}
        self.edges_seen = 0

    # --- guards under the engine's choice ----------------------------------------------------

    def same_event(self, e: Edge) -> list[Edge]:
        return [x for x in self.out[e.source] if x.event == e.event]

    def g_true(self, e: Edge) -> Formula:
        return self.k.guard_true(e.transition.when, e.transition.unless)

    def g_false(self, e: Edge) -> Formula:
        return self.k.guard_false(e.transition.when, e.transition.unless)

    def g_unknown(self, e: Edge) -> Formula:
        return self.k.guard_unknown(e.transition.when, e.transition.unless)

    def is_treatment(self, e: Edge) -> bool:
        return e.event in self.treatment_events

    def fire_true(self, e: Edge) -> Formula:
        """The edge fires on a TRUE guard: no earlier edge on its event is TRUE."""
        before = self.same_event(e)[: self.same_event(e).index(e)]
        return conj(self.g_true(e), *(neg(self.g_true(x)) for x in before))

    def fire_unknown(self, e: Edge) -> Formula:
        """A treatment edge fires unconfirmed: nothing TRUE, it is the first UNKNOWN one."""
        if not self.is_treatment(e):
            return ("const", False)
        sib = self.same_event(e)
        before = sib[: sib.index(e)]
        return conj(
            self.g_unknown(e),
            *(neg(self.g_true(x)) for x in sib),
            *(neg(self.g_unknown(x)) for x in before),
        )

    def through(self, e: Edge) -> Formula:
        """A data edge taken as the first hop of a treatment's route through its target: its
        guard is not FALSE, and some treatment its target takes has no direct transition that
        is not FALSE here."""
        if e.event != self.data_event or self.g.states[e.target].final:
            return ("const", False)
        events = {x.event for x in self.out[e.target] if self.is_treatment(x)}
        options = []
        for ev in sorted(events):
            direct = [x for x in self.out[e.source] if x.event == ev]
            options.append(conj(*(self.g_false(x) for x in direct)))
        return conj(neg(self.g_false(e)), disj(*options))

    def fire(self, e: Edge) -> Formula:
        """Every way the engine can take this edge."""
        return disj(self.fire_true(e), self.fire_unknown(e), self.through(e))

    def stutter(self, state: str) -> Formula:
        """New data alone moves nothing from `state` (so a step's data can come first)."""
        return conj(*(neg(self.g_true(x)) for x in self.out[state] if x.event == self.data_event))

    def solve(self, f: Formula, *, prefer: Formula = TRUE) -> Witness | None:
        """A witness, preferring one where `prefer` also holds."""
        w = self.solver.solve(f)
        if w is None or prefer == TRUE:
            return w
        return self.solver.solve(conj(f, prefer)) or w

    def witness(self, e: Edge, how: str = "any", condition: Formula = TRUE) -> Witness | None:
        """Data with which the engine takes `e` (and `condition` holds): on a TRUE guard if it
        can, else unconfirmed, else on the way through its target; None if it never can."""
        key = (e, how, condition)
        if key not in self._witness:
            ways = [self.fire_true(e)]
            if how == "any":
                ways += [self.fire_unknown(e), self.through(e)]
            prefer = self.stutter(e.source) if e.event != self.data_event else TRUE
            found = None
            for way in ways:
                found = self.solve(conj(way, condition), prefer=prefer)
                if found is not None:
                    break
            self._witness[key] = found
        return self._witness[key]

    def how(self, e: Edge, w: Witness) -> str:
        """How the engine takes `e` with the data of `w`."""
        env = self.solver.env(w)
        if _holds(self.fire_true(e), env):
            return ""
        if _holds(self.fire_unknown(e), env):
            return "unconfirmed"
        return "through" if _holds(self.through(e), env) else ""

    def step(self, e: Edge, w: Witness, drug: str | None = None) -> Step:
        t = e.transition
        return Step(e.source, t.event, t.to, t.label, w, self.how(e, w), drug)

    # --- exploration -------------------------------------------------------------------------

    def explore(self) -> None:
        start: Node = (
            self.g.initial_state,
            (frozenset(), *(frozenset() for _ in self.orders)),
        )
        self.parent = {start: None}
        queue = deque([start])
        while queue:
            node = queue.popleft()
            self.nodes.append(node)
            self.first.setdefault(node[0], node)
            for e in self.out[node[0]]:
                if self.witness(e) is None:
                    continue
                self.edges_seen += 1
                nxt = (e.target, self.advance(node[1], e.target))
                if nxt not in self.parent:
                    self.parent[nxt] = (node, e)
                    queue.append(nxt)

    def advance(self, history: History, target: str) -> History:
        lines = history[0]
        if target in self.resets:
            lines = frozenset()
        elif target in self.treatment_states:
            lines = lines | {target}
        out = [lines]
        for (_, order), visited in zip(self.orders, history[1:], strict=True):
            if target in order.reset_at:
                out.append(frozenset())
            elif target in order.lines:
                out.append(visited | {target})
            else:
                out.append(visited)
        return tuple(out)

    def path_to(self, node: Node) -> list[Step]:
        steps: list[Step] = []
        cur: Node | None = node
        while cur is not None and self.parent.get(cur) is not None:
            prev, e = self.parent[cur]  # type: ignore[misc]
            steps.append(self.step(e, self.witness(e) or {}))
            cur = prev
        return steps[::-1]

    def reachable(self) -> set[str]:
        return {n[0] for n in self.nodes}


def _holds(f: Formula, env: dict[str, bool]) -> bool:
    return simplify(f, env) == TRUE


# --- properties ------------------------------------------------------------------------------

Check = Callable[["Checker"], Counterexample | None]


class Checker:
    """Checks one property at a time on an explored model."""

    def __init__(self, model: Model, pid: str, kind: str, description: str, contract: bool) -> None:
        self.model = model
        self.g, self.c = model.g, model.c
        self.pid, self.kind, self.contract = pid, kind, contract
        self.description = " ".join(description.split())
        self.note = ""
        #: runs that witness a proved existence (liveness) property: the engine must follow them
        self.examples: list[tuple[Step, ...]] = []

    def fail(
        self, problem: str, steps: list[Step] | None = None, *, shows: bool = False
    ) -> Counterexample:
        return Counterexample(
            self.pid,
            self.kind,
            self.description,
            problem,
            tuple(steps or ()),
            contract=self.contract,
            shows=shows,
        )

    def first_nodes(self) -> Iterator[Node]:
        """The first node of each reachable state, in breadth-first order."""
        for n in self.model.nodes:
            if self.model.first[n[0]] == n:
                yield n

    def edge_violation(
        self, node: Node, e: Edge, condition: Formula, problem: Callable[[Step], str]
    ) -> Counterexample | None:
        w = self.model.witness(e, "any", condition)
        if w is None:
            return None
        step = self.model.step(e, w)
        return self.fail(problem(step), [*self.model.path_to(node), step], shows=True)


def _fact(name: str) -> Formula:
    return atom(f"C:{name}")


def check_infection_gate(ch: Checker) -> Counterexample | None:
    """infection_gate: no transition into a treatment state fires (on a TRUE guard, unconfirmed
    on an UNKNOWN one, or on the way through) while the latest infection status recorded is
    suspected or confirmed and no antimicrobial has been recorded (an assessment saying
    antimicrobials started, an antimicrobial-class dose, or a dose given for infection)."""
    mo = ch.model
    bad = conj(_fact("infection_active"), neg(_fact("antimicrobials_on")))
    n_edges = 0
    for node in ch.first_nodes():
        for e in mo.out[node[0]]:
            if e.target not in mo.treatment_states or e.target == e.source:
                continue
            n_edges += 1

            def problem(s: Step, e: Edge = e) -> str:
                status = next(
                    (p.label for k, p in s.witness.items() if k == "infection"), "infection active"
                )
                return (
                    f"{e.source} -> {e.target} ({e.event}) is taken while {status} and no "
                    "antimicrobial is recorded"
                )

            found = ch.edge_violation(node, e, bad, problem)
            if found is not None:
                return found
    ch.note = f"{n_edges} transition(s) into treatment states"
    return None


def check_escalation(ch: Checker) -> Counterexample | None:
    """escalation_after_min_time: a transition from a treatment state into a line that needs an
    earlier one (`Guideline.line_after`) fires only after `min_hours_before_escalation` hours
    on the current line, or when the latest response recorded on the line is "worsening"."""
    mo = ch.model
    if mo.min_hours is None:
        return ch.fail("parameter min_hours_before_escalation is missing or not finite")
    targets = set(ch.c.escalation_targets(ch.g))
    bad = conj(neg(_fact("min_time")), neg(_fact("worsening")))
    n_edges = 0
    for node in ch.first_nodes():
        for e in mo.out[node[0]]:
            if not (
                e.source in mo.treatment_states and e.target in targets and e.target != e.source
            ):
                continue
            n_edges += 1

            def problem(s: Step, e: Edge = e) -> str:
                return (
                    f"{e.source} -> {e.target} escalates before {mo.min_hours:g} h on the line "
                    "without a recorded worsening"
                )

            found = ch.edge_violation(node, e, bad, problem)
            if found is not None:
                return found
    ch.note = f"{n_edges} escalation transition(s)"
    return None


def check_line_order(ch: Checker) -> Counterexample | None:
    """line_order: a line is entered only after one of its `after` lines (since the episode last
    entered a surveillance or diagnosis state), and a never-first line of the contract only
    after some line."""
    mo = ch.model
    for node in mo.nodes:  # the history matters: every node
        entered = node[1][0]
        for e in mo.out[node[0]]:
            x = e.target
            if x not in mo.treatment_states or x == e.source:
                continue
            after = ch.g.line_after(x)
            why = None
            if after and not entered & set(after):
                why = f"{x!r} entered without one of {', '.join(after)} before it"
            elif x in ch.c.never_first and not entered:
                why = f"{x!r} entered as the first line (never a first line)"
            if why is None:
                continue
            w = mo.witness(e)
            if w is not None:
                lines = ", ".join(sorted(entered)) or "none"
                step = mo.step(e, w)
                return ch.fail(
                    f"{why} (lines entered: {lines})", [*mo.path_to(node), step], shows=True
                )
    return None


def check_never_a_line(ch: Checker) -> Counterexample | None:
    """never_a_line: a never-a-line class (IL-6 blockade) sends no machine event, and no drug of
    it (the contract's pinned ones included, however the guideline classes them) can move the
    state: the counterexample gives the drug where its event's transition fires."""
    g, c, mo = ch.g, ch.c, ch.model
    never = set(c.never_a_line_classes())
    # the drugs that are IL-6 blockade to the contract (pinned) or to the guideline
    drugs = [d for d, k in c.drugs.items() if k in never and d in g.drugs]
    drugs += [d for d, dd in g.drugs.items() if dd.drug_class in never and d not in drugs]
    for drug in drugs:
        cls = g.drugs[drug].drug_class
        event = g.drug_classes[cls].event if cls in g.drug_classes else None
        if event is None:
            continue
        why = (
            f"{drug} is classed {cls!r}, which sends {event!r}"
            if cls not in never
            else f"drug class {cls!r} sends the machine event {event!r}: it is a line"
        )
        # a behaviour: the drug moves the state wherever that event's transition fires
        for node in ch.first_nodes():
            for e in mo.out[node[0]]:
                if e.event != event:
                    continue
                w = mo.witness(e)
                if w is not None:
                    step = attrs.evolve(mo.step(e, w), drug=drug)
                    return ch.fail(
                        f"{why}: {drug} moves the state {e.source} -> {e.target}",
                        [*mo.path_to(node), step],
                        shows=True,
                    )
        return ch.fail(why)
    return None


def check_only_with_companion(ch: Checker) -> Counterexample | None:
    """only_with_companion: a recommendation (or an action, through the recommendation it
    carries) whose drug is of a never-a-line class with a companion (IL-6 blockade: a
    corticosteroid) must name a drug of the companion class in the same recommendation's
    `with` list. A recommendation carries one drug; until `Recommendation` has a `with` field,
    no recommendation may carry such a drug at all."""
    g, c = ch.g, ch.c
    for cls, pc in c.drug_classes.items():
        if pc.companion is None:
            continue
        members = {d for d, dd in g.drugs.items() if dd.drug_class == cls}
        members |= {d for d, k in c.drugs.items() if k == cls}
        companions = {d for d, dd in g.drugs.items() if dd.drug_class == pc.companion}
        companions |= {d for d, k in c.drugs.items() if k == pc.companion}
        for sid, s in g.states.items():
            for i, r in enumerate(s.recommendations):
                if r.drug in members and not set(getattr(r, "with_", ()) or ()) & companions:
                    return ch.fail(
                        f"recommendation {r.id!r} in {sid!r} recommends {r.drug} ({cls}) "
                        f"without a {pc.companion} in the same recommendation "
                        f"($.states.{sid}.recommendations[{i}])"
                    )
        for aid, a in g.actions.items():
            rec = g.recommendation(a.recommendation) if a.recommendation else None
            with_ = set(getattr(rec, "with_", ()) or ()) if rec is not None else set()
            if rec is not None and rec.drug in members and not with_ & companions:
                return ch.fail(
                    f"action {aid!r} offers {rec.drug} ({cls}) without a {pc.companion} "
                    "in the same action"
                )
    return None


def _numbers(value: Any, path: str) -> Iterator[tuple[str, float]]:
    """Every number in a guideline value, with its path."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, float | int):
        yield path, float(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(value, tuple | list):
        for i, v in enumerate(value):
            yield from _numbers(v, f"{path}[{i}]")
    elif attrs.has(type(value)):
        for f in attrs.fields(type(value)):
            yield from _numbers(getattr(value, f.name), f"{path}.{f.name.rstrip('_')}")


def check_parameters(ch: Checker) -> Counterexample | None:
    """parameters_in_range: every number of the guideline is finite; each contract parameter is
    present (unless optional) and within its bounds; criteria windows (lab validity, trend
    window and band, therapy hours, finding validity) within the contract's window bounds."""
    g, c = ch.g, ch.c
    problems: list[str] = []
    for path, x in _numbers(g, "$"):
        if not math.isfinite(x):
            problems.append(f"{path} is {x!r}: every number must be finite")

    def resolve(ref: m.Number) -> float | None:
        if isinstance(ref, str):
            p = g.parameters.get(ref.removeprefix("$"))
            return p.value if p is not None else None
        return float(ref)

    for name, bound in c.parameters.items():
        p = g.parameters.get(name)
        if p is None:
            if bound.required:
                problems.append(f"parameter {name} is missing (contract: {bound.describe()})")
            continue
        if not bound.holds(p.value, resolve):
            problems.append(
                f"parameter {name} is {p.value:g}; the contract requires {bound.describe()}"
                + (f" ({bound.why})" if bound.why else "")
            )
    w = c.windows
    for cid, crit in g.criteria.items():
        spec = getattr(crit, crit.kind) if len(crit.kinds) == 1 else None
        checks: list[tuple[str, m.Number | None, Any]] = []
        if isinstance(spec, m.Threshold | m.Ratio):
            checks.append(("within_hours", spec.within_hours, w.lab_hours))
        elif isinstance(spec, m.Trend):
            checks += [
                ("window_hours", spec.window_hours, w.lab_hours),
                ("min_change_pct", spec.min_change_pct, w.trend_change_pct),
            ]
        elif isinstance(spec, m.TherapyTest):
            checks.append(("hours", spec.hours, w.therapy_hours))
        for field, ref, bound in checks:
            if ref is None or bound is None:
                continue
            value = resolve(ref)
            if value is None or not bound.holds(value, resolve):
                problems.append(
                    f"criterion {cid}: {field} {ref} = {value} is outside {bound.describe()}"
                )
    for fid, fd in g.findings.items():
        if fd.valid_hours is not None and w.finding_hours is not None:
            value = resolve(fd.valid_hours)
            if value is None or not w.finding_hours.holds(value, resolve):
                problems.append(
                    f"finding {fid}: valid_hours {fd.valid_hours} is outside "
                    f"{w.finding_hours.describe()}"
                )
    if problems:
        more = (
            f" (and {len(problems) - 1} more: {'; '.join(problems[1:4])})"
            if len(problems) > 1
            else ""
        )
        return ch.fail(problems[0] + more)
    ch.note = f"{len(c.parameters)} parameter bound(s)"
    return None


def check_pins(ch: Checker) -> Counterexample | None:
    """drug_classes_pinned: each drug the contract pins is in the guideline with that class; each
    class the contract names has its immunosuppressive flag and machine event."""
    g, c = ch.g, ch.c
    for drug, cls in c.drugs.items():
        d = g.drugs.get(drug)
        if d is None:
            return ch.fail(f"drug {drug!r} (pinned to {cls!r}) is missing from the guideline")
        if d.drug_class != cls:
            return ch.fail(f"drug {drug!r} is classed {d.drug_class!r}; the contract pins {cls!r}")
    for cls, pc in c.drug_classes.items():
        dc = g.drug_classes.get(cls)
        if dc is None:
            return ch.fail(f"drug class {cls!r} is missing")
        if dc.immunosuppressive != pc.immunosuppressive:
            return ch.fail(
                f"drug class {cls!r} has immunosuppressive: {str(dc.immunosuppressive).lower()}; "
                f"the contract pins {str(pc.immunosuppressive).lower()}"
            )
        if not pc.never_a_line and dc.event != pc.event:
            return ch.fail(
                f"drug class {cls!r} sends event {dc.event!r}; the contract pins {pc.event!r}"
            )
    return None


def check_severities(ch: Checker) -> Counterexample | None:
    """alert_severities_pinned: a rule raising one of the contract's alert codes gives it one of
    the contract's severities for that code."""
    for rid, rule in ch.g.rules.items():
        allowed = ch.c.alerts.get(rule.alert)
        if allowed is not None and rule.severity not in allowed:
            return ch.fail(
                f"rule {rid!r} raises {rule.alert} as {rule.severity}; the contract pins "
                f"{' or '.join(allowed)}"
            )
    return None


def _offered(ch: Checker, cls: str) -> Formula:
    """An action in `suspected` that offers a first line of class `cls` is in force."""
    g, c, k = ch.g, ch.c, ch.model.k
    suspected = c.roles.suspected
    code = c.first_line_actions.get(cls)
    ways = []
    for a in g.actions.values():
        if suspected not in a.states:
            continue
        rec = g.recommendation(a.recommendation) if a.recommendation else None
        rec_cls = g.drug_class_of(rec.drug) if rec is not None and rec.drug else None
        if rec_cls == cls or (code is not None and a.code == code):
            ways.append(k.guard_true(a.when, a.unless))
    return disj(*ways)


def check_first_line(ch: Checker) -> Counterexample | None:
    """first_line_offered: for each declared first line (a treatment state with no `after`
    line, not never-first) a treatment transition from `suspected` fires on a TRUE guard with
    every criterion it reads known (fresh data), no untreated infection, and an action in
    force in `suspected` that offers the line's drug class."""
    g, c, mo = ch.g, ch.c, ch.model
    suspected = c.roles.suspected
    firsts = c.first_lines(g)
    if not firsts:
        return ch.fail("no line can be a first line (every line needs an earlier one)")
    if suspected not in mo.first:
        return ch.fail(f"{suspected!r} is unreachable")
    node = mo.first[suspected]
    path = mo.path_to(node)
    classes_of_event: dict[str, list[str]] = {}
    for cid, dc in g.drug_classes.items():
        if dc.event:
            classes_of_event.setdefault(dc.event, []).append(cid)
    untreated = conj(_fact("infection_active"), neg(_fact("antimicrobials_on")))
    for x in firsts:
        edges = [e for e in mo.out[suspected] if e.target == x and mo.is_treatment(e)]
        if not edges:
            return ch.fail(f"no treatment takes {suspected!r} to the first line {x!r}", path)
        found = False
        for e in edges:
            leaves = mo.k.leaves((*e.transition.when, *e.transition.unless))
            complete = conj(
                *(
                    disj(atom(f"T:{n}"), atom(f"F:{n}"))
                    for n in leaves
                    if g.criteria[n].response is None
                )
            )
            offered = disj(*(_offered(ch, cls) for cls in classes_of_event.get(e.event, [])))
            f = conj(mo.fire_true(e), complete, neg(untreated), offered)
            w = mo.solve(f, prefer=mo.stutter(suspected))
            if w is not None:
                found = True
                ch.examples.append((*path, mo.step(e, w)))
                break
        if not found:
            why = "its transition never fires on a TRUE guard with complete, fresh data"
            if mo.solve(conj(mo.fire_true(edges[0]), neg(untreated))) is not None:
                why = "no action in force offers it when its transition can fire"
            return ch.fail(f"first line {x!r}: {why}", path)
    ch.note = f"first line(s): {', '.join(firsts)}"
    return None


def _data_edges_to(ch: Checker, source: str, target: str) -> list[Edge]:
    return [
        e for e in ch.model.out[source] if e.event == ch.model.data_event and e.target == target
    ]


def check_ruled_out(ch: Checker) -> Counterexample | None:
    """ruled_out_returns: some data transition from `suspected` to `surveillance` fires on a
    TRUE guard in a reachable situation."""
    mo, r = ch.model, ch.c.roles
    if r.suspected not in mo.first:
        return ch.fail(f"{r.suspected!r} is unreachable")
    for e in _data_edges_to(ch, r.suspected, r.surveillance):
        w = mo.witness(e, "true")
        if w is not None:
            ch.examples.append((*mo.path_to(mo.first[r.suspected]), mo.step(e, w)))
            return None
    return ch.fail(
        f"no new data can take {r.suspected!r} back to {r.surveillance!r}",
        mo.path_to(mo.first[r.suspected]),
    )


def check_response(ch: Checker) -> Counterexample | None:
    """response_reaches_resolved: from every reachable treatment state, data transitions (TRUE
    guards) lead to `resolved`, the last one with a response recorded as improving or
    resolved; `close` does not count."""
    mo, c, g = ch.model, ch.c, ch.g
    resolved = c.roles.resolved
    # states from which data edges (TRUE guards) reach resolved, the last one with a response;
    # each with the step it takes towards resolved
    toward: dict[str, Step] = {}
    for s in g.states:
        for e in _data_edges_to(ch, s, resolved):
            w = mo.solve(conj(mo.fire_true(e), _fact("response_positive")))
            if w is not None and s not in toward:
                toward[s] = mo.step(e, w)
    changed = True
    while changed:
        changed = False
        for s in g.states:
            if s in toward or s == resolved:
                continue
            for e in mo.out[s]:
                w = mo.witness(e, "true") if e.event == mo.data_event else None
                if e.target in toward and w is not None:
                    toward[s] = mo.step(e, w)
                    changed = True
                    break
    for node in ch.first_nodes():
        s = node[0]
        if s not in mo.treatment_states:
            continue
        if s not in toward:
            return ch.fail(
                f"from the line {s!r} no new data (a recorded response) lead to {resolved!r}",
                mo.path_to(node),
            )
        chain: list[Step] = []
        while s != resolved and s in toward and len(chain) <= len(g.states):
            chain.append(toward[s])
            s = toward[s].target
        ch.examples.append((*mo.path_to(node), *chain))
    return None


def check_recurrence(ch: Checker) -> Counterexample | None:
    """recurrence_reaches_suspected: a data transition from `resolved` to `suspected` fires on a
    TRUE guard, and no transition from `resolved` enters a treatment state directly."""
    mo, r = ch.model, ch.c.roles
    if r.resolved not in mo.first:
        return ch.fail(f"{r.resolved!r} is unreachable")
    node = mo.first[r.resolved]
    for e in mo.out[r.resolved]:
        if e.target in mo.treatment_states:
            w = mo.witness(e)
            if w is not None:
                step = mo.step(e, w)
                return ch.fail(
                    f"the line {e.target!r} is entered directly from {r.resolved!r} "
                    "(a recurrence goes through suspected)",
                    [*mo.path_to(node), step],
                    shows=True,
                )
    for e in _data_edges_to(ch, r.resolved, r.suspected):
        w = mo.witness(e, "true")
        if w is not None:
            ch.examples.append((*mo.path_to(node), mo.step(e, w)))
            return None
    return ch.fail(
        f"no new data can take {r.resolved!r} back to {r.suspected!r} (recurrence)",
        mo.path_to(node),
    )


def check_close(ch: Checker) -> Counterexample | None:
    """close_reaches_closed: in every reachable non-final state and every situation, `close`
    fires a transition, and every close transition leads to `closed`."""
    mo, c = ch.model, ch.c
    closed = c.roles.closed
    for node in ch.first_nodes():
        s = node[0]
        if ch.g.states[s].final:
            continue
        edges = [e for e in mo.out[s] if e.event == mo.close_event]
        for e in edges:
            if e.target != closed:
                w = mo.witness(e)
                if w is not None:
                    step = mo.step(e, w)
                    return ch.fail(
                        f"close from {s!r} leads to {e.target!r}, not {closed!r}",
                        [*mo.path_to(node), step],
                        shows=True,
                    )
        stuck = conj(*(neg(mo.g_true(e)) for e in edges))
        w = mo.solve(stuck, prefer=mo.stutter(s))
        if w is not None:
            step = Step(s, mo.close_event, s, "no close transition fires", w)
            return ch.fail(
                f"close from {s!r} can leave the episode open", [*mo.path_to(node), step]
            )
    return None


def check_dead(ch: Checker) -> Counterexample | None:
    """no_dead_transitions: every transition fires on a TRUE guard (no earlier transition on its
    event TRUE) in some situation of a reachable state: reported, never skipped."""
    mo, g = ch.model, ch.g
    dead: list[str] = []
    where: list[Step] = []
    reach = mo.reachable()
    for sid in g.states:
        for e in mo.out[sid]:
            name = f"{sid} --{e.event}--> {e.target} [{e.transition.label}]"
            if sid not in reach:
                dead.append(f"{name} (its state is unreachable)")
            elif (w := mo.witness(e, "true")) is None:
                dead.append(name)
                if not where:
                    where = mo.path_to(mo.first[sid])
            else:
                ch.examples.append((*mo.path_to(mo.first[sid]), mo.step(e, w)))
    if dead:
        more = f" (and {len(dead) - 1} more: {'; '.join(dead[1:])})" if len(dead) > 1 else ""
        return ch.fail(
            f"never fires on a TRUE guard in any reachable situation: {dead[0]}{more}", where
        )
    ch.note = f"{sum(len(v) for v in mo.out.values())} transition(s)"
    return None


def check_traps(ch: Checker) -> Counterexample | None:
    """no_trap_states: every state is reachable and every non-final one can be left."""
    mo, g = ch.model, ch.g
    reach = mo.reachable()
    missing = [s for s in g.states if s not in reach]
    if missing:
        return ch.fail(f"no path reaches {', '.join(map(repr, missing))}")
    for node in ch.first_nodes():
        s = node[0]
        if g.states[s].final:
            continue
        if not any(mo.witness(e) is not None for e in mo.out[s]):
            return ch.fail(
                f"trap state {s!r}: not final and nothing can leave it", mo.path_to(node)
            )
    return None


def check_determinism(ch: Checker) -> Counterexample | None:
    """determinism: no situation (each trend's band and window respected) lets two transitions
    on one event from one state to different targets both fire where only their order decides:
    both guards TRUE, or, for a treatment, both UNKNOWN with none TRUE. Overlapping guards to
    the same target, or an earlier TRUE guard shadowing a later UNKNOWN one, are not conflicts."""
    mo = ch.model
    for node in ch.first_nodes():
        s = node[0]
        for a, b in itertools.combinations(mo.out[s], 2):
            if a.event != b.event or a.target == b.target:
                continue
            both = conj(mo.g_true(a), mo.g_true(b))
            how = "both TRUE"
            w = mo.solve(both, prefer=mo.stutter(s) if a.event != mo.data_event else TRUE)
            if w is None and mo.is_treatment(a):
                sib = mo.same_event(a)
                both = conj(mo.g_unknown(a), mo.g_unknown(b), *(neg(mo.g_true(x)) for x in sib))
                how = "both UNKNOWN (unconfirmed) and none TRUE"
                w = mo.solve(both)
            if w is None:
                continue
            step = Step(
                s,
                a.event,
                a.target,
                a.transition.label,
                w,
                "" if how == "both TRUE" else "unconfirmed",
            )
            values = "; ".join(sorted(p.label for p in w.values())) or "always"
            return ch.fail(
                f"in {s!r}, event {a.event!r} can take both -> {a.target} [{a.transition.label}] "
                f"and -> {b.target} [{b.transition.label}] ({how}); only their order decides, "
                f"with {values}",
                [*mo.path_to(node), step],
                shows=True,
            )
    return None


def check_citations(ch: Checker) -> Counterexample | None:
    """citations: every recommendation, transition, rule, indication rule, action and the order
    sets cite at least one source."""
    g = ch.g
    kinds = (
        ".recommendations[",
        ".transitions[",
        "$.rules.",
        "$.indications[",
        "$.actions.",
        "$.order_sets",
    )
    missing = [
        path for path, item in citables(g) if not item.cite and any(k in path for k in kinds)
    ]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        return ch.fail(f"{missing[0]} cites no source{more}")
    return None


CONTRACT_CHECKS: dict[str, Check] = {
    "never_a_line": check_never_a_line,
    "only_with_companion": check_only_with_companion,
    "infection_gate": check_infection_gate,
    "line_order": check_line_order,
    "escalation_after_min_time": check_escalation,
    "parameters_in_range": check_parameters,
    "drug_classes_pinned": check_pins,
    "alert_severities_pinned": check_severities,
    "first_line_offered": check_first_line,
    "ruled_out_returns": check_ruled_out,
    "response_reaches_resolved": check_response,
    "recurrence_reaches_suspected": check_recurrence,
    "close_reaches_closed": check_close,
    "no_dead_transitions": check_dead,
    "no_trap_states": check_traps,
    "determinism": check_determinism,
    "citations": check_citations,
}


# --- the guideline's own properties (the kinds of model.SafetyProperty) ------------------------


def check_guideline_property(ch: Checker, prop: m.SafetyProperty) -> Counterexample | None:
    """A property the guideline adds, with the meaning `model.SafetyProperty` gives it."""
    spec = getattr(prop, prop.kind)
    if isinstance(spec, m.NeverWithout | m.NeverTogether):
        return _recommended_together(ch, spec)
    if isinstance(spec, m.OrderOfLines):
        return _ordered(ch, spec)
    if isinstance(spec, m.GateBefore | m.EscalationAfter):
        return _edges_need(ch, spec)
    if prop.kind in ("reachable", "can_reach"):
        return _reach(ch, spec if isinstance(spec, m.CanReach) else None)
    if isinstance(spec, m.Cites):
        for path, item in citables(ch.g):
            if len(item.cite) < spec.at_least and any(
                k in path for k in (".recommendations[", ".transitions[")
            ):
                return ch.fail(f"{path} cites {len(item.cite)} source(s)")
        return None
    if prop.kind == "deterministic":
        return check_determinism(ch)
    raise AssertionError(prop.kind)  # pragma: no cover - kinds are checked at load


def _recommended_together(
    ch: Checker, spec: m.NeverWithout | m.NeverTogether
) -> Counterexample | None:
    g, mo = ch.g, ch.model
    for node in ch.first_nodes():
        classes = {g.drug_class_of(r.drug) for r in g.states[node[0]].recommendations if r.drug}
        if isinstance(spec, m.NeverWithout):
            bad = spec.drug_class in classes and spec.requires not in classes
            why = f"state {node[0]!r} recommends {spec.drug_class} without {spec.requires}"
        else:
            present = sorted(c for c in spec.classes if c in classes)
            bad = len(present) > 1
            why = f"state {node[0]!r} recommends {' and '.join(present)}"
        if bad:
            return ch.fail(why, mo.path_to(node))
    return None


def _ordered(ch: Checker, spec: m.OrderOfLines) -> Counterexample | None:
    mo = ch.model
    i = 1 + [pid for pid, _ in mo.orders].index(ch.pid)
    for node in mo.nodes:
        for e in mo.out[node[0]]:
            if e.target not in spec.lines:
                continue
            k = spec.lines.index(e.target)
            if k > 0 and spec.lines[k - 1] not in node[1][i]:
                w = mo.witness(e)
                if w is not None:
                    return ch.fail(
                        f"{e.target!r} entered without {spec.lines[k - 1]!r} before it",
                        [*mo.path_to(node), mo.step(e, w)],
                        shows=True,
                    )
    return None


def _edges_need(ch: Checker, spec: m.GateBefore | m.EscalationAfter) -> Counterexample | None:
    mo = ch.model
    for node in ch.first_nodes():
        for e in mo.out[node[0]]:
            if isinstance(spec, m.GateBefore):
                if e.target not in spec.into:
                    continue
                cond = conj(*(mo.k.true(n) for n in spec.blocked_when))
                text = f"while {' and '.join(spec.blocked_when)}"
            else:
                lines = spec.lines
                if not (
                    e.source in lines
                    and e.target in lines
                    and lines.index(e.target) > lines.index(e.source)
                ):
                    continue
                cond = conj(*(neg(mo.k.true(n)) for n in spec.requires_any))
                text = f"without any of {', '.join(spec.requires_any)}"
            message = f"{e.source} -> {e.target} is taken {text}"

            def problem(_: Step, message: str = message) -> str:
                return message

            found = ch.edge_violation(node, e, cond, problem)
            if found is not None:
                return found
    return None


def _reach(ch: Checker, spec: m.CanReach | None) -> Counterexample | None:
    mo, g = ch.model, ch.g
    reach = mo.reachable()
    missing = [s for s in g.states if s not in reach]
    if missing:
        return ch.fail(f"no path reaches {', '.join(map(repr, missing))}")
    if spec is None:
        return None
    good = set(spec.targets)
    changed = True
    while changed:
        changed = False
        for s in g.states:
            if s not in good and any(
                e.target in good and mo.witness(e) is not None for e in mo.out[s]
            ):
                good.add(s)
                changed = True
    for s in g.states:
        if not g.states[s].final and s not in good:
            return ch.fail(
                f"from {s!r} no path reaches {' or '.join(spec.targets)}",
                mo.path_to(mo.first[s]),
            )
    return None


# --- entry point -----------------------------------------------------------------------------


def verify(
    g: m.Guideline,
    contract: Contract | None = None,
    *,
    replay: bool = True,
    witnesses: bool = True,
) -> Report:
    """Check every property of `g`'s contract and every property `g` adds.

    With `replay` (the default) each behavioural counterexample is turned into a concrete
    timeline and run through the engine, which must show the same violation; with `witnesses`
    too, the witnesses of the existence properties (first line, ruled out, response,
    recurrence, every transition firing) are run through the engine, which must follow them."""
    c = contract if contract is not None else contract_for(g)
    model = Model(g, c)
    model.explore()
    outcomes: list[Outcome] = []
    for pid, p in c.properties.items():
        ch = Checker(model, pid, p.kind, p.description, True)
        found = CONTRACT_CHECKS[p.kind](ch)
        witnessed = None
        if replay and witnesses and found is None and ch.examples:
            from .verify_witness import witness_runs  # noqa: PLC0415 - engine loaded on need

            witnessed = witness_runs(g, c, ch.examples)
        outcomes.append(Outcome(pid, p.kind, ch.description, True, found, ch.note, witnessed))
    for pid, prop in g.properties.items():
        ch = Checker(model, pid, prop.kind, prop.description, False)
        found = check_guideline_property(ch, prop)
        outcomes.append(Outcome(pid, prop.kind, ch.description, False, found))
    if replay and any(o.counterexample is not None for o in outcomes):
        from .verify_witness import replay_counterexample  # noqa: PLC0415 - engine loaded on need

        outcomes = [
            attrs.evolve(o, counterexample=replay_counterexample(g, c, o.counterexample))
            if o.counterexample is not None
            else o
            for o in outcomes
        ]
    meta = g.guideline
    return Report(
        {"id": meta.id, "version": meta.version, "sha256": g.sha256},
        c.identity,
        tuple(outcomes),
        len(model.nodes),
        model.edges_seen,
        model.solver.queries,
        model.solver.valuations,
    )
