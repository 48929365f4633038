"""`iechs report`: the cohort aggregates on a hand-made results file, the page (deterministic,
offline, escaped), a cohort replayed in process, and bad input (exit 2, file, line and path).

The browser half is `test_cohort_report_browser.py`.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from iechs.cli import main
from iechs.cohort_report import StateInfo, histogram, quantile
from iechs.cohort_report_html import path_svg

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "tests" / "fixtures" / "cohort-report" / "results.jsonl"


def report_json(tmp_path: Path, source: Path | str, *extra: str) -> dict[str, Any]:
    out = tmp_path / "report.json"
    assert main(["report", str(source), "--format", "json", "--out", str(out), *extra]) == 0
    data: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return data


def test_aggregates_of_a_hand_made_results_file(tmp_path: Path) -> None:
    """`fixtures/cohort-report/results.jsonl`: five patients and one error line (f.json).

    Times are UTC; 2026-01-05, -12 and -19 are Mondays (2026-01-18 is a Sunday).

    A: surveillance 01-05 08:00, suspected 01-06 08:00, first_line_steroids 01-06 11:00,
       resolved 01-08 11:00, closed. Dexamethasone asked in suspected from 01-06 09:00, given.
       Alerts missing_data 01-06, reassessment_overdue 01-07 (both week 01-05).
    B: suspected 01-13 08:00, first line 01-13 14:00, second_line_anakinra 01-15 14:00,
       resolved 01-16 20:00, closed. Dexamethasone asked from 01-13 08:00; anakinra asked in
       the first line, given. Alerts il6_monotherapy 01-13, escalation_due 01-15 (week 01-12);
       deviation il6_monotherapy (tocilizumab) 01-13.
    C: surveillance 01-18, suspected 01-19 06:00, first line 01-20 07:00 and still there.
       Dexamethasone asked from 01-19 06:00; anakinra asked from 01-21, never given.
       Alerts reassessment_overdue 01-18 23:00 (Sunday: week 01-12) and 01-19 00:00 (week
       01-19); deviations il6_monotherapy and off_guideline_therapy, 01-19 (week 01-19).
    D: surveillance, suspected 01-07 08:00, surveillance 01-08 (ruled out), closed.
       Dexamethasone asked from 01-07 08:00, never given.
    E: surveillance, closed (its id needs escaping: `E<b>&"`).

    By hand:
    - time to first line: A 11:00-09:00 = 2 h, B 14:00-08:00 = 6 h, C 01-20 07:00 - 01-19
      06:00 = 25 h; D indicated, no line started. Sorted [2, 6, 25]: median 6; Q1 at rank
      0.5 = 2 + 0.5*(6-2) = 4; Q3 at rank 1.5 = 6 + 0.5*(25-6) = 15.5. Histogram: widths 0.25,
      0.5, 1 give 93, 47, 24 bins (> 12); 2 h gives bins 2-4 ... 24-26: 12 bins, one value
      each in 2-4, 6-8 and 24-26.
    - time on first_line_steroids: A 48 h (01-06 11:00 to 01-08 11:00), B 48 h, C ongoing;
      second_line_anakinra: B 30 h (01-15 14:00 to 01-16 20:00).
    - transitions: surveillance->suspected 4 (A B C D), suspected->first line 3, surveillance->
      closed 2 (D after ruled out, E), suspected->surveillance 1, resolved->closed 2, ...
    - alerts 6 (3 patients), deviations 3 (2 patients), il6_monotherapy deviations 2 (2
      patients); actions asked 6 (dexamethasone 4, anakinra 2), not followed 2 (C anakinra,
      D dexamethasone); treated 3 (A B C).
    """
    r = report_json(tmp_path, RESULTS)
    assert r["format"] == "iechs.cohort-report/1"
    assert (r["source"], r["replayed"]) == ("results.jsonl", False)
    assert r["guideline"] == {"id": "iec-hs", "version": r["guideline"]["version"]}
    assert r["counts"] == {
        "patients": 5,
        "errors": 1,
        "alerts": 6,
        "patients_with_alerts": 3,
        "deviations": 3,
        "patients_with_deviations": 2,
        "il6_monotherapy": 2,
        "patients_with_il6_monotherapy": 2,
        "actions_asked": 6,
        "actions_not_followed": 2,
        "patients_with_actions_not_followed": 2,
        "patients_treated": 3,
    }
    t = r["time_to_first_line"]
    assert (t["indicated"], t["started"], t["not_started"], t["n"]) == (4, 3, 1, 3)
    assert (t["min"], t["q1"], t["median"], t["q3"], t["max"]) == (2, 4, 6, 15.5, 25)
    assert t["histogram"]["bin_hours"] == 2
    bins = t["histogram"]["bins"]
    assert [(b["from"], b["to"]) for b in bins] == [(k, k + 2) for k in range(2, 26, 2)]
    assert [b["count"] for b in bins] == [1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    first = r["time_on_line"]["first_line_steroids"]
    assert (first["entries"], first["ongoing"], first["n"], first["median"]) == (3, 1, 2, 48)
    second = r["time_on_line"]["second_line_anakinra"]
    assert (second["entries"], second["n"], second["median"], second["q1"]) == (1, 1, 30, 30)
    assert r["time_on_line"]["salvage"]["median"] is None
    assert {(x["from"], x["to"]): x["count"] for x in r["transitions"]} == {
        ("surveillance", "suspected"): 4,
        ("surveillance", "closed"): 2,
        ("suspected", "surveillance"): 1,
        ("suspected", "first_line_steroids"): 3,
        ("first_line_steroids", "second_line_anakinra"): 1,
        ("first_line_steroids", "resolved"): 1,
        ("second_line_anakinra", "resolved"): 1,
        ("resolved", "closed"): 2,
    }
    assert r["final_states"] == {"closed": 4, "first_line_steroids": 1}
    assert r["alerts_by_week"] == {
        "escalation_due": {"2026-01-12": 1},
        "il6_monotherapy": {"2026-01-12": 1},
        "missing_data": {"2026-01-05": 1},
        "reassessment_overdue": {"2026-01-05": 1, "2026-01-12": 1, "2026-01-19": 1},
    }
    assert r["deviations_by_week"] == {
        "il6_monotherapy": {"2026-01-12": 1, "2026-01-19": 1},
        "off_guideline_therapy": {"2026-01-19": 1},
    }
    assert r["deviations_by_code"]["il6_monotherapy"] == {"events": 2, "patients": 2}
    assert r["actions_not_followed"] == [
        {
            "code": "add_anakinra",
            "drug": "anakinra",
            "asked": 2,
            "not_followed": 1,
            "patients_not_followed": 1,
        },
        {
            "code": "start_corticosteroid",
            "drug": "dexamethasone",
            "asked": 4,
            "not_followed": 1,
            "patients_not_followed": 1,
        },
    ]
    by_patient = {p["patient"]: p for p in r["patients"]}
    assert [p["patient"] for p in r["patients"]] == ["A", "B", "C", "D", 'E<b>&"']
    assert [by_patient[k]["time_to_first_line_hours"] for k in "ABCD"] == [2, 6, 25, None]
    assert by_patient["C"]["actions_not_followed"] == [
        {
            "code": "add_anakinra",
            "drug": "anakinra",
            "state": "first_line_steroids",
            "from": "2026-01-21T07:00:00Z",
            "until": None,
        }
    ]
    assert by_patient["D"]["path"] == ["surveillance", "suspected", "surveillance", "closed"]
    assert r["errors"] == [
        {
            "source": "f.json",
            "error": "f.json: $.events[0].at: not an ISO 8601 timestamp: 'yesterday'",
        }
    ]


def test_quantiles_and_histogram_by_hand() -> None:
    """[1, 2, 3, 4]: ranks (n-1)p = 0.75, 1.5, 2.25 -> 1.75, 2.5, 3.25. Values 0.1 and 0.3
    fit 0.25 h bins (0-0.25, 0.25-0.5); a value on an edge starts the next bin."""
    values = [1.0, 2.0, 3.0, 4.0]
    assert [quantile(values, p) for p in (0, 0.25, 0.5, 0.75, 1)] == [1, 1.75, 2.5, 3.25, 4]
    assert quantile([7.0], 0.25) == 7
    h = histogram([0.1, 0.3])
    assert h["bin_hours"] == 0.25
    assert [(b["from"], b["count"]) for b in h["bins"]] == [(0, 1), (0.25, 1)]
    h = histogram([0.0, 2.0])
    assert h["bin_hours"] == 0.25
    assert len(h["bins"]) == 9
    assert (h["bins"][0]["count"], h["bins"][-1]["count"], h["bins"][-1]["from"]) == (1, 1, 2)
    assert histogram([]) == {"bin_hours": None, "bins": []}


def test_json_has_sorted_keys_and_goes_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(RESULTS), "--format", "json"]) == 0
    text = capsys.readouterr().out
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2, ensure_ascii=False) + "\n"


class _Page(HTMLParser):
    """Every tag with its attributes (script and style bodies are text, not tags)."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def parse(page: bytes) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Page()
    parser.feed(page.decode("utf-8"))
    return parser.tags


