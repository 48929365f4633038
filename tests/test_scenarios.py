"""Clinical scenario tests: the example timelines in examples/ run through the engine.

Each test states what the clinical reference (shared/clinical/iec-hs-reference.md) and the
guideline expect for one patient course, and asserts it exactly: the path through the machine,
the step at which each transition and each alert happens, alert severities, and the guard and
criterion verdicts that explain the decision. The last tests run every example through
`iechs run --format json` and check the documented output structure and its determinism.
"""

from __future__ import annotations

import itertools
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from iechs import Engine, load_timeline, parse_timeline, run_to_json
from iechs.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

STATE_IDS = {
    "surveillance",
    "suspected",
    "first_line_steroids",
    "second_line_anakinra",
    "refractory_ruxolitinib",
    "salvage",
    "resolved",
    "closed",
}
SEVERITY = {
    "il6_monotherapy": "critical",
    "immunosuppression_before_antimicrobials": "critical",
    "tocilizumab_with_icans": "warning",
    "off_guideline_therapy": "warning",
    "treatment_unconfirmed": "warning",
    "reassessment_overdue": "warning",
    "escalation_due": "warning",
    "missing_data": "info",
    "high_risk_patient": "info",
}
SCENARIO_FILES = (
    "no-response-48h-anakinra.json",
    "refractory-ruxolitinib-salvage.json",
    "infection-antimicrobials-before-steroids.json",
    "tocilizumab-monotherapy-deviation.json",
    "tocilizumab-with-icans.json",
    "early-crs-ferritin-rise-surveillance.json",
    "recurrence-after-resolution.json",
    "missing-fibrinogen.json",
    "high-risk-cd28-tet2.json",
    "reassessment-overdue.json",
)

Doc = dict[str, Any]


# --- helpers ---------------------------------------------------------------------------------


def run_doc(engine: Engine, data: Any) -> Doc:
    """Run a timeline (file name in examples/, or a parsed JSON object) to the run document."""
    if isinstance(data, str):
        timeline = load_timeline(EXAMPLES / data, engine.guideline)
    else:
        timeline = parse_timeline(data, engine.guideline)
    episode = engine.run(timeline)
    return run_to_json(engine.identity, timeline.patient.id, episode.decisions)


def example_data(name: str) -> Any:
    return json.loads((EXAMPLES / name).read_text(encoding="utf-8"))


def transitions(doc: Doc) -> list[tuple[int, str, str, str]]:
    """(step, at, from, to) of every step that changed the state."""
    return [
        (s["step"], s["at"], s["from"], s["to"])
        for s in doc["steps"]
        if s["from"] is not None and s["from"] != s["to"]
    ]


def alert_list(doc: Doc) -> list[tuple[int, str, str, str]]:
    """(step, at, code, severity) of every alert, in order."""
    return [
        (s["step"], a["at"], a["code"], a["severity"]) for s in doc["steps"] for a in s["alerts"]
    ]


def verdicts(step: Doc, *names: str) -> dict[str, str]:
    return {n: step["criteria"][n]["result"] for n in names}


def guards(step: Doc) -> list[tuple[str, str]]:
    return [(g["transition"], g["result"]) for g in step["guards"]]


def rec_ids(step: Doc) -> list[str]:
    return [r["id"] for r in step["recommendations"]]


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


# --- (a) no response to corticosteroids at 48 h: anakinra ------------------------------------


