"""The page of `iechs report`: one self-contained HTML file from the cohort aggregates.

Charts are plotly figures; plotly.js is inlined once (with the first figure) and every figure
has a fixed div id, so the page works offline and the same aggregates give the same bytes. Each
patient's path is a small SVG drawn here (no layout engine), anchored within the page. All text
goes through `html.escape`.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from datetime import date, timedelta
from typing import Any

import plotly.graph_objects as go  # type: ignore[import-untyped]

from .cohort_report import DEFINITIONS, StateInfo
from .cohort_summaries import Summary
from .timeline import format_time

__all__ = ["PHASE_COLOURS", "path_svg", "render_html"]

#: phase -> (fill, stroke) of a state, in the path diagrams and the Sankey.
PHASE_COLOURS: dict[str, tuple[str, str]] = {
    "surveillance": ("#dbe7f3", "#4e79a7"),
    "diagnosis": ("#fde6cc", "#e8831a"),
    "treatment": ("#f8d3d3", "#d64545"),
    "outcome": ("#d9efd5", "#4f9a45"),
}
_OTHER = ("#eeeeee", "#888888")
_CODE_COLOURS = (
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
)
_TEMPLATE = {
    "layout": {
        "font": {"family": "system-ui, -apple-system, 'Segoe UI', sans-serif", "size": 13},
        "paper_bgcolor": "white",
        "plot_bgcolor": "white",
        "colorway": list(_CODE_COLOURS),
        "xaxis": {"gridcolor": "#e5e5e5", "linecolor": "#999", "zeroline": False},
        "yaxis": {"gridcolor": "#e5e5e5", "linecolor": "#999", "zeroline": False},
        "margin": {"l": 60, "r": 20, "t": 30, "b": 50},
    }
}
_CONFIG = {"displaylogo": False, "responsive": True}


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float | None) -> str:
    """A number for people: at most two decimals, no trailing zeros; None is a dash."""
    if value is None:
        return "–"
    return f"{value:.2f}".rstrip("0").rstrip(".")


class _Figures:
    """Figures as HTML fragments: plotly.js inlined with the first one only, fixed div ids."""

    def __init__(self) -> None:
        self.count = 0

    def html(self, fig: Any, div_id: str, height: int) -> str:
        fig.update_layout(template=_TEMPLATE, height=height)
        fragment: str = fig.to_html(
            full_html=False,
            include_plotlyjs=self.count == 0,
            div_id=div_id,
            config=_CONFIG,
            default_width="100%",
            default_height=f"{height}px",
        )
        self.count += 1
        return f'<div class="chart">{fragment}</div>'


def _colour(info: StateInfo, state: str, which: int = 1) -> str:
    return PHASE_COLOURS.get(info.phase.get(state, ""), _OTHER)[which]


def _rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


# --- charts -----------------------------------------------------------------------------------


def _sankey(report: Mapping[str, Any], info: StateInfo, figures: _Figures) -> str:
    links = report["transitions"]
    if not links:
        return '<p class="empty">No transitions: every course stayed in its first state.</p>'
    states = [s["id"] for s in report["states"] if s["id"] in report["patients_entering"]]
    index = {s: i for i, s in enumerate(states)}
    entering = report["patients_entering"]
    fig = go.Figure(
        go.Sankey(
            arrangement="snap",
            valueformat="d",
            valuesuffix=" transitions",
            node={
                "label": [f"{s} ({entering[s]})" for s in states],
                "color": [_colour(info, s) for s in states],
                "pad": 22,
                "thickness": 18,
                "line": {"color": "#555", "width": 0.5},
            },
            link={
                "source": [index[t["from"]] for t in links],
                "target": [index[t["to"]] for t in links],
                "value": [t["count"] for t in links],
                "color": [_rgba(_colour(info, t["from"]), 0.35) for t in links],
            },
        )
    )
    fig.update_layout(margin={"l": 10, "r": 10, "t": 10, "b": 10})
    return figures.html(fig, "chart-flow", 460)


def _first_line_chart(report: Mapping[str, Any], figures: _Figures) -> str:
    t = report["time_to_first_line"]
    bins = t["histogram"]["bins"]
    if not bins:
        return '<p class="empty">No patient started a first line after it was indicated.</p>'
    width = t["histogram"]["bin_hours"]
    fig = go.Figure(
        go.Bar(
            x=[b["from"] + width / 2 for b in bins],
            y=[b["count"] for b in bins],
            width=[width * 0.95] * len(bins),
            hovertext=[f"{_num(b['from'])}–{_num(b['to'])} h: {b['count']}" for b in bins],
            hoverinfo="text",
            marker={"color": PHASE_COLOURS["treatment"][1]},
            name="patients",
        )
    )
    fig.add_vrect(
        x0=t["q1"], x1=t["q3"], fillcolor="#888", opacity=0.15, line_width=0, layer="below"
    )
    fig.add_vline(x=t["median"], line={"color": "#333", "dash": "dash", "width": 2})
    fig.add_annotation(
        x=t["median"],
        y=1,
        yref="paper",
        text=f"median {_num(t['median'])} h (IQR {_num(t['q1'])}–{_num(t['q3'])})",
        showarrow=False,
        xanchor="left",
        yanchor="bottom",
    )
    fig.update_layout(
        xaxis_title="hours from treatment indicated to first line started",
        yaxis_title="patients",
        bargap=0,
        showlegend=False,
        margin={"t": 40},
    )
    return figures.html(fig, "chart-first-line", 340)


def _line_chart(report: Mapping[str, Any], info: StateInfo, figures: _Figures) -> str:
    lines = {s: d for s, d in report["time_on_line"].items() if d["n"]}
    if not lines:
        return '<p class="empty">No completed time on a treatment line.</p>'
    fig = go.Figure()
    for state, d in lines.items():
        fig.add_trace(
            go.Box(
                x=[state],
                q1=[d["q1"]],
                median=[d["median"]],
                q3=[d["q3"]],
                lowerfence=[d["min"]],
                upperfence=[d["max"]],
                name=state,
                marker={"color": _colour(info, state)},
                fillcolor=_rgba(_colour(info, state), 0.3),
                hoverinfo="y+name",
            )
        )
    fig.update_layout(yaxis_title="hours on the line", showlegend=False)
    return figures.html(fig, "chart-time-on-line", 340)


def _weekly_chart(
    by_week: Mapping[str, Mapping[str, int]], div_id: str, what: str, figures: _Figures
) -> str:
    if not by_week:
        return f'<p class="empty">No {_e(what)}.</p>'
    present = sorted({w for counts in by_week.values() for w in counts})
    first, last = date.fromisoformat(present[0]), date.fromisoformat(present[-1])
    # every week between the first and the last, so that quiet weeks show as gaps
    weeks = [(first + timedelta(weeks=k)).isoformat() for k in range((last - first).days // 7 + 1)]
    fig = go.Figure()
    for i, (code, counts) in enumerate(by_week.items()):
        fig.add_trace(
            go.Bar(
                x=weeks,
                y=[counts.get(w, 0) for w in weeks],
                name=code,
                marker={"color": _CODE_COLOURS[i % len(_CODE_COLOURS)]},
            )
        )
    fig.update_layout(
        barmode="stack",
        xaxis={"title": "week (Monday, UTC)", "type": "category"},
        yaxis_title=what,
        legend={"title": {"text": "code"}},
    )
    return figures.html(fig, div_id, 380)


# --- tables -----------------------------------------------------------------------------------


def _table(table_id: str, head: Sequence[str], rows: Sequence[Sequence[str]], empty: str) -> str:
    """A table; cells are HTML already escaped by the caller, headings are escaped here."""
    if not rows:
        return f'<p class="empty" id="{_e(table_id)}">{_e(empty)}</p>'
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "\n".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    head_row = f"<thead><tr>{th}</tr></thead>"
    return f'<table id="{_e(table_id)}">{head_row}\n<tbody>\n{body}\n</tbody></table>'


def _n(value: Any) -> str:
    """A number cell's content."""
    return f'<span class="n">{_e(value)}</span>'


