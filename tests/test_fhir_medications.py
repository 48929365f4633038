"""One reader of FHIR medications (`iechs.fhir.medications`) behind both doors: `iechs run` with
a Bundle's MedicationAdministration, and the order-sign hook's draft MedicationRequests.

An integrator sends what their EHR writes: RxNorm clinical drug codes with RxNorm's names, brand
names, contained Medications, UCUM or pharmacy units. A clinician needs the same drug recognised
whichever door it comes through, and a medication that names two drugs (or none) refused at the
field at fault rather than guessed.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.medicationadministration import MedicationAdministration

from iechs import Guideline, GuidelineError, TimelineError, parse_guideline
from iechs.fhir import SYSTEM, bundle_to_timeline
from iechs.fhir.medications import RXNORM, Formulary, read_medication, source_of
from iechs.service.errors import ServiceError
from iechs.service.orders import read_draft_orders
from iechs.timeline import TreatmentEvent

ROOT = Path(__file__).resolve().parents[1]
UCUM = "http://unitsofmeasure.org"
SNOMED = "http://snomed.info/sct"
INFUSION = "2026-01-01T10:00:00Z"
AT = "2026-01-10T08:00:00Z"
SIGNED_AT = datetime(2026, 1, 10, 8, tzinfo=UTC)
ORDERS = "$.context.draftOrders"


def rxnorm(code: str, display: str | None = None) -> dict[str, Any]:
    coding = {"system": RXNORM, "code": code}
    if display:
        coding["display"] = display
    return coding


# Realistic medications. The shapes are taken from public examples, the drugs changed to this
# guideline's:
# - an RxNorm clinical drug (SCD) coding with RxNorm's name as display and text, as in the eICR
#   example lantanagroup/FHIR-us-eicr-anonymized,
#   input/fsh/instances/medicationadministration-azithromycin-anon.fsh (commit 01aac18):
#   `$rxnorm#248656 "Azithromycin 500 MG Oral Tablet"`, text alike. RxNorm 1812194 is the SCD
#   "dexamethasone 4 MG/ML Injectable Solution" (the code named in the issue "Meet real clients");
# - a contained Medication coded in another system (AHFS) with an intravenous SNOMED route and a
#   UCUM dose, as in the HL7 R4 example medadmin0301 mirrored by coda-platform/fhir-types,
#   lib/templates/MedicationAdministration.js (commit a6f4181): vancomycin, AHFS 382751,
#   SNOMED 47625008 "Intravenous route (qualifier value)", 500 mg.
DEXAMETHASONE_SCD: dict[str, Any] = {
    "coding": [rxnorm("1812194", "dexamethasone 4 MG/ML Injectable Solution")],
    "text": "dexamethasone 4 MG/ML Injectable Solution",
}
VANCOMYCIN_AHFS: dict[str, Any] = {
    "resourceType": "Medication",
    "id": "med0301",
    "code": {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/ahfs",
                "code": "382751",
                "display": "Vancomycin",
            }
        ]
    },
}
INTRAVENOUS: dict[str, Any] = {
    "coding": [
        {"system": SNOMED, "code": "47625008", "display": "Intravenous route (qualifier value)"}
    ]
}


# --- the two doors -------------------------------------------------------------------------------


def as_administration(
    medication: dict[str, Any],
    dose: dict[str, Any] | None = None,
    route: dict[str, Any] | None = None,
    contained: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A MedicationAdministration of `medication` (a concept, or `{"reference": ...}`)."""
    out: dict[str, Any] = {
        "resourceType": "MedicationAdministration",
        "id": "ma-1",
        "status": "completed",
        "subject": {"reference": "Patient/P1"},
        "effectiveDateTime": AT,
    }
    if "reference" in medication:
        out["medicationReference"] = medication
    else:
        out["medicationCodeableConcept"] = medication
    if contained:
        out["contained"] = contained
    dosage = {k: v for k, v in (("dose", dose), ("route", route)) if v is not None}
    if dosage:
        out["dosage"] = dosage
    return out


