"""The CLI on good input: validate, run (text and JSON), demo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from iechs.cli import main

ROOT = Path(__file__).resolve().parents[1]
DAY14 = ROOT / "examples" / "day14-steroid-response.json"


def test_validate_bundled_guideline(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate"]) == 0
    out = capsys.readouterr().out
    assert "iec-hs 0.2.1" in out
    assert "8 states, 18 transitions" in out


def test_validate_lists_unverified_statements(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--unverified"]) == 0
    out = capsys.readouterr().out
    assert "$.criteria.hines_identification:" in out
    assert "$.criteria.cartox_hlh:" not in out  # verified against the seed summary


def test_run_json_structure(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(DAY14), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["path"] == ["surveillance", "suspected", "first_line_steroids", "resolved", "closed"]
    assert doc["final_state"] == "closed"
    assert set(doc["guideline"]) == {"id", "version", "sha256"}
    step = doc["steps"][12]
    assert (step["from"], step["to"]) == ("suspected", "first_line_steroids")
    assert step["guards"][0]["result"] == "TRUE"
    # the baseline (450 ng/mL) is above the ULN (300): ferritin is judged against twice it
    ferritin = step["criteria"]["ferritin_raised"]
    assert ferritin["result"] == "TRUE"
    assert [(r["what"], r["value"]) for r in ferritin["reads"]] == [
        ("ferritin", 26000),
        ("baseline ferritin (abnormal at infusion)", 450),
    ]
    assert step["criteria"]["iec_hs_identified"]["detail"] == (
        "any of: hines_identification=TRUE, 1 more not needed"
    )
    # the line (from the seeds) and the dose (hines-2023 only) are separate recommendations
    assert [(r["id"], r["cite"]) for r in step["recommendations"][:2]] == [
        ("corticosteroids-first-line", ["seed-summary", "seed-news-2026"]),
        ("dexamethasone-high-dose", ["hines-2023"]),
    ]
    # Data are missing on day 8 (no labs) and day 12 (the CRS grade of day 8 is stale; LDH
    # has no earlier value for a trend, AST none at all). The ferritin of 2026-03-16T08:00Z
    # is one order set with the response charted at the same time: decided together, nothing
    # is missing.
    assert [(a["code"], a["at"]) for a in doc["alerts"]] == [
        ("missing_data", "2026-03-10T08:00:00Z"),
        ("missing_data", "2026-03-14T08:00:00Z"),
    ]
    assert "CRS grade (assessment)" in doc["alerts"][1]["measure"]
    assert "CRS grade (assessment)" not in doc["alerts"][0]["measure"]
    ferritin_then_response = doc["steps"][14:16]
    assert [s["event"]["kind"] for s in ferritin_then_response] == ["observation", "response"]
    assert ferritin_then_response[0]["later"] == [ferritin_then_response[1]["event"]]
    assert ferritin_then_response[0]["to"] == "first_line_steroids"
    assert ferritin_then_response[1]["to"] == "resolved"


def test_run_json_has_sorted_keys(capsys: pytest.CaptureFixture[str]) -> None:
    main(["run", str(DAY14), "--format", "json"])
    out = capsys.readouterr().out
    assert out == json.dumps(json.loads(out), sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def test_run_text_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(DAY14)]) == 0
    out = capsys.readouterr().out
    assert "suspected -> first_line_steroids" in out
    assert "Final state: closed" in out
    assert "missing_data" in out


def test_run_text_shows_input_text_as_it_is_never_as_markup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A patient id and a drug outside the formulary are the input's words: the report shows
    them as written. Read as rich markup, `pt[bold]7[/bold]` would print as `pt7` and the
    tocilizumab dose would lose its `[red]`, and the reader would see another patient and
    another drug than the record holds."""
    doc = json.loads(DAY14.read_text())
    doc["patient"]["id"] = "pt[bold]7[/bold]"
    doc["events"][2]["drug"] = "tocilizumab[red]"
    (tmp_path / "[draft].json").write_text(json.dumps(doc))
    monkeypatch.chdir(tmp_path)  # a short title: it never wraps
    assert main(["run", "[draft].json"]) == 0
    out = capsys.readouterr().out
    assert "[draft].json — patient pt[bold]7[/bold]" in out  # the title
    assert "infusion (patient pt[bold]7[/bold])" in out
    assert "tocilizumab[red] 8 mg/kg IV" in out


def test_demo_runs_every_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--format", "json"]) == 0
    docs = json.loads(capsys.readouterr().out)
    assert sorted(docs) == sorted(p.name for p in (ROOT / "examples").glob("*.json"))
    assert docs["day14-steroid-response.json"]["final_state"] == "closed"


def test_demo_on_another_guideline(capsys: pytest.CaptureFixture[str]) -> None:
    """An author tries an edited guideline on the bundled cases: every run names it."""
    profile = ROOT / "guideline" / "profiles" / "astct-2023.yaml"
    assert main(["demo", "--guideline", str(profile), "--format", "json"]) == 0
    docs = json.loads(capsys.readouterr().out)
    assert {doc["guideline"]["id"] for doc in docs.values()} == {"iec-hs-astct-2023"}


def test_module_entry_point_and_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "iechs", "--version"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0
    assert done.stdout.startswith("iechs 0.1.0")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_reader_that_stops_early_is_no_problem(fmt: str) -> None:
    """`iechs demo | head -1`: the reader closes the pipe long before the report ends (it is
    larger than a pipe's buffer). That is not a problem found (exit 1) nor a crash: the
    command ends with exit 0 and says nothing on stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "iechs", "demo", "--format", fmt],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    assert proc.stdout.readline()
    proc.stdout.close()
    stderr = proc.stderr.read()
    assert proc.wait(timeout=60) == 0, stderr
    assert stderr == b""


def test_cli_start_up_loads_no_engine() -> None:
    # `iechs --help` must stay fast: building the parser imports no engine, loader or renderer.
    code = (
        "import sys, iechs.cli; iechs.cli._parser(); "
        "print(sorted(m for m in sys.modules if m.startswith(('iechs.', 'statemachine', "
        "'cattrs', 'yaml', 'rich', 'pygraphviz', 'fhir'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = eval(done.stdout)  # a list literal printed by the child
    heavy = [
        m
        for m in loaded
        if m.split(".")[0] != "iechs"
        or m in ("iechs.engine", "iechs.loader", "iechs.criteria", "iechs.timeline", "iechs.verify")
    ]
    assert heavy == []


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "examples/day14-steroid-response.json", "--runtime", "table", "--format", "json"],
        ["run", "x.json", "--store", "audit.db"],
        ["validate", "g.yaml", "--baseline", "HEAD~1:g.yaml", "--strict", "--unverified"],
        ["verify", "--format", "json"],
        ["demo", "--guideline", "g.yaml"],
        ["audit", "verify", "audit.db"],
        ["replay-cohort", "cohort.jsonl", "--workers", "2", "--out", "r.jsonl"],
        ["synth", "--patients", "5", "--out", "c.jsonl"],
        ["report", "results.jsonl", "--format", "json"],
    ],
)
def test_a_parser_for_one_command_reads_its_line_as_the_full_parser(argv: list[str]) -> None:
    """`main` builds only the named command's parser (the others cost most of the parsing):
    the arguments it reads must be those the parser of every command reads."""
    from iechs.cli import _parser

    command = argv[0]
    assert vars(_parser({command}, only=command).parse_args(argv)) == vars(
        _parser({command}).parse_args(argv)
    )
