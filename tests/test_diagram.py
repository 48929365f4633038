"""Diagrams: the renderers on hand-built data, then the guideline's picture as SVG and PNG."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from lxml import etree

from iechs import Engine, Guideline, load_guideline, load_timeline
from iechs.cli import main
from iechs.diagram.dot import DEVIATION_COLOUR, FADED, PATH_COLOUR, to_dot
from iechs.diagram.extract import diagram_of, dose_text, with_path
from iechs.diagram.mermaid import mermaid_text, to_mermaid
from iechs.diagram.model import (
    Diagram,
    DiagramEdge,
    DiagramGroup,
    DiagramNode,
    Item,
    PathStep,
    node_id,
)
from iechs.diagram.render import GraphvizError, png_chunks, render, strip_png_metadata

ROOT = Path(__file__).resolve().parents[1]
SVG = "{http://www.w3.org/2000/svg}"


def hand_built(*, path: bool = False) -> Diagram:
    """Three states, three transitions: no guideline, no machine."""
    nodes = (
        DiagramNode(
            id="watch",
            name="Watch & wait",
            phase="surveillance",
            subtitle="Surveillance · start",
            initial=True,
            items=(Item("Check ferritin < 500 daily", verified=False, cite=("src-a",)),),
            cautions=(Item("Never <b>alone</b>", cite=("src-a",)),),
            visits=(0,) if path else (),
        ),
        DiagramNode(
            id="treat",
            name="Treat with drug X",
            phase="treatment",
            subtitle="Treatment line 1",
            items=(Item("Give drug X", cite=("src-b",), dose="Drug X 1–2 mg IV, adults"),),
            visits=(1,) if path else (),
            deviations=((2, "drug Y: not sanctioned (alert off_guideline_therapy)"),)
            if path
            else (),
        ),
        DiagramNode(id="done", name="Finished", phase="outcome", final=True),
    )
    edges = (
        DiagramEdge(
            id="transition-watch-0",
            source="watch",
            target="treat",
            event="give_x",
            event_name="drug X given",
            kind="treatment",
            label="drug X started (criteria met)",
            verified=False,
            steps=(1,) if path else (),
        ),
        DiagramEdge(
            id="transition-treat-0",
            source="treat",
            target="done",
            event="reassess",
            event_name="new clinical data",
            kind="data",
            label="response (markers falling)",
        ),
        DiagramEdge(
            id="transition-watch-1",
            source="watch",
            target="done",
            event="close",
            event_name="episode closed",
            kind="close",
            label="episode closed",
        ),
    )
    groups = (
        DiagramGroup(id="assessment", title="Surveillance and diagnosis", nodes=("watch",)),
        DiagramGroup(
            id="treatment",
            title="Treatment lines",
            nodes=("treat",),
            cautions=(Item("IL-6 blockade never alone", cite=("src-a",)),),
        ),
        DiagramGroup(id="outcome", title="Outcome", nodes=("done",)),
    )
    steps = (
        PathStep(1, "2026-01-01 10:00", "transition", "drug X started", "treat", "t1"),
        PathStep(2, "2026-01-01 12:00", "deviation", "drug Y: not sanctioned", "treat"),
    )
    return Diagram(
        id="demo",
        title="Demo guideline",
        version="1.2.3",
        status="draft",
        sha256="ab" * 32,
        nodes=nodes,
        edges=edges,
        groups=groups,
        patient="P9" if path else None,
        path=steps if path else (),
    )


def svg_tree(svg: bytes) -> etree._Element:
    return etree.fromstring(svg, etree.XMLParser(resolve_entities=False, no_network=True))


def groups_of(root: etree._Element, cls: str) -> list[etree._Element]:
    return [g for g in root.iter(f"{SVG}g") if cls in (g.get("class") or "").split()]


def text_of(g: etree._Element) -> str:
    return " ".join(" ".join(str(s) for s in t.itertext()) for t in g.iter(f"{SVG}text"))


# --- DOT, on hand-built data ---------------------------------------------------------------------


def flat(dot: str) -> str:
    """DOT text with wrapped label lines joined again."""
    return re.sub(r"<BR ALIGN=\"LEFT\"/>(&#160;)*", " ", dot)


def test_dot_names_states_and_labels_edges_in_words() -> None:
    dot = flat(to_dot(hand_built()))
    assert "label=<<TABLE" in dot
    assert "Watch &amp; wait" in dot  # escaped, for Graphviz's HTML-like labels
    assert "Never &lt;b&gt;alone&lt;/b&gt;" in dot
    assert "drug X started (criteria met) †" in dot  # unverified transitions are marked
    assert "Check ferritin &lt; 500 daily †" in dot
    assert "Drug X 1–2 mg IV, adults" in dot
    assert 'id="state-watch"' in dot
    assert 'id="transition-treat-0"' in dot
    assert 'class="transition kind-data"' in dot
    assert "style=dashed" in dot.replace('"', "")
    assert "cluster_treatment" in dot
    assert "IL-6 blockade never alone" in dot  # the group's shared caution
    assert "Demo guideline" in dot  # the title, in the legend
    assert "sha256 abababababab" in dot


def test_dot_draws_a_path_numbered_with_deviations() -> None:
    plain, path = to_dot(hand_built()), flat(to_dot(hand_built(path=True)))
    assert PATH_COLOUR not in plain
    assert PATH_COLOUR in path
    assert DEVIATION_COLOUR in path
    assert "Patient P9: path through Demo guideline" in path
    assert "✗ deviation: drug Y: not sanctioned" in path
    assert "&#160;start&#160;" in path  # the initial state's badge
    # the transition taken is drawn in the path colour and thick; the others faded
    taken = re.search(r'"watch" -> "treat" \[(.*)\];', path)
    untaken = re.search(r'"treat" -> "done" \[(.*)\];', path)
    assert taken is not None
    assert untaken is not None
    assert f'color="{PATH_COLOUR}"' in taken.group(1)
    assert 'penwidth="3"' in taken.group(1)
    assert f'color="{FADED}"' in untaken.group(1)
    assert "on-path" in taken.group(1)
    assert "on-path" not in untaken.group(1)


def test_dot_is_deterministic() -> None:
    assert to_dot(hand_built(path=True)) == to_dot(hand_built(path=True))


def test_hand_built_diagram_renders_to_svg_with_one_group_per_state_and_transition() -> None:
    root = svg_tree(render(to_dot(hand_built()), "svg"))
    nodes, edges = groups_of(root, "node"), groups_of(root, "edge")
    assert [g.get("id") for g in nodes] == ["state-watch", "state-treat", "state-done"]
    assert sorted(str(g.get("id")) for g in edges) == sorted(e.id for e in hand_built().edges)
    assert "Watch & wait" in text_of(nodes[0])
    assert "Never <b>alone</b>" in text_of(nodes[0])  # escaped once, shown as written
    assert "drug X started (criteria met)" in text_of(edges[0])


def test_render_rejects_what_graphviz_cannot_read() -> None:
    # text after a nested table in one cell: Graphviz's HTML-like labels forbid it
    cell = "<TD><TABLE><TR><TD>x</TD></TR></TABLE>y</TD>"
    bad = f"digraph {{ a [label=<<TABLE><TR>{cell}</TR></TABLE>>] }}"
    with pytest.raises(GraphvizError, match="non-space string"):
        render(bad, "svg")


# --- Mermaid, on hand-built data -----------------------------------------------------------------


def test_mermaid_text_escapes_syntax() -> None:
    assert mermaid_text("a; b # c <d>\n e") == "a#59; b #35; c #lt;d#gt; e"


def test_mermaid_states_in_words_with_phases_and_cautions() -> None:
    text = to_mermaid(hand_built())
    lines = text.splitlines()
    assert lines[0] == "---"
    assert lines[1] == 'title: "Demo guideline"'
    assert "stateDiagram-v2" in lines
    assert '    state "Watch & wait" as watch' in lines
    assert "    treat : Drug X 1–2 mg IV, adults" in lines
    assert "    [*] --> watch" in lines
    assert "    done --> [*]" in lines
    assert "    watch --> treat : drug X started (criteria met) †" in lines
    assert "        ⚠ Never #lt;b#gt;alone#lt;/b#gt;" in lines
    assert "    class treat treatment" in lines
    assert "classDef treatment fill:#FCE4D6" in text


def test_mermaid_numbers_the_path() -> None:
    lines = to_mermaid(hand_built(path=True)).splitlines()
    assert "    watch --> treat : 1. drug X started (criteria met) †" in lines
    assert "    class done faded" in lines
    assert "    class treat treatment_deviation" in lines
    assert "    class watch surveillance_path" in lines
    assert "        ✗ 2. deviation: drug Y: not sanctioned (alert off_guideline_therapy)" in lines


# --- the guideline's picture ---------------------------------------------------------------------


def test_extract_one_node_per_state_one_edge_per_transition(guideline: Guideline) -> None:
    d = diagram_of(guideline)
    assert [n.id for n in d.nodes] == list(guideline.states)
    n_transitions = sum(len(s.transitions) for s in guideline.states.values())
    assert len(d.edges) == n_transitions
    assert {sid for g in d.groups for sid in g.nodes} == set(guideline.states)
    first = d.node("first_line_steroids")
    assert first.name == guideline.states["first_line_steroids"].name
    assert any(i.dose == "Dexamethasone 10–20 mg IV, every 6 h, adults" for i in first.items)
    treatment = next(g for g in d.groups if g.id == "treatment")
    assert any("IL-6 blockade" in c.text for c in treatment.cautions)
    # a caution shared by every treatment line is drawn once, on the group
    assert not any("IL-6 blockade" in c.text for c in first.cautions)
    kinds = {(e.source, e.event): e.kind for e in d.edges}
    assert kinds[("suspected", "give_corticosteroid")] == "treatment"
    assert kinds[("surveillance", "reassess")] == "data"
    assert kinds[("surveillance", "close")] == "close"


def test_a_declared_line_order_is_in_the_subtitle(guideline: Guideline) -> None:
    d = diagram_of(guideline)  # the default order: by line number, nothing added
    assert d.node("second_line_anakinra").subtitle == "Treatment line 2"
    profile = load_guideline(ROOT / "guideline" / "profiles" / "astct-2023.yaml")
    p = diagram_of(profile)
    assert p.node("second_line_anakinra").subtitle == "Treatment line 2 · a first line"
    lines = sorted(profile.states[s].line or 0 for s in profile.line_after("salvage"))
    assert p.node("salvage").subtitle == (
        f"Treatment line {profile.states['salvage'].line} · after line "
        + " or ".join(str(n) for n in lines)
    )
    assert "TREATMENT LINE 2 · A FIRST LINE" in to_dot(p)


def test_dose_text(guideline: Guideline) -> None:
    recs = {r.id: r for r in guideline.states["second_line_anakinra"].recommendations}
    assert dose_text(guideline, recs["anakinra-paediatric"]) == "Anakinra 5–10 mg/kg/day, children"
    rux = guideline.states["refractory_ruxolitinib"].recommendations[0]
    assert dose_text(guideline, rux) is None


@pytest.fixture(scope="module")
def svg(guideline: Guideline) -> bytes:
    return render(to_dot(diagram_of(guideline)), "svg")


def test_svg_has_one_node_per_state_and_one_edge_per_transition(
    guideline: Guideline, svg: bytes
) -> None:
    root = svg_tree(svg)
    nodes, edges = groups_of(root, "node"), groups_of(root, "edge")
    assert len(nodes) == len(guideline.states)
    assert len(edges) == sum(len(s.transitions) for s in guideline.states.values())
    assert {g.get("id") for g in nodes} == {node_id(s) for s in guideline.states}


def test_svg_speaks_words_not_code_names(guideline: Guideline, svg: bytes) -> None:
    root = svg_tree(svg)
    for g in groups_of(root, "node"):
        sid = (g.get("id") or "").removeprefix("state-")
        assert guideline.states[sid].name in text_of(g)
    labels = {t.label for s in guideline.states.values() for t in s.transitions}
    for g in groups_of(root, "edge"):
        text = text_of(g)
        assert any(" ".join(label.split()[:3]) in text for label in labels), text
        assert not re.search(r"\b(give_\w+|reassess)\b", text), text  # event ids stay hidden
    everything = text_of(root)
    assert "IL-6 blockade is not recommended as monotherapy" in everything  # a caution
    assert "Moves" in everything
    assert "Treatment" in everything


def test_renders_are_byte_for_byte_reproducible(guideline: Guideline, svg: bytes) -> None:
    dot = to_dot(diagram_of(guideline))
    assert render(dot, "svg") == svg
    png = render(dot, "png")
    assert render(dot, "png") == png
    assert b"Generated by graphviz" not in svg
    kinds = {kind for kind, _ in png_chunks(png)}
    assert kinds <= {b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND", b"gAMA", b"sRGB", b"pHYs"}


def test_strip_png_metadata_drops_text_and_time() -> None:
    png = render("digraph { a -> b }", "png")
    chunks = png_chunks(png)
    # a PNG with a timestamp and a comment, as some encoders write
    extra = [(b"tIME", b"\x07\xea\x01\x01\x00\x00\x00"), (b"tEXt", b"Software\x00x")]
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    with_meta = png[:8] + b"".join(chunk(k, p) for k, p in [chunks[0], *extra, *chunks[1:]])
    assert strip_png_metadata(with_meta) == png


def test_path_overlay_from_the_engine(guideline: Guideline, engine: Engine) -> None:
    timeline = load_timeline(ROOT / "examples/recurrence-after-resolution.json", guideline)
    decisions = engine.run(timeline).decisions
    d = with_path(diagram_of(guideline), guideline, timeline.patient.id, decisions)
    moves = [dd for dd in decisions if dd.changed]
    assert [s.number for s in d.path] == list(range(1, len(moves) + 1))
    assert d.node("surveillance").visits == (0,)
    assert d.node("first_line_steroids").visits == (2, 5)  # entered twice: recurrence
    taken = {e.id: e.steps for e in d.edges if e.steps}
    assert taken["transition-suspected-0"] == (2, 5)
    assert sum(len(s) for s in taken.values()) == len(moves)
    assert d.node("salvage").visits == ()


def test_path_overlay_marks_deviations(guideline: Guideline, engine: Engine) -> None:
    timeline = load_timeline(ROOT / "examples/tocilizumab-monotherapy-deviation.json", guideline)
    d = with_path(
        diagram_of(guideline), guideline, timeline.patient.id, engine.run(timeline).decisions
    )
    deviations = [s for s in d.path if s.kind == "deviation"]
    assert deviations
    assert all("tocilizumab" in s.text for s in deviations)
    marked = {n.id: n.deviations for n in d.nodes if n.deviations}
    assert {s.state for s in deviations} == set(marked)
    root = svg_tree(render(to_dot(d), "svg"))
    assert len(groups_of(root, "node")) == len(guideline.states)
    assert "✗ deviation: tocilizumab" in text_of(root)


def test_cli_diagram_writes_four_formats(tmp_path: Path) -> None:
    assert main(["diagram", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "iec-hs.dot",
        "iec-hs.mmd",
        "iec-hs.png",
        "iec-hs.svg",
    ]
    assert (tmp_path / "iec-hs.png").read_bytes().startswith(b"\x89PNG")
    svg_tree((tmp_path / "iec-hs.svg").read_bytes())  # well-formed XML


def test_cli_diagram_with_a_timeline(tmp_path: Path) -> None:
    timeline = ROOT / "examples/refractory-ruxolitinib-salvage.json"
    code = main(["diagram", "--timeline", str(timeline), "--out", str(tmp_path), "--format", "svg"])
    assert code == 0
    svg = (tmp_path / "refractory-ruxolitinib-salvage.svg").read_bytes()
    on_path = [g for g in groups_of(svg_tree(svg), "node") if "on-path" in (g.get("class") or "")]
    assert {g.get("id") for g in on_path} >= {node_id("salvage"), node_id("resolved")}


def test_cli_diagram_bad_timeline_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"patient": {}, "events": []}')
    assert main(["diagram", "--timeline", str(bad), "--out", str(tmp_path)]) == 2
    assert "bad.json" in capsys.readouterr().err


def test_package_docstring_example_runs() -> None:
    import doctest

    import iechs.diagram

    result = doctest.testmod(iechs.diagram, verbose=False)
    assert result.attempted >= 1
    assert result.failed == 0


@pytest.mark.parametrize(
    ("svg_file", "guideline_file"),
    [
        ("diagrams/iec-hs.svg", "guideline/iec-hs.yaml"),
        (
            "diagrams/profiles/astct-2023/iec-hs-astct-2023.svg",
            "guideline/profiles/astct-2023.yaml",
        ),
    ],
)
def test_committed_svg_is_xml_with_a_node_per_state(svg_file: str, guideline_file: str) -> None:
    from iechs import load_guideline

    g = load_guideline(ROOT / guideline_file)
    root = svg_tree((ROOT / svg_file).read_bytes())
    assert len(groups_of(root, "node")) == len(g.states)
    assert len(groups_of(root, "edge")) == sum(len(s.transitions) for s in g.states.values())