def as_order(
    medication: dict[str, Any],
    dose: dict[str, Any] | None = None,
    route: dict[str, Any] | None = None,
    contained: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The same medication as a draft MedicationRequest, as an EHR sends it to order-sign."""
    out: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": "mr-1",
        "status": "draft",
        "intent": "order",
        "subject": {"reference": "Patient/P1"},
    }
    if "reference" in medication:
        out["medicationReference"] = medication
    else:
        out["medicationCodeableConcept"] = medication
    if contained:
        out["contained"] = contained
    instruction: dict[str, Any] = {}
    if dose is not None:
        instruction["doseAndRate"] = [{"doseQuantity": dose}]
    if route is not None:
        instruction["route"] = route
    if instruction:
        out["dosageInstruction"] = [instruction]
    return out


def bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    """A patient's Bundle: the Patient (entry 0), the infusion (entry 1), then `resources`."""
    head = [
        {"resourceType": "Patient", "id": "P1"},
        {
            "resourceType": "Procedure",
            "status": "completed",
            "code": {"coding": [{"system": SYSTEM, "code": "car-t-infusion"}]},
            "subject": {"reference": "Patient/P1"},
            "performedDateTime": INFUSION,
        },
    ]
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": copy.deepcopy(r)} for r in (*head, *resources)],
    }


def draft_orders(*resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": copy.deepcopy(r)} for r in resources],
    }


def by_run(g: Guideline, **parts: Any) -> TreatmentEvent:
    """The treatment `iechs run` reads from a Bundle holding the administration."""
    [event] = bundle_to_timeline(bundle(as_administration(**parts)), g, "b.json").events
    assert isinstance(event, TreatmentEvent)
    return event


def by_order_sign(g: Guideline, **parts: Any) -> TreatmentEvent:
    """The treatment order-sign reads from the draft order."""
    [order] = read_draft_orders(draft_orders(as_order(**parts)), g, SIGNED_AT, patient="P1")
    return order.event


def refused_by_run(g: Guideline, **parts: Any) -> tuple[str, str]:
    """Where and why `iechs run` refuses the administration: (path within the resource, message)."""
    with pytest.raises(TimelineError) as caught:
        bundle_to_timeline(bundle(as_administration(**parts)), g, "b.json")
    [problem] = caught.value.problems
    prefix = "$.entry[2].resource"
    assert problem.path.startswith(prefix)
    return problem.path.removeprefix(prefix), problem.message


def refused_by_order_sign(g: Guideline, **parts: Any) -> tuple[str, str]:
    """Where and why order-sign refuses the draft order (a 400): (path within it, message)."""
    with pytest.raises(ServiceError) as caught:
        read_draft_orders(draft_orders(as_order(**parts)), g, SIGNED_AT, patient="P1")
    assert caught.value.status == 400
    path, _, message = caught.value.message.partition(": ")
    prefix = f"{ORDERS}.entry[0].resource"
    assert path.startswith(prefix)
    return path.removeprefix(prefix), message


# --- the measured problem: RxNorm names through both doors ---------------------------------------


def test_an_rxnorm_clinical_drug_is_its_ingredient_through_both_doors(guideline: Guideline) -> None:
    """The EHR charts "dexamethasone 4 MG/ML Injectable Solution", RxNorm 1812194 (a clinical
    drug, not an ingredient). Before, `iechs run` called it an unknown drug — a corticosteroid the
    engine did not see, so first-line treatment looked not started — while order-sign recognised
    it. Now both read it as dexamethasone, with the dose and route as charted."""
    parts = {
        "medication": DEXAMETHASONE_SCD,
        "dose": {"value": 10, "unit": "mg", "system": UCUM, "code": "mg"},
        "route": INTRAVENOUS,
    }
    given, ordered = by_run(guideline, **parts), by_order_sign(guideline, **parts)
    assert given.drug == ordered.drug == "dexamethasone"
    assert guideline.drug_class_of(given.drug) == "corticosteroid"
    assert (given.dose, given.unit, given.route) == (
        10,
        "mg",
        "Intravenous route (qualifier value)",
    )
    assert (ordered.dose, ordered.unit, ordered.route) == (given.dose, given.unit, given.route)


