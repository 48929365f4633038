"""The diagram's plain data model: what a picture of the guideline shows, with no layout.

`extract` builds it from the guideline (and, for a patient's path, from the engine's decisions);
the renderers (`dot`, `mermaid`) turn it into text. Renderers are tested on hand-built values of
these classes, with no guideline and no machine at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

#: The picture's formats, in the order they are written.
DIAGRAM_FORMATS = ("dot", "svg", "png", "mmd")

__all__ = [
    "EDGE_KINDS",
    "GROUPS",
    "PHASES",
    "Diagram",
    "DiagramEdge",
    "DiagramGroup",
    "DiagramNode",
    "EdgeKind",
    "Item",
    "PathStep",
    "Phase",
    "edge_id",
    "node_id",
]

Phase = Literal["surveillance", "diagnosis", "treatment", "outcome"]
#: How a transition is triggered: a treatment is recorded, new clinical data, the episode closes.
EdgeKind = Literal["treatment", "data", "close"]

PHASES: tuple[Phase, ...] = ("surveillance", "diagnosis", "treatment", "outcome")
EDGE_KINDS: tuple[EdgeKind, ...] = ("treatment", "data", "close")
#: The picture's groups, in reading order: (id, title, phases).
GROUPS: tuple[tuple[str, str, tuple[Phase, ...]], ...] = (
    ("assessment", "Surveillance and diagnosis", ("surveillance", "diagnosis")),
    ("treatment", "Treatment lines", ("treatment",)),
    ("outcome", "Outcome", ("outcome",)),
)


def node_id(state: str) -> str:
    """The id of a state's node in every rendering (SVG `g` id, HTML anchors)."""
    return f"state-{state}"


def edge_id(source: str, index: int) -> str:
    """The id of a transition's edge: its source state and its index among its transitions."""
    return f"transition-{source}-{index}"


@dataclass(frozen=True)
class Item:
    """One clinical statement shown in a state: a recommendation, a caution, a duty."""

    text: str
    verified: bool = True
    cite: tuple[str, ...] = ()
    #: for a recommendation with a dose: "Dexamethasone 10–20 mg IV, every 6 h, adults".
    dose: str | None = None


@dataclass(frozen=True)
class DiagramNode:
    #: the state's id (the rendering's id is `node_id(id)`).
    id: str
    name: str
    phase: Phase
    #: a short tag under the name: "Treatment line 1", "Diagnosis", ...
    subtitle: str = ""
    initial: bool = False
    final: bool = False
    #: what to do in this state: recommendations (or monitoring where there are none).
    items: tuple[Item, ...] = ()
    #: cautions specific to this state (those shared by its whole group are on the group).
    cautions: tuple[Item, ...] = ()
    #: a patient's path: the numbers of the steps that entered this state (0: the start).
    visits: tuple[int, ...] = ()
    #: a patient's path: deviations recorded while in this state, as (step number, text).
    deviations: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True)
class DiagramEdge:
    #: the rendering's id: `edge_id(source, index)`.
    id: str
    source: str
    target: str
    #: the machine event's id and its name in words ("corticosteroid given").
    event: str
    event_name: str
    kind: EdgeKind
    #: the transition's label: the event and its guard in words.
    label: str
    verified: bool = True
    cite: tuple[str, ...] = ()
    #: a patient's path: the numbers of the steps that took this transition.
    steps: tuple[int, ...] = ()


@dataclass(frozen=True)
class DiagramGroup:
    id: str
    title: str
    nodes: tuple[str, ...]
    #: cautions that hold in every state of the group, shown once on the group.
    cautions: tuple[Item, ...] = ()


@dataclass(frozen=True)
class PathStep:
    """One numbered step of a patient's path: a transition taken or a deviation recorded."""

    number: int
    at: str
    kind: Literal["transition", "deviation"]
    text: str
    state: str
    edge: str | None = None


@dataclass(frozen=True)
class Diagram:
    id: str
    title: str
    version: str
    status: str
    sha256: str
    nodes: tuple[DiagramNode, ...]
    edges: tuple[DiagramEdge, ...]
    groups: tuple[DiagramGroup, ...]
    #: a patient's path, when one is drawn: who, and the numbered steps.
    patient: str | None = None
    path: tuple[PathStep, ...] = field(default=())

    @property
    def has_path(self) -> bool:
        return self.patient is not None

    def node(self, node_id: str) -> DiagramNode:
        return next(n for n in self.nodes if n.id == node_id)
