"""Diagram -> Graphviz DOT text, for a clinician to read.

States are HTML-like tables: the state's name, what to do there (recommendations with doses),
its cautions; coloured by phase and grouped (surveillance and diagnosis, treatment lines,
outcome). Edges carry the transition's label (the event and its guard in words) and a line style
per kind of event. The graph's own label is the title and the legend, so the SVG holds exactly
one `g.node` per state and one `g.edge` per transition. A patient's path is drawn in one colour,
numbered in order, with deviations marked; what the patient did not go through is greyed.

Output is deterministic: the same diagram gives the same text.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable

from .model import PHASES, Diagram, DiagramEdge, DiagramGroup, DiagramNode, Item, node_id

__all__ = ["EDGE_STYLE", "FONT", "PATH_COLOUR", "PHASE_STYLE", "to_dot"]

#: A font every machine of this project has (Debian's fonts-dejavu-core): the layout, and so the
#: SVG and PNG bytes, depend on the font's metrics.
FONT = "DejaVu Sans"
#: phase -> (fill, border and accent), colour-blind safe hues.
PHASE_STYLE = {
    "surveillance": ("#E3EEF9", "#2E6194"),
    "diagnosis": ("#FFF3D6", "#8A5E00"),
    "treatment": ("#FCE4D6", "#A4431C"),
    "outcome": ("#E2F2E0", "#2F6F2D"),
}
PHASE_TITLE = {
    "surveillance": "Surveillance",
    "diagnosis": "Diagnosis",
    "treatment": "Treatment",
    "outcome": "Outcome",
}
#: edge kind -> (DOT style, colour, legend sample, legend text).
EDGE_STYLE = {
    "treatment": ("solid", "#222222", "━━━━", "a treatment is recorded (and the condition holds)"),
    "data": ("dashed", "#1F5A8A", "– – –", "new clinical data: labs, findings, assessments"),
    "close": (
        "dotted",
        "#8C8C8C",
        "· · · ·",
        "episode closed: follow-up complete, death, transfer",
    ),
}
PATH_COLOUR = "#6A1B9A"
DEVIATION_COLOUR = "#C00000"
CAUTION_COLOUR = "#9B1C1C"
FADED = "#A8A8A8"
UNVERIFIED = "†"
_NODE_WRAP = 46
#: groups laid out in one straight column (the algorithm's main line).
_MAIN_COLUMN = ("assessment", "treatment")
_EDGE_WRAP = 30


def _esc(text: str) -> str:
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    )


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _lines(text: str, width: int, first: str = "", rest: str = "") -> str:
    """Wrapped, escaped text joined by left-aligned breaks; `first`/`rest` prefix the lines."""
    wrapped = textwrap.wrap(text, width=width, break_on_hyphens=False) or [""]
    out = [(first if i == 0 else rest) + _esc(line) for i, line in enumerate(wrapped)]
    return '<BR ALIGN="LEFT"/>'.join(out) + '<BR ALIGN="LEFT"/>'


def _mark(item: Item) -> str:
    return "" if item.verified else f" {UNVERIFIED}"


def _attrs(pairs: Iterable[tuple[str, str]]) -> str:
    out = []
    for key, value in pairs:
        if value.startswith("<") and value.endswith(">"):
            out.append(f"{key}={value}")
        else:
            out.append(f"{key}={_quote(value)}")
    return ", ".join(out)


def _badges(numbers: Iterable[int], colour: str) -> str:
    """Table cells holding step numbers in white on `colour` (cells, so that they keep their
    size: a nested table would stretch to its cell)."""
    return "".join(
        f'<TD BGCOLOR="{colour}" CELLPADDING="2" VALIGN="MIDDLE">'
        f'<FONT COLOR="white" POINT-SIZE="10"><B>&#160;{"start" if n == 0 else n}&#160;</B>'
        "</FONT></TD>"
        for n in numbers
    )


def _node_label(d: Diagram, n: DiagramNode) -> str:
    fill, accent = PHASE_STYLE[n.phase]
    on_path = bool(n.visits)
    faded = d.has_path and not on_path
    ink = FADED if faded else "#1A1A1A"
    border = PATH_COLOUR if on_path else (FADED if faded else accent)
    rows = []
    tag = FADED if faded else accent
    head = (
        f'<FONT POINT-SIZE="9" COLOR="{tag}">{_esc(n.subtitle.upper())}</FONT><BR ALIGN="LEFT"/>'
        if n.subtitle
        else ""
    )
    title = f'<FONT POINT-SIZE="13" COLOR="{ink}"><B>{_esc(n.name)}</B></FONT>'
    if on_path:
        rows.append(
            f'<TR><TD ALIGN="LEFT"><TABLE BORDER="0" CELLSPACING="0" CELLPADDING="0"><TR>'
            f'<TD ALIGN="LEFT" BALIGN="LEFT">{head}{title}</TD>'
            f'<TD WIDTH="8"></TD>{_badges(n.visits, PATH_COLOUR)}'
            f"</TR></TABLE></TD></TR>"
        )
    else:
        rows.append(f'<TR><TD ALIGN="LEFT" BALIGN="LEFT">{head}{title}</TD></TR>')
    for item in n.items:
        body = _lines(item.text + _mark(item), _NODE_WRAP, "• ", "&#160;&#160;&#160;")
        if item.dose:
            indent = "&#160;&#160;&#160;"
            body += f"<B>{_lines(item.dose, _NODE_WRAP, indent, indent)}</B>"
        rows.append(
            f'<TR><TD ALIGN="LEFT" BALIGN="LEFT"><FONT POINT-SIZE="10" COLOR="{ink}">{body}'
            "</FONT></TD></TR>"
        )
    for item in n.cautions:
        body = _lines(item.text + _mark(item), _NODE_WRAP, "⚠ ", "&#160;&#160;&#160;")
        colour = FADED if faded else CAUTION_COLOUR
        rows.append(
            f'<TR><TD ALIGN="LEFT" BALIGN="LEFT"><FONT POINT-SIZE="10" COLOR="{colour}">{body}'
            "</FONT></TD></TR>"
        )
    for number, text in n.deviations:
        body = _lines(f"deviation: {text}", _NODE_WRAP - 6, "", "")
        rows.append(
            f'<TR><TD ALIGN="LEFT" BALIGN="LEFT"><TABLE BORDER="0" CELLSPACING="0" '
            f'CELLPADDING="1"><TR>{_badges([number], DEVIATION_COLOUR)}<TD WIDTH="4"></TD>'
            f'<TD ALIGN="LEFT" BALIGN="LEFT"><FONT POINT-SIZE="10" COLOR="{DEVIATION_COLOUR}">'
            f"✗ {body}</FONT></TD></TR></TABLE></TD></TR>"
        )
    width = "3" if on_path else "1"
    table = (
        f'<TABLE BORDER="{width}" CELLBORDER="0" CELLSPACING="0" CELLPADDING="4" STYLE="rounded" '
        f'BGCOLOR="{"#F7F7F7" if faded else fill}" COLOR="{border}">{"".join(rows)}</TABLE>'
    )
    if n.final:  # a double border, as for a final state in UML
        table = (
            f'<TABLE BORDER="1" CELLBORDER="0" CELLSPACING="3" CELLPADDING="0" STYLE="rounded" '
            f'COLOR="{border}"><TR><TD>{table}</TD></TR></TABLE>'
        )
    return f"<{table}>"


def _edge_label(d: Diagram, e: DiagramEdge) -> str:
    colour = EDGE_STYLE[e.kind][1]
    faded = d.has_path and not e.steps
    ink = FADED if faded else colour
    text = _lines(e.label + ("" if e.verified else f" {UNVERIFIED}"), _EDGE_WRAP)
    cell = f'<TD ALIGN="LEFT" BALIGN="LEFT"><FONT POINT-SIZE="9" COLOR="{ink}">{text}</FONT></TD>'
    badge = _badges(e.steps, PATH_COLOUR)
    return (
        f'<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="1" BGCOLOR="white">'
        f"<TR>{badge}{cell}</TR></TABLE>>"
    )


def _group_label(d: Diagram, g: DiagramGroup) -> str:
    rows = [
        f'<TR><TD ALIGN="LEFT"><FONT POINT-SIZE="11" COLOR="#555555"><B>{_esc(g.title.upper())}'
        "</B></FONT></TD></TR>"
    ]
    if g.cautions:
        visited = any(d.node(sid).visits for sid in g.nodes)
        colour = FADED if d.has_path and not visited else CAUTION_COLOUR
        body = "".join(
            _lines(c.text + _mark(c), 64, "⚠ ", "&#160;&#160;&#160;") for c in g.cautions
        )
        rows.append(
            f'<TR><TD ALIGN="LEFT" BALIGN="LEFT"><FONT POINT-SIZE="10" COLOR="{colour}">'
            f'In every state of this group:<BR ALIGN="LEFT"/>{body}</FONT></TD></TR>'
        )
    return f'<<TABLE BORDER="0" CELLSPACING="0" CELLPADDING="2">{"".join(rows)}</TABLE>>'


def _legend(d: Diagram) -> str:
    phases = [p for p in PHASES if any(n.phase == p for n in d.nodes)]
    kinds = [k for k in EDGE_STYLE if any(e.kind == k for e in d.edges)]
    title = f"Patient {d.patient}: path through {d.title}" if d.patient is not None else d.title
    ident = f"{d.id} {d.version} ({d.status}) · sha256 {d.sha256[:12]}"
    rows = [
        f'<TR><TD ALIGN="LEFT" COLSPAN="2"><FONT POINT-SIZE="16"><B>{_esc(title)}</B></FONT>'
        f'<BR ALIGN="LEFT"/><FONT POINT-SIZE="10" COLOR="#555555">{_esc(ident)}</FONT></TD></TR>'
    ]
    swatches = "".join(
        f'<TD BGCOLOR="{PHASE_STYLE[p][0]}" BORDER="1" COLOR="{PHASE_STYLE[p][1]}" '
        f'CELLPADDING="3"><FONT POINT-SIZE="10">{PHASE_TITLE[p]}</FONT></TD><TD WIDTH="6"></TD>'
        for p in phases
    )
    rows.append(
        '<TR><TD ALIGN="LEFT" VALIGN="TOP"><FONT POINT-SIZE="10"><B>States</B></FONT></TD>'
        f'<TD ALIGN="LEFT"><TABLE BORDER="0" CELLSPACING="0"><TR>{swatches}</TR></TABLE></TD>'
        "</TR>"
        '<TR><TD></TD><TD ALIGN="LEFT"><FONT POINT-SIZE="10">⚠ caution · '
        f"{UNVERIFIED} not yet verified against its source · "
        "double border: end of the episode</FONT></TD></TR>"
    )
    moves = "".join(
        f'<FONT COLOR="{EDGE_STYLE[k][1]}" POINT-SIZE="12"><B>{EDGE_STYLE[k][2]}</B></FONT>'
        f"&#160;&#160;{_esc(EDGE_STYLE[k][3])}"
        '<BR ALIGN="LEFT"/>'
        for k in kinds
    )
    rows.append(
        '<TR><TD ALIGN="LEFT" VALIGN="TOP"><FONT POINT-SIZE="10"><B>Moves</B></FONT></TD>'
        f'<TD ALIGN="LEFT" BALIGN="LEFT"><FONT POINT-SIZE="10">{moves}'
        "Each arrow says what happened and, in brackets, when the move is allowed."
        '<BR ALIGN="LEFT"/></FONT></TD></TR>'
    )
    if d.has_path:
        steps = []
        for s in d.path:
            deviation = s.kind == "deviation"
            colour = DEVIATION_COLOUR if deviation else PATH_COLOUR
            what = f"✗ {s.text}" if deviation else f"→ {d.node(s.state).name}: {s.text}"
            steps.append(
                f'<FONT COLOR="{colour}"><B>{s.number}</B></FONT>&#160;&#160;{_esc(s.at)}'
                f'&#160;&#160;<FONT COLOR="{DEVIATION_COLOUR if deviation else "#1A1A1A"}">'
                f'{_esc(what)}</FONT><BR ALIGN="LEFT"/>'
            )
        rows.append(
            '<TR><TD ALIGN="LEFT" VALIGN="TOP"><FONT POINT-SIZE="10"><B>Path</B></FONT></TD>'
            '<TD ALIGN="LEFT" BALIGN="LEFT"><FONT POINT-SIZE="10">'
            f'<FONT COLOR="{PATH_COLOUR}"><B>Numbered</B></FONT> in order (start: the state at '
            f'infusion); <FONT COLOR="{DEVIATION_COLOUR}"><B>✗</B></FONT> a treatment the '
            "guideline does not sanction at that point (a deviation: the state does not change)"
            f'<BR ALIGN="LEFT"/>{"".join(steps)}</FONT></TD></TR>'
        )
    return f'<<TABLE BORDER="0" CELLSPACING="2" CELLPADDING="2">{"".join(rows)}</TABLE>>'


def _edge_attrs(d: Diagram, e: DiagramEdge) -> list[tuple[str, str]]:
    style, colour, _, _ = EDGE_STYLE[e.kind]
    on_path = bool(e.steps)
    faded = d.has_path and not on_path
    colour = PATH_COLOUR if on_path else (FADED if faded else colour)
    attrs = [
        ("id", e.id),
        ("class", f"transition kind-{e.kind}" + (" on-path" if on_path else "")),
        ("label", _edge_label(d, e)),
        ("style", style),
        ("color", colour),
        ("penwidth", "3" if on_path else ("1" if e.kind == "close" else "1.4")),
    ]
    if e.kind == "close":  # a side road: it does not pull the end of the episode up
        attrs.append(("weight", "0"))
    return attrs


def _layout_hints(d: Diagram) -> list[str]:
    """Lay the algorithm out as a clinician reads it: surveillance, diagnosis and the treatment
    lines in one column, the outcome states in a column beside the treatment lines (response
    beside the middle line, the end of the episode beside the last)."""
    by_group = {g.id: g.nodes for g in d.groups}
    treatment = by_group.get("treatment", ())
    outcome = by_group.get("outcome", ())
    if not treatment or not outcome:
        return []
    hints = []
    finals = [sid for sid in outcome if d.node(sid).final]
    others = [sid for sid in outcome if not d.node(sid).final]
    if others:
        beside = treatment[(len(treatment) - 1) // 2]
        hints.append(f"  {{rank=same; {_quote(beside)}; {_quote(others[0])};}}")
    if finals:
        hints.append(f"  {{rank=same; {_quote(treatment[-1])}; {_quote(finals[0])};}}")
    return hints


def to_dot(d: Diagram) -> str:
    """The DOT text of a diagram."""
    out = [
        f"digraph {_quote(d.id)} {{",
        "  graph ["
        + _attrs(
            [
                ("id", "guideline"),
                ("fontname", FONT),
                ("rankdir", "TB"),
                ("newrank", "true"),
                ("nodesep", "0.45"),
                ("ranksep", "0.5"),
                ("pad", "0.3"),
                ("labelloc", "t"),
                ("labeljust", "l"),
                ("label", _legend(d)),
            ]
        )
        + "];",
        "  node [" + _attrs([("shape", "plain"), ("fontname", FONT)]) + "];",
        "  edge ["
        + _attrs([("fontname", FONT), ("arrowsize", "0.8"), ("labelfloat", "false")])
        + "];",
    ]
    for g in d.groups:
        out.append(f"  subgraph {_quote('cluster_' + g.id)} {{")
        out.append(
            "    graph ["
            + _attrs(
                [
                    ("id", f"group-{g.id}"),
                    ("class", "group"),
                    ("label", _group_label(d, g)),
                    ("labeljust", "l"),
                    # a long label at the top would sit across the arrows coming in
                    ("labelloc", "b" if g.cautions else "t"),
                    ("style", "rounded,filled"),
                    ("fillcolor", "#FAFAFA"),
                    ("color", "#BBBBBB"),
                ]
            )
            + "];"
        )
        for sid in g.nodes:
            n = d.node(sid)
            cls = f"state phase-{n.phase}" + (" on-path" if n.visits else "")
            attrs = [("id", node_id(n.id)), ("class", cls), ("label", _node_label(d, n))]
            if g.id in _MAIN_COLUMN:
                attrs.append(("group", "main"))
            out.append(f"    {_quote(n.id)} [{_attrs(attrs)}];")
        out.append("  }")
    out += _layout_hints(d)
    grouped = {sid for g in d.groups for sid in g.nodes}
    for n in d.nodes:
        if n.id not in grouped:
            out.append(
                f"  {_quote(n.id)} ["
                + _attrs([("id", node_id(n.id)), ("class", "state"), ("label", _node_label(d, n))])
                + "];"
            )
    for e in d.edges:
        out.append(f"  {_quote(e.source)} -> {_quote(e.target)} [{_attrs(_edge_attrs(d, e))}];")
    out.append("}")
    return "\n".join(out) + "\n"
