"""The review page for guideline authors: one self-contained HTML file.

It holds the diagram (inline SVG: clicking a state shows its recommendations, doses, cautions
and citations), the transitions with their guards in words, the criteria and institutional
parameters, every statement still `verified: false`, the sources, the guideline's version and
hash, and, given an older version, what changed. No external resources: no fonts, scripts or
styles from elsewhere; the page works from a file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from html import escape

from ..checks import citables
from ..model import Citable, Guideline, Recommendation, StateDef, Statement, TransitionDef
from .describe import citable_text, criterion_rule, number
from .diff import Change, diff_guidelines
from .extract import dose_text

__all__ = ["review_html", "svg_for_html"]

_CSS = """
:root { --ink: #1a1a1a; --muted: #5a5a5a; --line: #d0d0d0; --accent: #6a1b9a;
  --warn: #9b1c1c; --ok: #2f6f2d; --paper: #ffffff; --shade: #f5f5f5; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 "DejaVu Sans", "Liberation Sans", Arial, sans-serif;
  color: var(--ink); background: var(--paper); }
header { padding: 16px 24px 8px; border-bottom: 1px solid var(--line); }
h1 { font-size: 22px; margin: 0 0 6px; }
h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid var(--line);
  padding-bottom: 4px; }
h3 { font-size: 17px; margin: 0 0 4px; }
h4 { font-size: 14px; margin: 14px 0 4px; text-transform: uppercase; letter-spacing: .03em;
  color: var(--muted); }
main { padding: 0 24px 40px; }
dl.identity { display: flex; flex-wrap: wrap; gap: 2px 22px; margin: 6px 0; font-size: 14px; }
dl.identity div { display: flex; gap: 6px; }
dl.identity dt { color: var(--muted); }
dl.identity dd { margin: 0; }
nav a { margin-right: 14px; }
code { font: 13px "DejaVu Sans Mono", monospace; background: var(--shade); padding: 0 3px;
  border-radius: 3px; overflow-wrap: anywhere; }
.layout { display: grid; grid-template-columns: minmax(0, 1fr) 380px; gap: 20px;
  align-items: start; }
.diagram svg { width: 100%; height: auto; display: block; }
.diagram g.node { cursor: pointer; }
.diagram g.node:focus { outline: none; }
.diagram g.node:focus-visible, .diagram g.node.selected {
  filter: drop-shadow(0 0 5px var(--accent)); }
aside#details { position: sticky; top: 8px; max-height: calc(100vh - 16px); overflow: auto;
  border: 1px solid var(--line); border-radius: 8px; padding: 14px; background: #fcfcfc; }
.hint { color: var(--muted); }
.state-buttons { margin: 10px 0; display: flex; flex-wrap: wrap; gap: 6px; }
.state-buttons button { font: inherit; font-size: 13px; padding: 3px 8px; cursor: pointer;
  border: 1px solid var(--line); border-radius: 12px; background: var(--paper); }
ul.items { padding-left: 18px; margin: 4px 0; }
ul.items li { margin: 0 0 8px; }
.dose { font-weight: bold; display: block; }
.caution { color: var(--warn); }
.cites { font-size: 12px; color: var(--muted); display: block; }
.cites a { color: var(--muted); }
.flag { font-size: 11px; border-radius: 8px; padding: 0 6px; margin-left: 4px;
  white-space: nowrap; }