def test_no_response_at_48h_escalates_to_anakinra(engine: Engine) -> None:
    doc = run_doc(engine, "no-response-48h-anakinra.json")
    assert doc["patient"] == {"id": "nr48-anakinra"}
    assert doc["path"] == [
        "surveillance",
        "suspected",
        "first_line_steroids",
        "second_line_anakinra",
        "resolved",
        "closed",
    ]
    assert doc["final_state"] == "closed"
    assert transitions(doc) == [
        (26, "2026-04-11T09:00:00Z", "surveillance", "suspected"),
        (34, "2026-04-12T10:00:00Z", "suspected", "first_line_steroids"),
        (51, "2026-04-14T11:00:00Z", "first_line_steroids", "second_line_anakinra"),
        (59, "2026-04-15T10:00:00Z", "second_line_anakinra", "resolved"),
        (60, "2026-05-01T08:00:00Z", "resolved", "closed"),
    ]
    # Escalation is due once, at the first event 48 h after dexamethasone without response;
    # on anakinra, ferritin falls (16,800 -> 11,200) and the engine asks for a response
    # assessment before it can call it a response (once the 08:00 order set is complete).
    # The day-11 labs come five days after the last CRS assessment: the CRS grade is stale
    # (older than 72 h), so the engine asks for it; the assessment an hour later decides.
    assert alert_list(doc) == [
        (25, "2026-04-11T08:00:00Z", "missing_data", "info"),
        (50, "2026-04-14T10:00:00Z", "escalation_due", "warning"),
        (57, "2026-04-15T08:00:00Z", "missing_data", "info"),
    ]
    assert doc["steps"][25]["alerts"][0]["measure"] == ["CRS grade (assessment)"]
    assert doc["steps"][57]["alerts"][0]["measure"] == ["response assessment on the current line"]
    steps = doc["steps"]

    # The 08:00 panel is one order set, decided at its last value (LDH); with a fresh CRS
    # assessment at 09:00 (grade 0, after a peak of 2): ferritin raised and not falling with
    # LDH rising, after CRS: suspected.
    panel = steps[25]
    assert panel["event"]["code"] == "ldh"
    assert [steps[i]["event"]["code"] for i in (22, 23, 24)] == ["ast", "ferritin", "fibrinogen"]
    assert all(steps[i]["to"] == "surveillance" and steps[i]["guards"] == [] for i in (22, 23, 24))
    assert steps[24]["later"] == [panel["event"]]
    assert guards(panel) == [("surveillance -> suspected", "UNKNOWN")]
    onset = steps[26]
    assert onset["event"]["kind"] == "assessment"
    assert verdicts(
        onset,
        "ferritin_raised",
        "ferritin_not_falling",
        "ldh_or_ast_rising",
        "lab_signature",
        "crs_resolving_or_absent",
        "signature_outside_active_crs",
        "screening_trigger",
    ) == {
        "ferritin_raised": "TRUE",
        "ferritin_not_falling": "TRUE",
        "ldh_or_ast_rising": "TRUE",
        "lab_signature": "TRUE",
        "crs_resolving_or_absent": "TRUE",
        "signature_outside_active_crs": "TRUE",
        "screening_trigger": "TRUE",
    }

    # First line: criteria met (AST > 5x ULN, fibrinogen < 150 mg/dL), no infection.
    first = steps[34]
    assert first["machine_event"] == "give_corticosteroid"
    assert guards(first) == [("suspected -> first_line_steroids", "TRUE")]
    assert verdicts(first, "iec_hs_identified", "infection_gate_open") == {
        "iec_hs_identified": "TRUE",
        "infection_gate_open": "TRUE",
    }
    assert "dexamethasone-high-dose" in rec_ids(first)
    dex = next(r for r in first["recommendations"] if r["id"] == "dexamethasone-high-dose")
    assert dex["dose"] == {"min": 10, "max": 20, "unit": "mg"}

    # 46 h on steroids, response stable: escalation is allowed (the summary's 24-48 h starts
    # at 24 h) but not yet due (48 h).
    before = steps[49]
    assert before["at"] == "2026-04-14T08:00:00Z"
    assert before["alerts"] == []
    assert verdicts(
        before, "min_time_on_line_elapsed", "escalation_indicated", "escalation_overdue"
    ) == {
        "min_time_on_line_elapsed": "TRUE",
        "escalation_indicated": "TRUE",
        "escalation_overdue": "FALSE",
    }
    assert [a["code"] for a in before["actions"]][:1] == ["add_anakinra"]
    # 48 h, response still stable and ferritin rising: escalation due.
    due = steps[50]
    assert due["event"] == {
        "at": "2026-04-14T10:00:00Z",
        "kind": "response",
        "assessment": "stable",
    }
    assert verdicts(
        due,
        "clinical_response_reported",
        "response_achieved",
        "min_time_on_line_elapsed",
        "no_response",
        "inadequate_response",
        "escalation_indicated",
    ) == {
        "clinical_response_reported": "FALSE",
        "response_achieved": "FALSE",
        "min_time_on_line_elapsed": "TRUE",
        "no_response": "TRUE",
        "inadequate_response": "TRUE",
        "escalation_indicated": "TRUE",
    }
    assert due["criteria"]["min_time_on_line_elapsed"]["reads"][0]["value"] == 48
    assert verdicts(due, "escalation_overdue") == {"escalation_overdue": "TRUE"}
    assert due["alerts"][0]["message"].startswith("Escalation due in First line")

    anakinra = steps[51]
    assert anakinra["machine_event"] == "give_anakinra"
    assert anakinra["transition"]["label"] == (
        "anakinra added (no response after the minimum time, or worsening)"
    )
    assert anakinra["deviations"] == []
    assert rec_ids(anakinra) == ["anakinra-added", "anakinra-adult", "anakinra-paediatric"]

    # Response on anakinra: clinician says improving and ferritin falls.
    response = steps[59]
    assert verdicts(response, "clinical_response_reported", "ferritin_falling") == {
        "clinical_response_reported": "TRUE",
        "ferritin_falling": "TRUE",
    }


def test_anakinra_before_24h_without_worsening_is_a_deviation(engine: Engine) -> None:
    """Same patient, but anakinra 12 h after dexamethasone with no worsening recorded: the
    summary adds targeted cytokine blockade for patients not responding within 24-48 h, so
    12 h is too early without worsening: a deviation, and the state stays on steroids."""
    data = example_data("no-response-48h-anakinra.json")
    for ev in data["events"]:
        if ev["kind"] == "treatment" and ev["drug"] == "anakinra":
            ev["at"] = "2026-04-12T22:00:00Z"
    doc = run_doc(engine, data)
    step = next(s for s in doc["steps"] if s["event"].get("drug") == "anakinra")
    assert (step["from"], step["to"]) == ("first_line_steroids", "first_line_steroids")
    assert guards(step) == [("first_line_steroids -> second_line_anakinra", "FALSE")]
    assert [(a["code"], a["severity"]) for a in step["alerts"]] == [
        ("off_guideline_therapy", "warning")
    ]
    assert step["deviations"] == [
        {
            "drug": "anakinra",
            "drug_class": "il1_blockade",
            "reason": "anakinra added (no response after the minimum time, or worsening): "
            "guard FALSE",
            "alert": "off_guideline_therapy",
        }
    ]
    # The deviation changes nothing: at 48 h escalation is still due, and the patient, still
    # on the first line, responds the next day.
    assert alert_list(doc) == [
        (25, "2026-04-11T08:00:00Z", "missing_data", "info"),
        (36, "2026-04-12T22:00:00Z", "off_guideline_therapy", "warning"),
        (51, "2026-04-14T10:00:00Z", "escalation_due", "warning"),
    ]
    assert doc["path"] == ["surveillance", "suspected", "first_line_steroids", "resolved", "closed"]


