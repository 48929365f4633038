"""The compiled machine as data: python-statemachine's native statechart (YAML and JSON) and
W3C SCXML (`datamodel="python"`), each loadable with `statemachine.io.load`; and W3C SCXML for
other interpreters (`datamodel="ecmascript"`, below).

python-statemachine reads these formats but does not write them, so they are written here from
the guideline (the IR), and a test loads each back and compares it with the compiled class.

Guards become expressions over the guideline's criteria (`iec_hs_identified and
infection_gate_open`), each criterion a boolean in the datamodel (False at start): set them on
the model and send an event to replay a decision. The engine itself evaluates criteria as
three-valued (UNKNOWN never fires a guard); the exports model the criteria as free booleans, as
the verifier does.

The native format has no place for clinical text, so the YAML carries it as comments; the SCXML
carries it (names, recommendations, doses, cautions, labels, guard descriptions, citations and
`verified` flags) in the project's own XML namespace, which the SCXML schema allows and
python-statemachine ignores.

`datamodel="ecmascript"` is for other SCXML interpreters (a test runs it in SCION; the
python-statemachine loader refuses it) and keeps the engine's three values. The host sends each
event with the criteria as the engine evaluated them,

    {"name": "give_corticosteroid",
     "data": {"criteria": {"iec_hs_identified": "TRUE", "infection_gate_open": "UNKNOWN"},
              "follow_unknown": true}}

and every guard reads `_event.data.criteria` (a criterion absent or neither "TRUE" nor "FALSE"
is UNKNOWN). A state's transitions come in the engine's order of choice: first all of them, in
the guideline's order, each enabled when its guard is TRUE (the W3C algorithm takes the first
enabled transition in document order); then each guarded one again, enabled when its guard is
UNKNOWN and `follow_unknown` is true. The engine follows an UNKNOWN guard for a recorded
treatment (with `treatment_unconfirmed`) and on its way through a state to one, never for
`reassess` or `close` alone: without `follow_unknown` an UNKNOWN guard never fires.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..compiler import compile_guideline
from ..model import Citable, Guideline, Recommendation, StateDef, TransitionDef

if TYPE_CHECKING:
    from lxml.etree import _Element

__all__ = [
    "DATAMODELS",
    "GUIDELINE_NS",
    "SCXML_NS",
    "Datamodel",
    "criteria_in_guards",
    "native_document",
    "native_json",
    "native_yaml",
    "scxml_problems",
    "to_scxml",
]

SCXML_NS = "http://www.w3.org/2005/07/scxml"
#: The project's XML namespace for clinical metadata in the SCXML export.
GUIDELINE_NS = "https://iechs.dev/ns/guideline"
#: The SCXML data models of the export: guards in Python (python-statemachine) or ECMAScript.
Datamodel = Literal["python", "ecmascript"]
DATAMODELS: tuple[Datamodel, ...] = ("python", "ecmascript")


def criteria_in_guards(g: Guideline) -> list[str]:
    """The criteria that guards read, sorted: the export's datamodel."""
    names = {n for s in g.states.values() for t in s.transitions for n in (*t.when, *t.unless)}
    return sorted(names)


def _cond(t: TransitionDef) -> str | None:
    return " and ".join(t.when) or None


def _unless(t: TransitionDef) -> str | None:
    return " or ".join(t.unless) or None


def _scxml_cond(t: TransitionDef) -> str | None:
    parts = [*t.when, *(f"not {u}" for u in t.unless)]
    return " and ".join(parts) or None


def _identity(g: Guideline) -> str:
    m = g.guideline
    return f"guideline {m.id} {m.version} ({m.status}), sha256 {g.sha256}"


