"""Code systems, codes, extensions and units of the FHIR mapping (see `iechs.fhir.input`).

Standard codes are used where one exists and is certain (LOINC for laboratory values, age and
body weight; UCUM for units; HL7 terminology for Observation categories and Condition
statuses). Everything else uses the project's own CodeSystem `SYSTEM`: no SNOMED CT or LOINC code
is made up. `code_system(guideline)` writes that CodeSystem as a FHIR resource, so its codes are
defined in one place; the reader accepts exactly those codes.
"""

from __future__ import annotations

from typing import Any, get_args

from ..model import Guideline
from ..timeline import CloseReason, Indication, Infection, ResponseKind

__all__ = [
    "AGE_LOINC",
    "AGE_UNITS",
    "ASSESSMENT_FIELDS",
    "CONCEPTS",
    "CONDITION_CLINICAL",
    "CONDITION_VERIFICATION",
    "DOSE_UCUM",
    "EXT_COSTIMULATORY_DOMAIN",
    "EXT_TARGET",
    "LOINC",
    "OBSERVATION_CATEGORY",
    "PATIENT_ID_SYSTEM",
    "SYSTEM",
    "UCUM",
    "UCUM_SPELLING",
    "VALUE_DISPLAY",
    "VALUE_SETS",
    "VITAL_SIGNS",
    "WEIGHT_LOINC",
    "WEIGHT_UNITS",
    "code_system",
    "loinc_of",
    "observation_codes",
    "ucum_of",
]

#: The project's own CodeSystem, for every concept no standard code names.
SYSTEM = "https://iechs.dev/fhir/CodeSystem/iechs"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
#: Identifier system of the timeline's patient id (any text; `Patient.id` allows only some).
PATIENT_ID_SYSTEM = "https://iechs.dev/fhir/sid/patient-id"
#: Extensions of the CAR-T infusion Procedure: the product's target antigen and costimulatory
#: domain (valueString each).
EXT_TARGET = "https://iechs.dev/fhir/StructureDefinition/car-target"
EXT_COSTIMULATORY_DOMAIN = "https://iechs.dev/fhir/StructureDefinition/car-costimulatory-domain"

#: LOINC codes of the patient's age and body weight (read into `patient.age_years`/`weight_kg`).
AGE_LOINC = "30525-0"
WEIGHT_LOINC = "29463-7"
#: The units of age and body weight, as tables for `iechs.units.unit_factor` (UCUM unit ->
#: factor to years / kilograms); another UCUM unit of time or mass is converted by UCUM.
AGE_UNITS = {"a": 1.0, "mo": 1 / 12}
WEIGHT_UNITS = {"kg": 1.0, "g": 0.001, "[lb_av]": 0.45359237}
#: Guideline spellings that are not UCUM (guideline spelling -> UCUM), for the Bundle writer.
UCUM_SPELLING = {
    "10^9/L": "10*9/L",
    "10^3/uL": "10*3/uL",
    "IU/L": "[IU]/L",
    "µg/L": "ug/L",
    "µmol/L": "umol/L",
    "C": "Cel",
    "°C": "Cel",
}
#: Guideline observations written with the `vital-signs` category (the others: `laboratory`).
VITAL_SIGNS = frozenset({"temperature"})
#: Dose units written with a UCUM code (others are written as text only).
DOSE_UCUM = frozenset({"mg", "g", "ug", "mg/kg", "ug/kg", "mg/m2", "g/m2", "mL", "mg/kg/d"})

#: Concepts of `SYSTEM` that are not values: code -> display.
CONCEPTS: dict[str, str] = {
    "car-t-infusion": "CAR-T cell infusion (Procedure.code)",
    "assessment": "IEC-HS clinical assessment panel (Observation.code; fields as components)",
    "crs-grade": "Cytokine release syndrome grade, ASTCT 0-4 (valueInteger)",
    "icans-grade": "ICANS grade, ASTCT 0-4 (valueInteger)",
    "infection-status": "Infection status (valueCodeableConcept: none, suspected, confirmed)",
    "antimicrobials-started": "Antimicrobials started (valueBoolean)",
    "ctcae-grade": "CTCAE grade of a finding, 1-5 (component valueInteger)",
    "response": "Response assessment (valueCodeableConcept)",
    "episode-closed": "IEC-HS episode closed (valueCodeableConcept: the reason)",
    "risk-factor": "IEC-HS risk factor (valueCodeableConcept: the risk factor)",
    "baseline": "Baseline value (Observation.category)",
}

#: The assessment fields and their codes (as Observations or as components of `assessment`).
ASSESSMENT_FIELDS = {
    "crs-grade": "crs_grade",
    "icans-grade": "icans_grade",
    "infection-status": "infection",
    "antimicrobials-started": "antimicrobials",
}

#: Coded values of `SYSTEM`, per concept whose value is a code: concept -> allowed codes. The
#: timeline's own vocabulary (timeline.py) is the source.
VALUE_SETS: dict[str, tuple[str, ...]] = {
    "infection-status": get_args(Infection),
    "response": get_args(ResponseKind),
    "episode-closed": get_args(CloseReason),
    "indication": get_args(Indication),
}

VALUE_DISPLAY = {
    "none": "No infection",
    "suspected": "Infection suspected",
    "confirmed": "Infection confirmed",
    "improving": "Improving",
    "stable": "Stable",
    "worsening": "Worsening",
    "resolved": "Resolved",
    "follow_up_complete": "Follow-up complete",
    "death": "Death",
    "transfer": "Transfer",
    "iec_hs": "IEC-HS",
    "crs": "Cytokine release syndrome",
    "icans": "Immune effector cell-associated neurotoxicity syndrome",
    "infection": "Infection (also Condition.code of an infection)",
    "other": "Other indication",
}


def observation_codes(g: Guideline) -> dict[str, str]:
    """Codes of `SYSTEM` valid as `Observation.code`: code -> what it records."""
    out = {c: f"laboratory value: {o.name}" for c, o in g.observations.items()}
    out.update({c: f"finding: {f.name}" for c, f in g.findings.items()})
    for code in (*ASSESSMENT_FIELDS, "assessment", "response", "episode-closed", "risk-factor"):
        out[code] = CONCEPTS[code]
    return out


def loinc_of(code: str, g: Guideline) -> str | None:
    """The LOINC code written for a guideline observation (its first), if any."""
    listed = g.observations[code].loinc if code in g.observations else ()
    return listed[0] if listed else None


def ucum_of(unit: str) -> str:
    """The UCUM code of a guideline unit."""
    return UCUM_SPELLING.get(unit, unit)


def code_system(g: Guideline) -> dict[str, Any]:
    """The project's CodeSystem as an R4 resource (every code the FHIR reader accepts)."""
    concepts: dict[str, str] = dict(CONCEPTS)
    for values in VALUE_SETS.values():
        concepts.update({v: VALUE_DISPLAY[v] for v in values})
    concepts.update({c: o.name for c, o in g.observations.items()})
    concepts.update({c: f.name for c, f in g.findings.items()})
    concepts.update({c: s.text for c, s in g.risk_factors.items()})
    return {
        "resourceType": "CodeSystem",
        "id": "iechs",
        "url": SYSTEM,
        "name": "IechsCodes",
        "title": "iechs codes for IEC-HS concepts without a standard code",
        "status": "draft",
        "content": "complete",
        "caseSensitive": True,
        "concept": [{"code": c, "display": d} for c, d in concepts.items()],
    }