# Regression: a trend compares the last two values (a pre-peak value hid a fall).
def test_steroid_responder_is_not_escalated(engine: Engine) -> None:
    # Patient (c) once antimicrobials and dexamethasone have started (2026-06-10 21:30):
    # ferritin 12,500 -> 7,200 -> 4,100 ng/mL and the clinician reports improvement.
    data = example_data("infection-antimicrobials-before-steroids.json")
    data["events"] = [e for e in data["events"] if e["kind"] != "close"]

    def assessment(when: str) -> dict[str, Any]:
        return {"at": when, "kind": "assessment", "crs_grade": 0, "infection": "none"}

    def ferritin(when: str, value: float) -> dict[str, Any]:
        return {
            "at": when,
            "kind": "observation",
            "code": "ferritin",
            "value": value,
            "unit": "ng/mL",
        }

    data["events"] += [
        assessment("2026-06-11T20:00:00Z"),
        ferritin("2026-06-12T08:00:00Z", 7200),
        assessment("2026-06-12T08:00:00Z"),
        {"at": "2026-06-12T08:00:00Z", "kind": "response", "assessment": "improving"},
        assessment("2026-06-12T20:00:00Z"),
        ferritin("2026-06-13T08:00:00Z", 4100),
        assessment("2026-06-13T08:00:00Z"),
    ]
    doc = run_doc(engine, data)
    assert [a["code"] for a in doc["alerts"] if a["code"] == "escalation_due"] == []
    assert doc["final_state"] == "resolved"


# --- (b) refractory: ruxolitinib, then salvage -----------------------------------------------


def test_refractory_course_reaches_ruxolitinib_then_salvage(engine: Engine) -> None:
    doc = run_doc(engine, "refractory-ruxolitinib-salvage.json")
    assert doc["path"] == [
        "surveillance",
        "suspected",
        "first_line_steroids",
        "second_line_anakinra",
        "refractory_ruxolitinib",
        "salvage",
        "resolved",
        "closed",
    ]
    assert doc["final_state"] == "closed"
    assert transitions(doc) == [
        (20, "2026-05-09T08:00:00Z", "surveillance", "suspected"),
        (29, "2026-05-10T09:00:00Z", "suspected", "first_line_steroids"),
        (46, "2026-05-12T10:00:00Z", "first_line_steroids", "second_line_anakinra"),
        (55, "2026-05-13T10:00:00Z", "second_line_anakinra", "refractory_ruxolitinib"),
        (72, "2026-05-15T12:00:00Z", "refractory_ruxolitinib", "salvage"),
        (87, "2026-05-17T09:00:00Z", "salvage", "resolved"),
        (93, "2026-06-15T09:00:00Z", "resolved", "closed"),
    ]
    assert alert_list(doc) == [
        (45, "2026-05-12T09:00:00Z", "escalation_due", "warning"),
        (54, "2026-05-13T09:00:00Z", "escalation_due", "warning"),
        (71, "2026-05-15T10:00:00Z", "escalation_due", "warning"),
        (78, "2026-05-16T07:00:00Z", "missing_data", "info"),
    ]
    steps = doc["steps"]

    # Tocilizumab for CRS on day 2 (no indication given): inferred as CRS, not a deviation.
    toci = steps[3]
    assert toci["event"]["drug"] == "tocilizumab"
    assert toci["inferred"]["indication"] == "crs"
    assert toci["machine_event"] is None
    assert (toci["alerts"], toci["deviations"]) == ([], [])

    # Worsening on anakinra after 23 h: escalation allowed before the minimum time.
    worse = steps[54]
    assert worse["event"]["assessment"] == "worsening"
    assert verdicts(worse, "min_time_on_line_elapsed", "worsening", "escalation_indicated") == {
        "min_time_on_line_elapsed": "FALSE",
        "worsening": "TRUE",
        "escalation_indicated": "TRUE",
    }
    rux = steps[55]
    assert rux["machine_event"] == "give_ruxolitinib"
    assert rux["transition"]["label"] == (
        "ruxolitinib added (persistent or worsening despite second line)"
    )
    assert "ruxolitinib" in rec_ids(rux)

    # 48 h on ruxolitinib without response: salvage (emapalumab) is sanctioned.
    assert steps[71]["event"]["assessment"] == "stable"
    assert verdicts(steps[71], "inadequate_response", "escalation_indicated") == {
        "inadequate_response": "TRUE",
        "escalation_indicated": "TRUE",
    }
    salvage = steps[72]
    assert salvage["event"]["drug"] == "emapalumab"
    assert salvage["machine_event"] == "give_salvage"
    assert guards(salvage) == [("refractory_ruxolitinib -> salvage", "TRUE")]
    assert rec_ids(salvage) == ["emapalumab", "etoposide", "clinical-trial"]

    # Ferritin falling on salvage but no response assessment yet: UNKNOWN, ask for it (at the
    # last fact of the 07:00 order set).
    missing = steps[78]["alerts"][0]
    assert missing["measure"] == ["response assessment on the current line"]
    assert guards(steps[78]) == [("salvage -> resolved", "UNKNOWN")]
    assert "measure" in [a["code"] for a in steps[78]["actions"]]