def _description(g: Guideline, datamodel: Datamodel = "python") -> str:
    if datamodel == "ecmascript":
        return (
            f"{g.guideline.title}. Exported from {_identity(g)}. ECMAScript data model: each "
            "event carries the criteria as the engine evaluated them, _event.data.criteria "
            "(name: TRUE, FALSE or UNKNOWN; absent is UNKNOWN), and _event.data.follow_unknown. "
            "The first transition whose guard is TRUE fires; failing that, when follow_unknown "
            "is true (a recorded treatment), the first whose guard is UNKNOWN."
        )
    return (
        f"{g.guideline.title}. Exported from {_identity(g)}. Guards read the guideline's "
        "criteria as booleans (set them on the model); the engine evaluates them three-valued "
        "and an UNKNOWN criterion never fires a guard."
    )


def native_document(g: Guideline) -> dict[str, Any]:
    """The machine in python-statemachine's native statechart syntax (a plain dict)."""
    states: dict[str, Any] = {}
    for sid, s in g.states.items():
        state: dict[str, Any] = {}
        if s.initial:
            state["initial"] = True
        if s.final:
            state["final"] = True
        transitions = []
        for t in s.transitions:
            item: dict[str, Any] = {"event": t.event, "target": t.to}
            if (cond := _cond(t)) is not None:
                item["cond"] = cond
            if (unless := _unless(t)) is not None:
                item["unless"] = unless
            transitions.append(item)
        if transitions:
            state["transitions"] = transitions
        states[sid] = state
    return {
        "name": compile_guideline(g).chart.__name__,
        "description": _description(g),
        "datamodel": [{"id": name, "expr": "False"} for name in criteria_in_guards(g)],
        "states": states,
    }


def native_json(g: Guideline) -> str:
    return json.dumps(native_document(g), indent=2, ensure_ascii=False) + "\n"


def _scalar(value: Any) -> str:
    # JSON scalars are YAML scalars: strings double-quoted, so no YAML 1.1 surprises (on/off).
    return json.dumps(value, ensure_ascii=False)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _cited(item: Citable) -> str:
    flag = "verified" if item.verified else "NOT verified"
    return f"[{', '.join(item.cite) or 'no citation'}; {flag}]"


def _state_comment(s: StateDef) -> str:
    line = f", line {s.line}" if s.line is not None else ""
    return f"{_one_line(s.name)} ({s.phase}{line})"


def native_yaml(g: Guideline) -> str:
    """The native document as YAML, with the clinical words as comments."""
    doc = native_document(g)
    out = [
        f"# {_one_line(g.guideline.title)}",
        f"# {_identity(g)}",
        "# python-statemachine native statechart, generated by `iechs export` from the guideline:",
        "# do not edit. Load with statemachine.io.load(path).",
        f"name: {_scalar(doc['name'])}",
        f"description: {_scalar(doc['description'])}",
        "# the criteria read by guards (descriptions in the SCXML export and the review page)",
        "datamodel:",
    ]
    for item in doc["datamodel"]:
        out.append(f"  - {{id: {_scalar(item['id'])}, expr: {_scalar(item['expr'])}}}")
    out.append("states:")
    for sid, state in doc["states"].items():
        s = g.states[sid]
        out.append(f"  # {_state_comment(s)}")
        if not state:
            out.append(f"  {sid}: {{}}")
            continue
        out.append(f"  {sid}:")
        for key in ("initial", "final"):
            if key in state:
                out.append(f"    {key}: {_scalar(state[key])}")
        if "transitions" in state:
            out.append("    transitions:")
            for t, item in zip(s.transitions, state["transitions"], strict=True):
                out.append(f"      # {_one_line(t.label)} {_cited(t)}")
                first = True
                for key in ("event", "target", "cond", "unless"):
                    if key in item:
                        lead = "      - " if first else "        "
                        out.append(f"{lead}{key}: {_scalar(item[key])}")
                        first = False
    return "\n".join(out) + "\n"


# --- SCXML -------------------------------------------------------------------------------------


def _flags(item: Citable) -> dict[str, str]:
    return {"cite": " ".join(item.cite), "verified": "true" if item.verified else "false"}


def _guard_words(g: Guideline, t: TransitionDef) -> str:
    """The guard in words: the criteria's descriptions joined by AND (NOT for `unless`)."""

    def words(name: str) -> str:
        c = g.criteria.get(name)
        return _one_line(c.description).rstrip(".") if c else name

    parts = [words(n) for n in t.when] + [f"NOT ({words(n)})" for n in t.unless]
    return " AND ".join(parts) + "."