MEDICATIONS: dict[str, tuple[dict[str, Any], list[dict[str, Any]] | None, str]] = {
    # an ingredient code alone: the code is the drug
    "ingredient code": ({"coding": [rxnorm("72435")]}, None, "anakinra"),
    # a branded drug named by its brand, which the guideline lists as anakinra's synonym
    "brand name": ({"text": "Kineret 100 MG/0.67ML Prefilled Syringe"}, None, "anakinra"),
    # a biosimilar's suffix (FDA names biologics `core-xxxx`)
    "biosimilar suffix": ({"text": "Tocilizumab-aazg 20 MG/ML"}, None, "tocilizumab"),
    # the HL7 example's contained Medication (AHFS code, display): an antimicrobial by name
    "contained Medication": ({"reference": "#med0301"}, [VANCOMYCIN_AHFS], "vancomycin"),
    # a contained Medication whose ingredient carries the RxNorm ingredient code
    "ingredient of a Medication": (
        {"reference": "#m"},
        [
            {
                "resourceType": "Medication",
                "id": "m",
                "code": {"text": "Pharmacy compounded IV bag 0051"},
                "ingredient": [
                    {"itemCodeableConcept": {"coding": [rxnorm("1193326")]}, "isActive": True}
                ],
            }
        ],
        "ruxolitinib",
    ),
    # a drug the guideline does not know: kept as written, the same through both doors
    "unknown drug": ({"text": "Paracetamol 1 g"}, None, "paracetamol 1 g"),
}


@pytest.mark.parametrize("case", MEDICATIONS, ids=list(MEDICATIONS))
def test_both_doors_read_the_same_drug(guideline: Guideline, case: str) -> None:
    """Whatever the shape, a medication signed at order-sign and the same medication charted as
    given are one drug, with one dose, unit and route: the engine judges the order exactly as it
    will judge the administration."""
    medication, contained, drug = MEDICATIONS[case]
    parts = {
        "medication": medication,
        "contained": contained,
        "dose": {"value": 500, "unit": "mg", "system": UCUM, "code": "mg"},
        "route": INTRAVENOUS,
    }
    given, ordered = by_run(guideline, **parts), by_order_sign(guideline, **parts)
    assert given.drug == ordered.drug == drug
    assert (given.dose, given.unit, given.route) == (ordered.dose, ordered.unit, ordered.route)


def test_the_ingredient_code_decides_over_a_name_the_guideline_does_not_know(
    guideline: Guideline,
) -> None:
    """A pharmacy's local name ("DEXA 4MG/1ML INJ") names nothing iechs knows; the RxNorm
    ingredient code beside it does."""
    local = {"coding": [rxnorm("3264")], "text": "DEXA 4MG/1ML INJ"}
    assert by_run(guideline, medication=local).drug == "dexamethasone"
    assert by_order_sign(guideline, medication=local).drug == "dexamethasone"


def test_the_reader_says_where_each_field_came_from(guideline: Guideline) -> None:
    """`read_medication` is the one reader both doors call: it names the JSON path of every field
    it read and how it identified the drug, so a message about the drug, dose or route points at
    the place in the integrator's own resource."""
    resource = MedicationAdministration.model_validate(
        as_administration(
            {"reference": "#med0301"},
            dose={"value": 500, "unit": "mg", "system": UCUM, "code": "mg"},
            route=INTRAVENOUS,
            contained=[
                {
                    "resourceType": "Medication",
                    "id": "med0301",
                    "code": {"text": "Pharmacy IV bag 0051"},
                    "ingredient": [{"itemCodeableConcept": {"coding": [rxnorm("3264")]}}],
                }
            ],
        )
    )
    read = read_medication(source_of(resource, "$.x", lambda _: None), Formulary.of(guideline))
    assert read.problems == ()
    # the pharmacy's name names no drug; its ingredient's RxNorm code does
    assert (read.drug, read.formulary, read.identified_by) == ("dexamethasone", True, "RxNorm 3264")
    assert read.as_event() == {
        "drug": "dexamethasone",
        "dose": 500.0,
        "unit": "mg",
        "route": "Intravenous route (qualifier value)",
    }
    assert read.places == {
        "drug": "$.x.contained[0].ingredient[0].itemCodeableConcept.coding[0].code",
        "dose": "$.x.dosage.dose.value",
        "unit": "$.x.dosage.dose.code",
        "route": "$.x.dosage.route.coding[0].display",
    }


# --- what both doors refuse, alike ---------------------------------------------------------------