def test_lines_are_never_skipped(engine: Engine) -> None:
    # Ruxolitinib straight after corticosteroids, with worsening: still a deviation.
    data = example_data("refractory-ruxolitinib-salvage.json")
    events = data["events"]
    for ev in events:
        if ev["kind"] == "response" and ev["at"] == "2026-05-12T09:00:00Z":
            ev["assessment"] = "worsening"
        if ev["kind"] == "treatment" and ev["drug"] == "anakinra":
            ev["drug"] = "ruxolitinib"
            ev["dose"] = 10
            ev["route"] = "PO"
    data["events"] = [e for e in events if e["at"] < "2026-05-12T11:00:00Z"]
    doc = run_doc(engine, data)
    assert doc["path"] == ["surveillance", "suspected", "first_line_steroids"]
    last = doc["steps"][-1]
    assert last["event"]["drug"] == "ruxolitinib"
    assert last["deviations"] == [
        {
            "drug": "ruxolitinib",
            "drug_class": "jak_inhibitor",
            "reason": "skips a line: line 3 while on line 1",
            "alert": "off_guideline_therapy",
        }
    ]


# --- (c) infection suspected: antimicrobials before immunosuppression -------------------------


def test_steroids_blocked_until_antimicrobials_start(engine: Engine) -> None:
    doc = run_doc(engine, "infection-antimicrobials-before-steroids.json")
    assert doc["path"] == ["surveillance", "suspected", "first_line_steroids", "closed"]
    assert doc["final_state"] == "closed"
    assert transitions(doc) == [
        (11, "2026-06-10T08:00:00Z", "surveillance", "suspected"),
        (21, "2026-06-10T21:30:00Z", "suspected", "first_line_steroids"),
        (29, "2026-06-11T14:00:00Z", "first_line_steroids", "closed"),
    ]
    assert alert_list(doc) == [
        (19, "2026-06-10T20:00:00Z", "immunosuppression_before_antimicrobials", "critical")
    ]
    steps = doc["steps"]

    blocked = steps[19]
    assert blocked["event"]["drug"] == "dexamethasone"
    assert blocked["machine_event"] == "give_corticosteroid"
    assert (blocked["from"], blocked["to"]) == ("suspected", "suspected")
    assert guards(blocked) == [("suspected -> first_line_steroids", "FALSE")]
    assert verdicts(
        blocked, "iec_hs_identified", "infection_drives_picture", "infection_gate_open"
    ) == {
        "iec_hs_identified": "TRUE",
        "infection_drives_picture": "TRUE",
        "infection_gate_open": "FALSE",
    }
    assert blocked["deviations"] == [
        {
            "drug": "dexamethasone",
            "drug_class": "corticosteroid",
            "reason": "infection not yet treated",
            "alert": "immunosuppression_before_antimicrobials",
        }
    ]
    assert "start antimicrobials first" in blocked["alerts"][0]["message"]

    antimicrobial = steps[20]
    assert antimicrobial["event"]["drug"] == "piperacillin-tazobactam"
    assert antimicrobial["machine_event"] is None
    assert antimicrobial["to"] == "suspected"
    assert (antimicrobial["alerts"], antimicrobial["deviations"]) == ([], [])

    started = steps[21]
    assert started["machine_event"] == "give_corticosteroid"
    assert guards(started) == [("suspected -> first_line_steroids", "TRUE")]
    assert verdicts(started, "antimicrobials_started", "infection_gate_open") == {
        "antimicrobials_started": "TRUE",
        "infection_gate_open": "TRUE",
    }
    assert "antimicrobials-alongside" in rec_ids(started)

    # The next scheduled dose continues the line: no transition, no alert.
    dose = steps[22]
    assert dose["event"]["at"] == "2026-06-11T03:30:00Z"
    assert (dose["from"], dose["to"]) == ("first_line_steroids", "first_line_steroids")
    assert (dose["alerts"], dose["deviations"]) == ([], [])


# --- (d) IL-6 blockade as monotherapy during IEC-HS ------------------------------------------


def test_tocilizumab_alone_during_iec_hs_is_il6_monotherapy(engine: Engine) -> None:
    doc = run_doc(engine, "tocilizumab-monotherapy-deviation.json")
    assert doc["path"] == ["surveillance", "suspected", "first_line_steroids"]
    assert doc["final_state"] == "first_line_steroids"
    assert transitions(doc) == [
        (30, "2026-07-09T09:00:00Z", "surveillance", "suspected"),
        (41, "2026-07-10T21:00:00Z", "suspected", "first_line_steroids"),
    ]
    # Tocilizumab at 19:30 with no corticosteroid within 24 h either side: monotherapy. The
    # next dose (03:00) has dexamethasone 18 h after it: with a steroid, but IL-6 blockade is
    # still not a line. Steroids start only the next evening, the reassessment clock runs out
    # twice while the patient waits in `suspected`.
    assert alert_list(doc) == [
        (38, "2026-07-09T19:30:00Z", "il6_monotherapy", "critical"),
        (39, "2026-07-10T03:00:00Z", "off_guideline_therapy", "warning"),
        (40, "2026-07-10T08:00:00Z", "reassessment_overdue", "warning"),
        (41, "2026-07-10T21:00:00Z", "reassessment_overdue", "warning"),
    ]
    steps = doc["steps"]

    # Day 3: tocilizumab for CRS is outside this guideline, not IL-6 monotherapy for IEC-HS.
    assert steps[3]["inferred"]["indication"] == "crs"
    assert steps[3]["alerts"] == []

    mono = steps[38]
    assert mono["event"]["drug"] == "tocilizumab"
    assert "indication" not in mono["event"]
    assert mono["inferred"] == {
        "indication": "iec_hs",
        "reason": "IEC-HS criteria met",
    }
    assert mono["machine_event"] is None
    assert (mono["from"], mono["to"]) == ("suspected", "suspected")
    assert mono["deviations"] == [
        {
            "drug": "tocilizumab",
            "drug_class": "il6_blockade",
            "reason": "IL-6 blockade without a corticosteroid",
            "alert": "il6_monotherapy",
        }
    ]
    assert mono["alerts"][0]["cite"] == ["seed-news-2026"]

    # With dexamethasone within 24 h after it (a retrospective run looks both ways) it is no
    # longer monotherapy, but still not a line; it continues the same tocilizumab therapy.
    later = steps[39]
    assert (later["from"], later["to"]) == ("suspected", "suspected")
    assert later["deviations"][0]["reason"] == "IL-6 blockade is not a line of this guideline"
    assert later["later"][0]["drug"] == "dexamethasone"
    assert later["inferred"]["reason"].startswith("continues the tocilizumab therapy")


