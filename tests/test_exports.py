"""Machine exports: native statechart YAML/JSON and W3C SCXML, loaded back with
`statemachine.io.load` and compared with the compiled class (format parity)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from lxml import etree
from statemachine import StateChart
from statemachine.io import load

from iechs import Guideline, load_guideline
from iechs.cli import main
from iechs.compiler import TransitionRef, compile_guideline
from iechs.diagram.exports import (
    GUIDELINE_NS,
    SCXML_NS,
    criteria_in_guards,
    native_document,
    native_json,
    native_yaml,
    scxml_problems,
    to_scxml,
)

ROOT = Path(__file__).resolve().parents[1]
#: The W3C SCXML 1.0 schema: the shared folder always sits beside the clone.
SCHEMA_DIR = ROOT.parent / "shared" / "standards" / "scxml"
GUIDELINES = {
    "iec-hs": ROOT / "guideline" / "iec-hs.yaml",
    "astct-2023": ROOT / "guideline" / "profiles" / "astct-2023.yaml",
}
FORMATS = ("yaml", "json", "scxml")
Chart = type[StateChart[Any]]


@pytest.fixture(scope="module", params=sorted(GUIDELINES))
def g(request: pytest.FixtureRequest) -> Guideline:
    return load_guideline(GUIDELINES[request.param])


def write_exports(g: Guideline, folder: Path) -> dict[str, Path]:
    paths = {fmt: folder / f"{g.guideline.id}.{fmt}" for fmt in FORMATS}
    paths["yaml"].write_text(native_yaml(g), encoding="utf-8")
    paths["json"].write_text(native_json(g), encoding="utf-8")
    paths["scxml"].write_bytes(to_scxml(g))
    return paths


def shape(chart: Chart) -> dict[str, Any]:
    """States, transitions and events of a statechart class, comparable across formats."""
    states = [(s.id, bool(s.initial), bool(s.final)) for s in chart.states]
    transitions = sorted(
        (
            t.source.id,
            t.target.id if t.target else None,
            tuple(str(e) for e in t.events),
            bool(list(t.cond)),
        )
        for s in chart.states
        for t in s.transitions
    )
    events = sorted(e.id for e in chart.events)  # type: ignore[attr-defined]  # a class property
    return {"states": states, "transitions": transitions, "events": events}


def test_yaml_and_json_are_the_same_native_document(g: Guideline) -> None:
    doc = native_document(g)
    assert yaml.safe_load(native_yaml(g)) == doc
    assert json.loads(native_json(g)) == doc
    assert doc["name"] == compile_guideline(g).chart.__name__
    assert [d["id"] for d in doc["datamodel"]] == criteria_in_guards(g)
    assert g.sha256 in doc["description"]


def test_exports_are_deterministic(g: Guideline) -> None:
    assert native_yaml(g) == native_yaml(g)
    assert to_scxml(g) == to_scxml(g)


@pytest.mark.parametrize("fmt", FORMATS)
def test_format_parity_with_the_compiled_class(g: Guideline, fmt: str, tmp_path: Path) -> None:
    loaded = load(write_exports(g, tmp_path)[fmt])
    compiled = compile_guideline(g).chart
    assert loaded.__name__ == compiled.__name__
    assert shape(loaded) == shape(compiled)
    # and against the guideline itself: nothing lost on either side
    n_transitions = sum(len(s.transitions) for s in g.states.values())
    assert len(shape(loaded)["transitions"]) == n_transitions
    assert shape(loaded)["events"] == sorted(
        {t.event for s in g.states.values() for t in s.transitions}
    )


class Valuation:
    """A GuardContext for the compiled class: every criterion TRUE or FALSE, as given."""

    def __init__(self, values: dict[str, bool]) -> None:
        self.values = values

    def check(self, ref: TransitionRef) -> bool:
        t = ref.definition
        return all(self.values[n] for n in t.when) and not any(self.values[n] for n in t.unless)


def state_of(machine: StateChart[Any]) -> str:
    return str(next(iter(machine.configuration)).id)


@pytest.fixture(scope="module")
def loaded_charts(g: Guideline, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Chart]:
    paths = write_exports(g, tmp_path_factory.mktemp("exports"))
    return {fmt: load(paths[fmt]) for fmt in FORMATS}


def steps_for(g: Guideline) -> st.SearchStrategy[list[tuple[str, dict[str, bool]]]]:
    names = criteria_in_guards(g)
    valuation = st.fixed_dictionaries({n: st.booleans() for n in names})
    return st.lists(st.tuples(st.sampled_from(sorted(g.events)), valuation), max_size=25)


@pytest.mark.parametrize("fmt", FORMATS)
def test_behaviour_parity_on_random_runs(
    g: Guideline, loaded_charts: dict[str, Chart], fmt: str
) -> None:
    """Given the same criteria values, every export takes the transition the compiled class
    takes, step after step."""
    compiled = compile_guideline(g).chart

    @given(steps_for(g))
    def run(steps: list[tuple[str, dict[str, bool]]]) -> None:
        ours, theirs = compiled(), loaded_charts[fmt]()
        for event, values in steps:
            if g.states[state_of(ours)].final:
                break
            ours.send(event, ctx=Valuation(values))
            for name, value in values.items():
                setattr(theirs.model, name, value)
            theirs.send(event)
            assert state_of(theirs) == state_of(ours), (event, values)

    run()


def test_scxml_validates_against_the_w3c_schema(g: Guideline) -> None:
    assert (SCHEMA_DIR / "scxml.xsd").is_file(), f"the W3C schema is kept in {SCHEMA_DIR}"
    assert scxml_problems(to_scxml(g), SCHEMA_DIR) == []


def test_the_schema_check_can_fail(g: Guideline) -> None:
    broken = to_scxml(g).replace(b'version="1.0"', b'version="2.0"', 1)
    problems = scxml_problems(broken, SCHEMA_DIR)
    assert problems
    assert "version" in problems[0]
    unknown = to_scxml(g).replace(b"<datamodel>", b"<datamodel><bogus/>", 1)
    assert scxml_problems(unknown, SCHEMA_DIR)


def test_scxml_carries_clinical_metadata_in_our_namespace(g: Guideline) -> None:
    root = etree.fromstring(to_scxml(g))
    ns = {"s": SCXML_NS, "g": GUIDELINE_NS}
    info = root.find("g:guideline", ns)
    assert info is not None
    assert info.get("sha256") == g.sha256
    assert info.get("version") == g.guideline.version
    sources = {el.get("key") for el in root.iterfind("g:sources/g:source", ns)}
    assert sources == set(g.sources)
    first = root.find("s:state[@id='suspected']", ns)
    assert first is not None
    assert first.get(f"{{{GUIDELINE_NS}}}name") == g.states["suspected"].name
    for t, el in zip(
        g.states["suspected"].transitions, first.iterfind("s:transition", ns), strict=True
    ):
        assert el.get("event") == t.event
        assert el.get("target") == t.to
        assert el.get(f"{{{GUIDELINE_NS}}}label") == t.label
        assert el.get(f"{{{GUIDELINE_NS}}}cite") == " ".join(t.cite)
        assert el.get(f"{{{GUIDELINE_NS}}}verified") == ("true" if t.verified else "false")
        if t.when:
            guard = el.get(f"{{{GUIDELINE_NS}}}guard") or ""
            for name in t.when:
                assert g.criteria[name].description.rstrip(".") in guard
    recs = root.findall(".//g:recommendation[@dose-min]", ns)
    assert recs, "doses are exported"
    criteria = {el.get("id"): el for el in root.iterfind("g:criteria/g:criterion", ns)}
    assert set(criteria) == set(criteria_in_guards(g))
    final = root.find("s:final", ns)
    assert final is not None
    assert g.states[str(final.get("id"))].final


def test_native_yaml_comments_carry_labels_and_citations(g: Guideline) -> None:
    text = native_yaml(g)
    for s in g.states.values():
        for t in s.transitions:
            assert f"# {' '.join(t.label.split())} [{', '.join(t.cite)}; " in text


def test_cli_export_validates_and_writes(tmp_path: Path) -> None:
    code = main(["export", "--out", str(tmp_path), "--schema", str(SCHEMA_DIR)])
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "iec-hs.json",
        "iec-hs.scxml",
        "iec-hs.yaml",
    ]
    assert (tmp_path / "iec-hs.scxml").read_bytes() == to_scxml(load_guideline())


def test_cli_export_refuses_an_invalid_scxml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a "schema" that accepts nothing but a different root element
    schema = tmp_path / "schema"
    schema.mkdir()
    (schema / "scxml.xsd").write_text(
        '<xsd:schema xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
        'targetNamespace="http://www.w3.org/2005/07/scxml">'
        '<xsd:element name="other"/></xsd:schema>'
    )
    out = tmp_path / "out"
    assert main(["export", "--out", str(out), "--schema", str(schema)]) == 1
    assert "does not validate" in capsys.readouterr().err
    assert not out.exists()