REFUSED: dict[str, tuple[dict[str, Any], str, str]] = {
    # the code says one steroid, the text another: a contradiction is not for iechs to settle
    "code and text disagree": (
        {"coding": [rxnorm("3264")], "text": "methylprednisolone 40 MG Injection"},
        ".medicationCodeableConcept.text",
        "RxNorm 3264 is dexamethasone, but 'methylprednisolone 40 MG Injection' names "
        "methylprednisolone",
    ),
    # one administration records one drug
    "two drugs in one name": (
        {"text": "anakinra + dexamethasone"},
        ".medicationCodeableConcept.text",
        "'anakinra + dexamethasone' names anakinra and dexamethasone: record each drug as its "
        "own {kind}",
    ),
    "two ingredient codes": (
        {"coding": [rxnorm("612865"), rxnorm("3264")]},
        ".medicationCodeableConcept.coding[1].code",
        "RxNorm 3264 is dexamethasone, but RxNorm 612865 is tocilizumab: record each drug as "
        "its own {kind}",
    ),
    "text and display disagree": (
        {"coding": [rxnorm("1812194", "dexamethasone 4 MG/ML")], "text": "Solu-Medrol 125 mg"},
        ".medicationCodeableConcept.coding[0].display",
        "'dexamethasone 4 MG/ML' names dexamethasone, but 'Solu-Medrol 125 mg' names "
        "methylprednisolone",
    ),
    # a clinical drug code alone: no name a clinician could check, and not an ingredient code
    "a clinical drug code alone": (
        {"coding": [rxnorm("1812194")]},
        ".medicationCodeableConcept",
        "a {kind} names its drug: medicationCodeableConcept text or a coding's display, or a "
        "medicationReference to a Medication with a code (RxNorm 1812194 is not the ingredient "
        "code of a drug of the guideline: a clinical or branded drug is read by its name)",
    ),
    "a reference to nothing": (
        {"reference": "Medication/gone"},
        ".medicationReference",
        "no Medication 'Medication/gone' in the Bundle or contained",
    ),
}


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_both_doors_refuse_alike_at_the_field_at_fault(guideline: Guideline, case: str) -> None:
    """A medication that names two drugs, or none a clinician could check, is refused with the
    same reason at the same field by `iechs run` (exit 2) and by order-sign (400): guessing would
    put a wrong drug in the record or let an order through unjudged."""
    medication, path, message = REFUSED[case]
    assert refused_by_run(guideline, medication=medication) == (
        path,
        message.format(kind="MedicationAdministration"),
    )
    assert refused_by_order_sign(guideline, medication=medication) == (
        path,
        message.format(kind="MedicationRequest"),
    )


def test_a_dose_is_read_alike_and_an_impossible_one_refused(guideline: Guideline) -> None:
    """A UCUM code is read as UCUM spells it (`ml` is `mL`); a unit of another system is kept as
    its text (the eICR example's `TAB`, v3-orderableDrugForm); a negative dose is refused by both
    doors at its value."""
    spelled = {"value": 4, "unit": "milliliter", "system": UCUM, "code": "ml"}
    tablets = {
        "value": 2,
        "unit": "TAB",
        "system": "http://terminology.hl7.org/CodeSystem/v3-orderableDrugForm",
        "code": "TAB",
    }
    for dose, unit in ((spelled, "mL"), (tablets, "TAB")):
        given = by_run(guideline, medication=DEXAMETHASONE_SCD, dose=dose)
        ordered = by_order_sign(guideline, medication=DEXAMETHASONE_SCD, dose=dose)
        assert given.unit == ordered.unit == unit
    negative = {"value": -1, "unit": "mg", "system": UCUM, "code": "mg"}
    assert refused_by_run(guideline, medication=DEXAMETHASONE_SCD, dose=negative) == (
        ".dosage.dose.value",
        "negative dose -1",
    )
    assert refused_by_order_sign(guideline, medication=DEXAMETHASONE_SCD, dose=negative) == (
        ".dosageInstruction[0].doseAndRate[0].doseQuantity.value",
        "negative dose -1",
    )


def test_order_sign_validates_the_parts_it_reads_as_fhir(guideline: Guideline) -> None:
    """A code that is not FHIR text is refused with fhir.resources' reason, at its place."""
    bad = {"coding": [{"system": RXNORM, "code": 3264}]}
    path, message = refused_by_order_sign(guideline, medication=bad)
    assert path == ".medicationCodeableConcept.coding[0].code"
    assert message.startswith("not valid FHIR R4:")


# --- a Bundle's orders and statements ------------------------------------------------------------