def _stats_row(label: str, d: Mapping[str, Any]) -> list[str]:
    return [_e(label), *(_num(d[k]) for k in ("median", "q1", "q3", "min", "max"))]


def _patients(count: int) -> str:
    return "1 patient" if count == 1 else f"{count} patients"


def _cards(report: Mapping[str, Any]) -> str:
    c = report["counts"]
    t = report["time_to_first_line"]
    cards = [
        ("patients", f"{c['patients']}", "replayed courses", ""),
        ("errors", f"{c['errors']}", "items with bad input", "bad" if c["errors"] else ""),
        (
            "il6",
            f"{c['il6_monotherapy']}",
            f"IL-6 monotherapy deviations ({_patients(c['patients_with_il6_monotherapy'])})",
            "bad" if c["il6_monotherapy"] else "",
        ),
        (
            "deviations",
            f"{c['deviations']}",
            f"deviations ({_patients(c['patients_with_deviations'])})",
            "warn" if c["deviations"] else "",
        ),
        ("alerts", f"{c['alerts']}", f"alerts ({_patients(c['patients_with_alerts'])})", ""),
        (
            "not-followed",
            f"{c['actions_not_followed']} / {c['actions_asked']}",
            f"drug actions not followed ({_patients(c['patients_with_actions_not_followed'])})",
            "warn" if c["actions_not_followed"] else "",
        ),
        ("treated", f"{c['patients_treated']}", "patients who entered a treatment line", ""),
        (
            "first-line",
            f"{_num(t['median'])} h" if t["n"] else "–",
            f"median time to first line (n = {t['n']}, IQR {_num(t['q1'])}–{_num(t['q3'])} h)"
            if t["n"]
            else "median time to first line (no patient started one)",
            "",
        ),
    ]
    return (
        '<div class="cards">'
        + "".join(
            f'<div class="card {kind}" id="count-{key}"><div class="value">{_e(value)}</div>'
            f'<div class="label">{_e(label)}</div></div>'
            for key, value, label, kind in cards
        )
        + "</div>"
    )


