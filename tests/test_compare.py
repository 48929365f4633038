"""`iechs compare`: what a guideline edit changes for a cohort, judged as its author would.

Each test makes one edit a guideline author or a site might make (a local parameter in a site
profile, a committed change seen through git), says in its docstring which patients of
`examples/` must change and which must not, and why, from the timeline data and the guideline's
definitions, and then checks that `compare` finds exactly that. The expectations are written out
by hand (times, steps, alerts): the engine is never run inside the oracle.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from iechs.cli import main

ROOT = Path(__file__).resolve().parents[1]
GUIDELINE = ROOT / "guideline" / "iec-hs.yaml"
EXAMPLES = ROOT / "examples"

Doc = dict[str, Any]


# --- helpers --------------------------------------------------------------------------------------


def compare(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    """Run `iechs compare ARGS` in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()  # drop anything printed before
    code = main(["compare", *(str(a) for a in args)])
    out, err = capsys.readouterr()
    return code, out, err


def compare_json(capsys: pytest.CaptureFixture[str], *args: str | Path) -> Doc:
    code, out, err = compare(capsys, *args, "--format", "json")
    assert code == 0, err
    doc: Doc = json.loads(out)
    return doc


def site_profile(tmp_path: Path, parameters: str, name: str = "site.yaml") -> Path:
    """A site profile over the bundled guideline (by absolute path) setting `parameters`."""
    path = tmp_path / name
    path.write_text(
        "profile:\n"
        f"  extends: {GUIDELINE.as_posix()}\n"
        "  rationale: a local choice of this site\n"
        f"parameters:\n{parameters}",
        encoding="utf-8",
    )
    return path