.flag.verified { background: #e2f2e0; color: var(--ok); }
.flag.unverified { background: #fde2e2; color: var(--warn); }
ol.sources-cited { padding-left: 18px; font-size: 13px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { border-bottom: 1px solid var(--line); padding: 5px 6px; text-align: left;
  vertical-align: top; }
th { background: var(--shade); position: sticky; top: 0; }
td.sign { font-weight: bold; text-align: center; }
tr.added td.sign { color: var(--ok); }
tr.removed td.sign { color: var(--warn); }
.muted { color: var(--muted); }
@media print { aside#details { position: static; max-height: none; }
  .layout { grid-template-columns: 1fr; } }
"""

_JS = """
(function () {
  "use strict";
  var details = document.querySelectorAll(".state-detail");
  var empty = document.getElementById("details-empty");
  var nodes = document.querySelectorAll("#diagram g.node");
  function show(state) {
    var found = false;
    details.forEach(function (el) {
      var on = el.id === "detail-" + state;
      el.hidden = !on;
      found = found || on;
    });
    empty.hidden = found;
    nodes.forEach(function (n) { n.classList.toggle("selected", n.id === "state-" + state); });
  }
  nodes.forEach(function (n) {
    var state = n.id.replace(/^state-/, "");
    n.addEventListener("click", function () { show(state); });
    n.addEventListener("keydown", function (e) {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); show(state); }
    });
  });
  document.querySelectorAll("button[data-state]").forEach(function (b) {
    b.addEventListener("click", function () { show(b.getAttribute("data-state")); });
  });
  if (location.hash.indexOf("#detail-") === 0) { show(location.hash.slice(8)); }
})();
"""


def svg_for_html(svg: bytes, names: dict[str, str]) -> str:
    """The SVG made fit to sit inside HTML: no XML declaration, doctype or comments; its states
    focusable and named for assistive technology (`names`: state id -> name)."""
    from lxml import etree  # noqa: PLC0415 (lazy: only the review page needs it)

    parser = etree.XMLParser(remove_comments=True, resolve_entities=False, no_network=True)
    root = etree.fromstring(svg, parser)
    for attr in ("width", "height"):  # the page sizes it; the viewBox keeps the proportions
        if attr in root.attrib:
            del root.attrib[attr]
    ns = {"svg": "http://www.w3.org/2000/svg"}
    for g in root.iterfind(".//svg:g", ns):
        if "node" in (g.get("class") or "").split():
            state = (g.get("id") or "").removeprefix("state-")
            g.set("tabindex", "0")
            g.set("role", "button")
            g.set("aria-label", f"{names.get(state, state)}: show details")
    text: str = etree.tostring(root, encoding="unicode")
    return text


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def _anchor(key: str) -> str:
    return "source-" + re.sub(r"[^0-9A-Za-z_-]", "-", key)


def _flag(item: Citable) -> str:
    if item.verified:
        return '<span class="flag verified">verified</span>'
    return '<span class="flag unverified">not yet verified</span>'


def _cites(g: Guideline, item: Citable) -> str:
    links = ", ".join(
        f'<a href="#{_anchor(k)}" title="{_e(g.sources[k].citation) if k in g.sources else ""}">'
        f"{_e(k)}</a>"
        for k in item.cite
    )
    return f'<span class="cites">Cites: {links or "none"} {_flag(item)}</span>'


def _items(
    g: Guideline, title: str, items: Iterable[Statement | Recommendation], css: str = ""
) -> str:
    lis = []
    for item in items:
        dose = dose_text(g, item) if isinstance(item, Recommendation) else None
        dose_html = f'<span class="dose">{_e(dose)}</span>' if dose else ""
        lis.append(
            f'<li class="{css}">{_e(item.text)}{dose_html}{_cites(g, item)}</li>'
            if css
            else f"<li>{_e(item.text)}{dose_html}{_cites(g, item)}</li>"
        )
    if not lis:
        return ""
    return f'<h4>{_e(title)}</h4><ul class="items">{"".join(lis)}</ul>'


def _guard_html(g: Guideline, t: TransitionDef) -> str:
    if not t.when and not t.unless:
        return '<span class="muted">always</span>'
    parts = []
    for name in t.when:
        c = g.criteria.get(name)
        parts.append(f"<code>{_e(name)}</code>: {_e(c.description) if c else ''}")
    for name in t.unless:
        c = g.criteria.get(name)
        parts.append(f"unless <code>{_e(name)}</code>: {_e(c.description) if c else ''}")
    return "<br>and ".join(parts)


def _state_detail(g: Guideline, sid: str, s: StateDef) -> str:
    where = f"treatment line {s.line}" if s.line is not None else s.phase
    flags = [w for w, on in (("start", s.initial), ("end of the episode", s.final)) if on]
    head = (
        f"<h3>{_e(s.name)}</h3>"
        f'<p class="muted"><code>{_e(sid)}</code> · {_e(where)}'
        f"{''.join(' · ' + _e(f) for f in flags)}</p><p>{_e(s.description)}</p>"
    )
    body = (
        _items(g, "Recommendations", s.recommendations)
        + _items(g, "Cautions", s.cautions, "caution")
        + _items(g, "Supportive care", s.supportive_care)
        + _items(g, "Monitoring", s.monitoring)
    )
    moves = "".join(
        f"<li>{_e(t.label)} → <b>{_e(g.states[t.to].name)}</b>"
        f'<span class="cites">on {_e(g.events[t.event].name if t.event in g.events else t.event)}'
        f"; when: {_guard_html(g, t)}</span>{_cites(g, t)}</li>"
        for t in s.transitions
    )
    if moves:
        body += f'<h4>Moves from here</h4><ul class="items">{moves}</ul>'
    cited: list[str] = []
    for item in (*s.recommendations, *s.cautions, *s.supportive_care, *s.monitoring):
        cited += [k for k in item.cite if k not in cited]
    for t in s.transitions:
        cited += [k for k in t.cite if k not in cited]
    sources = "".join(
        f'<li id="{_e("cited-" + sid + "-" + k)}"><b>{_e(k)}</b>: '
        f"{_e(g.sources[k].citation) if k in g.sources else 'unknown source'}</li>"
        for k in cited
    )
    if sources:
        body += f'<h4>Sources cited here</h4><ol class="sources-cited">{sources}</ol>'
    return (
        f'<section class="state-detail" id="detail-{_e(sid)}" data-state="{_e(sid)}" hidden>'
        f"{head}{body}</section>"
    )


def _table(headers: Iterable[str], rows: Iterable[str], table_id: str) -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in headers)
    return (
        f'<table id="{table_id}"><thead><tr>{th}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


def _transitions_section(g: Guideline) -> str:
    rows = []
    for sid, s in g.states.items():
        for i, t in enumerate(s.transitions):
            ev = g.events.get(t.event)
            note = f'<br><span class="muted">Note: {_e(t.note)}</span>' if t.note else ""
            rows.append(
                f'<tr id="row-transition-{_e(sid)}-{i}"><td>{_e(s.name)}</td>'
                f"<td>{_e(ev.name if ev else t.event)}<br><code>{_e(t.event)}</code></td>"
                f"<td>{_e(g.states[t.to].name)}</td><td>{_e(t.label)}{note}</td>"
                f"<td>{_guard_html(g, t)}</td><td>{_cites(g, t)}</td></tr>"
            )
    table = _table(
        ("From", "Event", "To", "Label", "Guard (all must hold)", "Citations"),
        rows,
        "transitions-table",
    )
    return f'<section id="transitions"><h2>Transitions and guards</h2>{table}</section>'


def _criteria_section(g: Guideline) -> str:
    rows = [
        f"<tr><td><code>{_e(name)}</code>{' <b>(local)</b>' if c.local else ''}</td>"
        f"<td>{_e(c.description)}</td><td><code>{_e(criterion_rule(c))}</code></td>"
        f"<td>{_cites(g, c)}</td></tr>"
        for name, c in g.criteria.items()
    ]
    table = _table(("Criterion", "Meaning", "Rule", "Citations"), rows, "criteria-table")
    params = [
        f"<tr><td><code>{_e(name)}</code>{' <b>(local)</b>' if p.local else ''}</td>"
        f"<td>{_e(number(p.value))} {_e(p.unit or '')}</td><td>{_e(p.description)}</td>"
        f"<td>{_cites(g, p)}</td></tr>"
        for name, p in g.parameters.items()
    ]
    ptable = _table(("Parameter", "Value", "Meaning", "Citations"), params, "parameters-table")
    return (
        '<section id="criteria"><h2>Criteria and thresholds</h2>'
        "<p>Each guard names criteria; each criterion is built from these rules. Values marked "
        "local are institutional parameters a profile may override.</p>"
        f'{table}<h2 id="parameters">Institutional parameters</h2>{ptable}</section>'
    )


def _properties_section(g: Guideline) -> str:
    rows = [
        f"<tr><td><code>{_e(pid)}</code></td><td>{_e(p.description)}</td>"
        f"<td>{_cites(g, p)}</td></tr>"
        for pid, p in g.properties.items()
    ]
    table = _table(
        ("Property", "What `iechs verify` proves", "Citations"), rows, "properties-table"
    )
    return f'<section id="properties"><h2>Safety properties</h2>{table}</section>'


def _unverified_section(g: Guideline) -> str:
    items = [(path, item) for path, item in citables(g) if not item.verified]
    rows = [
        f"<tr><td><code>{_e(path)}</code></td><td>{_e(citable_text(item))}</td>"
        f"<td>{_cites(g, item)}</td></tr>"
        for path, item in items
    ]
    table = _table(("Where", "Statement", "Citations"), rows, "unverified-table")
    return (
        f'<section id="unverified"><h2>Not yet verified ({len(items)})</h2>'
        "<p>Statements not yet checked word for word against their primary source "
        "(<code>verified: false</code>).</p>"
        f"{table}</section>"
    )


def _sources_section(g: Guideline) -> str:
    items = "".join(
        f'<li id="{_anchor(key)}"><b>{_e(key)}</b> ({_e(src.kind)}'
        f"{', PMID ' + _e(src.pmid) if src.pmid else ''}): {_e(src.citation)}</li>"
        for key, src in g.sources.items()
    )
    return f'<section id="sources"><h2>Sources</h2><ul>{items}</ul></section>'


def _changes_section(old: Guideline, changes: list[Change]) -> str:
    m = old.guideline
    since = f"{m.id} {m.version} (sha256 {old.sha256[:12]})"
    if not changes:
        return (
            f'<section id="changes"><h2>What changed since {_e(since)}</h2>'
            "<p>Nothing.</p></section>"
        )
    sign = {"added": "+", "removed": "−", "changed": "~"}
    rows = []
    for c in changes:
        rows.append(
            f'<tr class="{c.change}"><td class="sign">{sign[c.change]}</td>'
            f"<td>{_e(c.category)}</td><td>{_e(c.where)}</td>"
            f"<td>{_e(_value(c.before))}</td><td>{_e(_value(c.after))}</td></tr>"
        )
    table = _table(("", "What", "Where", "Before", "After"), rows, "changes-table")
    return (
        f'<section id="changes"><h2>What changed since {_e(since)} ({len(changes)})</h2>'
        f"{table}</section>"
    )


def _value(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict) and set(value) <= {"when", "unless"}:
        words = " and ".join(value.get("when", ())) or "always"
        return f"{words} unless {' or '.join(value['unless'])}" if value.get("unless") else words
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def review_html(g: Guideline, svg: bytes, since: Guideline | None = None) -> str:
    """The review page of `g`, with its diagram `svg` (rendered from the same guideline) and,
    given `since`, what changed from that version."""
    m = g.guideline
    names = {sid: s.name for sid, s in g.states.items()}
    unverified = sum(1 for _, item in citables(g) if not item.verified)
    n_transitions = sum(len(s.transitions) for s in g.states.values())
    pairs = [
        ("Guideline", f'<code id="guideline-id">{_e(m.id)}</code>'),
        ("Version", f'<span id="guideline-version">{_e(m.version)}</span>'),
        ("Status", _e(m.status)),
        ("Effective", _e(m.effective)),
        ("SHA-256", f'<code id="guideline-sha256">{_e(g.sha256)}</code>'),
        ("Authors", _e(", ".join(m.authors))),
    ]
    identity = (
        '<dl class="identity">'
        + "".join(f"<div><dt>{k}</dt><dd>{v}</dd></div>" for k, v in pairs)
        + "</dl>"
    )
    if g.profile is not None:
        identity += (
            f"<p>Profile of <code>{_e(g.profile.extends)}</code>: {_e(g.profile.rationale)}</p>"
        )
    nav = [("diagram", "Diagram")]
    if since is not None:
        nav.append(("changes", "What changed"))
    nav += [
        ("transitions", "Transitions"),
        ("criteria", "Criteria"),
        ("properties", "Safety properties"),
        ("unverified", f"Not yet verified ({unverified})"),
        ("sources", "Sources"),
    ]
    nav_html = "".join(f'<a href="#{a}">{_e(label)}</a>' for a, label in nav)
    buttons = "".join(
        f'<button type="button" data-state="{_e(sid)}" aria-controls="detail-{_e(sid)}">'
        f"{_e(s.name)}</button>"
        for sid, s in g.states.items()
    )
    details = "".join(_state_detail(g, sid, s) for sid, s in g.states.items())
    changes = _changes_section(since, diff_guidelines(since, g)) if since is not None else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="generator" content="iechs review">\n'
        f"<title>Review: {_e(m.title)} {_e(m.version)}</title>\n"
        f"<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<header><h1>{_e(m.title)}</h1>{identity}"
        f"<p>{len(g.states)} states · {n_transitions} transitions · "
        f'<a href="#unverified">{unverified} statements not yet verified</a></p>'
        f"<nav>{nav_html}</nav></header>\n"
        "<main>\n"
        '<section id="diagram-section"><h2 id="diagram-heading">The algorithm</h2>'
        '<p class="hint">Click a state in the diagram (or its name below) to see its '
        "recommendations, doses, cautions and citations.</p>"
        f'<div class="state-buttons">{buttons}</div>'
        f'<div class="layout"><div class="diagram" id="diagram">{svg_for_html(svg, names)}</div>'
        '<aside id="details" aria-live="polite"><p id="details-empty" class="muted">'
        f"No state selected.</p>{details}</aside></div></section>\n"
        f"{changes}\n{_transitions_section(g)}\n{_criteria_section(g)}\n"
        f"{_properties_section(g)}\n{_unverified_section(g)}\n{_sources_section(g)}\n"
        f"</main>\n<script>{_JS}</script>\n</body>\n</html>\n"
    )