def _q(tag: str) -> str:
    return f"{{{SCXML_NS}}}{tag}"


def _m(tag: str) -> str:
    return f"{{{GUIDELINE_NS}}}{tag}"


def _scxml_head(root: _Element, g: Guideline, datamodel: Datamodel) -> None:
    """The guideline's identity, sources, events and the criteria guards read (metadata)."""
    from lxml import etree  # noqa: PLC0415 (lazy: only exports need it)

    meta = g.guideline
    root.append(
        etree.Comment(
            f" {_one_line(meta.title)}: {_identity(g)}. Generated by `iechs export` from the "
            "guideline: do not edit. "
        )
    )
    info = etree.SubElement(
        root,
        _m("guideline"),
        attrib={
            "id": meta.id,
            "version": meta.version,
            "status": meta.status,
            "effective": meta.effective,
            "sha256": g.sha256,
        },
    )
    etree.SubElement(info, _m("title")).text = meta.title
    for author in meta.authors:
        etree.SubElement(info, _m("author")).text = author
    etree.SubElement(info, _m("note")).text = _description(g, datamodel)
    sources = etree.SubElement(root, _m("sources"))
    for key, src in g.sources.items():
        attrib = {"key": key, "kind": src.kind}
        if src.pmid:
            attrib["pmid"] = src.pmid
        etree.SubElement(sources, _m("source"), attrib=attrib).text = _one_line(src.citation)
    events = etree.SubElement(root, _m("events"))
    for eid, ev in g.events.items():
        el = etree.SubElement(events, _m("event"), attrib={"id": eid, "name": ev.name})
        el.text = ev.description
    criteria = etree.SubElement(root, _m("criteria"))
    for name in criteria_in_guards(g):
        c = g.criteria[name]
        attrib = {"id": name, "local": "true" if c.local else "false", **_flags(c)}
        etree.SubElement(criteria, _m("criterion"), attrib=attrib).text = _one_line(c.description)
    if datamodel == "python":
        data = etree.SubElement(root, _q("datamodel"))
        for name in criteria_in_guards(g):
            etree.SubElement(data, _q("data"), attrib={"id": name, "expr": "False"})


def _recommendation_attrs(r: Recommendation) -> dict[str, str]:
    attrib = {"id": r.id, "population": r.population}
    if r.drug:
        attrib["drug"] = r.drug
    if r.dose:
        attrib["dose-min"] = f"{r.dose.min:g}"
        attrib["dose-max"] = f"{r.dose.max:g}"
        attrib["dose-unit"] = r.dose.unit
    if r.route:
        attrib["route"] = " ".join(r.route)
    if r.frequency:
        attrib["frequency"] = r.frequency
    return {**attrib, **_flags(r)}


def _criterion_js(name: str) -> str:
    quoted = name.replace("\\", "\\\\").replace("'", "\\'")
    return f"_event.data.criteria['{quoted}']"


def _true_js(t: TransitionDef) -> str | None:
    """ECMAScript: the guard is TRUE (every `when` criterion TRUE, every `unless` one FALSE)."""
    parts = [f"{_criterion_js(n)} === 'TRUE'" for n in t.when]
    parts += [f"{_criterion_js(n)} === 'FALSE'" for n in t.unless]
    return " && ".join(parts) or None


def _unknown_js(t: TransitionDef) -> str:
    """ECMAScript: the host follows UNKNOWN guards and this one is UNKNOWN (Kleene: no part
    FALSE, not all TRUE)."""
    parts = [f"{_criterion_js(n)} !== 'FALSE'" for n in t.when]
    parts += [f"{_criterion_js(n)} !== 'TRUE'" for n in t.unless]
    return " && ".join(["_event.data.follow_unknown === true", *parts, f"!({_true_js(t)})"])


