"""FHIR R4 Bundle input (`iechs.fhir`): each resource mapping, UCUM units, what is an error and
what is reported as ignored, bad Bundles through the real CLI, and the round trip
timeline -> Bundle -> timeline, for every example and (Hypothesis) for random valid timelines.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import attrs
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.codesystem import CodeSystem
from hypothesis import event as note
from hypothesis import given
from hypothesis import strategies as st

from iechs import Engine, EpisodeError, Guideline, TimelineError, load_timeline, parse_timeline
from iechs.cli import main
from iechs.fhir import SYSTEM, bundle_to_timeline, code_system, timeline_to_bundle
from iechs.fhir.codes import observation_codes
from iechs.timeline import (
    AssessmentEvent,
    CloseEvent,
    FindingEvent,
    Infection,
    ObservationEvent,
    Product,
    ResponseEvent,
    Timeline,
    TreatmentEvent,
    canonical_order,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.json"))
FHIR_EXAMPLE = ROOT / "examples" / "fhir" / "day14-steroid-response.bundle.json"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
INFUSION = "2026-01-01T10:00:00Z"
AT = "2026-01-10T08:00:00Z"


# --- builders ------------------------------------------------------------------------------------


def ours(code: str) -> dict[str, Any]:
    return {"coding": [{"system": SYSTEM, "code": code}]}


def loinc(code: str, display: str | None = None) -> dict[str, Any]:
    coding = {"system": LOINC, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding]}


def quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def observation(code: dict[str, Any], at: str | None = AT, **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": code,
        "subject": {"reference": "Patient/P1"},
    }
    if at is not None:
        out["effectiveDateTime"] = at
    return {**out, **fields}


def lab(code: str, value: float, unit: str, at: str | None = AT, **fields: Any) -> dict[str, Any]:
    return observation(loinc(code), at, valueQuantity=quantity(value, unit), **fields)


def administration(drug: str = "dexamethasone", **fields: Any) -> dict[str, Any]:
    return {
        "resourceType": "MedicationAdministration",
        "status": "completed",
        "medicationCodeableConcept": {"text": drug},
        "subject": {"reference": "Patient/P1"},
        "effectiveDateTime": AT,
        **fields,
    }


PATIENT: dict[str, Any] = {"resourceType": "Patient", "id": "P1"}
INFUSION_PROCEDURE: dict[str, Any] = {
    "resourceType": "Procedure",
    "status": "completed",
    "code": ours("car-t-infusion"),
    "subject": {"reference": "Patient/P1"},
    "performedDateTime": INFUSION,
}


def bundle(
    *resources: dict[str, Any],
    patient: dict[str, Any] | None = None,
    infusion: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A Bundle of the Patient (entry 0), the infusion (entry 1) and `resources` (entry 2...)."""
    head = [patient or PATIENT, infusion or INFUSION_PROCEDURE]
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": copy.deepcopy(r)} for r in (*head, *resources)],
    }


@pytest.fixture
def read(guideline: Guideline) -> Any:
    def run(doc: dict[str, Any]) -> Timeline:
        return bundle_to_timeline(doc, guideline, "b.json")

    return run


@pytest.fixture
def fails(guideline: Guideline) -> Any:
    """The problems of a Bundle that must be rejected, as `(path, message)` pairs."""

    def run(doc: dict[str, Any]) -> list[tuple[str, str]]:
        with pytest.raises(TimelineError) as caught:
            bundle_to_timeline(doc, guideline, "b.json")
        assert caught.value.file == "b.json"
        return [(p.path, p.message) for p in caught.value.problems]

    return run


def ignored(timeline: Timeline) -> list[tuple[str, str]]:
    return [(p.path, p.message) for p in timeline.ignored]


# --- the round trip ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_round_trips_with_the_same_decisions(
    path: Path, guideline: Guideline, engine: Engine
) -> None:
    timeline = load_timeline(path, guideline)
    doc = json.loads(json.dumps(timeline_to_bundle(timeline, guideline)))  # as a file holds it
    Bundle.model_validate(doc)  # a valid R4 (R4B) Bundle
    again = bundle_to_timeline(doc, guideline, "x.json")
    assert again.patient == timeline.patient
    assert again.events == timeline.events
    assert again.ignored == ()
    assert [d.to_json() for d in engine.run(again).decisions] == [
        d.to_json() for d in engine.run(timeline).decisions
    ]


def test_the_bundle_is_deterministic_and_reads_back_without_the_guideline(
    guideline: Guideline,
) -> None:
    timeline = load_timeline(EXAMPLES[0], guideline)
    first = json.dumps(timeline_to_bundle(timeline, guideline), sort_keys=True)
    assert first == json.dumps(timeline_to_bundle(timeline, guideline), sort_keys=True)
    bare = timeline_to_bundle(timeline)  # iechs codes only: no names, no guideline LOINC codes
    assert "2276-4" not in json.dumps(bare)
    assert "2276-4" in first
    again = bundle_to_timeline(bare, guideline)
    assert again.events == timeline.events
    assert again.patient == timeline.patient


def test_written_codes_are_standard_where_a_standard_exists(guideline: Guideline) -> None:
    timeline = load_timeline(ROOT / "examples" / "day14-steroid-response.json", guideline)
    doc = timeline_to_bundle(timeline, guideline)
    resources = [e["resource"] for e in doc["entry"]]
    ferritin = next(
        r for r in resources if r.get("code", {}).get("text") == "Ferritin" and "category" in r
    )
    assert {"system": LOINC, "code": "2276-4"} in ferritin["code"]["coding"]
    assert ferritin["valueQuantity"]["system"] == UCUM
    platelets_unit = guideline.observations["platelets"].unit
    assert platelets_unit == "10^9/L"  # not UCUM: written as 10*9/L
    t = attrs.evolve(
        timeline,
        events=(
            ObservationEvent(
                at=timeline.patient.infusion_at, code="platelets", value=20, unit="10^9/L"
            ),
        ),
    )
    written = timeline_to_bundle(t, guideline)["entry"][-1]["resource"]
    assert written["valueQuantity"]["code"] == "10*9/L"
    assert written["code"]["coding"][1] == {"system": LOINC, "code": "777-3"}


def test_a_loinc_naming_another_observation_is_not_written(guideline: Guideline) -> None:
    doc = {
        "patient": {"id": "P1", "infusion_at": INFUSION},
        "events": [
            {
                "at": AT,
                "kind": "observation",
                "code": "ferritin",
                "loinc": "1920-8",
                "value": 900,
                "unit": "ng/mL",
            }
        ],
    }
    timeline = parse_timeline(doc, guideline)  # the native parser keeps both as given
    [ev] = bundle_to_timeline(timeline_to_bundle(timeline, guideline), guideline).events
    assert ev == ObservationEvent(at=ev.at, code="ferritin", value=900, unit="ng/mL")


# --- Patient, infusion, product ------------------------------------------------------------------


def test_patient_id_prefers_the_iechs_identifier_then_the_resource_id(read: Any) -> None:
    patient = {
        "resourceType": "Patient",
        "id": "fhir-1",
        "identifier": [
            {"system": "urn:mrn", "value": "MRN7"},
            {"system": "https://iechs.dev/fhir/sid/patient-id", "value": "patient one"},
        ],
    }
    url = "urn:uuid:0b4d6f3e-0000-4000-8000-000000000002"
    infusion = {**INFUSION_PROCEDURE, "subject": {"reference": url}}

    def patient_id() -> str:
        doc = bundle(patient=patient, infusion=infusion)
        doc["entry"][0]["fullUrl"] = url
        result: str = read(doc).patient.id
        return result

    assert patient_id() == "patient one"
    patient["identifier"] = [{"system": "urn:mrn", "value": "MRN7"}]
    assert patient_id() == "fhir-1"
    del patient["id"]
    assert patient_id() == "MRN7"


