"""The review page for guideline authors: one self-contained HTML file.

It holds the diagram (inline SVG: clicking a state shows its recommendations, doses, actions,
cautions and citations), the actions per state, the rules (alerts and deviations), the
indication rules in order, the order-set sequence, the order of treatment lines, the
transitions with their guards in words, the criteria, institutional parameters and how long
findings stay valid, the safety contract the guideline names, every statement still
`verified: false` (and, for verified ones, the quote that supports them), the sources, the
guideline's version and hash, and, given an older version, what changed. No external
resources: no fonts, scripts or styles from elsewhere; the page works from a file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from html import escape

import attrs

from ..checks import citables
from ..errors import IechsError
from ..model import (
    ActionDef,
    Citable,
    Guideline,
    Recommendation,
    Rule,
    StateDef,
    Statement,
    TransitionDef,
)
from .describe import (
    action_due,
    citable_text,
    concurrency,
    criterion_rule,
    finding_validity,
    indication_match,
    message_text,
    number,
    rule_trigger,
    words_list,
)
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
code.name { overflow-wrap: normal; }
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
.quote { display: block; font-size: 12px; font-style: italic; margin: 2px 0 0;
  padding-left: 6px; border-left: 3px solid #9cc79a; color: #333; }
.quote.proposed { border-left-color: #e0a0a0; }
.quote b { font-style: normal; font-weight: normal; color: var(--muted); }
.sev { font-size: 11px; border-radius: 8px; padding: 0 6px; white-space: nowrap;
  font-weight: bold; }
.sev.critical { background: #fde2e2; color: var(--warn); }
.sev.warning { background: #fff0d0; color: #7a4b00; }
.sev.info { background: var(--shade); color: var(--muted); }
p.per-state { margin: 4px 0; font-size: 14px; }
ol.sequence { font-size: 14px; }
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
  document.querySelectorAll("a[data-show]").forEach(function (a) {
    a.addEventListener("click", function (e) {
      e.preventDefault();
      show(a.getAttribute("data-show"));
      document.getElementById("diagram-section").scrollIntoView();
    });
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


def _name(code: str) -> str:
    """A code in a table's narrow column: it breaks after an underscore, not within a word."""
    return f'<code class="name">{_e(code).replace("_", "_<wbr>")}</code>'


def _anchor(key: str) -> str:
    return "source-" + re.sub(r"[^0-9A-Za-z_-]", "-", key)


def _flag(item: Citable) -> str:
    if item.verified:
        return '<span class="flag verified">verified</span>'
    return '<span class="flag unverified">not yet verified</span>'


def _quote(item: Citable, proposed: bool) -> str:
    """The source's words that support a statement: the quote of a verified one and, with
    `proposed`, the quote proposed for an unverified one, marked as such."""
    if item.quote is None or not (item.verified or proposed):
        return ""
    words = _e(" ".join(item.quote.split()))
    if item.verified:
        return f'<span class="quote"><b>Source:</b> “{words}”</span>'
    return f'<span class="quote proposed"><b>Proposed quote, not yet verified:</b> “{words}”</span>'


def _cites(g: Guideline, item: Citable, *, proposed: bool = False) -> str:
    """The citations of a statement, its verified flag and (verified) the quote."""
    links = ", ".join(
        f'<a href="#{_anchor(k)}" title="{_e(g.sources[k].citation) if k in g.sources else ""}">'
        f"{_e(k)}</a>"
        for k in item.cite
    )
    flag = _flag(item)
    return f'<span class="cites">Cites: {links or "none"} {flag}</span>{_quote(item, proposed)}'


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


def _guard_html(g: Guideline, t: TransitionDef | Rule | ActionDef) -> str:
    """The criteria of a transition, rule or action, each with its meaning."""
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


def _severity(r: Rule) -> str:
    return f'<span class="sev {_e(r.severity)}">{_e(r.severity)}</span>'


def _action_drug(g: Guideline, a: ActionDef) -> str:
    """The drug and dose an action carries, from the recommendation it names."""
    if a.recommendation is None:
        return ""
    r = g.recommendation(a.recommendation)
    if r is None:
        return f"unknown recommendation <code>{_e(a.recommendation)}</code>"
    drug = g.drugs[r.drug].name if r.drug in g.drugs else (r.drug or "")
    what = dose_text(g, r) or drug or r.text
    return f'{_e(what)} <span class="muted">(recommendation <code>{_e(r.id)}</code>)</span>'