def _path_text(path: Sequence[str]) -> str:
    return " → ".join(path)


# --- per-patient path diagrams ------------------------------------------------------------------

_BOX_W, _BOX_H, _GAP, _ROW_GAP, _PAD, _PER_ROW = 176, 44, 30, 26, 6, 6


def path_svg(entries: Sequence[tuple[str, str]], info: StateInfo, svg_id: str) -> str:
    """A small diagram of a course's state entries `(state, time)`, left to right, wrapping
    after `_PER_ROW` states. Ids start with `svg_id`, unique in the page."""
    n = len(entries)
    if n == 0:
        return '<p class="empty">No state entered.</p>'
    rows = (n + _PER_ROW - 1) // _PER_ROW
    width = min(n, _PER_ROW) * (_BOX_W + _GAP) - _GAP + 2 * _PAD
    height = rows * (_BOX_H + _ROW_GAP) - _ROW_GAP + 2 * _PAD
    arrow = f"{svg_id}-arrow"
    connector = f'stroke="#555" stroke-width="1.5" marker-end="url(#{_e(arrow)})"'
    label = "path: " + _path_text([s for s, _ in entries])
    parts = [
        f'<svg id="{_e(svg_id)}" class="path" xmlns="http://www.w3.org/2000/svg" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{_e(label)}">',
        f'<defs><marker id="{_e(arrow)}" viewBox="0 0 10 10" refX="10" refY="5" '
        'markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
        '<path d="M 0 0 L 10 5 L 0 10 z" fill="#555"/></marker></defs>',
    ]
    for i, (state, at) in enumerate(entries):
        row, col = divmod(i, _PER_ROW)
        x = _PAD + col * (_BOX_W + _GAP)
        y = _PAD + row * (_BOX_H + _ROW_GAP)
        if i and col:  # from the box on the left
            parts.append(
                f'<line class="connector" x1="{x - _GAP}" y1="{y + _BOX_H // 2}" x2="{x - 2}" '
                f'y2="{y + _BOX_H // 2}" {connector}/>'
            )
        elif i:  # from the last box of the row above
            px = _PAD + (_PER_ROW - 1) * (_BOX_W + _GAP) + _BOX_W // 2
            py = y - _ROW_GAP
            mid = py + _ROW_GAP // 2
            parts.append(
                f'<path class="connector" d="M {px} {py} V {mid} H {x + _BOX_W // 2} V {y - 2}" '
                f'fill="none" {connector}/>'
            )
        fill, stroke = PHASE_COLOURS.get(info.phase.get(state, ""), _OTHER)
        shown = state if len(state) <= 24 else state[:23] + "…"
        parts.append(
            f'<g class="state" data-state="{_e(state)}"><title>{_e(state)} from {_e(at)}</title>'
            f'<rect x="{x}" y="{y}" width="{_BOX_W}" height="{_BOX_H}" rx="6" fill="{fill}" '
            f'stroke="{stroke}" stroke-width="1.5"/>'
            f'<text x="{x + _BOX_W // 2}" y="{y + 18}" text-anchor="middle" font-size="12" '
            f'font-weight="600" fill="#222">{_e(shown)}</text>'
            f'<text x="{x + _BOX_W // 2}" y="{y + 35}" text-anchor="middle" font-size="11" '
            f'fill="#444">{_e(at.replace("T", " ").removesuffix(":00Z"))}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _patient_section(p: Mapping[str, Any], s: Summary, info: StateInfo) -> str:
    entries = [(e.state, format_time(e.at)) for e in s.entered]
    items: list[str] = []
    for o in s.alerts:
        items.append(
            f'<li class="alert">alert <code>{_e(o.code)}</code> at {_e(format_time(o.at))}</li>'
        )
    for o in s.deviation_events:
        drug = f" ({_e(o.drug)})" if o.drug else ""
        items.append(
            f'<li class="deviation">deviation <code>{_e(o.code)}</code>{drug} at '
            f"{_e(format_time(o.at))}</li>"
        )
    for a in p["actions_not_followed"]:
        until = f" until {_e(a['until'])}" if a["until"] else " until the end of the course"
        items.append(
            f'<li class="not-followed">not followed: <code>{_e(a["code"])}</code> '
            f"({_e(a['drug'])}) asked in {_e(a['state'])} from {_e(a['from'])}{until}</li>"
        )
    details = (
        f"<ul>{''.join(items)}</ul>"
        if items
        else '<p class="quiet">No alert, deviation or missed action.</p>'
    )
    anchor = p["anchor"]
    return (
        f'<section class="patient" id="{_e(anchor)}">'
        f'<h3>{_e(p["patient"])} <span class="source">{_e(p["source"])}</span></h3>'
        f"{path_svg(entries, info, f'{anchor}-path')}{details}"
        '<p class="back"><a href="#patients">back to the patients</a></p></section>'
    )


# --- the page ---------------------------------------------------------------------------------

_SECTIONS = (
    ("summary", "Summary"),
    ("flow", "Flow"),
    ("first-line", "Time to first line"),
    ("lines", "Time on lines"),
    ("over-time", "Alerts and deviations"),
    ("not-followed", "Actions not followed"),
    ("patients", "Patients"),
    ("errors", "Errors"),
)

_CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, 'Segoe UI', sans-serif; color: #222;
  margin: 0; background: #f6f7f9; }
header { background: #1f3a5f; color: white; padding: 18px 32px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 0; opacity: .85; }
nav { padding: 8px 32px; background: #e8ecf2; position: sticky; top: 0; z-index: 10; }
nav a { margin-right: 16px; color: #1f3a5f; }
main { padding: 8px 32px 40px; max-width: 1400px; }
section.block { background: white; border: 1px solid #dde1e7; border-radius: 8px;
  padding: 12px 20px 16px; margin: 16px 0; }
h2 { font-size: 18px; margin: 4px 0 8px; }
h3 { font-size: 15px; margin: 12px 0 4px; }
.definition { background: #f3f6fa; border-left: 3px solid #4e79a7; padding: 6px 10px;
  margin: 6px 0 10px; color: #333; }
.cards { display: grid; grid-template-columns: repeat(4, 1fr); gap: 12px; margin: 16px 0; }
.card { background: white; border: 1px solid #dde1e7; border-radius: 8px; padding: 10px 14px; }
.card .value { font-size: 26px; font-weight: 650; }
.card .label { color: #555; }
.card.bad { border-color: #d64545; background: #fdf0f0; }
.card.warn { border-color: #e8a33a; background: #fff8ec; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
th, td { border-bottom: 1px solid #e3e6ea; padding: 4px 10px; text-align: left;
  vertical-align: top; }
th { background: #f0f2f5; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.empty, .quiet { color: #666; font-style: italic; }
.chart { width: 100%; }
section { scroll-margin-top: 44px; }
section.patient { border-top: 1px solid #e3e6ea; padding: 4px 0 8px; }
section.patient:target { background: #fffbe6; }
section.patient ul { margin: 4px 0; }
.source { color: #666; font-weight: normal; font-size: 13px; }
li.deviation code, li.not-followed code { color: #a02020; }
pre { white-space: pre-wrap; margin: 0; }
.side-by-side { display: flex; gap: 40px; flex-wrap: wrap; align-items: flex-start; }
svg.path { display: block; margin: 6px 0; max-width: 100%; height: auto; }
"""


def render_html(report: Mapping[str, Any], summaries: Sequence[Summary], info: StateInfo) -> bytes:
    """The report page: summary counts, patient flow, times, alerts and deviations over time,
    actions not followed, every patient with a diagram of their path, and the errors."""
    figures = _Figures()
    c = report["counts"]
    g = report["guideline"]
    t = report["time_to_first_line"]

    flow = _sankey(report, info, figures)
    transitions = _table(
        "transitions-table",
        ["from", "to", "transitions"],
        [[_e(x["from"]), _e(x["to"]), _n(x["count"])] for x in report["transitions"]],
        "No transitions.",
    )
    finals = _table(
        "final-states-table",
        ["final state", "patients"],
        [[_e(s), _n(k)] for s, k in sorted(report["final_states"].items())],
        "No patients.",
    )
    first_line = _first_line_chart(report, figures)
    first_line_table = _table(
        "first-line-table",
        ["", "median", "Q1", "Q3", "min", "max"],
        [_stats_row(f"hours (n = {t['n']})", t)],
        "",
    )
    on_line = _line_chart(report, info, figures)
    on_line_table = _table(
        "time-on-line-table",
        ["line state", "line", "entries", "ongoing", "median h", "Q1 h", "Q3 h", "min h", "max h"],
        [
            [
                _e(state),
                _n(d["line"]),
                _n(d["entries"]),
                _n(d["ongoing"]),
                *(_num(d[k]) for k in ("median", "q1", "q3", "min", "max")),
            ]
            for state, d in report["time_on_line"].items()
        ],
        "The guideline has no treatment line.",
    )
    alerts_chart = _weekly_chart(report["alerts_by_week"], "chart-alerts", "alerts", figures)
    deviations_chart = _weekly_chart(
        report["deviations_by_week"], "chart-deviations", "deviations", figures
    )

    def by_code(table_id: str, key: str, empty: str) -> str:
        return _table(
            table_id,
            ["code", "events", "patients"],
            [
                [f"<code>{_e(k)}</code>", _n(v["events"]), _n(v["patients"])]
                for k, v in report[key].items()
            ],
            empty,
        )

    not_followed = _table(
        "not-followed-table",
        ["action", "drug", "asked", "not followed", "patients"],
        [
            [
                f"<code>{_e(a['code'])}</code>",
                _e(a["drug"]),
                _n(a["asked"]),
                _n(a["not_followed"]),
                _n(a["patients_not_followed"]),
            ]
            for a in report["actions_not_followed"]
        ],
        "The guideline asked for no drug.",
    )
    missed_rows = [
        [
            f'<a href="#{_e(p["anchor"])}">{_e(p["patient"])}</a>',
            _e(p["source"]),
            f"<code>{_e(a['code'])}</code>",
            _e(a["drug"]),
            _e(a["state"]),
            _e(a["from"]),
            _e(a["until"] or "end of course"),
        ]
        for p in report["patients"]
        for a in p["actions_not_followed"]
    ]
    missed = _table(
        "not-followed-patients-table",
        ["patient", "source", "action", "drug", "asked in", "from", "until"],
        missed_rows,
        "Every drug action asked for was followed.",
    )
    patients = _table(
        "patients-table",
        [
            "#",
            "source",
            "patient",
            "final state",
            "path",
            "alerts",
            "deviations",
            "not followed",
            "to first line (h)",
        ],
        [
            [
                _n(i),
                _e(p["source"]),
                _e(p["patient"]),
                _e(p["final_state"] or "none"),
                f'<a href="#{_e(p["anchor"])}">{_e(_path_text(p["path"]))}</a>',
                _n(p["alerts"]),
                _n(p["deviations"]),
                _n(len(p["actions_not_followed"])),
                _n(_num(p["time_to_first_line_hours"])),
            ]
            for i, p in enumerate(report["patients"], 1)
        ],
        "No patients.",
    )
    paths = "\n".join(
        _patient_section(p, s, info) for p, s in zip(report["patients"], summaries, strict=True)
    )
    errors = _table(
        "errors-table",
        ["source", "error"],
        [[_e(e["source"]), f"<pre>{_e(e['error'])}</pre>"] for e in report["errors"]],
        "No item with bad input.",
    )
    legend = " ".join(
        f'<span style="display:inline-block;width:12px;height:12px;background:{fill};'
        f'border:1px solid {stroke};vertical-align:middle"></span> {_e(phase)}'
        for phase, (fill, stroke) in PHASE_COLOURS.items()
    )
    d = DEFINITIONS
    nav = "".join(f'<a href="#{key}">{_e(text)}</a>' for key, text in _SECTIONS)
    title = "IEC-HS cohort report"
    named = f"{g.get('id', '?')} {g.get('version', '')}".strip()
    guideline = (
        f"replayed with guideline {named}"
        if report["replayed"]
        else f"results of replay-cohort; states and lines of guideline {named}"
    )
    body = f"""<header><h1>{_e(title)}</h1>
<p>{_e(report["source"])} — {_e(guideline)} — {_e(c["patients"])} patients,
{_e(c["errors"])} with bad input</p></header>
<nav>{nav}</nav>
<main>
<section id="summary">{_cards(report)}</section>
<section class="block" id="flow"><h2>Flow of patients through the states</h2>
<p class="definition">Each band is a transition between two states taken by the courses, as
often as it was taken (a course that recurs passes a state again). Node labels give the patients
who entered the state at least once. Colours: {legend}.</p>
{flow}
<div class="side-by-side">{transitions}{finals}</div></section>
<section class="block" id="first-line">
<h2>Time from treatment indicated to first-line treatment</h2>
<p class="definition">{_e(d["time_to_first_line"])} {_e(d["quartiles"])}</p>
<p>{_e(t["indicated"])} patients with treatment indicated; {_e(t["started"])} started a first line
after it; {_e(t["not_started"])} indicated, no line started. Histogram bins of
{_e(_num(t["histogram"]["bin_hours"]))} h; dashed line: median; shaded: interquartile range.</p>
{first_line}{first_line_table}</section>
<section class="block" id="lines"><h2>Time on each line</h2>
<p class="definition">{_e(d["time_on_line"])}</p>
{on_line}{on_line_table}</section>
<section class="block" id="over-time"><h2>Alerts and deviations over time</h2>
<p class="definition">Counts per code per week. {_e(d["week"])}</p>
<h3>Alerts</h3>{alerts_chart}{by_code("alerts-table", "alerts_by_code", "No alerts.")}
<h3>Deviations</h3>{deviations_chart}
{by_code("deviations-table", "deviations_by_code", "No deviations.")}</section>
<section class="block" id="not-followed"><h2>Actions not followed</h2>
<p class="definition">{_e(d["action_not_followed"])}</p>
{not_followed}<h3>Per patient</h3>{missed}</section>
<section class="block" id="patients"><h2>Patients</h2>
<p>In input order; the path links to the patient's diagram below.</p>
{patients}
<h2 id="paths">Paths</h2>
{paths}</section>
<section class="block" id="errors"><h2>Items with bad input</h2>{errors}</section>
</main>"""
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)} — {_e(report["source"])}</title>
<style>{_CSS}</style></head>
<body>
{body}
</body></html>
"""
    return page.encode("utf-8")