def test_infusion_and_product(read: Any) -> None:
    infusion = {
        **INFUSION_PROCEDURE,
        "performedDateTime": "2026-01-01T11:30:00+01:00",
        "usedCode": [{"coding": [{"system": "urn:x", "code": "1", "display": "axi-cel"}]}],
        "extension": [
            {"url": "https://iechs.dev/fhir/StructureDefinition/car-target", "valueString": "CD19"},
            {
                "url": "https://iechs.dev/fhir/StructureDefinition/car-costimulatory-domain",
                "valueString": "CD28",
            },
            {"url": "urn:other", "valueString": "not ours"},
        ],
    }
    p = read(bundle(infusion=infusion)).patient
    assert p.infusion_at == datetime(2026, 1, 1, 10, 30, tzinfo=UTC)
    assert p.product == Product(name="axi-cel", target="CD19", costimulatory_domain="CD28")
    plain = read(bundle()).patient
    assert plain.product is None
    period = {**INFUSION_PROCEDURE, "performedPeriod": {"start": "2026-01-02T10:00:00Z"}}
    del period["performedDateTime"]
    assert read(bundle(infusion=period)).patient.infusion_at.day == 2


def test_infusion_problems(fails: Any, read: Any) -> None:
    other = {**INFUSION_PROCEDURE, "code": {"coding": [{"system": "urn:x", "code": "biopsy"}]}}
    problems = fails(bundle(infusion=other))
    assert problems == [("$.entry", problems[0][1])]
    assert "no CAR-T infusion" in problems[0][1]
    timeline_with_two = bundle(INFUSION_PROCEDURE)
    assert fails(timeline_with_two)[0][0] == "$.entry[2].resource"
    no_time = {k: v for k, v in INFUSION_PROCEDURE.items() if k != "performedDateTime"}
    assert fails(bundle(infusion=no_time)) == [
        ("$.entry[1].resource", "the CAR-T infusion needs performedDateTime")
    ]
    date_only = {**INFUSION_PROCEDURE, "performedDateTime": "2026-01-01"}
    [(path, message)] = fails(bundle(infusion=date_only))
    assert path == "$.entry[1].resource.performedDateTime"
    assert "no time of day" in message
    # a Procedure that is not the infusion, and an infusion not done, are reported
    timeline = read(bundle({**other}))
    assert ignored(timeline) == [
        ("$.entry[2].resource", "a Procedure iechs does not read (urn:x biopsy)")
    ]
    not_done = {**INFUSION_PROCEDURE, "status": "not-done"}
    [(path, message)] = fails(bundle(infusion=not_done))  # no infusion left
    assert path == "$.entry"
    assert message.startswith("the Bundle has no CAR-T infusion")
    assert ignored(read(bundle(not_done))) == [
        ("$.entry[2].resource.status", "an infusion with status not-done: not given")
    ]


def test_age_from_an_observation_or_the_birth_date(read: Any) -> None:
    age = observation(loinc("30525-0"), valueQuantity=quantity(30, "mo"))
    assert read(bundle(age)).patient.age_years == 2.5
    born = {**PATIENT, "birthDate": "1990-01-02"}  # the day after the infusion's date
    assert read(bundle(patient=born)).patient.age_years == 35.0
    assert read(bundle(patient={**PATIENT, "birthDate": "1990-01-01"})).patient.age_years == 36.0
    assert read(bundle(age, patient=born)).patient.age_years == 2.5  # the Observation wins
    year_only = read(bundle(patient={**PATIENT, "birthDate": "1990"}))
    assert year_only.patient.age_years is None
    assert ignored(year_only) == [
        ("$.entry[0].resource.birthDate", "birthDate 1990 is not a full date: no age")
    ]


def test_body_weight_units_and_which_weight_is_used(read: Any, fails: Any) -> None:
    def weight(value: float, unit: str, at: str | None) -> dict[str, Any]:
        return observation(loinc("29463-7"), at, valueQuantity=quantity(value, unit))

    assert read(bundle(weight(70000, "g", None))).patient.weight_kg == 70.0
    assert read(bundle(weight(100, "[lb_av]", None))).patient.weight_kg == pytest.approx(45.359237)
    timeline = read(
        bundle(
            weight(80, "kg", "2025-12-01T08:00:00Z"),
            weight(78, "kg", "2025-12-31T08:00:00Z"),  # the last before the infusion
            weight(75, "kg", "2026-01-05T08:00:00Z"),
        )
    )
    assert timeline.patient.weight_kg == 78.0
    assert ignored(timeline) == [
        ("$.entry[2].resource", "another body weight is used ($.entry[3])"),
        ("$.entry[4].resource", "another body weight is used ($.entry[3])"),
    ]
    after = read(bundle(weight(75, "kg", "2026-01-09T08:00:00Z"), weight(76, "kg", AT)))
    assert after.patient.weight_kg == 75.0  # none before: the first after
    assert fails(bundle(weight(70, "stone", None))) == [
        (
            "$.entry[2].resource.valueQuantity.code",
            "unknown unit 'stone' for body weight (UCUM: kg, g, [lb_av])",
        )
    ]
    [(path, message)] = fails(bundle(weight(900, "kg", None)))
    assert path == "$.entry[2].resource.valueQuantity.value"
    assert "implausible weight" in message


def test_risk_factors(read: Any, fails: Any) -> None:
    def factor(code: str) -> dict[str, Any]:
        return observation(ours("risk-factor"), None, valueCodeableConcept=ours(code))

    p = read(bundle(factor("tet2_mutation"), factor("high_tumor_burden"))).patient
    assert p.risk_factors == ("tet2_mutation", "high_tumor_burden")
    assert fails(bundle(factor("tet2"))) == [
        (
            "$.entry[2].resource.valueCodeableConcept.coding[0].code",
            "unknown risk factor 'tet2'",
        )
    ]


def test_death_closes_the_episode(read: Any, fails: Any) -> None:
    dead = {**PATIENT, "deceasedDateTime": "2026-02-01T00:00:00Z"}
    timeline = read(bundle(patient=dead))
    assert timeline.events == (CloseEvent(at=datetime(2026, 2, 1, tzinfo=UTC), reason="death"),)
    assert timeline.positions == (0,)
    closed = observation(ours("episode-closed"), valueCodeableConcept=ours("transfer"))
    both = read(bundle(closed, patient=dead))
    assert [e.kind for e in both.events] == ["close"]
    assert ignored(both) == [
        (
            "$.entry[0].resource.deceasedDateTime",
            "the episode-closed Observation $.entry[2] closes the episode",
        )
    ]
    [(path, message)] = fails(bundle(patient={**PATIENT, "deceasedBoolean": True}))
    assert path == "$.entry[0].resource.deceasedBoolean"
    assert "deceasedDateTime" in message


# --- Observations: laboratory values and UCUM ----------------------------------------------------