def _line_after(g: Guideline, sid: str) -> str:
    before = g.line_after(sid)
    if not before:
        return "a first line: no line before it"
    return "after " + _e(words_list([g.states[b].name if b in g.states else b for b in before]))


def _state_actions(g: Guideline, sid: str) -> str:
    lis = []
    for a in g.actions.values():
        if sid not in a.states:
            continue
        drug = _action_drug(g, a)
        drug_html = f'<span class="dose">{drug}</span>' if drug else ""
        due = action_due(a, g)
        due_html = f"; due {_e(due)}" if due else ""
        lis.append(
            f"<li><code>{_e(a.code)}</code> {_e(a.text)}{drug_html}"
            f'<span class="cites">when: {_guard_html(g, a)}{due_html}</span>{_cites(g, a)}</li>'
        )
    if not lis:
        return ""
    return f'<h4>Actions (in this order)</h4><ul class="items">{"".join(lis)}</ul>'


def _state_alerts(g: Guideline, sid: str) -> str:
    lis = [
        f"<li><code>{_e(r.alert)}</code> {_severity(r)} {_e(message_text(r.message, g))}"
        f'<span class="cites">{_e(rule_trigger(r, g))}; when: {_guard_html(g, r)}</span>'
        f"{_cites(g, r)}</li>"
        for r in g.rules.values()
        if sid in r.states
    ]
    if not lis:
        return ""
    return f'<h4>Alerts raised here</h4><ul class="items">{"".join(lis)}</ul>'