def example(name: str) -> Doc:
    data: Doc = json.loads((EXAMPLES / name).read_text(encoding="utf-8"))
    return data


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def stamp(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def step_of_order_set(name: str, at: str) -> int:
    """The step that decides the order set at time `at`: events at one time are decided
    together, so it is the last of them. Step 0 is the infusion; step k is the k-th event in
    time order; hence the step is the number of events at or before `at`."""
    return sum(1 for ev in example(name)["events"] if when(ev["at"]) <= when(at))


def by_source(doc: Doc) -> dict[str, Doc]:
    return {c["source"]: c for c in doc["changes"]}


# --- (1) the same guideline changes nobody --------------------------------------------------------


def test_the_same_guideline_changes_no_patient(capsys: pytest.CaptureFixture[str]) -> None:
    """Comparing the bundled guideline with itself (named once by path, once by default) must
    change nobody's course: the engine is deterministic and the comparison ignores nothing but
    the guideline's own identity. All kinds are counted, each zero."""
    doc = compare_json(capsys, EXAMPLES, "--baseline", GUIDELINE)
    assert doc["format"] == "iechs.compare/1"
    assert doc["patients"] == len(list(EXAMPLES.glob("*.json")))
    assert doc["changed"] == 0
    assert doc["changes"] == []
    assert set(doc["summary"].values()) == {0}
    assert doc["baseline"]["sha256"] == doc["guideline"]["sha256"]
    assert doc["baseline"]["spec"] == str(GUIDELINE)
    assert doc["guideline"]["spec"] == "guideline/iec-hs.yaml"
    # FHIR Bundles are read as well, and a FHIR copy of an example does not change either.
    fhir = compare_json(capsys, EXAMPLES / "fhir", "--baseline", GUIDELINE)
    assert (fhir["patients"], fhir["changed"]) == (1, 0)
    code, out, _ = compare(capsys, EXAMPLES, "--baseline", GUIDELINE)
    assert code == 0
    assert f"{doc['patients']} patients, 0 with a changed course" in out


# --- (2) a parameter edit in a site profile -------------------------------------------------------

#: When IEC-HS becomes suspected in each example, read from the timeline against the screening
#: trigger: ferritin above 2 x ULN (300 ng/mL), or 2 x the baseline when the baseline is above
#: the ULN, and not falling, with LDH or AST rising, while CRS is absent or resolving by an
#: assessment at most 72 h old (`assessment_validity_hours`).
SUSPECTED_AT = {
    # ferritin 18000 -> 26000 (> 900) and LDH 420 -> 610 at 08:00, but the last CRS grade
    # (03-10T08:00) is older than 72 h; the 09:00 assessment (CRS 0) completes the trigger.
    "day14-steroid-response.json": "2026-03-15T09:00:00Z",
    # ferritin 480 -> 1900 (> 2 x 310), LDH 240 -> 330, AST 30 -> 75; CRS 0 the day before.
    "infection-antimicrobials-before-steroids.json": "2026-06-10T08:00:00Z",
    # ferritin 450 -> 2400 (> 600), LDH 240 -> 350; CRS 0 at 11-07T08:00, exactly 72 h old.
    "missing-fibrinogen.json": "2026-11-10T08:00:00Z",
    # ferritin 700 -> 2600 (> 840), LDH 250 -> 360 at 08:00, but the last CRS grade (04-06) is
    # 119 h old; the 09:00 assessment (CRS 0) completes the trigger.
    "no-response-48h-anakinra.json": "2026-04-11T09:00:00Z",
    # ferritin 480 -> 2300 (> 700), AST 30 -> 85, LDH 230 -> 330; CRS 0 the day before.
    "reassessment-overdue.json": "2027-01-11T08:00:00Z",
    # ferritin 520 -> 2100 (> 600), LDH 230 -> 340; CRS 0 the day before.
    "recurrence-after-resolution.json": "2026-10-13T08:00:00Z",
    # ferritin falls 3900 -> 2500 while CRS resolves, then 7400 (> 760), LDH 300 -> 420.
    "refractory-ruxolitinib-salvage.json": "2026-05-09T08:00:00Z",
    # abnormal baseline 900, so raised means > 1800: 1600 -> 4800, LDH 260 -> 390; CRS 0 at
    # 07-06T09:00, exactly 72 h old.
    "tocilizumab-monotherapy-deviation.json": "2026-07-09T09:00:00Z",
}
#: Never suspected: early-crs (ferritin rises only while CRS is active and escalating, then
#: falls), high-risk-cd28-tet2 (ferritin above 2 x its abnormal baseline only while CRS grade 1
#: is active, then falling), tocilizumab-with-icans (ferritin rises once with LDH and AST
#: falling, then falls).
NEVER_SUSPECTED = {
    "early-crs-ferritin-rise-surveillance.json",
    "high-risk-cd28-tet2.json",
    "tocilizumab-with-icans.json",
}


def test_examples_split_into_suspected_and_never_suspected() -> None:
    """The oracle below covers every example exactly once."""
    names = {p.name for p in EXAMPLES.glob("*.json")}
    assert set(SUSPECTED_AT) | NEVER_SUSPECTED == names
    assert not set(SUSPECTED_AT) & NEVER_SUSPECTED


def test_a_shorter_reassessment_interval_changes_every_suspected_patient(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A unit shortens `reassessment_interval_hours` from 12 to 8 h (within the summary's "at
    least every 12 hours"). The duty to reassess runs only while IEC-HS is suspected or
    treated, and it never moves the state: it sets the `reassess` action's due time and raises
    `reassessment_overdue` at the first event past the deadline.

    So: the three patients who stay in surveillance must not change at all; every patient who
    is ever suspected must change, and first at the step where suspicion begins (the order set
    at `SUSPECTED_AT`): there, both guidelines move surveillance -> suspected by the same
    guard, and only the actions differ: `reassess` is due 12 h after instead of 8 h after.
    No path and no final state changes.

    `reassessment-overdue`, worked by hand. The clock restarts at each state entry and at each
    assessment. Suspected 01-11 08:00, assessed 09:00: the 8 h deadline is 17:00, and the
    18:00 labs are past it (new alert; 12 h: due 21:00, fine). Steroids enter the first line at
    19:00. 01-12 08:00 is 13 h later: overdue under both. Assessed 10:00, then 21:00 is 11 h
    later: overdue under 8 h only (new alert). Then 01-13 11:00 is 14 h later: overdue under
    both. Added: 01-11 18:00 and 01-12 21:00; removed: none.
    """
    site = site_profile(tmp_path, "  reassessment_interval_hours:\n    value: 8\n")
    doc = compare_json(capsys, EXAMPLES, "--baseline", GUIDELINE, "--guideline", site)
    changes = by_source(doc)
    assert set(changes) == set(SUSPECTED_AT)
    assert not set(changes) & NEVER_SUSPECTED
    assert doc["changed"] == len(SUSPECTED_AT)
    assert doc["summary"]["path"] == doc["summary"]["final_state"] == 0
    assert doc["summary"]["input"] == 0
    for name, at in SUSPECTED_AT.items():
        first = changes[name]["divergence"]
        assert (first["step"], first["at"]) == (step_of_order_set(name, at), at), name
        assert first["differs"] == ["actions"], name
        for side, hours in (("baseline", 12), ("guideline", 8)):
            step = first[side]
            assert (step["from"], step["to"]) == ("surveillance", "suspected"), (name, side)
            assert [g["result"] for g in step["guards"]] == ["TRUE"], (name, side)
            due = stamp(when(at) + timedelta(hours=hours))
            assert f"reassess (due {due})" in step["actions"], (name, side)
        assert changes[name]["path"]["baseline"] == changes[name]["path"]["guideline"]
    worked = changes["reassessment-overdue.json"]
    assert worked["kinds"] == ["alerts_added"]
    assert worked["alerts"] == {
        "added": [
            {"at": "2027-01-11T18:00:00Z", "code": "reassessment_overdue"},
            {"at": "2027-01-12T21:00:00Z", "code": "reassessment_overdue"},
        ],
        "removed": [],
    }


def test_a_ferritin_uln_edit_that_only_touches_falling_values_changes_nobody(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A site enters its laboratory's ferritin ULN in the wrong unit: 674 (pmol/L) in the
    ng/mL parameter `ferritin_uln`. "Ferritin raised" then means above 1348 ng/mL (2 x 674;
    every baseline here but one is below 674), or 2 x 900 = 1800 as before for the patient
    whose baseline (900) stays abnormal. Only `ferritin_raised` reads the ULN.

    Ferritin values between the old and the new threshold, from the timelines: high-risk 1300
    (old 1220), no-response 1200 and 900 (old 840), recurrence 1200 (old 600). Each is a
    falling value (ferritin_not_falling is FALSE, so no laboratory signature or recurrence
    either way) in a patient with no organ feature then (no haemophagocytosis, AST and ALT
    below 200, fibrinogen above 150 mg/dL), so the identification criteria fail either way. The
    criteria's explanations name the new threshold, but no decision changes: nobody changes.
    """
    site = site_profile(tmp_path, "  ferritin_uln:\n    value: 674\n")
    between: dict[str, list[float]] = {}
    for path in sorted(EXAMPLES.glob("*.json")):
        patient = example(path.name)["patient"]
        baseline = patient["baseline"]["ferritin"]["value"]
        old = 2 * (baseline if baseline > 300 else 300)
        new = 2 * (baseline if baseline > 674 else 674)
        values = [
            ev["value"]
            for ev in example(path.name)["events"]
            if ev.get("code") == "ferritin" and min(old, new) < ev["value"] <= max(old, new)
        ]
        if values:
            between[path.name] = values
    assert between == {
        "high-risk-cd28-tet2.json": [1300],
        "no-response-48h-anakinra.json": [1200, 900],
        "recurrence-after-resolution.json": [1200],
    }
    doc = compare_json(capsys, EXAMPLES, "--baseline", GUIDELINE, "--guideline", site)
    assert doc["changed"] == 0
    assert doc["baseline"]["sha256"] != doc["guideline"]["sha256"]


# --- (3) a committed guideline against the working copy, through git ------------------------------


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git repository holding a copy of guideline/ in one commit; the working folder."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    top = tmp_path / "repo"
    shutil.copytree(ROOT / "guideline", top / "guideline")

    def git(*args: str) -> None:
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
            cwd=top,
            check=True,
            capture_output=True,
        )

    git("init", "-q")
    git("add", "guideline")
    git("-c", "commit.gpgsign=false", "commit", "-q", "-m", "guideline")
    monkeypatch.chdir(top)
    return top


def test_baseline_as_a_git_revision(capsys: pytest.CaptureFixture[str], repo: Path) -> None:
    """An author raises `high_risk_min_factors` from 1 to 3 in the working copy and compares
    it with the committed guideline (`HEAD:guideline/iec-hs.yaml`).

    The high-risk tier is judged once, at the infusion (the `high_risk_patient` alert, upon
    start). Only one example has any risk factor: high-risk-cd28-tet2 lists `tet2_mutation`
    and receives a CD28-costimulated product (`cd28_costimulation`): 2 factors, high risk at
    1, no longer at 3. So exactly that patient changes, first at step 0 (the infusion), where
    `high_risk` goes TRUE -> FALSE and its alert is removed; nothing else changes.
    """
    working = repo / "guideline" / "iec-hs.yaml"
    committed = working.read_text(encoding="utf-8")
    old = "  high_risk_min_factors:\n    value: 1\n"
    assert old in committed
    working.write_text(
        committed.replace(old, "  high_risk_min_factors:\n    value: 3\n"), encoding="utf-8"
    )
    spec = "HEAD:guideline/iec-hs.yaml"
    doc = compare_json(capsys, EXAMPLES, "--baseline", spec, "--guideline", "guideline/iec-hs.yaml")
    assert doc["baseline"]["spec"] == spec
    assert doc["baseline"]["sha256"] == hashlib.sha256(committed.encode()).hexdigest()
    assert doc["guideline"]["sha256"] != doc["baseline"]["sha256"]
    assert [c["source"] for c in doc["changes"]] == ["high-risk-cd28-tet2.json"]
    change = doc["changes"][0]
    infusion = example("high-risk-cd28-tet2.json")["patient"]["infusion_at"]
    assert change["kinds"] == ["alerts_removed"]
    assert change["alerts"] == {
        "added": [],
        "removed": [{"at": infusion, "code": "high_risk_patient"}],
    }
    first = change["divergence"]
    assert (first["step"], first["at"], first["differs"]) == (0, infusion, ["alerts"])
    assert first["baseline"]["alerts"] == ["high_risk_patient"]
    assert first["guideline"]["alerts"] == []
    assert first["criteria"]["high_risk"]["baseline"]["result"] == "TRUE"
    assert first["criteria"]["high_risk"]["guideline"]["result"] == "FALSE"
    assert list(first["criteria"]) == ["high_risk"]


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("HEAD:guideline/missing.yaml", "does not exist"),
        ("nosuchrev:guideline/iec-hs.yaml", "nosuchrev"),
    ],
)
def test_a_bad_revision_is_bad_input(
    capsys: pytest.CaptureFixture[str], repo: Path, spec: str, says: str
) -> None:
    """A revision that names no file is bad input: exit 2, the revision named, no traceback."""
    code, out, err = compare(capsys, EXAMPLES, "--baseline", spec)
    assert code == 2
    assert out == ""
    assert spec in err
    assert says in err
    assert "Traceback" not in err