def test_orders_and_statements_in_a_bundle_are_reported_with_their_drug(
    guideline: Guideline,
) -> None:
    """A retrospective Bundle's MedicationRequest is an order and its MedicationStatement a report
    that a drug is or was taken: neither says a dose was given at a time, so neither is a
    treatment event. They are not dropped silently: the report names the drug, and says when it
    is one of the guideline's, so an integrator whose EHR exports only orders sees why the engine
    thinks no steroid was given."""
    order = as_order(DEXAMETHASONE_SCD)
    statement = {
        "resourceType": "MedicationStatement",
        "status": "completed",
        "medicationCodeableConcept": {"text": "Paracetamol 1 g"},
        "subject": {"reference": "Patient/P1"},
        "effectiveDateTime": AT,
    }
    timeline = bundle_to_timeline(bundle(order, statement), guideline, "b.json")
    assert timeline.events == ()
    assert [(p.path, p.message) for p in timeline.ignored] == [
        (
            "$.entry[2].resource",
            "a MedicationRequest is an order, not a dose given: iechs reads doses from "
            "MedicationAdministration (it names dexamethasone, a drug of the guideline: if it "
            "was given, record the dose as a MedicationAdministration)",
        ),
        (
            "$.entry[3].resource",
            "a MedicationStatement is a report of a drug taken, not a dose given: iechs reads "
            "doses from MedicationAdministration (it names 'Paracetamol 1 g')",
        ),
    ]


# --- the formulary: the guideline's drugs as FHIR names them --------------------------------------


def test_names_are_whole_words_and_the_longest_wins(guideline: Guideline) -> None:
    """`prednisolone` is not prednisone, `methylprednisolone` not prednisone either; a name is
    matched in any case and spacing; a hyphenated suffix (a biosimilar) still names the drug."""
    formulary = Formulary.of(guideline)
    assert formulary.named_in("prednisoLONE 5 mg") == []
    assert formulary.named_in("METHYLPREDNISOLONE sodium succinate") == ["methylprednisolone"]
    assert formulary.named_in("Liposomal  Amphotericin B 50 MG") == ["liposomal amphotericin b"]
    assert formulary.named_in("emapalumab-lzsg") == ["emapalumab"]
    assert formulary.named_in("Gamifant 10 mg/2 mL") == ["emapalumab"]
    assert formulary.named_in("xanakinra") == []


def test_rxnorm_codes_are_ingredient_codes_of_the_guideline(guideline: Guideline) -> None:
    """The codes are data in the guideline (`drugs.<id>.rxnorm`), confirmed against public
    references; siltuximab's and emapalumab's could not be and are absent (matched by name)."""
    assert Formulary.of(guideline).by_code == {
        "3264": "dexamethasone",
        "6902": "methylprednisolone",
        "8640": "prednisone",
        "5492": "hydrocortisone",
        "72435": "anakinra",
        "1193326": "ruxolitinib",
        "4179": "etoposide",
        "612865": "tocilizumab",
    }


@pytest.mark.parametrize(
    ("edit", "path", "message"),
    [
        (
            ('rxnorm: ["4179"]', 'rxnorm: ["4179", "41 79"]'),
            "$.drugs.etoposide.rxnorm[1]",
            "an RxNorm code (RxCUI) is digits, not '41 79'",
        ),
        (
            ('rxnorm: ["4179"]', 'rxnorm: ["3264"]'),
            "$.drugs.etoposide.rxnorm[0]",
            "RxNorm 3264 is also dexamethasone's",
        ),
        (
            ("synonyms: [Gamifant]", "synonyms: [Kineret]"),
            "$.drugs.emapalumab.synonyms[0]",
            "'Kineret' already names anakinra",
        ),
    ],
)
def test_a_code_or_a_name_identifies_one_drug(
    edit: tuple[str, str], path: str, message: str
) -> None:
    """An author who gives two drugs one code or one brand name is told where: a medication
    coded so would otherwise be whichever drug came first."""
    text = (ROOT / "guideline" / "iec-hs.yaml").read_text(encoding="utf-8")
    assert text.count(edit[0]) == 1
    with pytest.raises(GuidelineError) as caught:
        parse_guideline(text.replace(*edit), "g.yaml", base_dir=ROOT / "guideline")
    assert [(p.path, p.message) for p in caught.value.problems] == [(path, message)]
