"""Machine exports: native statechart YAML/JSON and W3C SCXML, loaded back with
`statemachine.io.load` and compared with the compiled class (format parity); the SCXML for other
interpreters (`datamodel="ecmascript"`): its structure, and its guards evaluated here against the
engine's rule of choice (SCION runs it in `test_scion.py`)."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from lxml import etree
from statemachine import StateChart
from statemachine.io import load

if TYPE_CHECKING:
    from lxml.etree import _Element

from iechs import Guideline, load_guideline
from iechs.cli import main
from iechs.compiler import TransitionRef, compile_guideline
from iechs.diagram.artefacts import EXPORT_FORMATS
from iechs.diagram.commands.export import FORMATS as CLI_FORMATS
from iechs.diagram.exports import (
    DATAMODELS,
    GUIDELINE_NS,
    SCXML_NS,
    Datamodel,
    criteria_in_guards,
    native_document,
    native_json,
    native_yaml,
    scxml_problems,
    to_scxml,
)
from iechs.model import TransitionDef

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
    assert to_scxml(g, "ecmascript") == to_scxml(g, "ecmascript")


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


@pytest.mark.parametrize("datamodel", DATAMODELS)
def test_scxml_validates_against_the_w3c_schema(g: Guideline, datamodel: Datamodel) -> None:
    assert (SCHEMA_DIR / "scxml.xsd").is_file(), f"the W3C schema is kept in {SCHEMA_DIR}"
    assert scxml_problems(to_scxml(g, datamodel), SCHEMA_DIR) == []


def test_the_schema_check_can_fail(g: Guideline) -> None:
    broken = to_scxml(g).replace(b'version="1.0"', b'version="2.0"', 1)
    problems = scxml_problems(broken, SCHEMA_DIR)
    assert problems
    assert "version" in problems[0]
    unknown = to_scxml(g).replace(b"<datamodel>", b"<datamodel><bogus/>", 1)
    assert scxml_problems(unknown, SCHEMA_DIR)


@pytest.mark.parametrize("datamodel", DATAMODELS)
def test_scxml_carries_clinical_metadata_in_our_namespace(
    g: Guideline, datamodel: Datamodel
) -> None:
    root = etree.fromstring(to_scxml(g, datamodel))
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
    transitions = first.iterfind("s:transition", ns)
    for t, el in zip(g.states["suspected"].transitions, transitions, strict=False):
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
        "iec-hs.ecmascript.scxml",
        "iec-hs.json",
        "iec-hs.scxml",
        "iec-hs.yaml",
    ]
    g = load_guideline()
    assert (tmp_path / "iec-hs.scxml").read_bytes() == to_scxml(g)
    assert (tmp_path / "iec-hs.ecmascript.scxml").read_bytes() == to_scxml(g, "ecmascript")


def test_cli_export_writes_the_formats_asked_for(tmp_path: Path) -> None:
    assert CLI_FORMATS == EXPORT_FORMATS  # --help lists them without importing the exporters
    args = ["export", "--out", str(tmp_path), "--schema", str(SCHEMA_DIR)]
    assert main([*args, "--format", "scxml-ecmascript", "--format", "yaml"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iec-hs.ecmascript.scxml", "iec-hs.yaml"]
    with pytest.raises(SystemExit) as exc:
        main([*args, "--format", "xml"])
    assert exc.value.code == 2


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
    only = ["--format", "scxml-ecmascript"]
    assert main(["export", "--out", str(out), "--schema", str(schema), *only]) == 1
    assert "iec-hs.ecmascript.scxml does not validate" in capsys.readouterr().err
    assert not out.exists()


# --- the ECMAScript SCXML ----------------------------------------------------------------------


def _ecmascript(g: Guideline) -> _Element:
    return etree.fromstring(to_scxml(g, "ecmascript"))


def test_ecmascript_scxml_has_the_python_ones_states(g: Guideline) -> None:
    ours, python = _ecmascript(g), etree.fromstring(to_scxml(g))
    assert ours.get("datamodel") == "ecmascript"
    for key in ("name", "initial", "version"):
        assert ours.get(key) == python.get(key)
    ns = {"s": SCXML_NS}
    assert ours.find("s:datamodel", ns) is None  # guards read the event, not a data model
    states = [(el.tag, el.get("id")) for el in ours.iterfind("*[@id]", ns)]
    assert states == [(el.tag, el.get("id")) for el in python.iterfind("*[@id]", ns)]


def test_ecmascript_transitions_come_in_the_engines_order_of_choice(g: Guideline) -> None:
    """In each state: every transition, guard TRUE, in the guideline's order; then every guarded
    one, guard UNKNOWN, in the same order."""
    root, ns = _ecmascript(g), {"s": SCXML_NS}
    for sid, s in g.states.items():
        el = root.find(f"*[@id='{sid}']", ns)
        assert el is not None
        got = [
            (t.get("event"), t.get("target"), t.get(f"{{{GUIDELINE_NS}}}fires-on"))
            for t in el.iterfind("s:transition", ns)
        ]
        first = [(t.event, t.to, "TRUE" if t.when or t.unless else None) for t in s.transitions]
        then = [(t.event, t.to, "UNKNOWN") for t in s.transitions if t.when or t.unless]
        assert got == first + then, sid


_CRITERION = re.compile(r"_event\.data\.criteria\['([^']*)'\]")


def _python_of(cond: str) -> str:
    """The exported ECMAScript guards, which use only ===, !==, &&, !( ), strings and `true`,
    read as Python over `criteria` (a dict) and `follow_unknown`."""
    expr = _CRITERION.sub(r"criteria.get('\1')", cond)
    expr = expr.replace("_event.data.follow_unknown", "follow_unknown")
    expr = expr.replace("!==", "!=").replace("===", "==").replace("&&", " and ")
    expr = expr.replace("!(", " not (").replace("true", "True")
    assert "_event" not in expr, expr
    return expr


def _kleene(t: TransitionDef, values: dict[str, str]) -> str:
    """A guard's value, Kleene's AND: FALSE if any part is FALSE, else UNKNOWN if any is."""
    negate = {"TRUE": "FALSE", "FALSE": "TRUE"}
    parts = [values.get(n, "UNKNOWN") for n in t.when]
    parts += [negate.get(values.get(n, "UNKNOWN"), "UNKNOWN") for n in t.unless]
    if "FALSE" in parts:
        return "FALSE"
    return "UNKNOWN" if "UNKNOWN" in parts else "TRUE"


def crowded(g: Guideline) -> Guideline:
    """`g` with more transitions on one event: in `suspected`, `reassess` has four, guarded
    with `when` and `unless`, so that their order and the passes' order matter."""
    s = g.states["suspected"]
    (ruled_out,) = (t for t in s.transitions if t.event == "reassess")
    extra = (
        attrs.evolve(ruled_out, to="first_line_steroids", when=("iec_hs_identified",)),
        attrs.evolve(ruled_out, when=(), unless=("screening_trigger", "infection_gate_open")),
        attrs.evolve(ruled_out, to="closed", when=("recurrence",), unless=("response_achieved",)),
    )
    states = {**g.states, "suspected": attrs.evolve(s, transitions=(*extra, *s.transitions))}
    return attrs.evolve(g, states=states)


