"""Guideline (and a patient's decisions) -> the diagram's plain data model.

Everything a picture shows is chosen here, in the clinic's words: state names, recommendations
with doses, cautions, transition labels. The renderers only lay it out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC

from ..decision import Decision
from ..model import Dose, Guideline, Recommendation, StateDef, Statement
from .model import (
    GROUPS,
    Diagram,
    DiagramEdge,
    DiagramGroup,
    DiagramNode,
    EdgeKind,
    Item,
    PathStep,
    edge_id,
)

__all__ = ["diagram_of", "dose_text", "edge_kind", "with_path"]

_POPULATION = {"adult": "adults", "paediatric": "children", "all": ""}
_PHASE_WORD = {"surveillance": "Surveillance", "diagnosis": "Diagnosis", "outcome": "Outcome"}


def _number(x: float) -> str:
    return f"{x:g}"


def dose_text(g: Guideline, r: Recommendation) -> str | None:
    """ "Dexamethasone 10–20 mg IV, every 6 h, adults", or None without a dose."""
    if r.dose is None:
        return None
    d: Dose = r.dose
    amount = _number(d.min) if d.min == d.max else f"{_number(d.min)}–{_number(d.max)}"
    drug = g.drugs[r.drug].name if r.drug in g.drugs else (r.drug or "")
    head = " ".join(p for p in (drug, f"{amount} {d.unit}", "/".join(r.route)) if p)
    parts = [head]
    if r.frequency:
        parts.append(r.frequency)
    if _POPULATION[r.population]:
        parts.append(_POPULATION[r.population])
    return ", ".join(parts)


def edge_kind(g: Guideline, event: str) -> EdgeKind:
    """A treatment event (one a drug class sends), the episode's close, or new clinical data."""
    if event == "close":
        return "close"
    if any(c.event == event for c in g.drug_classes.values()):
        return "treatment"
    return "data"


def _item(s: Statement | Recommendation, dose: str | None = None) -> Item:
    return Item(text=s.text, verified=s.verified, cite=s.cite, dose=dose)


def _subtitle(g: Guideline, s: StateDef) -> str:
    if s.line is not None:
        if s.after is None:  # the default order: after the line numbered one less
            return f"Treatment line {s.line}"
        lines_before = (g.states[b].line for b in s.after if b in g.states)
        before = sorted({n for n in lines_before if n is not None})
        if not before:
            return f"Treatment line {s.line} · a first line"
        lines = " or ".join(str(n) for n in before)
        return f"Treatment line {s.line} · after line {lines}"
    word = _PHASE_WORD.get(s.phase, s.phase.capitalize())
    if s.initial:
        return f"{word} · start"
    if s.final:
        return "End of the episode"
    return word


def diagram_of(g: Guideline) -> Diagram:
    """The diagram of a guideline: one node per state, one edge per transition."""
    groups: list[DiagramGroup] = []
    shared: dict[str, set[str]] = {}
    for gid, title, phases in GROUPS:
        members = tuple(sid for sid, s in g.states.items() if s.phase in phases)
        if not members:
            continue
        texts = [{c.text for c in g.states[sid].cautions} for sid in members]
        common = set.intersection(*texts) if len(members) > 1 else set()
        first = g.states[members[0]]
        cautions = tuple(_item(c) for c in first.cautions if c.text in common)
        groups.append(DiagramGroup(id=gid, title=title, nodes=members, cautions=cautions))
        for sid in members:
            shared[sid] = common
    nodes: list[DiagramNode] = []
    edges: list[DiagramEdge] = []
    for sid, s in g.states.items():
        items = tuple(_item(r, dose_text(g, r)) for r in s.recommendations) or tuple(
            _item(m) for m in s.monitoring
        )
        nodes.append(
            DiagramNode(
                id=sid,
                name=s.name,
                phase=s.phase,
                subtitle=_subtitle(g, s),
                initial=s.initial,
                final=s.final,
                items=items,
                cautions=tuple(_item(c) for c in s.cautions if c.text not in shared.get(sid, ())),
            )
        )
        for i, t in enumerate(s.transitions):
            ev = g.events.get(t.event)
            edges.append(
                DiagramEdge(
                    id=edge_id(sid, i),
                    source=sid,
                    target=t.to,
                    event=t.event,
                    event_name=ev.name if ev else t.event,
                    kind=edge_kind(g, t.event),
                    label=t.label,
                    verified=t.verified,
                    cite=t.cite,
                )
            )
    meta = g.guideline
    return Diagram(
        id=meta.id,
        title=meta.title,
        version=meta.version,
        status=meta.status,
        sha256=g.sha256,
        nodes=tuple(nodes),
        edges=tuple(edges),
        groups=tuple(groups),
    )


def _fired_edge(g: Guideline, d: Decision) -> str | None:
    assert d.source is not None
    candidates = [
        (i, t)
        for i, t in enumerate(g.states[d.source].transitions)
        if t.to == d.target and t.event == d.machine_event
    ]
    for i, t in candidates:
        if t.label == d.transition_label:
            return edge_id(d.source, i)
    return edge_id(d.source, candidates[0][0]) if candidates else None


def with_path(
    diagram: Diagram, g: Guideline, patient: str, decisions: Sequence[Decision]
) -> Diagram:
    """The same diagram with one patient's path: the states entered and the transitions taken,
    numbered in order, and the deviations (treatments not sanctioned at that point) marked."""
    visits: dict[str, list[int]] = {g.initial_state: [0]}
    deviations: dict[str, list[tuple[int, str]]] = {}
    steps: dict[str, list[int]] = {}
    path: list[PathStep] = []
    n = 0
    for d in decisions:
        at = d.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M")
        if d.changed:
            n += 1
            eid = _fired_edge(g, d)
            if eid is not None:
                steps.setdefault(eid, []).append(n)
            visits.setdefault(d.target, []).append(n)
            text = d.transition_label or f"{d.source} -> {d.target}"
            path.append(PathStep(n, at, "transition", text, d.target, eid))
        for dev in d.deviations:
            n += 1
            text = f"{dev.drug}: {dev.reason} (alert {dev.alert})"
            deviations.setdefault(d.target, []).append((n, text))
            path.append(PathStep(n, at, "deviation", text, d.target))
    nodes = tuple(
        replace(
            node,
            visits=tuple(visits.get(node.id, ())),
            deviations=tuple(deviations.get(node.id, ())),
        )
        for node in diagram.nodes
    )
    edges = tuple(replace(e, steps=tuple(steps.get(e.id, ()))) for e in diagram.edges)
    return replace(diagram, nodes=nodes, edges=edges, patient=patient, path=tuple(path))