def test_tocilizumab_alone_with_untreated_infection_raises_both_critical_alerts(
    engine: Engine,
) -> None:
    data = example_data("tocilizumab-monotherapy-deviation.json")
    for ev in data["events"]:
        if ev["kind"] == "assessment" and ev["at"] == "2026-07-09T19:00:00Z":
            ev["infection"] = "suspected"
            ev["antimicrobials"] = False
    doc = run_doc(engine, data)
    mono = doc["steps"][38]
    assert mono["event"]["drug"] == "tocilizumab"
    assert (mono["from"], mono["to"]) == ("suspected", "suspected")
    # Both safety checks hold independently: one does not hide the other.
    assert sorted((a["code"], a["severity"]) for a in mono["alerts"]) == [
        ("il6_monotherapy", "critical"),
        ("immunosuppression_before_antimicrobials", "critical"),
    ]
    assert sorted(d["alert"] for d in mono["deviations"]) == [
        "il6_monotherapy",
        "immunosuppression_before_antimicrobials",
    ]
    # The infection is ruled out the next morning: the steroid that evening starts line 1.
    assert doc["path"] == ["surveillance", "suspected", "first_line_steroids"]
    assert doc["steps"][41]["event"]["drug"] == "dexamethasone"
    assert doc["steps"][41]["to"] == "first_line_steroids"


# --- (e) tocilizumab while ICANS is present --------------------------------------------------


def test_tocilizumab_with_icans_warns(engine: Engine) -> None:
    doc = run_doc(engine, "tocilizumab-with-icans.json")
    assert doc["path"] == ["surveillance", "closed"]
    assert doc["final_state"] == "closed"
    assert alert_list(doc) == [(8, "2026-08-06T21:00:00Z", "tocilizumab_with_icans", "warning")]
    steps = doc["steps"]
    toci = steps[8]
    assert toci["event"]["drug"] == "tocilizumab"
    assert toci["inferred"] == {
        "indication": "crs",
        "reason": "CRS active and IEC-HS criteria not met; treats CRS (outside this guideline)",
    }
    assert toci["deviations"] == []
    assert toci["alerts"][0]["message"] == (
        "Tocilizumab while ICANS is present: it may worsen neurologic symptoms; use with caution."
    )
    # Dexamethasone for ICANS is outside this guideline: no event, no alert.
    dex = steps[15]
    assert dex["event"]["indication"] == "icans"
    assert dex["machine_event"] is None
    assert (dex["alerts"], dex["deviations"]) == ([], [])


def test_tocilizumab_without_icans_does_not_warn(engine: Engine) -> None:
    data = example_data("tocilizumab-with-icans.json")
    for ev in data["events"]:
        if ev["kind"] == "assessment" and ev["at"] == "2026-08-06T20:00:00Z":
            ev["icans_grade"] = 0
    doc = run_doc(engine, data)
    assert doc["steps"][8]["event"]["drug"] == "tocilizumab"
    assert doc["steps"][8]["alerts"] == []


# --- (f) early CRS: ferritin rises with active CRS -------------------------------------------