@pytest.mark.parametrize("variant", ["as written", "crowded"])
def test_ecmascript_guards_choose_as_the_engine_does(g: Guideline, variant: str) -> None:
    """For every state, event and valuation of the criteria its guards read (TRUE, FALSE,
    UNKNOWN or absent), with and without `follow_unknown`, the first enabled transition in
    document order (the W3C rule) is the engine's choice: the first whose guard is TRUE, else,
    when following UNKNOWN, the first whose guard is UNKNOWN."""
    g = crowded(g) if variant == "crowded" else g
    root, ns = _ecmascript(g), {"s": SCXML_NS}
    checked = 0
    for sid, s in g.states.items():
        el = root.find(f"*[@id='{sid}']", ns)
        assert el is not None
        exported = [
            (
                t.get("event"),
                t.get("target"),
                compile(_python_of(t.get("cond") or "True"), sid, "eval"),
            )
            for t in el.iterfind("s:transition", ns)
        ]
        for event in sorted({t.event for t in s.transitions}):
            candidates = [t for t in s.transitions if t.event == event]
            names = sorted({n for t in candidates for n in (*t.when, *t.unless)})
            for combo in itertools.product(["TRUE", "FALSE", "UNKNOWN", None], repeat=len(names)):
                values = {n: v for n, v in zip(names, combo, strict=True) if v is not None}
                for follow in (False, True):
                    scope = {"criteria": values, "follow_unknown": follow}
                    fired = next(
                        (
                            target
                            for e, target, code in exported
                            if e == event and eval(code, {}, scope)
                        ),
                        None,
                    )
                    verdicts = [(_kleene(t, values), t.to) for t in candidates]
                    expected = next((to for v, to in verdicts if v == "TRUE"), None)
                    if expected is None and follow:
                        expected = next((to for v, to in verdicts if v == "UNKNOWN"), None)
                    assert fired == expected, (sid, event, values, follow)
                    checked += 1
    assert checked > 100