def _state_detail(g: Guideline, sid: str, s: StateDef) -> str:
    where = f"treatment line {s.line}" if s.line is not None else s.phase
    flags = [w for w, on in (("start", s.initial), ("end of the episode", s.final)) if on]
    order = f" · {_line_after(g, sid)}" if s.line is not None or s.after is not None else ""
    head = (
        f"<h3>{_e(s.name)}</h3>"
        f'<p class="muted"><code>{_e(sid)}</code> · {_e(where)}{order}'
        f"{''.join(' · ' + _e(f) for f in flags)}</p><p>{_e(s.description)}</p>"
    )
    body = (
        _items(g, "Recommendations", s.recommendations)
        + _state_actions(g, sid)
        + _items(g, "Cautions", s.cautions, "caution")
        + _items(g, "Supportive care", s.supportive_care)
        + _items(g, "Monitoring", s.monitoring)
        + _state_alerts(g, sid)
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
    here: list[Citable] = [a for a in g.actions.values() if sid in a.states]
    here += [r for r in g.rules.values() if sid in r.states]
    for c in here:
        cited += [k for k in c.cite if k not in cited]
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


def _state_link(g: Guideline, sid: str) -> str:
    name = g.states[sid].name if sid in g.states else sid
    return f'<a href="#detail-{_e(sid)}" data-show="{_e(sid)}">{_e(name)}</a>'


def _actions_section(g: Guideline) -> str:
    per_state = []
    for sid, s in g.states.items():
        codes = [
            f'<a href="#row-action-{_e(aid)}"><code>{_e(a.code)}</code></a>'
            for aid, a in g.actions.items()
            if sid in a.states
        ]
        if codes:
            per_state.append(
                f'<p class="per-state" id="actions-in-{_e(sid)}"><b>{_e(s.name)}</b>: '
                f"{' → '.join(codes)}</p>"
            )
    rows = []
    for aid, a in g.actions.items():
        states = ", ".join(_state_link(g, sid) for sid in a.states)
        due = action_due(a, g)
        rows.append(
            f'<tr id="row-action-{_e(aid)}"><td>{_name(a.code)}'
            f'<br><span class="muted">{_e(aid)}</span></td><td>{_e(a.text)}</td>'
            f"<td>{states}</td><td>{_guard_html(g, a)}</td><td>{_action_drug(g, a)}</td>"
            f"<td>{_e(due) if due else ''}</td><td>{_cites(g, a)}</td></tr>"
        )
    table = _table(
        ("Action", "What to do", "In", "When (all must hold)", "Drug and dose", "Due", "Citations"),
        rows,
        "actions-table",
    )
    return (
        '<section id="actions"><h2>Actions: what to do next</h2>'
        "<p>In each state the engine offers these actions, in this order, while all their "
        "criteria hold (and none of their <i>unless</i> criteria). An action whose criteria are "
        "unknown becomes a <code>measure</code> action naming what to measure.</p>"
        f"{''.join(per_state)}{table}</section>"
    )


def _rules_section(g: Guideline) -> str:
    rows = []
    for rid, r in g.rules.items():
        conc = _e(concurrency(r, g) or "") or '<span class="muted">none</span>'
        dev = _e(r.deviation or "") or '<span class="muted">alert only</span>'
        when = f"<br>when: {_guard_html(g, r)}" if r.when or r.unless else ""
        named = f'<br><span class="muted">rule {_e(rid)}</span>' if rid != r.alert else ""
        rows.append(
            f'<tr id="row-rule-{_e(rid)}"><td>{_name(r.alert)} {_severity(r)}{named}</td>'
            f"<td>{_e(rule_trigger(r, g))}{when}</td>"
            f"<td>{conc}</td><td>{dev}</td>"
            f"<td>{_e(message_text(r.message, g))}</td><td>{_cites(g, r)}</td></tr>"
        )
    table = _table(
        ("Alert", "Raised", "Concurrent therapy", "Deviation recorded", "Message", "Citations"),
        rows,
        "rules-table",
    )
    return (
        '<section id="rules"><h2>Rules: alerts and deviations</h2>'
        "<p>Each rule raises its alert when its criteria are true (an unknown criterion never "
        "raises one); a rule that names a deviation also records the treatment as a deviation "
        "from the guideline. A treatment rule looks at each new therapy once (repeated doses of "
        "a drug already started are one therapy). A concurrent dose counts before the "
        "treatment, in the same order set, or (in a retrospective run) after it. In the "
        "messages, <code>{drug}</code>, <code>{state}</code> and the like are filled in for the "
        "patient; parameters are shown with their value.</p>"
        f"{table}</section>"
    )


def _indications_section(g: Guideline) -> str:
    rows = []
    for i, r in enumerate(g.indications, 1):
        other = indication_match(attrs.evolve(r, when=()), g)
        parts = [] if other == "any treatment" and r.when else [_e(other)]
        parts += [
            f"when <code>{_e(c)}</code>: {_e(g.criteria[c].description) if c in g.criteria else ''}"
            for c in r.when
        ]
        rows.append(
            f'<tr id="row-indication-{i}"><td>{i}</td><td>{_name(r.indication)}</td>'
            f"<td>{'<br>and '.join(parts)}</td><td>{_e(r.reason)}</td>"
            f"<td>{_cites(g, r)}</td></tr>"
        )
    table = _table(
        ("#", "Indication", "Applies to", "Reason given", "Citations"), rows, "indications-table"
    )
    return (
        '<section id="indications"><h2>Indications: how a treatment without one is read</h2>'
        "<p>A treatment recorded without an indication gets the indication of the first rule "
        "that matches, in this order; with none, it counts as <code>other</code>. A therapy "
        "keeps the indication it started with.</p>"
        f"{table}</section>"
    )


def _order_sets_section(g: Guideline) -> str:
    o = g.order_sets
    if o is None:
        body = "<p>None: treatments recorded at the same time are read in file order.</p>"
    else:
        items = "".join(
            f"<li>{_e(g.drug_classes[c].name) if c in g.drug_classes else ''} "
            f"<code>{_e(c)}</code></li>"
            for c in o.sequence
        )
        body = (
            f"<p>{_e(o.description)}</p>"
            "<p>Treatments recorded at the same time are one order set, decided together: the "
            "facts first, then the treatments by their drug class in this order.</p>"
            f'<ol class="sequence" id="order-set-sequence">{items}</ol>{_cites(g, o)}'
        )
    return f'<section id="order-sets"><h2>Order sets</h2>{body}</section>'


def _lines_section(g: Guideline) -> str:
    lines = [sid for sid, s in g.states.items() if s.line is not None or s.after is not None]
    lines.sort(key=lambda sid: g.states[sid].line or 0)  # stable: ties keep document order
    rows = []
    for sid in lines:
        s = g.states[sid]
        how = "declared (<code>after</code>)" if s.after is not None else "by line number"
        rows.append(
            f'<tr id="row-line-{_e(sid)}"><td>{_e(s.line if s.line is not None else "")}</td>'
            f"<td>{_state_link(g, sid)}</td><td>{_line_after(g, sid)}</td>"
            f'<td class="muted">{how}</td></tr>'
        )
    table = _table(("Line", "State", "Comes after (one of)", "Order"), rows, "lines-table")
    return (
        '<section id="lines"><h2>Order of treatment lines</h2>'
        "<p>A line is entered only after one of the lines before it has been entered since the "
        "episode last entered surveillance or diagnosis.</p>"
        f"{table}</section>"
    )


def _findings_table(g: Guideline) -> str:
    rows = [
        f'<tr id="row-finding-{_e(fid)}"><td>{_e(f.name)}<br><code>{_e(fid)}</code></td>'
        f"<td>{'graded' if f.graded else 'present or absent'}</td>"
        f"<td>{_e(f.unrecorded)}</td><td>{_e(finding_validity(f, g))}</td></tr>"
        for fid, f in g.findings.items()
    ]
    return _table(
        ("Finding", "Recorded as", "Never recorded counts as", "Stays valid for"),
        rows,
        "findings-table",
    )


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
        f'{table}<h2 id="parameters">Institutional parameters</h2>{ptable}'
        '<h2 id="findings">Findings and how long they stay valid</h2>'
        "<p>A finding older than its validity counts as never recorded, unless it is recorded "
        "again.</p>"
        f"{_findings_table(g)}</section>"
    )


