"""Compile a `Guideline` into a python-statemachine `StateChart` class.

Each state of the guideline becomes a `State`; each transition becomes a transition on its event
with one guard. The guard calls back into the step's `GuardContext`, which evaluates the
transition's criteria (three-valued) and records the verdict for the decision's explanation.
The library's structural validations (unreachable states, trap states, final-state
reachability) stay on.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

import attrs

from .errors import GuidelineError, Problem
from .model import Guideline, TransitionDef

if TYPE_CHECKING:  # python-statemachine is imported when a chart is built, not before
    from statemachine import StateChart

__all__ = [
    "CompiledGuideline",
    "GuardContext",
    "TransitionRef",
    "compile_guideline",
    "transition_refs",
]


@attrs.frozen
class TransitionRef:
    source: str
    index: int
    definition: TransitionDef

    @property
    def key(self) -> str:
        return f"{self.source}[{self.index}]"

    @property
    def target(self) -> str:
        return self.definition.to

    @property
    def event(self) -> str:
        return self.definition.event


class GuardContext(Protocol):
    """What a compiled guard calls: evaluate the transition's criteria, say if it may fire."""

    def check(self, ref: TransitionRef) -> bool: ...


@attrs.frozen
class CompiledGuideline:
    guideline: Guideline
    chart: type[StateChart[Any]]
    transitions: tuple[TransitionRef, ...]


def _class_name(guideline_id: str) -> str:
    words = re.split(r"[^0-9A-Za-z]+", guideline_id)
    return "".join(w[:1].upper() + w[1:] for w in words if w) + "Chart"


def _guard(ref: TransitionRef) -> Callable[..., bool]:
    def guard(ctx: GuardContext) -> bool:
        return ctx.check(ref)

    guard.__name__ = f"guard_{ref.source}_{ref.index}"
    guard.__qualname__ = guard.__name__
    return guard


def _chart_class(
    name: str, states: dict[str, dict[str, Any]], **definition: Any
) -> type[StateChart[Any]]:
    """The StateChart class of flat states, made as python-statemachine's
    `statemachine.io.class_factory.create_machine_class_from_definition` makes it (the same
    calls in the same order) with the core API alone: importing `statemachine.io` (the SCXML,
    JSON and YAML readers) would cost every `iechs run` a sixth of its start-up."""
    from statemachine import State, StateChart  # noqa: PLC0415 (lazy: the table needs none)
    from statemachine.factory import StateMachineMetaclass  # noqa: PLC0415 (lazy)

    instances = {
        sid: State(**{k: v for k, v in spec.items() if k != "on"}) for sid, spec in states.items()
    }
    events: dict[str, Any] = {}
    for sid, spec in states.items():
        for event, transitions in spec.get("on", {}).items():
            for t in transitions:
                transition = instances[sid].to(
                    instances[t["target"]],
                    event=event,
                    internal=None,
                    initial=None,
                    validators=None,
                    cond=t.get("cond"),
                    unless=None,
                    on=None,
                    before=None,
                    after=None,
                )
                if event in events:
                    events[event] |= transition
                else:
                    events[event] = transition
    chart = StateMachineMetaclass(name, (StateChart,), {**definition, **instances, **events})
    return cast("type[StateChart[Any]]", chart)


def transition_refs(g: Guideline) -> tuple[TransitionRef, ...]:
    """Every transition of the guideline, in declaration order (what the table runtime needs:
    no chart, no python-statemachine)."""
    return tuple(
        TransitionRef(sid, i, t) for sid, s in g.states.items() for i, t in enumerate(s.transitions)
    )


def compile_guideline(
    g: Guideline, refs: tuple[TransitionRef, ...] | None = None
) -> CompiledGuideline:
    """Build the StateChart class of a (checked) guideline; its guards call back with `refs`
    (by default `transition_refs(g)`)."""
    from statemachine.exceptions import InvalidDefinition  # noqa: PLC0415 (lazy)

    refs = transition_refs(g) if refs is None else refs
    by_state: dict[str, list[TransitionRef]] = {}
    for ref in refs:
        by_state.setdefault(ref.source, []).append(ref)
    states: dict[str, Any] = {}
    for sid, s in g.states.items():
        definition: dict[str, Any] = {"name": s.name}
        if s.initial:
            definition["initial"] = True
        if s.final:
            definition["final"] = True
        on: dict[str, list[dict[str, Any]]] = {}
        for ref in by_state.get(sid, ()):
            t = ref.definition
            spec: dict[str, Any] = {"target": t.to}
            if t.when or t.unless:
                spec["cond"] = _guard(ref)
            on.setdefault(t.event, []).append(spec)
        if on:
            definition["on"] = on
        states[sid] = definition
    try:
        chart = _chart_class(
            _class_name(g.guideline.id),
            states=states,
            catch_errors_as_events=False,
            allow_event_without_transition=True,
        )
    except InvalidDefinition as exc:
        raise GuidelineError(
            [Problem(f"the statechart is invalid: {exc}", "$.states")], g.file
        ) from None
    return CompiledGuideline(guideline=g, chart=chart, transitions=refs)