def test_early_crs_ferritin_rise_stays_in_surveillance(engine: Engine) -> None:
    doc = run_doc(engine, "early-crs-ferritin-rise-surveillance.json")
    assert doc["path"] == ["surveillance", "closed"]
    assert doc["final_state"] == "closed"
    assert alert_list(doc) == []
    steps = doc["steps"]
    assert {s["to"] for s in steps[:-1]} == {"surveillance"}

    # Day 6, CRS grade 2 at its peak: the lab signature is there, but CRS is active and
    # escalating, and ferritin > 10,000 ng/mL alone is not the CARTOX rule.
    day6 = steps[25]
    assert day6["at"] == "2026-09-13T08:00:00Z"
    assert verdicts(
        day6,
        "lab_signature",
        "crs_resolving_or_absent",
        "signature_outside_active_crs",
        "ferritin_above_10000",
        "organ_toxicity_count_2",
        "cartox_hlh",
        "hines_identification",
        "screening_trigger",
    ) == {
        "lab_signature": "TRUE",
        "crs_resolving_or_absent": "FALSE",
        "signature_outside_active_crs": "FALSE",
        "ferritin_above_10000": "TRUE",
        "organ_toxicity_count_2": "FALSE",
        "cartox_hlh": "FALSE",
        "hines_identification": "FALSE",
        "screening_trigger": "FALSE",
    }
    assert guards(day6) == [("surveillance -> suspected", "FALSE")]

    # Tocilizumab and dexamethasone without an indication during active CRS treat CRS.
    for i, drug in ((13, "tocilizumab"), (26, "dexamethasone")):
        assert steps[i]["event"]["drug"] == drug
        assert steps[i]["inferred"]["indication"] == "crs"
        assert steps[i]["machine_event"] is None
        assert (steps[i]["alerts"], steps[i]["deviations"]) == ([], [])

    # Day 7, CRS grade 1 (below its peak): ferritin now falls (12,400 -> 9,100), which alone
    # rules out the signature (LDH and AST need not be read).
    day7 = steps[32]
    assert day7["event"]["crs_grade"] == 1
    assert verdicts(
        day7, "crs_below_peak", "ferritin_not_falling", "lab_signature", "screening_trigger"
    ) == {
        "crs_below_peak": "TRUE",
        "ferritin_not_falling": "FALSE",
        "lab_signature": "FALSE",
        "screening_trigger": "FALSE",
    }
    assert "ldh_or_ast_rising" not in day7["criteria"]


# --- (g) recurrence after resolution ---------------------------------------------------------


def test_recurrence_after_resolution(engine: Engine) -> None:
    doc = run_doc(engine, "recurrence-after-resolution.json")
    assert doc["path"] == [
        "surveillance",
        "suspected",
        "first_line_steroids",
        "resolved",
        "suspected",
        "first_line_steroids",
        "resolved",
        "closed",
    ]
    assert doc["final_state"] == "closed"
    assert transitions(doc) == [
        (12, "2026-10-13T08:00:00Z", "surveillance", "suspected"),
        (21, "2026-10-14T09:00:00Z", "suspected", "first_line_steroids"),
        (37, "2026-10-16T08:00:00Z", "first_line_steroids", "resolved"),
        (59, "2026-10-23T07:00:00Z", "resolved", "suspected"),
        (68, "2026-10-24T09:00:00Z", "suspected", "first_line_steroids"),
        (83, "2026-10-26T08:00:00Z", "first_line_steroids", "resolved"),
        (89, "2026-11-20T09:00:00Z", "resolved", "closed"),
    ]
    # Second course: ferritin falls before the clinician's next response assessment.
    assert alert_list(doc) == [(81, "2026-10-26T07:00:00Z", "missing_data", "info")]
    steps = doc["steps"]

    # While in remission, falling ferritin keeps the patient in `resolved` (each morning's
    # panel is one order set, decided at its last value, LDH).
    for i in (43, 48, 53):
        assert steps[i]["event"]["code"] == "ldh"
        assert guards(steps[i]) == [("resolved -> suspected", "FALSE")]
        assert [st["guards"] for st in steps[i - 4 : i]] == [[], [], [], []]

    recurrence = steps[59]
    assert steps[57]["event"] == {
        "at": "2026-10-23T07:00:00Z",
        "kind": "observation",
        "code": "ferritin",
        "value": 2600.0,
        "unit": "ng/mL",
    }
    assert recurrence["event"]["code"] == "ldh"
    assert recurrence["transition"]["label"] == (
        "recurrence (criteria or laboratory signature return, ferritin not falling)"
    )
    assert verdicts(
        recurrence, "lab_signature", "crs_resolving_or_absent", "screening_trigger", "recurrence"
    ) == {
        "lab_signature": "TRUE",
        "crs_resolving_or_absent": "TRUE",
        "screening_trigger": "TRUE",
        "recurrence": "TRUE",
    }
    assert rec_ids(recurrence) == ["workup-labs", "differential", "prompt-recognition"]

    # A new episode restarts at the first line: steroids are sanctioned again, not a deviation.
    second = steps[68]
    assert second["machine_event"] == "give_corticosteroid"
    assert second["deviations"] == []


# Regression: recurrence needs ferritin no longer falling, not criteria alone.
def test_responding_patient_with_haemophagocytosis_stays_resolved(engine: Engine) -> None:
    # Patient (a) with marrow haemophagocytosis found before steroids: the course and the
    # response are the same, so the path must be the same.
    data = example_data("no-response-48h-anakinra.json")
    i = next(n for n, e in enumerate(data["events"]) if e.get("drug") == "dexamethasone")
    data["events"].insert(
        i,
        {
            "at": "2026-04-12T09:00:00Z",
            "kind": "finding",
            "code": "hemophagocytosis",
            "present": True,
        },
    )
    doc = run_doc(engine, data)
    assert doc["path"] == [
        "surveillance",
        "suspected",
        "first_line_steroids",
        "second_line_anakinra",
        "resolved",
        "closed",
    ]


# --- (h) missing fibrinogen ------------------------------------------------------------------