def test_laboratory_value_by_loinc_or_by_iechs_code(read: Any) -> None:
    timeline = read(
        bundle(
            lab("2276-4", 5000, "ng/mL"),
            observation(ours("scd25"), valueQuantity=quantity(2400, "U/mL")),
            observation(
                {
                    "coding": [
                        {"system": SYSTEM, "code": "ast"},
                        {"system": LOINC, "code": "1920-8"},
                    ]
                },
                valueQuantity=quantity(90, "U/L"),
            ),
            lab("718-7", 9.5, "g/dL"),  # a LOINC code the guideline does not list (yet)
        )
    )
    at = datetime(2026, 1, 10, 8, tzinfo=UTC)
    # One time, one order set: in the canonical order (by content), not the Bundle's.
    assert timeline.events == (
        ObservationEvent(at=at, code="ast", value=90, unit="U/L"),
        ObservationEvent(at=at, code="ferritin", loinc="2276-4", value=5000, unit="ng/mL"),
        ObservationEvent(at=at, code="hemoglobin", loinc="718-7", value=9.5, unit="g/dL"),
        ObservationEvent(at=at, code="scd25", value=2400, unit="U/mL"),
    )
    assert timeline.positions == (4, 2, 5, 3)  # the Bundle entries they come from
    assert timeline.ignored == ()


@pytest.mark.parametrize(
    ("code", "value", "unit", "expected"),
    [
        ("3255-7", 1.1, "g/L", ("fibrinogen", 110.0, "mg/dL")),
        ("2276-4", 500, "ug/L", ("ferritin", 500.0, "ng/mL")),
        ("1920-8", 80, "[IU]/L", ("ast", 80.0, "U/L")),
        ("777-3", 150, "10*9/L", ("platelets", 150.0, "10^9/L")),
        ("777-3", 150, "10*3/uL", ("platelets", 150.0, "10^9/L")),
        ("777-3", 150, "/nL", ("platelets", 150.0, "10^9/L")),
        ("751-8", 1.5, "10*3/mm3", ("anc", 1.5, "10^9/L")),
        ("1975-2", 34.2, "umol/L", ("bilirubin", 2.0, "mg/dL")),
        ("2160-0", 88.4, "umol/L", ("creatinine", 1.0, "mg/dL")),
        ("2571-8", 2, "mmol/L", ("triglycerides", 177.14, "mg/dL")),
        ("8310-5", 38.5, "Cel", ("temperature", 38.5, "Cel")),
        ("8310-5", 101.3, "[degF]", ("temperature", 38.5, "Cel")),
        ("1988-5", 5, "mg/dL", ("crp", 50.0, "mg/L")),
        ("718-7", 95, "g/L", ("hemoglobin", 9.5, "g/dL")),
    ],
)
def test_ucum_units_are_converted_to_the_canonical_unit(
    read: Any, code: str, value: float, unit: str, expected: tuple[str, float, str]
) -> None:
    [ev] = read(bundle(lab(code, value, unit))).events
    assert isinstance(ev, ObservationEvent)
    assert (ev.code, ev.unit) == (expected[0], expected[2])
    assert ev.value == pytest.approx(expected[1], abs=0.01)


@pytest.mark.parametrize(
    ("code", "value", "unit", "expected"),
    [
        # UCUM spellings laboratories send (UCUM has both litres; `10*9/l` is UCUM's 10^9/L)
        ("2276-4", 900, "ng/ml", ("ferritin", 900.0, "ng/mL")),
        ("2276-4", 900, "ug/l", ("ferritin", 900.0, "ng/mL")),
        ("3255-7", 300, "mg/dl", ("fibrinogen", 300.0, "mg/dL")),
        ("777-3", 150, "10*9/l", ("platelets", 150.0, "10^9/L")),
        ("1920-8", 80, "[iU]/L", ("ast", 80.0, "U/L")),
        # units UCUM converts to the guideline's: 1 mg/L = 1000 ng/mL; 1 ukat/L = 60 U/L;
        # 1 /uL = 10^6 /L; an annotation ({cells}) is a comment in UCUM
        ("2276-4", 0.9, "mg/L", ("ferritin", 900.0, "ng/mL")),
        ("1920-8", 1.5, "ukat/L", ("ast", 90.0, "U/L")),
        ("777-3", 150000, "/uL", ("platelets", 150.0, "10^9/L")),
        ("777-3", 150000, "{cells}/uL", ("platelets", 150.0, "10^9/L")),
        # a temperature on another scale: converted by UCUM, offset and all
        ("8310-5", 311.65, "K", ("temperature", 38.5, "Cel")),
    ],
)
def test_ucum_spellings_and_convertible_units_are_read_through_a_bundle(
    read: Any, code: str, value: float, unit: str, expected: tuple[str, float, str]
) -> None:
    """Real clients write UCUM as their LIS does: lower-case litres, mass per litre instead of
    per millilitre, SI enzyme units, counts per microlitre. These once made the whole Bundle
    refused although a native timeline with the same units was read; the Bundle now goes through
    the same unit reader (`iechs.units`), so a ferritin of 0.9 mg/L is the 900 ng/mL a
    haematologist reads, and the engine compares it with the guideline's thresholds."""
    [ev] = read(bundle(lab(code, value, unit))).events
    assert isinstance(ev, ObservationEvent)
    assert (ev.code, ev.unit) == (expected[0], expected[2])
    assert ev.value == pytest.approx(expected[1], abs=0.01)


def test_unit_text_is_used_when_the_quantity_is_not_ucum(read: Any, fails: Any) -> None:
    text_only = observation(loinc("2276-4"), valueQuantity={"value": 700, "unit": "ng/mL"})
    other_system = observation(
        loinc("2276-4"),
        valueQuantity={"value": 700, "unit": "ug/L", "system": "urn:lab-units", "code": "UGL"},
    )
    assert [e.unit for e in read(bundle(text_only, other_system)).events] == ["ng/mL", "ng/mL"]
    assert fails(bundle(lab("2276-4", 700, "mg/furlong"))) == [
        (
            "$.entry[2].resource.valueQuantity.code",
            "unknown unit 'mg/furlong' for ferritin (accepted: ng/mL, ug/L, µg/L)",
        )
    ]
    no_unit = observation(loinc("2276-4"), valueQuantity={"value": 700})
    assert fails(bundle(no_unit)) == [
        ("$.entry[2].resource.valueQuantity", "the quantity has no unit (code or unit)")
    ]


def test_implausible_and_non_finite_values_name_the_value(fails: Any) -> None:
    [(path, message)] = fails(bundle(lab("2276-4", 5e7, "ng/mL")))
    assert path == "$.entry[2].resource.valueQuantity.value"
    assert message.startswith("implausible ferritin")
    [(path, _)] = fails(bundle(lab("2276-4", 1e400, "ng/mL")))
    assert path == "$.entry[2].resource.valueQuantity.value"


def test_baseline_values(read: Any, fails: Any) -> None:
    category = [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                    "code": "laboratory",
                }
            ]
        },
        ours("baseline"),
    ]
    base = lab("2276-4", 400, "ug/L", at=None, category=category)
    timeline = read(bundle(base))
    assert timeline.events == ()
    assert {k: (m.value, m.unit) for k, m in timeline.patient.baseline.items()} == {
        "ferritin": (400.0, "ng/mL")
    }
    [(path, message)] = fails(bundle(base, base))
    assert (path, message) == ("$.entry[3].resource", "a second baseline value of ferritin")
    bad = lab("2276-4", 400, "g", at=None, category=category)
    assert fails(bundle(bad))[0][0] == "$.entry[2].resource.valueQuantity.code"
    response = observation(ours("response"), category=category, valueCodeableConcept=ours("stable"))
    assert fails(bundle(response))[0][1].endswith("is a category of laboratory values only")