def _vocabulary_section(g: Guideline) -> str:
    classes = []
    for cid, c in g.drug_classes.items():
        drugs = ", ".join(d.name for d in g.drugs.values() if d.drug_class == cid)
        event = _name(c.event) if c.event else '<span class="muted">none</span>'
        classes.append(
            f'<tr id="row-class-{_e(cid)}"><td>{_e(c.name)}<br>{_name(cid)}</td>'
            f"<td>{'yes' if c.immunosuppressive else 'no'}</td><td>{event}</td>"
            f"<td>{_e(drugs)}</td><td>{_cites(g, c)}</td></tr>"
        )
    ctable = _table(
        ("Drug class", "Immunosuppressive", "Machine event", "Drugs", "Citations"),
        classes,
        "drug-classes-table",
    )
    risks = [
        f'<tr id="row-risk-{_e(rid)}"><td>{_e(r.text)}<br>{_name(rid)}</td>'
        f"<td>{_cites(g, r)}</td></tr>"
        for rid, r in g.risk_factors.items()
    ]
    rtable = _table(("Risk factor", "Citations"), risks, "risk-factors-table")
    observations = [
        f'<tr id="row-observation-{_e(oid)}"><td>{_e(o.name)}<br>{_name(oid)}</td>'
        f"<td>{_e(o.unit)}</td><td>{o.plausible[0]:.15g}–{o.plausible[1]:.15g}</td>"
        f"<td>{_e(', '.join(o.loinc))}</td><td>{_cites(g, o)}</td></tr>"
        for oid, o in g.observations.items()
    ]
    otable = _table(
        ("Observation", "Unit", "Plausible range", "LOINC", "Citations"),
        observations,
        "observations-table",
    )
    return (
        '<section id="vocabulary"><h2>Drug classes</h2>'
        "<p>A treatment of a class with a machine event moves the statechart; rules match "
        "treatments by their class and by whether it is immunosuppressive.</p>"
        f'{ctable}<h2 id="risk-factors">Risk factors</h2>{rtable}'
        f'<h2 id="observations">Observations</h2>{otable}</section>'
    )


def _contract_html(g: Guideline) -> str:
    """The safety contract the guideline names, with its properties when it can be read."""
    from ..contract import DEFAULT_CONTRACT, contract_for  # noqa: PLC0415 (the page only)

    ref = g.guideline.contract
    named = (
        f"names the safety contract <code>{_e(ref)}</code>"
        if ref
        else f"names no contract and so has the default, <code>{_e(DEFAULT_CONTRACT)}</code>"
    )
    try:
        c = contract_for(g)
    except IechsError:
        return (
            f'<p id="contract-ref">This guideline {named}; it could not be read '
            "(<code>iechs verify</code> says why).</p>"
        )
    rows = [
        f'<tr id="row-contract-{_e(pid)}"><td><code>{_e(pid)}</code></td>'
        f"<td>{_e(p.description)}</td>"
        f'<td><span class="cites">Cites: {_e(", ".join(p.cite)) or "none"}</span></td></tr>'
        for pid, p in c.properties.items()
    ]
    table = _table(("Property", "What `iechs verify` proves", "Citations"), rows, "contract-table")
    return (
        f'<p id="contract-ref">This guideline {named}: {_e(c.contract.title)}, version '
        f"{_e(c.contract.version)}. A profile inherits it and cannot change it; "
        "<code>iechs verify</code> proves each of its properties over every path of the "
        f"statechart.</p>{table}"
    )