# --- (4) bad input --------------------------------------------------------------------------------


def test_missing_or_empty_cohort_and_unreadable_guideline(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Each is bad input (exit 2) with the file named and nothing on stdout."""
    missing = tmp_path / "no-such-cohort"
    code, out, err = compare(capsys, missing, "--baseline", GUIDELINE)
    assert (code, out) == (2, "")
    assert f"{missing}: $: no such file or folder" in err

    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = compare(capsys, empty, "--baseline", GUIDELINE)
    assert (code, out) == (2, "")
    assert f"{empty}: $: the cohort holds no timeline" in err

    code, out, err = compare(capsys, EXAMPLES, "--baseline", tmp_path / "nope.yaml")
    assert (code, out) == (2, "")
    assert "nope.yaml: $: cannot read the file" in err

    broken = site_profile(tmp_path, "  reassessment_interval_hours:\n    value: soon\n")
    code, out, err = compare(capsys, EXAMPLES, "--baseline", GUIDELINE, "--guideline", broken)
    assert (code, out) == (2, "")
    assert str(broken) in err
    assert "reassessment_interval_hours" in err
    assert "Traceback" not in err


def test_items_bad_under_both_guidelines_are_named_with_their_place(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A JSON Lines cohort whose line 2 has a ferritin value that is not a number and whose
    line 4 is not JSON: both lines are bad under either guideline, so the cohort is bad input.
    Every bad line is named (`file.jsonl:LINE`) with the JSON path, in one message."""
    good = example("day14-steroid-response.json")
    bad = json.loads(json.dumps(good))
    bad["events"][1]["value"] = "high"
    cohort = tmp_path / "c.jsonl"
    lines = [json.dumps(good), json.dumps(bad), "", "{not json"]
    cohort.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, out, err = compare(capsys, cohort, "--baseline", GUIDELINE)
    assert (code, out) == (2, "")
    assert f"{tmp_path / 'c.jsonl:2'}: $.events[1].value: expected a number" in err
    assert f"{tmp_path / 'c.jsonl:4'}: $: not valid JSON" in err
    assert "c.jsonl:1" not in err
    assert "Traceback" not in err


def test_a_timeline_valid_under_one_guideline_only_is_an_input_change(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A profile narrows ferritin's plausible range to 0-20000 ng/mL. day14 records ferritin
    26000 ng/mL (its 7th event, `$.events[6]`), now rejected as implausible: that patient's
    input changes (kind `input`, the reason given for the new side), which is a finding of the
    comparison, not bad input (exit 0). reassessment-overdue never exceeds 10200: unchanged."""
    profile = tmp_path / "narrow.yaml"
    profile.write_text(
        f"profile:\n  extends: {GUIDELINE.as_posix()}\n  rationale: narrower range\n"
        "observations:\n  ferritin:\n    plausible: [0, 20000]\n",
        encoding="utf-8",
    )
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    for name in ("day14-steroid-response.json", "reassessment-overdue.json"):
        shutil.copy(EXAMPLES / name, cohort / name)
    doc = compare_json(capsys, cohort, "--baseline", GUIDELINE, "--guideline", profile)
    assert (doc["patients"], doc["changed"], doc["summary"]["input"]) == (2, 1, 1)
    change = doc["changes"][0]
    assert (change["source"], change["patient"], change["kinds"]) == (
        "day14-steroid-response.json",
        "demo-day14",
        ["input"],
    )
    assert change["input"]["baseline"] == {"ok": True, "error": None}
    assert change["input"]["guideline"]["ok"] is False
    assert "$.events[6].value: implausible ferritin 26000" in change["input"]["guideline"]["error"]


# --- (5) the HTML page and (6) determinism --------------------------------------------------------


def test_text_report_shows_a_patient_and_file_as_named(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The text report a reviewer reads in a terminal: a changed patient whose id and file name
    hold brackets and colons is listed as named. Read as rich markup and emoji codes,
    `odd[red]id:one:` would print as `odd1️⃣`... and match no patient in the cohort."""
    site = site_profile(tmp_path, "  reassessment_interval_hours:\n    value: 8\n")
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    odd = example("reassessment-overdue.json")
    odd["patient"]["id"] = "odd[red]id:one:"
    (cohort / "[draft] overdue.json").write_text(json.dumps(odd), encoding="utf-8")
    code, out, err = compare(capsys, cohort, "--baseline", GUIDELINE, "--guideline", site)
    assert code == 0, err
    assert "1 patients, 1 with a changed course" in out
    row = next(line for line in out.splitlines() if line.startswith("│") and "overdue" in line)
    assert "[draft] overdue.json" in row  # the table's row
    assert "odd[red]id:one:" in row
    assert "[draft] overdue.json — patient odd[red]id:one:" in out  # the change's heading


def test_html_page_names_the_changed_patients_offline_and_escaped(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The page a reviewer opens: every changed patient by id, the first divergence, no
    external resource (no URL, no src or href, no script) and every text escaped: a patient id
    with markup in it is shown as text."""
    site = site_profile(tmp_path, "  reassessment_interval_hours:\n    value: 8\n")
    cohort = tmp_path / "cohort"
    shutil.copytree(EXAMPLES, cohort, ignore=shutil.ignore_patterns("fhir", "service"))
    odd = example("reassessment-overdue.json")
    odd["patient"]["id"] = '<b onclick="x()">P&1</b>'
    (cohort / "zz-odd-id.json").write_text(json.dumps(odd), encoding="utf-8")
    page = tmp_path / "compare.html"
    code, _, err = compare(
        capsys, cohort, "--baseline", GUIDELINE, "--guideline", site, "--html", page
    )
    assert code == 0, err
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    ids = [example(name)["patient"]["id"] for name in SUSPECTED_AT]
    for patient in ids:
        assert f"<h2>{patient} <small>" in text
    for name in NEVER_SUSPECTED:
        assert example(name)["patient"]["id"] not in text
    assert "&lt;b onclick=&quot;x()&quot;&gt;P&amp;1&lt;/b&gt;" in text
    assert "<b onclick" not in text
    lowered = text.lower()
    for forbidden in ("http", "src=", "href=", "<script", "<link", "@import", "url("):
        assert forbidden not in lowered
    assert "First divergence: step" in text
    assert "reassessment_overdue" in text


def test_output_is_byte_identical_across_runs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Two runs of the same comparison give the same bytes (JSON with sorted keys, the text
    report and the HTML page): nothing reads the clock or depends on the order of a set."""
    site = site_profile(tmp_path, "  reassessment_interval_hours:\n    value: 8\n")
    args = (EXAMPLES, "--baseline", GUIDELINE, "--guideline", site)
    outputs = []
    for i in range(2):
        page = tmp_path / f"page{i}.html"
        code, json_out, _ = compare(capsys, *args, "--format", "json", "--html", page)
        assert code == 0
        code, text_out, _ = compare(capsys, *args)
        assert code == 0
        outputs.append((json_out, text_out, page.read_bytes()))
    assert outputs[0] == outputs[1]
    json_out = outputs[0][0]
    assert json_out == json.dumps(json.loads(json_out), sort_keys=True, indent=2) + "\n"
    assert "8 with a changed course" in outputs[0][1]


# --- identity keys, on hand-built steps ----------------------------------------------------------


def _step(at: str, actions: list[Doc], detail: str = "ferritin 900 > 2 x ULN 300") -> Doc:
    return {
        "at": at,
        "event": {"kind": "observation"},
        "from": "suspected",
        "to": "suspected",
        "guards": [],
        "criteria": {"ferritin_raised": {"result": "TRUE", "detail": detail}},
        "alerts": [],
        "deviations": [],
        "actions": actions,
    }


def test_an_action_is_identified_by_the_start_of_each_run_that_asks_for_it() -> None:
    """An action asked for at 08:00 and 09:00, not at 10:00, and again at 11:00 is two runs
    (asked for twice); its changing due time inside a run does not make a new one."""
    from iechs.compare import action_runs, divergence

    reassess = {"code": "reassess", "text": "Reassess."}
    anakinra = {"code": "add_anakinra", "drug": "anakinra", "text": "Add anakinra."}
    steps = [
        _step("2026-01-01T08:00:00Z", [{**reassess, "due_by": "2026-01-01T20:00:00Z"}]),
        _step("2026-01-01T09:00:00Z", [{**reassess, "due_by": "2026-01-01T21:00:00Z"}, anakinra]),
        _step("2026-01-01T10:00:00Z", [anakinra]),
        _step("2026-01-01T11:00:00Z", [reassess, anakinra]),
    ]
    assert action_runs(steps) == [
        {"at": "2026-01-01T08:00:00Z", "code": "reassess"},
        {"at": "2026-01-01T09:00:00Z", "code": "add_anakinra", "drug": "anakinra"},
        {"at": "2026-01-01T11:00:00Z", "code": "reassess"},
    ]
    # An explanation that words a threshold differently is not a change of decision.
    reworded = [
        {**s, "criteria": {"ferritin_raised": {**s["criteria"]["ferritin_raised"]}}} for s in steps
    ]
    reworded[2]["criteria"]["ferritin_raised"]["detail"] = "ferritin 900 > 2 x ULN 400"
    assert divergence(steps, reworded) is None
    # A due time that moves is: the first step where it moves, with both sides' actions.
    moved = [dict(s) for s in steps]
    moved[1] = {**steps[1], "actions": [{**reassess, "due_by": "2026-01-01T17:00:00Z"}, anakinra]}
    first = divergence(steps, moved, positions=(4, 7, 1))
    assert first is not None
    assert (first["step"], first["event_path"], first["differs"]) == (1, "$.events[4]", ["actions"])
    assert first["baseline"]["actions"][0] == "reassess (due 2026-01-01T21:00:00Z)"
    assert first["guideline"]["actions"][0] == "reassess (due 2026-01-01T17:00:00Z)"
    assert first["criteria"] == {}