def test_laboratory_results_without_a_number_are_reported(read: Any) -> None:
    timeline = read(
        bundle(
            observation(loinc("2276-4"), valueString="haemolysed"),
            observation(
                loinc("2276-4"),
                dataAbsentReason={"coding": [{"system": "urn:dar", "code": "error"}]},
            ),
            observation(
                loinc("2276-4"),
                valueQuantity={**quantity(100000, "ng/mL"), "comparator": ">"},
            ),
            lab("2276-4", 1000, "ng/mL", status="entered-in-error"),
            lab("2276-4", 1000, "ng/mL", status="registered"),
        )
    )
    assert timeline.events == ()
    assert ignored(timeline) == [
        ("$.entry[2].resource", "no number (valueString): the engine treats it as missing"),
        (
            "$.entry[3].resource",
            "no number (dataAbsentReason urn:dar error): the engine treats it as missing",
        ),
        (
            "$.entry[4].resource.valueQuantity.comparator",
            ">100000 is a bound, not a value: the engine treats it as missing",
        ),
        ("$.entry[5].resource.status", "status entered-in-error: no result to use"),
        ("$.entry[6].resource.status", "status registered: no result to use"),
    ]


def test_observation_times(read: Any, fails: Any) -> None:
    instant = observation(loinc("2276-4"), None, effectiveInstant="2026-01-10T09:00:00+01:00")
    period = observation(loinc("2276-4"), None, effectivePeriod={"start": "2026-01-10T08:00:00Z"})
    for obs in (instant, period):
        obs["valueQuantity"] = quantity(900, "ng/mL")
    assert [e.at.hour for e in read(bundle(instant, period)).events] == [8, 8]
    assert fails(bundle(lab("2276-4", 900, "ng/mL", at=None))) == [
        ("$.entry[2].resource", "the Observation needs effectiveDateTime (when it was measured)")
    ]
    [(path, message)] = fails(bundle(lab("2276-4", 900, "ng/mL", at="2026-01-10")))
    assert path == "$.entry[2].resource.effectiveDateTime"
    assert "no time of day" in message


# --- unknown codes: reported, or an error when they are ours -------------------------------------


def test_codes_the_guideline_does_not_read_are_reported_not_dropped(read: Any) -> None:
    timeline = read(
        bundle(
            lab("2951-2", 138, "mmol/L"),  # sodium
            observation(
                {"coding": [{"system": "http://snomed.info/sct", "code": "271649006"}]},
                valueQuantity=quantity(120, "mm[Hg]"),
            ),
            {"resourceType": "Encounter", "status": "finished", "class": {"code": "IMP"}},
            {
                "resourceType": "Condition",
                "subject": {"reference": "Patient/P1"},
                "code": {"text": "DLBCL"},
            },
            lab("2276-4", 900, "ng/mL"),
        )
    )
    assert [e.kind for e in timeline.events] == ["observation"]
    assert ignored(timeline) == [
        ("$.entry[2].resource.code", "the guideline does not read LOINC 2951-2"),
        (
            "$.entry[3].resource.code",
            "the guideline does not read http://snomed.info/sct 271649006",
        ),
        ("$.entry[4].resource", "iechs does not read Encounter resources"),
        ("$.entry[5].resource", "a Condition iechs does not read ('DLBCL')"),
    ]


def test_an_unknown_code_of_our_code_system_is_an_error(fails: Any) -> None:
    assert fails(bundle(observation(ours("crs-grad"), valueInteger=2))) == [
        (
            "$.entry[2].resource.code.coding[0].code",
            f"unknown Observation code of {SYSTEM} 'crs-grad' (did you mean 'crs-grade'?)",
        )
    ]
    response = observation(ours("response"), valueCodeableConcept=ours("better"))
    [(path, message)] = fails(bundle(response))
    assert path == "$.entry[2].resource.valueCodeableConcept.coding[0].code"
    assert message.startswith("unknown response 'better'")
    contradiction = observation(
        {"coding": [{"system": SYSTEM, "code": "ferritin"}, {"system": LOINC, "code": "2532-0"}]},
        valueQuantity=quantity(900, "ng/mL"),
    )
    assert fails(bundle(contradiction)) == [
        (
            "$.entry[2].resource.code.coding[1].code",
            "LOINC 2532-0 is ldh, but the iechs code beside it says ferritin",
        )
    ]


def test_an_observation_whose_patient_is_unknown_is_refused(read: Any, fails: Any) -> None:
    """FHIR lets an Observation have no subject. Taking such a ferritin to be this patient's (as
    iechs once did) could start a treatment on someone else's result: it is refused at its
    subject. So is a subject that names no resource and no identifier of the Patient. An
    Observation iechs does not read anyway (sodium) is only reported as ignored."""
    anonymous = lab("2276-4", 50000, "ng/mL")
    del anonymous["subject"]
    assert fails(bundle(anonymous)) == [
        (
            "$.entry[2].resource.subject",
            "an Observation without a subject: iechs cannot tell whose it is; give subject, a "
            "reference to the Bundle's Patient",
        )
    ]
    sodium = observation(loinc("2951-2", "Sodium"), valueQuantity=quantity(140, "mmol/L"))
    del sodium["subject"]
    assert ignored(read(bundle(sodium))) == [
        ("$.entry[2].resource.code", "the guideline does not read LOINC 2951-2 (Sodium)")
    ]
    by_name = {**lab("2276-4", 50000, "ng/mL"), "subject": {"display": "J. Smith"}}
    [(path, message)] = fails(bundle(by_name))
    assert path == "$.entry[2].resource.subject"
    assert "iechs cannot tell whose this is" in message
    mrn = {"system": "urn:oid:2.16.840.1.113883.19.5", "value": "MRN-4711"}
    by_identifier = {**lab("2276-4", 50000, "ng/mL"), "subject": {"identifier": mrn}}
    patient = {**PATIENT, "identifier": [mrn]}
    assert [e.kind for e in read(bundle(by_identifier, patient=patient)).events] == ["observation"]


def test_a_death_before_the_infusion_is_refused(read: Any, fails: Any) -> None:
    """A patient who died cannot be infused: a Bundle that records both contradicts itself (a
    wrong date of death, or another patient's record). iechs once dropped such a death silently;
    now it refuses the Bundle and names both places, so the record is corrected rather than
    guessed. A death at or after the infusion closes the episode (test_death_closes_the_episode)."""
    dead = {**PATIENT, "deceasedDateTime": "2025-12-20T00:00:00Z"}
    assert fails(bundle(patient=dead)) == [
        (
            "$.entry[0].resource.deceasedDateTime",
            "a death at 2025-12-20T00:00:00Z, before the CAR-T infusion at 2026-01-01T10:00:00Z "
            "($.entry[1].resource.performedDateTime): the Bundle contradicts itself; correct the "
            "time of death or of the infusion",
        )
    ]
    closed = observation(
        ours("episode-closed"), "2025-12-31T08:00:00Z", valueCodeableConcept=ours("death")
    )
    [(path, message)] = fails(bundle(closed))
    assert path == "$.entry[2].resource"
    assert message.startswith("a death at 2025-12-31T08:00:00Z, before the CAR-T infusion")
    # the Observation closes the episode, the Patient's death is only reported: still refused
    [(path, _)] = fails(
        bundle(
            observation(ours("episode-closed"), valueCodeableConcept=ours("death")), patient=dead
        )
    )
    assert path == "$.entry[0].resource.deceasedDateTime"