def test_missing_fibrinogen_is_asked_for(engine: Engine) -> None:
    """Dexamethasone is given while fibrinogen has never been measured: the ASTCT criteria are
    UNKNOWN, not FALSE. UNKNOWN never makes care off-guideline: the state follows the
    clinician into the first line, flagged `treatment_unconfirmed` naming fibrinogen; the
    fibrinogen an hour later (130 mg/dL, below 150) confirms it."""
    doc = run_doc(engine, "missing-fibrinogen.json")
    assert doc["path"] == ["surveillance", "suspected", "first_line_steroids"]
    assert doc["final_state"] == "first_line_steroids"
    assert transitions(doc) == [
        (14, "2026-11-10T08:00:00Z", "surveillance", "suspected"),
        (22, "2026-11-11T09:00:00Z", "suspected", "first_line_steroids"),
    ]
    assert alert_list(doc) == [
        (22, "2026-11-11T09:00:00Z", "treatment_unconfirmed", "warning"),
        (25, "2026-11-11T22:00:00Z", "reassessment_overdue", "warning"),
    ]
    steps = doc["steps"]

    # AST/ALT below 5x ULN, no haemophagocytosis recorded, fibrinogen never measured.
    early = steps[22]
    assert early["event"]["drug"] == "dexamethasone"
    assert (early["from"], early["to"]) == ("suspected", "first_line_steroids")
    assert guards(early) == [("suspected -> first_line_steroids", "UNKNOWN")]
    assert verdicts(
        early,
        "fibrinogen_below_150",
        "transaminases_above_5x_uln",
        "hemophagocytosis",
        "hines_identification",
        "cartox_hlh",
        "iec_hs_identified",
    ) == {
        "fibrinogen_below_150": "UNKNOWN",
        "transaminases_above_5x_uln": "FALSE",
        "hemophagocytosis": "FALSE",
        "hines_identification": "UNKNOWN",
        "cartox_hlh": "FALSE",
        "iec_hs_identified": "UNKNOWN",
    }
    unconfirmed = early["alerts"][0]
    assert unconfirmed["measure"] == ["fibrinogen"]
    assert early["deviations"] == []

    # Fibrinogen 1.3 g/L is converted to 130 mg/dL (< 150): the criteria are met, and the
    # steroid is confirmed; the next dose continues the line quietly.
    fib = steps[23]
    assert (fib["event"]["value"], fib["event"]["unit"]) == (130.0, "mg/dL")
    assert fib["notes"] == [
        "dexamethasone: corticosteroid started (criteria met, no untreated infection) "
        "confirmed by fresh data"
    ]
    assert (fib["alerts"], fib["deviations"]) == ([], [])
    dose = steps[24]
    assert dose["event"]["drug"] == "dexamethasone"
    assert (dose["alerts"], dose["deviations"]) == ([], [])


def test_unconfirmed_steroid_becomes_a_deviation_when_fresh_data_say_no(
    engine: Engine,
) -> None:
    """The same patient, but the fibrinogen measured after the steroid is normal (350 mg/dL)
    and nothing else meets the criteria: the data do not support IEC-HS treatment, so the
    steroid is recorded as a deviation then (not before, when the data were missing)."""
    data = example_data("missing-fibrinogen.json")
    for ev in data["events"]:
        if ev.get("code") == "fibrinogen":
            ev["value"] = 3.5
    doc = run_doc(engine, data)
    assert doc["path"] == ["surveillance", "suspected", "first_line_steroids"]
    fib = next(s for s in doc["steps"] if s["event"].get("code") == "fibrinogen")
    assert [d["alert"] for d in fib["deviations"]] == ["off_guideline_therapy"]
    assert "not confirmed by fresh data" in fib["deviations"][0]["reason"]
    assert [a["code"] for a in doc["alerts"]].count("off_guideline_therapy") == 1


# --- (i) high-risk patient -------------------------------------------------------------------


def test_high_risk_patient_flagged_at_start(engine: Engine) -> None:
    doc = run_doc(engine, "high-risk-cd28-tet2.json")
    assert doc["path"] == ["surveillance", "closed"]
    assert doc["final_state"] == "closed"
    assert alert_list(doc) == [(0, "2026-12-01T09:00:00Z", "high_risk_patient", "info")]
    start = doc["steps"][0]
    assert start["event"] == {"kind": "start", "patient": "high-risk-cd28-tet2"}
    assert (start["from"], start["to"]) == (None, "surveillance")
    assert start["alerts"][0]["message"] == (
        "High risk of IEC-HS: CAR product with a CD28 costimulatory domain; TET2 mutation."
    )
    high_risk = start["criteria"]["high_risk"]
    assert high_risk["result"] == "TRUE"
    assert high_risk["reads"] == [
        {"what": "risk_factors", "value": ["cd28_costimulation", "tet2_mutation"]}
    ]

    # The same patient with a 4-1BB product and no listed factor is not high risk.
    data = example_data("high-risk-cd28-tet2.json")
    data["patient"]["product"]["costimulatory_domain"] = "4-1BB"
    data["patient"]["risk_factors"] = []
    low = parse_timeline(data, engine.guideline).patient
    assert engine.start(low).alerts == []
    # Either factor alone is enough (institutional threshold: one factor).
    data["patient"]["risk_factors"] = ["tet2_mutation"]
    only_tet2 = engine.start(parse_timeline(data, engine.guideline).patient)
    assert [a.message for a in only_tet2.alerts] == ["High risk of IEC-HS: TET2 mutation."]


# --- (j) reassessment overdue ----------------------------------------------------------------