def test_the_page_is_deterministic_offline_and_escaped(tmp_path: Path) -> None:
    a, b = tmp_path / "a.html", tmp_path / "b.html"
    assert main(["report", str(RESULTS), "--html", str(a)]) == 0
    assert main(["report", str(RESULTS), "--html", str(b)]) == 0
    page = a.read_bytes()
    assert page == b.read_bytes()
    tags = parse(page)
    for tag, attrs in tags:
        for name in ("src", "href"):
            value = attrs.get(name) or ""
            assert "http://" not in value, (tag, value)
            assert "https://" not in value, (tag, value)
        assert not (tag == "script" and "src" in attrs), attrs
        assert tag not in ("link", "iframe", "img"), (tag, attrs)
    text = page.decode("utf-8")
    assert text.count("* plotly.js v") == 1  # inlined once, for the first figure
    ids = [attrs.get("id") for _, attrs in tags]
    for chart in ("chart-flow", "chart-first-line", "chart-time-on-line", "chart-alerts"):
        assert ids.count(chart) == 1
    assert ids.count("chart-deviations") == 1
    named = [i for i in ids if i]
    assert len(named) == len(set(named))  # ids are unique in the page
    # every patient has an anchored path diagram, linked from the table
    for number in range(1, 6):
        assert f'href="#patient-{number}"' in text
        assert f'id="patient-{number}"' in text
    assert text.count('<svg id="patient-') == 5
    # text is escaped: the patient `E<b>&"` never becomes markup
    assert "E<b>" not in text
    assert "E&lt;b&gt;&amp;&quot;" in text
    # summary counts at the top
    assert 'id="count-il6"' in text
    assert "IL-6 monotherapy deviations (2 patients)" in text
    # the definitions are in the page
    assert "earliest drug action the guideline asked for" in text
    assert "f.json: $.events[0].at: not an ISO 8601 timestamp" in text


