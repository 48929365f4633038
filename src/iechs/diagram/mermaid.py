"""Diagram -> Mermaid `stateDiagram-v2` text (for Markdown viewers that draw Mermaid).

States are named in words, with their doses as description lines; phases are classes with the
same colours as the Graphviz picture; cautions and deviations are notes; a patient's path is
numbered on the transitions. Deterministic: the same diagram gives the same text.
"""

from __future__ import annotations

import json

from .dot import DEVIATION_COLOUR, FADED, PATH_COLOUR, PHASE_STYLE, UNVERIFIED
from .model import Diagram, DiagramEdge, DiagramNode

__all__ = ["mermaid_text", "to_mermaid"]

#: Characters Mermaid reads as syntax, written as its entity codes.
_ENTITIES = {"#": "#35;", ";": "#59;", "<": "#lt;", ">": "#gt;", '"': "#quot;"}


def mermaid_text(text: str) -> str:
    """Text made safe for a Mermaid label: one line, syntax characters as entity codes."""
    one_line = " ".join(text.split())
    return "".join(_ENTITIES.get(ch, ch) for ch in one_line)


def _edge_label(e: DiagramEdge) -> str:
    label = e.label + ("" if e.verified else f" {UNVERIFIED}")
    if e.steps:
        label = ", ".join(str(n) for n in e.steps) + ". " + label
    return mermaid_text(label)


def _node_lines(n: DiagramNode) -> list[str]:
    lines = [f'    state "{mermaid_text(n.name)}" as {n.id}']
    for item in n.items:
        if item.dose:
            lines.append(f"    {n.id} : {mermaid_text(item.dose)}")
    return lines


def _note(state: str, texts: list[str]) -> list[str]:
    if not texts:
        return []
    return [
        f"    note right of {state}",
        *(f"        {mermaid_text(t)}" for t in texts),
        "    end note",
    ]


def to_mermaid(d: Diagram) -> str:
    """The Mermaid text of a diagram."""
    title = f"Patient {d.patient}: path through {d.title}" if d.patient is not None else d.title
    out = [
        "---",
        f"title: {json.dumps(' '.join(title.split()), ensure_ascii=False)}",  # YAML front matter
        "---",
        f"%% {d.id} {d.version} ({d.status}), sha256 {d.sha256}",
        f"%% {UNVERIFIED} = not yet verified against its source",
        "stateDiagram-v2",
        "    direction TB",
    ]
    # One class per state (Mermaid applies one): its phase, and on a path whether it was
    # visited, visited with a deviation, or not visited (faded).
    for phase, (fill, accent) in PHASE_STYLE.items():
        out.append(f"    classDef {phase} fill:{fill},stroke:{accent},color:#1A1A1A")
        if d.has_path:
            out.append(
                f"    classDef {phase}_path fill:{fill},stroke:{PATH_COLOUR},stroke-width:3px,"
                "color:#1A1A1A"
            )
            out.append(
                f"    classDef {phase}_deviation fill:{fill},stroke:{DEVIATION_COLOUR},"
                "stroke-width:3px,color:#1A1A1A"
            )
    if d.has_path:
        out.append(f"    classDef faded fill:#F7F7F7,stroke:{FADED},color:{FADED}")
    for g in d.groups:
        out.append(f"    %% {g.title}")
        for sid in g.nodes:
            out += _node_lines(d.node(sid))
    grouped = {sid for g in d.groups for sid in g.nodes}
    for n in d.nodes:
        if n.id not in grouped:
            out += _node_lines(n)
    for n in d.nodes:
        if n.initial:
            out.append(f"    [*] --> {n.id}")
    for e in d.edges:
        out.append(f"    {e.source} --> {e.target} : {_edge_label(e)}")
    for n in d.nodes:
        if n.final:
            out.append(f"    {n.id} --> [*]")
    for g in d.groups:
        for sid in g.nodes:
            shared = [f"⚠ {c.text}" for c in g.cautions]
            if shared and sid == g.nodes[0]:
                shared = [f"In every state of {g.title.lower()}:", *shared]
            else:
                shared = []
            own = [f"⚠ {c.text}" for c in d.node(sid).cautions]
            deviations = [
                f"✗ {number}. deviation: {text}" for number, text in d.node(sid).deviations
            ]
            out += _note(sid, own + shared + deviations)
    for n in d.nodes:
        cls: str = n.phase
        if d.has_path:
            cls = (
                "faded" if not n.visits else f"{n.phase}_{'deviation' if n.deviations else 'path'}"
            )
        out.append(f"    class {n.id} {cls}")
    return "\n".join(out) + "\n"