def _transition_attrs(
    g: Guideline, t: TransitionDef, cond: str | None, fires_on: str | None = None
) -> dict[str, str]:
    attrib = {"event": t.event, "target": t.to}
    if cond is not None:
        attrib["cond"] = cond
    if fires_on is not None:
        attrib[_m("fires-on")] = fires_on
    attrib[_m("label")] = _one_line(t.label)
    if t.when:
        attrib[_m("when")] = " ".join(t.when)
    if t.unless:
        attrib[_m("unless")] = " ".join(t.unless)
    if t.when or t.unless:
        attrib[_m("guard")] = _guard_words(g, t)
    if t.note:
        attrib[_m("note")] = _one_line(t.note)
    attrib[_m("cite")] = " ".join(t.cite)
    attrib[_m("verified")] = "true" if t.verified else "false"
    return attrib


def _scxml_state(root: _Element, g: Guideline, sid: str, s: StateDef, datamodel: Datamodel) -> None:
    from lxml import etree  # noqa: PLC0415 (lazy: only exports need it)

    attrib = {"id": sid, _m("name"): s.name, _m("phase"): s.phase}
    if s.line is not None:
        attrib[_m("line")] = str(s.line)
    el = etree.SubElement(root, _q("final" if s.final else "state"), attrib=attrib)
    etree.SubElement(el, _m("description")).text = _one_line(s.description)
    for r in s.recommendations:
        etree.SubElement(el, _m("recommendation"), _recommendation_attrs(r)).text = _one_line(
            r.text
        )
    for tag, items in (
        ("supportive-care", s.supportive_care),
        ("monitoring", s.monitoring),
        ("caution", s.cautions),
    ):
        for st in items:
            etree.SubElement(el, _m(tag), attrib=_flags(st)).text = _one_line(st.text)
    if datamodel == "python":
        for t in s.transitions:
            etree.SubElement(el, _q("transition"), attrib=_transition_attrs(g, t, _scxml_cond(t)))
        return
    # ECMAScript: the engine's order of choice, the first TRUE guard, then the first UNKNOWN one.
    for t in s.transitions:
        fires_on = "TRUE" if t.when or t.unless else None
        attrib = _transition_attrs(g, t, _true_js(t), fires_on)
        etree.SubElement(el, _q("transition"), attrib=attrib)
    for t in s.transitions:
        if t.when or t.unless:
            attrib = _transition_attrs(g, t, _unknown_js(t), "UNKNOWN")
            etree.SubElement(el, _q("transition"), attrib=attrib)


def to_scxml(g: Guideline, datamodel: Datamodel = "python") -> bytes:
    """The machine as W3C SCXML 1.0, with clinical metadata in the `GUIDELINE_NS` namespace;
    guards in Python over boolean criteria (python-statemachine) or in ECMAScript over the
    three-valued criteria each event carries (module docstring)."""
    from lxml import etree  # noqa: PLC0415 (lazy: only exports need it)

    nsmap: Any = {None: SCXML_NS, "g": GUIDELINE_NS}  # None: the default namespace
    root = etree.Element(
        _q("scxml"),
        nsmap=nsmap,
        attrib={
            "version": "1.0",
            "name": compile_guideline(g).chart.__name__,
            "initial": g.initial_state,
            "datamodel": datamodel,
        },
    )
    _scxml_head(root, g, datamodel)
    for sid, s in g.states.items():
        _scxml_state(root, g, sid, s, datamodel)
    etree.indent(root, space="  ")
    data: bytes = etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)
    return data


def scxml_problems(document: bytes, schema_dir: Path) -> list[str]:
    """Validate SCXML against the W3C SCXML 1.0 schema (`scxml.xsd` in `schema_dir`, which
    imports `xml.xsd` beside it). Returns the problems, `line N: message`; empty if valid."""
    from lxml import etree  # noqa: PLC0415 (lazy: only exports need it)

    schema = etree.XMLSchema(etree.parse(str(schema_dir / "scxml.xsd")))
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    doc = etree.fromstring(document, parser)
    if schema.validate(doc):
        return []
    errors: Iterable[Any] = schema.error_log  # type: ignore[assignment]  # stubs: not iterable
    return [f"line {e.line}: {e.message}" for e in errors]