def test_resources_about_another_patient_are_refused(read: Any, fails: Any) -> None:
    other = {**lab("2276-4", 900, "ng/mL"), "subject": {"reference": "Patient/P2"}}
    [(path, message)] = fails(bundle(other))
    assert path == "$.entry[2].resource.subject.reference"
    assert "'Patient/P2', not to the Bundle's Patient" in message
    url = "urn:uuid:0b4d6f3e-0000-4000-8000-000000000001"
    by_url = bundle(
        {**lab("2276-4", 900, "ng/mL"), "subject": {"reference": url}},
        {**lab("2276-4", 950, "ng/mL"), "subject": {"reference": "https://ehr.example/Patient/P1"}},
    )
    by_url["entry"][0]["fullUrl"] = url
    assert len(read(by_url).events) == 2


# --- assessments, infection, findings, response, close -------------------------------------------


def test_assessment_panel_and_single_observations(read: Any) -> None:
    panel = observation(
        ours("assessment"),
        component=[
            {"code": ours("crs-grade"), "valueInteger": 2},
            {"code": ours("icans-grade"), "valueInteger": 1},
            {"code": ours("infection-status"), "valueCodeableConcept": ours("suspected")},
            {"code": ours("antimicrobials-started"), "valueBoolean": True},
            {"code": loinc("8867-4"), "valueQuantity": quantity(90, "/min")},
        ],
    )
    single = [
        observation(ours("crs-grade"), valueInteger=3),
        observation(ours("icans-grade"), valueInteger=0),
        observation(ours("infection-status"), valueCodeableConcept=ours("confirmed")),
        observation(ours("antimicrobials-started"), valueBoolean=False),
    ]
    timeline = read(bundle(panel, *single))
    at = datetime(2026, 1, 10, 8, tzinfo=UTC)
    # One time, one order set: in the canonical order (by content), not the Bundle's.
    assert timeline.events == (
        AssessmentEvent(at=at, antimicrobials=False),
        AssessmentEvent(
            at=at, crs_grade=2, icans_grade=1, infection="suspected", antimicrobials=True
        ),
        AssessmentEvent(at=at, crs_grade=3),
        AssessmentEvent(at=at, icans_grade=0),
        AssessmentEvent(at=at, infection="confirmed"),
    )
    assert timeline.positions == (6, 2, 3, 4, 5)
    assert ignored(timeline) == [
        ("$.entry[2].resource.component[4]", "a component iechs does not read (LOINC 8867-4)")
    ]


def test_assessment_problems(fails: Any) -> None:
    assert fails(bundle(observation(ours("crs-grade"), valueInteger=7))) == [
        ("$.entry[2].resource.valueInteger", "crs_grade 7 is outside 0-4")
    ]
    assert fails(bundle(observation(ours("crs-grade"), valueString="2"))) == [
        ("$.entry[2].resource", "crs-grade needs valueInteger (0-4)")
    ]
    twice = observation(
        ours("assessment"),
        component=[
            {"code": ours("crs-grade"), "valueInteger": 1},
            {"code": ours("crs-grade"), "valueInteger": 2},
            {"code": ours("crs"), "valueInteger": 2},
        ],
    )
    assert fails(bundle(twice)) == [
        ("$.entry[2].resource.component[1]", "a second crs-grade component"),
        (
            "$.entry[2].resource.component[2].code.coding[0].code",
            "unknown component code 'crs'",
        ),
    ]
    assert fails(bundle(observation(ours("assessment")))) == [
        ("$.entry[2].resource", "an assessment records at least one field")
    ]


@pytest.mark.parametrize(
    ("verification", "clinical", "expected"),
    [
        ("provisional", "active", "suspected"),
        ("unconfirmed", None, "suspected"),
        ("differential", "active", "suspected"),
        ("confirmed", "active", "confirmed"),
        ("refuted", None, "none"),
        ("confirmed", "resolved", "none"),
        (None, "inactive", "none"),
    ],
)
def test_infection_as_a_condition(
    read: Any, verification: str | None, clinical: str | None, expected: Infection
) -> None:
    condition: dict[str, Any] = {
        "resourceType": "Condition",
        "subject": {"reference": "Patient/P1"},
        "code": ours("infection"),
        "recordedDate": AT,
        "onsetDateTime": "2026-01-09T08:00:00Z",
    }
    if verification:
        condition["verificationStatus"] = {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                    "code": verification,
                }
            ]
        }
    if clinical:
        condition["clinicalStatus"] = {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "code": clinical,
                }
            ]
        }
    [ev] = read(bundle(condition)).events
    assert ev == AssessmentEvent(at=datetime(2026, 1, 10, 8, tzinfo=UTC), infection=expected)


def test_infection_condition_problems_and_times(read: Any, fails: Any) -> None:
    status = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
    base: dict[str, Any] = {
        "resourceType": "Condition",
        "subject": {"reference": "Patient/P1"},
        "code": ours("infection"),
        "onsetDateTime": "2026-01-09T08:00:00Z",
    }
    assert fails(bundle(base))[0][1].startswith("an infection Condition needs verificationStatus")
    suspected = {
        **base,
        "verificationStatus": {"coding": [{"system": status, "code": "provisional"}]},
    }
    assert read(bundle(suspected)).events[0].at.day == 9  # onset, without recordedDate
    void = {
        **base,
        "verificationStatus": {"coding": [{"system": status, "code": "entered-in-error"}]},
    }
    assert ignored(read(bundle(void))) == [
        ("$.entry[2].resource.verificationStatus", "verificationStatus entered-in-error")
    ]
    crs = {**base, "code": ours("crs")}
    [(path, message)] = fails(bundle(crs))
    assert path == "$.entry[2].resource.code.coding[0].code"
    assert "crs-grade" in message


def test_findings(read: Any, fails: Any) -> None:
    graded = observation(
        ours("hypotension"),
        valueBoolean=True,
        component=[{"code": ours("ctcae-grade"), "valueInteger": 3}],
    )
    absent = observation(ours("hemophagocytosis"), valueBoolean=False)
    at = datetime(2026, 1, 10, 8, tzinfo=UTC)
    found = read(bundle(graded, absent))
    assert found.events == (  # one order set, in the canonical order (by content)
        FindingEvent(at=at, code="hemophagocytosis", present=False),
        FindingEvent(at=at, code="hypotension", present=True, grade=3),
    )
    assert found.positions == (3, 2)
    assert fails(bundle(observation(ours("splenomegaly")))) == [
        ("$.entry[2].resource", "the finding splenomegaly needs valueBoolean (present or not)")
    ]
    too_high = observation(
        ours("bleeding"),
        valueBoolean=True,
        component=[{"code": ours("ctcae-grade"), "valueInteger": 9}],
    )
    assert fails(bundle(too_high)) == [
        ("$.entry[2].resource.component[0].valueInteger", "grade 9 is not a CTCAE grade (1-5)")
    ]


def test_response_and_close(read: Any) -> None:
    timeline = read(
        bundle(
            observation(ours("response"), valueCodeableConcept=ours("worsening")),
            observation(
                ours("episode-closed"),
                "2026-02-01T08:00:00Z",
                valueCodeableConcept=ours("follow_up_complete"),
            ),
        )
    )
    assert timeline.events == (
        ResponseEvent(at=datetime(2026, 1, 10, 8, tzinfo=UTC), assessment="worsening"),
        CloseEvent(at=datetime(2026, 2, 1, 8, tzinfo=UTC), reason="follow_up_complete"),
    )