def test_path_svg_of_hand_built_entries() -> None:
    """Eight entries wrap after six: 7 connectors (6 lines in rows, 1 path down)."""
    info = StateInfo(("a", "b"), {"a": "surveillance", "b": "treatment"}, {"b": 1})
    entries = [("a" if i % 2 else "b", f"2026-01-0{i + 1}T08:00:00Z") for i in range(8)]
    svg = path_svg(entries, info, "p-1-path")
    assert svg.count('<g class="state"') == 8
    assert svg.count('<line class="connector"') == 6
    assert svg.count('<path class="connector"') == 1
    assert svg.count('marker-end="url(#p-1-path-arrow)"') == 7
    assert "#f8d3d3" in svg  # b is a treatment state
    assert "2026-01-08 08:00" in svg
    assert 'aria-label="path: b → a → b' in svg
    assert path_svg([], info, "x") == '<p class="empty">No state entered.</p>'


def test_a_cohort_is_replayed_like_replay_cohort(tmp_path: Path) -> None:
    """The examples folder reported directly equals the report of replay-cohort's results."""
    results = tmp_path / "results.jsonl"
    examples = ROOT / "examples"
    args = ["replay-cohort", str(examples), "--workers", "1", "--out", str(results)]
    assert main([*args, "--no-progress"]) == 0
    direct = report_json(tmp_path, examples)
    via_results = report_json(tmp_path, results)
    assert (direct.pop("source"), direct.pop("replayed")) == ("examples", True)
    assert (via_results.pop("source"), via_results.pop("replayed")) == ("results.jsonl", False)
    assert direct == via_results
    assert direct["counts"]["patients"] == len(list(examples.glob("*.json")))
    assert direct["counts"]["il6_monotherapy"] == 1  # tocilizumab-monotherapy-deviation.json