def test_reassessment_overdue(engine: Engine) -> None:
    doc = run_doc(engine, "reassessment-overdue.json")
    assert doc["path"] == ["surveillance", "suspected", "first_line_steroids"]
    assert doc["final_state"] == "first_line_steroids"
    # Overnight nobody reassessed after dexamethasone at 19:00: the 08:00 labs are the first
    # order set past 07:00 (decided at its last value). The 11:00 assessment is itself late
    # (due by 09:00).
    assert alert_list(doc) == [
        (23, "2027-01-12T08:00:00Z", "reassessment_overdue", "warning"),
        (26, "2027-01-13T11:00:00Z", "reassessment_overdue", "warning"),
    ]
    messages = [a["message"] for a in doc["alerts"]]
    assert messages == [
        "Reassessment overdue: last at 2027-01-11T19:00:00Z, due by 2027-01-12T07:00:00Z "
        "(every 12 h).",
        "Reassessment overdue: last at 2027-01-12T21:00:00Z, due by 2027-01-13T09:00:00Z "
        "(every 12 h).",
    ]
    assert doc["steps"][23]["event"]["kind"] == "observation"
    assert all(doc["steps"][i]["later"] for i in range(19, 23))  # the rest of the set follows
    assert doc["steps"][26]["event"]["kind"] == "assessment"

    # A host asking "what is due now" (no new data) gets each duty once, when it falls due:
    # at 18:00 nothing (47 h on dexamethasone, last assessment 11:00); at 23:30 the next
    # reassessment is overdue and, 52 h on the line without a response, escalation is due.
    timeline = load_timeline(EXAMPLES / "reassessment-overdue.json", engine.guideline)
    episode = engine.run(timeline)
    assert episode.advance(at("2027-01-13T18:00:00Z")).alerts == ()
    due = episode.advance(at("2027-01-13T23:30:00Z"))
    assert [(a.code, a.severity) for a in due.alerts] == [
        ("reassessment_overdue", "warning"),
        ("escalation_due", "warning"),
    ]
    assert due.alerts[0].message == (
        "Reassessment overdue: last at 2027-01-13T11:00:00Z, due by 2027-01-13T23:00:00Z "
        "(every 12 h)."
    )
    assert episode.advance(at("2027-01-14T00:30:00Z")).alerts == ()
    assert episode.state == "first_line_steroids"


# --- every example through the CLI -----------------------------------------------------------


def test_scenario_examples_exist() -> None:
    present = {p.name for p in EXAMPLES.glob("*.json")}
    assert set(SCENARIO_FILES) <= present
    ids = [example_data(n)["patient"]["id"] for n in SCENARIO_FILES]
    assert all(i.strip() for i in ids)
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.json")), ids=lambda p: p.name)
def test_cli_run_json_structure_and_determinism(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", str(path), "--format", "json"]) == 0
    first = capsys.readouterr()
    assert first.err == ""
    assert main(["run", str(path), "--format", "json"]) == 0
    second = capsys.readouterr()
    assert first.out == second.out  # byte-identical: no wall clock, no unordered output

    doc = json.loads(first.out)
    source = json.loads(path.read_text(encoding="utf-8"))
    patient_id = doc["patient"]["id"]
    assert isinstance(patient_id, str)
    assert patient_id.strip()

    assert set(doc["guideline"]) == {"id", "version", "sha256"}
    assert doc["guideline"]["id"] == "iec-hs"
    assert re.fullmatch(r"\d+\.\d+\.\d+", doc["guideline"]["version"])
    assert re.fullmatch(r"[0-9a-f]{64}", doc["guideline"]["sha256"])

    steps = doc["steps"]
    if "events" in source:  # minimal timeline form (a FHIR Bundle has no `events`)
        assert doc["patient"] == {"id": source["patient"]["id"]}
        assert len(steps) == len(source["events"]) + 1  # the start step, then one per event
    assert [s["step"] for s in steps] == list(range(len(steps)))
    assert steps[0]["event"] == {"kind": "start", "patient": patient_id}
    assert steps[0]["from"] is None
    assert steps[0]["to"] == "surveillance"
    keys = {
        "at",
        "event",
        "from",
        "to",
        "guards",
        "criteria",
        "recommendations",
        "alerts",
        "actions",
    }
    assert doc["actions"] == steps[-1]["actions"]
    for step in steps:
        for action in step["actions"]:
            assert {"code", "text", "cite", "verified"} <= set(action)
            assert action["cite"] or action["code"] == "measure"
        assert keys <= set(step)
        assert step["to"] in STATE_IDS
    for prev, step in itertools.pairwise(steps):
        assert step["from"] == prev["to"]
        assert step["event"]["at"] == step["at"]
        if prev["step"] > 0:  # events arrive in time order (the start step is the infusion)
            assert step["at"] >= prev["at"]
        for g in step["guards"]:
            assert g["result"] in {"TRUE", "FALSE", "UNKNOWN"}
            assert g["transition"].startswith(f"{step['from']} -> ")
        for name, verdict in step["criteria"].items():
            assert verdict["result"] in {"TRUE", "FALSE", "UNKNOWN"}, name
        for rec in step["recommendations"]:
            assert rec["cite"], rec["id"]
        if step["from"] != step["to"]:
            assert step["transition"]["cite"]

    path_ = [x for s in steps for x in (*s.get("via", ()), s["to"])]
    dedup = [p for i, p in enumerate(path_) if i == 0 or path_[i - 1] != p]
    assert doc["path"] == dedup
    assert doc["final_state"] == steps[-1]["to"] == doc["path"][-1]

    flat = [a for s in steps for a in s["alerts"]]
    assert doc["alerts"] == flat
    for alert in doc["alerts"]:
        assert {"code", "severity", "at", "message"} <= set(alert)
        assert alert["severity"] == SEVERITY[alert["code"]]
        assert alert["message"]