def _properties_section(g: Guideline) -> str:
    own = ""
    if g.properties:
        rows = [
            f"<tr><td><code>{_e(pid)}</code></td><td>{_e(p.description)}</td>"
            f"<td>{_cites(g, p)}</td></tr>"
            for pid, p in g.properties.items()
        ]
        table = _table(
            ("Property", "What `iechs verify` proves", "Citations"), rows, "properties-table"
        )
        own = f"<h3>Properties of this guideline, beside the contract's</h3>{table}"
    return f'<section id="properties"><h2>Safety contract</h2>{_contract_html(g)}{own}</section>'


def _unverified_section(g: Guideline) -> str:
    items = [(path, item) for path, item in citables(g) if not item.verified]
    rows = [
        f"<tr><td><code>{_e(path)}</code></td><td>{_e(citable_text(item))}</td>"
        f"<td>{_cites(g, item, proposed=True)}</td></tr>"
        for path, item in items
    ]
    table = _table(("Where", "Statement", "Citations"), rows, "unverified-table")
    return (
        f'<section id="unverified"><h2>Not yet verified ({len(items)})</h2>'
        "<p>Statements not yet checked word for word against their primary source "
        "(<code>verified: false</code>), with the quote proposed for them, if any.</p>"
        f"{table}</section>"
    )


def _sources_section(g: Guideline) -> str:
    items = []
    for key, src in g.sources.items():
        pmid = f", PMID {_e(src.pmid)}" if src.pmid else ""
        kept = (
            f' <span class="muted">(text kept in <code>{_e(src.text)}</code>)</span>'
            if src.text
            else ""
        )
        items.append(
            f'<li id="{_anchor(key)}"><b>{_e(key)}</b> ({_e(src.kind)}{pmid}): '
            f"{_e(src.citation)}{kept}</li>"
        )
    return f'<section id="sources"><h2>Sources</h2><ul>{"".join(items)}</ul></section>'


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
        return ", ".join(str(v) for v in value) or "none"
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
        ("Contract", f'<code id="guideline-contract">{_e(m.contract or "(default)")}</code>'),
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
        ("actions", "Actions"),
        ("rules", "Rules"),
        ("indications", "Indications"),
        ("order-sets", "Order sets"),
        ("lines", "Line order"),
        ("transitions", "Transitions"),
        ("criteria", "Criteria"),
        ("findings", "Findings"),
        ("vocabulary", "Drug classes"),
        ("risk-factors", "Risk factors"),
        ("properties", "Safety contract"),
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
        f"<p>{len(g.states)} states · {n_transitions} transitions · {len(g.actions)} actions · "
        f"{len(g.rules)} rules · {len(g.indications)} indication rules · "
        f'<a href="#unverified">{unverified} statements not yet verified</a></p>'
        f"<nav>{nav_html}</nav></header>\n"
        "<main>\n"
        '<section id="diagram-section"><h2 id="diagram-heading">The algorithm</h2>'
        '<p class="hint">Click a state in the diagram (or its name below) to see its '
        "recommendations, doses, actions, cautions and citations.</p>"
        f'<div class="state-buttons">{buttons}</div>'
        f'<div class="layout"><div class="diagram" id="diagram">{svg_for_html(svg, names)}</div>'
        '<aside id="details" aria-live="polite"><p id="details-empty" class="muted">'
        f"No state selected.</p>{details}</aside></div></section>\n"
        f"{changes}\n{_actions_section(g)}\n{_rules_section(g)}\n{_indications_section(g)}\n"
        f"{_order_sets_section(g)}\n{_lines_section(g)}\n"
        f"{_transitions_section(g)}\n{_criteria_section(g)}\n"
        f"{_vocabulary_section(g)}\n{_properties_section(g)}\n{_unverified_section(g)}\n"
        f"{_sources_section(g)}\n"
        f"</main>\n<script>{_JS}</script>\n</body>\n</html>\n"
    )