def test_events_after_the_close_are_refused_at_their_entry(read: Any, fails: Any) -> None:
    closed = observation(ours("episode-closed"), valueCodeableConcept=ours("death"))
    later = lab("2276-4", 900, "ng/mL", at="2026-01-11T08:00:00Z")
    assert fails(bundle(later, closed)) == [
        (
            "$.entry[2].resource",
            "recorded after the episode closed (2026-01-10T08:00:00Z, $.entry[3].resource)",
        )
    ]
    # a close before the infusion, like any event then, is only recorded (as the engine does)
    early = observation(
        ours("episode-closed"), "2025-12-31T08:00:00Z", valueCodeableConcept=ours("transfer")
    )
    assert [e.kind for e in read(bundle(later, early)).events] == ["close", "observation"]


# --- MedicationAdministration --------------------------------------------------------------------


def test_treatment_fields(read: Any) -> None:
    given_ = administration(
        "Dexamethasone",
        dosage={
            "dose": {"value": 10, "unit": "milligram", "system": UCUM, "code": "mg"},
            "route": {
                "coding": [
                    {
                        "system": "http://snomed.info/sct",
                        "code": "47625008",
                        "display": "Intravenous",
                    }
                ]
            },
        },
        reasonCode=[ours("iec_hs")],
    )
    period = administration(
        "anakinra", effectivePeriod={"start": "2026-01-10T09:00:00Z", "end": "2026-01-10T09:30:00Z"}
    )
    del period["effectiveDateTime"]
    period["dosage"] = {"dose": {"value": 100, "unit": "mg/day"}, "route": {"text": "SC"}}
    timeline = read(bundle(given_, period))
    assert timeline.events == (
        TreatmentEvent(
            at=datetime(2026, 1, 10, 8, tzinfo=UTC),
            drug="dexamethasone",
            dose=10,
            unit="mg",
            route="Intravenous",
            indication="iec_hs",
        ),
        TreatmentEvent(
            at=datetime(2026, 1, 10, 9, tzinfo=UTC),
            drug="anakinra",
            dose=100,
            unit="mg/day",
            route="SC",
        ),
    )


def test_the_drug_name_the_guideline_knows_is_preferred(read: Any) -> None:
    verbose = administration()
    verbose["medicationCodeableConcept"] = {
        "text": "Dexamethasone sodium phosphate 4 mg/mL injection",
        "coding": [{"system": "urn:formulary", "code": "77", "display": "Dexamethasone"}],
    }
    free = administration("Paracetamol 1 g")
    [steroid, other] = read(bundle(verbose, free)).events
    assert isinstance(steroid, TreatmentEvent)
    assert isinstance(other, TreatmentEvent)
    assert (steroid.drug, other.drug) == ("dexamethasone", "paracetamol 1 g")


def test_medication_references(read: Any, fails: Any) -> None:
    medication = {"resourceType": "Medication", "id": "m1", "code": {"text": "Ruxolitinib"}}
    unused = {"resourceType": "Medication", "id": "m2", "code": {"text": "Etoposide"}}
    by_entry = administration()
    del by_entry["medicationCodeableConcept"]
    by_entry["medicationReference"] = {"reference": "Medication/m1"}
    contained = copy.deepcopy(by_entry)
    contained["contained"] = [
        {"resourceType": "Medication", "id": "c", "code": {"text": "Emapalumab"}}
    ]
    contained["medicationReference"] = {"reference": "#c"}
    display_only = copy.deepcopy(by_entry)
    display_only["medicationReference"] = {"display": "Anakinra"}
    timeline = read(bundle(medication, unused, by_entry, contained, display_only))
    # At one time: in the guideline's order-set sequence (IL-1, then JAK, then salvage).
    assert [e.drug for e in timeline.events if isinstance(e, TreatmentEvent)] == [
        "anakinra",
        "ruxolitinib",
        "emapalumab",
    ]
    assert timeline.positions == (6, 4, 5)
    assert ignored(timeline) == [
        ("$.entry[3].resource", "no MedicationAdministration refers to this Medication")
    ]
    missing = copy.deepcopy(by_entry)
    missing["medicationReference"] = {"reference": "Medication/gone"}
    assert fails(bundle(missing)) == [
        (
            "$.entry[2].resource.medicationReference",
            "no Medication 'Medication/gone' in the Bundle or contained",
        )
    ]
    nameless = administration()
    nameless["medicationCodeableConcept"] = {"coding": [{"system": "urn:rx", "code": "5640"}]}
    assert fails(bundle(nameless))[0][0] == "$.entry[2].resource.medicationCodeableConcept"


def test_treatment_reasons_statuses_and_problems(read: Any, fails: Any) -> None:
    snomed = administration(
        "tocilizumab",
        reasonCode=[{"coding": [{"system": "http://snomed.info/sct", "code": "1234"}]}],
    )
    not_done = administration(status="not-done")
    timeline = read(bundle(snomed, not_done))
    [ev] = timeline.events
    assert isinstance(ev, TreatmentEvent)
    assert ev.indication is None
    assert ignored(timeline) == [
        (
            "$.entry[2].resource.reasonCode[0]",
            "reason http://snomed.info/sct 1234 is not an iechs indication: "
            "the engine infers the indication",
        ),
        ("$.entry[3].resource.status", "status not-done: not given"),
    ]
    several = administration(
        "tocilizumab",
        reasonCode=[
            {"coding": [{"system": "http://snomed.info/sct", "code": "1234"}]},
            ours("crs"),
            ours("icans"),
        ],
        reasonReference=[{"reference": "Condition/c1"}],
    )
    timeline = read(bundle(several))
    assert [e.indication for e in timeline.events if isinstance(e, TreatmentEvent)] == ["crs"]
    assert ignored(timeline) == [
        ("$.entry[2].resource.reasonCode[2]", "a second indication: the first is used"),
        (
            "$.entry[2].resource.reasonCode[0]",
            "reason http://snomed.info/sct 1234 is not an iechs indication: "
            "the first iechs indication is used",
        ),
        (
            "$.entry[2].resource.reasonReference[0]",
            "iechs does not follow reasonReference: the first iechs indication is used",
        ),
    ]
    wrong = administration(reasonCode=[ours("hlh")])
    [(path, message)] = fails(bundle(wrong))
    assert path == "$.entry[2].resource.reasonCode[0].coding[0].code"
    assert message.startswith("unknown indication 'hlh'")
    timeless = administration()
    del timeless["effectiveDateTime"]
    [(path, message)] = fails(bundle(timeless))  # FHIR requires effective[x]: fhir.resources says
    assert path == "$.entry[2].resource"
    assert message.startswith("not valid FHIR R4:")
    assert "effectiveDateTime" in message
    assert fails(bundle(administration(status="given"))) == [
        ("$.entry[2].resource.status", "'given' is not a MedicationAdministration status")
    ]
    negative = administration(dosage={"dose": {"value": -1, "unit": "mg"}})
    assert fails(bundle(negative)) == [
        ("$.entry[2].resource.dosage.dose.value", "negative dose -1")
    ]


# --- bad Bundles ---------------------------------------------------------------------------------