def test_one_timeline_and_a_fhir_bundle_are_cohorts(tmp_path: Path) -> None:
    one = report_json(tmp_path, ROOT / "examples" / "day14-steroid-response.json")
    assert one["counts"]["patients"] == 1
    assert one["patients"][0]["path"][-1] == "closed"
    fhir = report_json(tmp_path, ROOT / "examples" / "fhir")
    assert fhir["counts"]["patients"] == 1
    assert fhir["patients"][0]["path"] == one["patients"][0]["path"]


def test_committed_screenshot_is_small() -> None:
    """docs/report.png, made by `python -m iechs.cohort_report --screenshot docs/report.png`."""
    data = (ROOT / "docs" / "report.png").read_bytes()
    assert data.startswith(b"\x89PNG")
    assert int.from_bytes(data[16:20], "big") == 1280
    assert len(data) < 400_000


# --- bad input ------------------------------------------------------------------------------


def bad(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["report", *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.jsonl"
    err = bad(capsys, str(missing), "--format", "json")
    assert f"{missing}: $: no such file or folder" in err


def test_empty_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    assert "empty" in bad(capsys, str(empty), "--format", "json")


def test_a_results_line_that_is_not_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = RESULTS.read_text(encoding="utf-8").splitlines()
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join([*lines[:2], '{"format": "iechs.summary/1", "pa', ""]), "utf-8")
    err = bad(capsys, str(broken), "--html", str(tmp_path / "r.html"))
    assert f"{broken}:3: $: not valid JSON" in err
    assert not (tmp_path / "r.html").exists()


def test_a_results_line_with_a_bad_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [json.loads(line) for line in RESULTS.read_text(encoding="utf-8").splitlines()]
    rows[1]["entered"][2]["at"] = "Tuesday"
    rows[2]["actions"][1]["from"] = 3
    rows[3]["path"] = "surveillance"
    broken = tmp_path / "broken.jsonl"
    broken.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    err = bad(capsys, str(broken), "--format", "json")
    assert f"{broken}:2: $.entered[2].at: not an ISO 8601 timestamp: 'Tuesday'" in err
    rows[1]["entered"][2]["at"] = "2026-01-13T14:00:00Z"
    broken.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    err = bad(capsys, str(broken), "--format", "json")
    assert f"{broken}:3: $.actions[1].from: expected an ISO 8601 timestamp, got 3" in err
    rows[2]["actions"][1]["from"] = "2026-01-21T07:00:00Z"
    rows[3]["format"] = "iechs.summary/9"
    broken.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    err = bad(capsys, str(broken), "--format", "json")
    assert f"{broken}:4: $.format: expected format 'iechs.summary/1'" in err


def test_cohort_items_with_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Bad items are named (file:line and JSON path), listed in the report, and exit 2."""
    good = json.loads((ROOT / "examples" / "day14-steroid-response.json").read_text("utf-8"))
    wrong = json.loads(json.dumps(good))
    index = next(i for i, e in enumerate(wrong["events"]) if e["kind"] == "observation")
    wrong["events"][index]["value"] = "lots"
    cohort = tmp_path / "cohort.jsonl"
    cohort.write_text(
        json.dumps(good) + "\n" + json.dumps(wrong) + "\n" + "{not json\n", encoding="utf-8"
    )
    out = tmp_path / "r.json"
    err = bad(capsys, str(cohort), "--format", "json", "--out", str(out))
    assert f"cohort.jsonl:2: $.events[{index}].value: expected a number" in err
    assert "cohort.jsonl:3: $: not valid JSON" in err
    r = json.loads(out.read_text(encoding="utf-8"))
    assert r["counts"]["patients"] == 1
    assert [e["source"] for e in r["errors"]] == ["cohort.jsonl:2", "cohort.jsonl:3"]


def test_a_bad_guideline_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    g = tmp_path / "g.yaml"
    g.write_text("guideline: [\n", encoding="utf-8")
    assert str(g) in bad(capsys, str(RESULTS), "--guideline", str(g), "--format", "json")