def test_invalid_fhir_is_refused_with_the_json_path(fails: Any) -> None:
    bad = lab("2276-4", 900, "ng/mL")
    bad["code"]["coding"][0]["code"] = 2276
    problems = fails(bundle(bad))
    assert problems[0][0] == "$.entry[2].resource.code.coding[0].code"
    assert problems[0][1].startswith("not valid FHIR R4")
    unknown = fails(bundle({"resourceType": "LabResult"}))
    assert unknown == [
        ("$.entry[2].resource.resourceType", "'LabResult' is not a FHIR R4 resource type")
    ]
    empty = fails({"resourceType": "Bundle", "type": "collection"})
    assert [path for path, _ in empty] == ["$.entry", "$.entry"]
    assert empty[0][1] == "the Bundle has no Patient"
    assert empty[1][1].startswith("the Bundle has no CAR-T infusion")
    assert fails(bundle(patient={"resourceType": "Patient"}))[0] == (
        "$.entry[0].resource",
        "the Patient has no id and no identifier",
    )
    assert fails(bundle(PATIENT))[0] == (
        "$.entry[2].resource",
        "a second Patient (the first is $.entry[0]): a Bundle holds one patient",
    )
    assert fails(bundle(lab("2276-4", 900, "ng/mL", status="done")))[0] == (
        "$.entry[2].resource.status",
        "'done' is not an Observation status",
    )


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """`python -m iechs ARGS` from the project root, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "iechs", *(str(a) for a in args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        encoding="utf-8",
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("mutate", "place", "words"),
    [
        (
            lambda b: b["entry"][6]["resource"]["code"]["coding"][0].update(code=5),
            "$.entry[6].resource.code.coding[0].code",
            "not valid FHIR R4",
        ),
        (
            lambda b: b["entry"][6]["resource"]["code"]["coding"][0].update(
                system=SYSTEM, code="feritin"
            ),
            "$.entry[6].resource.code.coding[0].code",
            "did you mean 'ferritin'",
        ),
        (
            lambda b: b["entry"][6]["resource"]["valueQuantity"].update(code="mg/furlong"),
            "$.entry[6].resource.valueQuantity.code",
            "unknown unit 'mg/furlong' for ferritin",
        ),
        (
            lambda b: b["entry"].pop(0),
            "$.entry",
            "the Bundle has no Patient",
        ),
        (
            lambda b: b["entry"][0]["resource"].update(deceasedDateTime="2020-05-01T00:00:00Z"),
            "$.entry[0].resource.deceasedDateTime",
            "before the CAR-T infusion",
        ),
        (
            lambda b: b["entry"][6]["resource"].pop("subject"),
            "$.entry[6].resource.subject",
            "an Observation without a subject",
        ),
    ],
    ids=[
        "not-fhir",
        "unknown-iechs-code",
        "unknown-unit",
        "no-patient",
        "death-before-infusion",
        "no-subject",
    ],
)
def test_bad_bundle_exits_2_naming_the_file_and_the_path(
    tmp_path: Path, mutate: Any, place: str, words: str
) -> None:
    doc = json.loads(FHIR_EXAMPLE.read_text(encoding="utf-8"))
    mutate(doc)
    path = tmp_path / "bad.bundle.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    result = cli("run", path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    line = next(x for x in result.stderr.splitlines() if place in x)
    assert f"iechs run: {path}: {place}: " in line
    assert words in line


# --- the example Bundle through the CLI ----------------------------------------------------------


def test_example_bundle_runs_like_its_native_timeline(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(FHIR_EXAMPLE), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (
        main(["run", str(ROOT / "examples" / "day14-steroid-response.json"), "--format", "json"])
        == 0
    )
    native = json.loads(capsys.readouterr().out)
    assert (
        doc["path"]
        == native["path"]
        == [
            "surveillance",
            "suspected",
            "first_line_steroids",
            "resolved",
            "closed",
        ]
    )
    assert doc["alerts"] == native["alerts"]
    assert [s["to"] for s in doc["steps"]] == [s["to"] for s in native["steps"]]
    # 2026-03-07T08:00Z: the ferritin (with its LOINC code) before the assessment, as in
    # every order set, whatever the Bundle's order.
    assert doc["steps"][1]["event"] == {
        "at": "2026-03-07T08:00:00Z",
        "code": "ferritin",
        "kind": "observation",
        "loinc": "2276-4",
        "unit": "ng/mL",
        "value": 2400.0,
    }
    assert doc["steps"][2]["event"] == native["steps"][2]["event"]
    assert doc["steps"][2]["event"]["kind"] == "assessment"
    assert doc["ignored"] == [
        {"path": "$.entry[1].resource", "message": "iechs does not read Encounter resources"},
        {
            "path": "$.entry[7].resource.code",
            "message": "the guideline does not read LOINC 2951-2 "
            "(Sodium [Moles/volume] in Serum or Plasma)",
        },
        {
            "path": "$.entry[16].resource.status",
            "message": "status entered-in-error: no result to use",
        },
    ]
    assert "ignored" not in native


def test_example_bundle_through_the_real_cli() -> None:
    result = cli("run", "examples/fhir/day14-steroid-response.bundle.json", "--format", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["final_state"] == "closed"
    text = cli("run", "examples/fhir/day14-steroid-response.bundle.json")
    assert text.returncode == 0, text.stderr
    assert (
        "ignored $.entry[7].resource.code: the guideline does not read LOINC 2951-2" in text.stdout
    )
    assert "Final state: closed" in text.stdout


def test_example_bundle_recorded_in_a_store_still_reports_what_was_ignored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = str(tmp_path / "audit.db")
    assert main(["run", str(FHIR_EXAMPLE), "--store", store, "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [item["path"] for item in doc["ignored"]] == [
        "$.entry[1].resource",
        "$.entry[7].resource.code",
        "$.entry[16].resource.status",
    ]
    assert main(["audit", "replay", store]) == 0  # the recorded events replay as decided


def test_example_bundle_is_valid_r4_and_not_a_demo_timeline() -> None:
    Bundle.model_validate(json.loads(FHIR_EXAMPLE.read_text(encoding="utf-8")))
    assert FHIR_EXAMPLE not in EXAMPLES  # `iechs demo` reads examples/*.json as native timelines


def test_the_cli_starts_without_loading_fhir() -> None:
    probe = (
        "import sys; from iechs.cli import _parser; _parser(); "
        "print(sorted(m for m in sys.modules if m.startswith(('iechs.fhir', 'fhir.resources'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip() == "[]"


# --- the code system -----------------------------------------------------------------------------


def test_code_system_is_valid_and_holds_every_code_the_reader_accepts(
    guideline: Guideline,
) -> None:
    resource = code_system(guideline)
    CodeSystem.model_validate(resource)
    codes = [c["code"] for c in resource["concept"]]
    assert len(codes) == len(set(codes))  # no code means two things
    expected = {
        *observation_codes(guideline),
        "car-t-infusion",
        "ctcae-grade",
        "baseline",
        *guideline.risk_factors,
        "none",
        "suspected",
        "confirmed",
        "improving",
        "stable",
        "worsening",
        "resolved",
        "follow_up_complete",
        "death",
        "transfer",
        "iec_hs",
        "crs",
        "icans",
        "infection",
        "other",
    }
    assert set(codes) == expected
    clashes = set(guideline.findings) & {*guideline.observations, *guideline.risk_factors}
    assert not clashes
    listed = {code for obs in guideline.observations.values() for code in obs.loinc}
    assert {"718-7", "1988-5", "8310-5"} <= listed  # haemoglobin, CRP, body temperature


# --- Hypothesis: any valid timeline round-trips --------------------------------------------------

ZONES = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
)
BASE = datetime(2026, 1, 1, 10, tzinfo=UTC)


@st.composite
def stamps(draw: st.DrawFn) -> str:
    t = BASE + timedelta(
        hours=draw(st.integers(-48, 24 * 60)),
        microseconds=draw(st.sampled_from([0, 0, 250_000, 7])),
    )
    return t.astimezone(draw(ZONES)).isoformat()


def timelines(g: Guideline) -> st.SearchStrategy[dict[str, Any]]:
    """Valid native timelines over the whole vocabulary, with the corners FHIR makes hard:
    any patient id, fractional seconds, zones, empty texts, empty products, repeated risk
    factors, LOINC-identified observations, events after a close."""

    @st.composite
    def measurement(draw: st.DrawFn, code: str) -> dict[str, Any]:
        obs = g.observations[code]
        unit = draw(st.sampled_from(sorted(obs.units)))
        lo, hi = obs.plausible
        value = (lo + draw(st.floats(0, 1)) * (hi - lo)) / obs.units[unit]
        return {"value": value, "unit": unit}

    @st.composite
    def observation_event(draw: st.DrawFn) -> dict[str, Any]:
        code = draw(st.sampled_from(sorted(g.observations)))
        ev: dict[str, Any] = {"at": draw(stamps()), "kind": "observation"}
        codes = g.observations[code].loinc
        if len(codes) > 0 and draw(st.booleans()):
            ev["loinc"] = draw(st.sampled_from(codes))
        else:
            ev["code"] = code
        return {**ev, **draw(measurement(code))}

    texts = st.text(st.characters(blacklist_categories=["Cs"]), max_size=6)
    grade = st.integers(0, 4)
    assessment_fields: dict[str, st.SearchStrategy[Any]] = {
        "crs_grade": grade,
        "icans_grade": grade,
        "infection": st.sampled_from(["none", "suspected", "confirmed"]),
        "antimicrobials": st.booleans(),
    }
    events = st.one_of(
        observation_event(),
        st.sampled_from(sorted(assessment_fields)).flatmap(
            lambda first: st.fixed_dictionaries(
                {"at": stamps(), "kind": st.just("assessment"), first: assessment_fields[first]},
                optional={k: v for k, v in assessment_fields.items() if k != first},
            )
        ),
        st.fixed_dictionaries(
            {
                "at": stamps(),
                "kind": st.just("finding"),
                "code": st.sampled_from(sorted(g.findings)),
                "present": st.booleans(),
            },
            optional={"grade": st.integers(1, 5)},
        ),
        st.fixed_dictionaries(
            {
                "at": stamps(),
                "kind": st.just("treatment"),
                "drug": st.sampled_from([*sorted(g.drugs), "Dexamethasone ", "zinc"])
                | texts.filter(str.strip),
            },
            optional={
                # a dose comes with its unit (iechs.vocab): dose and unit are drawn together
                "unit": st.sampled_from(["mg", "mg/kg", "mg/kg/day", " mg", "MG", "mL"]),
                "route": st.sampled_from(
                    ["IV", "SC", "PO", "Intravenous route", "subcutaneous", "26643006"]
                ),
                "indication": st.sampled_from(["iec_hs", "crs", "icans", "infection", "other"]),
            },
        ).flatmap(
            lambda ev: (
                st.just(ev)
                if "unit" not in ev
                else st.fixed_dictionaries(
                    {
                        **{k: st.just(v) for k, v in ev.items()},
                        "dose": st.floats(0.001, 1e4) | st.none(),
                    }
                ).map(lambda e: {k: v for k, v in e.items() if v is not None})
            )
        ),
        st.fixed_dictionaries(
            {
                "at": stamps(),
                "kind": st.just("response"),
                "assessment": st.sampled_from(["improving", "stable", "worsening", "resolved"]),
            }
        ),
        st.fixed_dictionaries(
            {
                "at": stamps(),
                "kind": st.just("close"),
                "reason": st.sampled_from(["follow_up_complete", "death", "transfer"]),
            }
        ),
    )
    baseline = st.sampled_from(sorted(g.observations)).flatmap(
        lambda code: st.tuples(st.just(code), measurement(code))
    )
    patient = st.fixed_dictionaries(
        {
            "id": st.text(
                st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=10
            ).filter(str.strip)
            | st.sampled_from(["P1", "demo-day14", "a.b-9"]),
            "infusion_at": stamps(),
        },
        optional={
            "age_years": st.floats(0, 120),
            "weight_kg": st.floats(0.3, 400),
            "product": st.fixed_dictionaries(
                {},
                optional={
                    "name": st.sampled_from(["tisagenlecleucel", ""]) | texts,
                    "target": st.sampled_from(["CD19", "CD22", "BCMA"]),
                    "costimulatory_domain": st.sampled_from(["CD28", "4-1BB", ""]),
                },
            ),
            "risk_factors": st.lists(st.sampled_from(sorted(g.risk_factors)), max_size=4),
            "baseline": st.lists(baseline, max_size=3).map(dict),
        },
    )
    return st.fixed_dictionaries({"patient": patient, "events": st.lists(events, max_size=10)})


def _as_fhir_can_say(timeline: Timeline, g: Guideline) -> Timeline:
    """What the Bundle keeps (module docstring): no empty texts, no product without fields;
    its events at one time in the canonical order of what is kept (it is by content)."""
    product = timeline.patient.product
    if product is not None:
        product = Product(**{k: v or None for k, v in attrs.asdict(product).items()})
        if product == Product():
            product = None
    events = tuple(
        attrs.evolve(e, unit=e.unit or None, route=e.route or None)
        if isinstance(e, TreatmentEvent)
        else e
        for e in timeline.events
    )
    order = canonical_order(events, g)
    return attrs.evolve(
        timeline,
        patient=attrs.evolve(timeline.patient, product=product),
        events=tuple(events[i] for i in order),
        positions=tuple(timeline.positions[i] for i in order),
    )


@given(data=st.data())
def test_any_valid_timeline_round_trips_through_a_bundle(
    data: st.DataObject, guideline: Guideline, engine: Engine
) -> None:
    raw = data.draw(timelines(guideline))
    try:
        timeline = parse_timeline(raw, guideline)
    except TimelineError as exc:  # a death before the infusion contradicts itself, natively too
        refused = [p.message for p in exc.problems]
        note("refused: a death before the infusion")
        assert all(m.startswith("a death at") for m in refused), refused
        return
    with_guideline = data.draw(st.booleans())
    doc = json.loads(
        json.dumps(timeline_to_bundle(timeline, guideline if with_guideline else None))
    )
    Bundle.model_validate(doc)
    refusals = ("recorded after the episode closed", "a death at")
    try:
        original = [d.to_json() for d in engine.run(timeline).decisions]
    except EpisodeError:  # something after the close: the Bundle is refused at that entry
        note("refused: an event after the close")
        with pytest.raises(TimelineError) as caught:
            bundle_to_timeline(doc, guideline)
        problems = caught.value.problems
        assert all(p.message.startswith(refusals) for p in problems)
        assert all(p.path.startswith("$.entry[") for p in problems)
        return
    note("read back")
    again = bundle_to_timeline(doc, guideline)
    kept = _as_fhir_can_say(timeline, guideline)
    assert again.patient == kept.patient
    assert again.events == kept.events
    assert again.ignored == ()
    assert [doc["entry"][i]["resource"]["resourceType"] for i in again.positions] == [
        "MedicationAdministration" if isinstance(e, TreatmentEvent) else "Observation"
        for e in again.events
    ]
    decisions = [d.to_json() for d in engine.run(again).decisions]
    assert decisions == [d.to_json() for d in engine.run(kept).decisions]

    # what FHIR cannot say (empty texts) changes the recorded events (the event, and those
    # known to follow it), never a decision
    def decided(ds: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**d, "event": None, "later": None} for d in ds]

    assert decided(decisions) == decided(original)
