"""FHIR R4 input: a Bundle mapped to a patient timeline, and a timeline written as a Bundle.

The Bundle is parsed and validated with the `fhir.resources.R4B` models: FHIR 4.3, the
R4-compatible release (fhir.resources 8 has no separate R4 package and its top-level models are
R5); every element read here is an R4 element. The mapped timeline then goes through the same checks
as a native timeline (`parse_timeline`: units, plausible ranges, grades), with every message
naming the place in the Bundle, e.g. `$.entry[3].resource.valueQuantity.code`.

One resource gives at most one timeline event (an assessment recorded as several Observations is
several assessment events; the `assessment` panel gives one). Events are sorted by time, stable
for ties, as in a native timeline; `Timeline.positions` holds each event's entry index.

Codes: LOINC for laboratory values, age and weight, UCUM for units, HL7 terminology for
categories and statuses. Concepts without a standard code use the project's own CodeSystem
`https://iechs.dev/fhir/CodeSystem/iechs` (below `iechs#code`); no SNOMED CT or LOINC code is
invented. `iechs.fhir.codes.code_system(guideline)` writes that CodeSystem.

timeline                      FHIR R4 (`iechs#x`: code x of the iechs CodeSystem)
----------------------------  --------------------------------------------------------------------
patient.id                    Patient.identifier with system https://iechs.dev/fhir/sid/patient-id,
                              else Patient.id, else the Patient's first identifier
patient.infusion_at           Procedure coded iechs#car-t-infusion: performedDateTime (or
                              performedPeriod.start)
patient.product.name          that Procedure's usedCode[0]: text, else a coding's display
product.target,               that Procedure's extensions (valueString)
  .costimulatory_domain       https://iechs.dev/fhir/StructureDefinition/car-target and
                              .../car-costimulatory-domain
patient.age_years             Observation LOINC 30525-0 (Age), valueQuantity in UCUM a or mo;
                              else Patient.birthDate (completed years at the infusion)
patient.weight_kg             Observation LOINC 29463-7 (Body weight), UCUM kg, g or [lb_av]
patient.risk_factors[]        Observation iechs#risk-factor, valueCodeableConcept iechs#<risk
                              factor> (the guideline's names, e.g. iechs#high_tumor_burden)
patient.baseline.<code>       a laboratory Observation (below) whose category includes
                              iechs#baseline; no time needed
observation                   Observation coded with one of the guideline's LOINC codes (and
  code, value, unit           718-7 haemoglobin, 1988-5 CRP, 8310-5 body temperature, which the
                              guideline does not list yet) or iechs#<observation> (e.g.
                              iechs#scd25); valueQuantity (value; UCUM code, else unit text);
                              effectiveDateTime (or effectiveInstant, effectivePeriod.start).
                              `loinc` is set when the LOINC code alone identified it
assessment                    Observation iechs#assessment, components iechs#crs-grade and
  crs_grade, icans_grade,     iechs#icans-grade (valueInteger), iechs#infection-status
  infection, antimicrobials   (valueCodeableConcept iechs#none, #suspected, #confirmed),
                              iechs#antimicrobials-started (valueBoolean); or one Observation
                              coded with one of these four codes, valued alike
assessment.infection          also Condition coded iechs#infection: verificationStatus
                              unconfirmed, provisional, differential -> suspected; confirmed ->
                              confirmed; refuted, or clinicalStatus inactive, resolved,
                              remission -> none. Time: recordedDate, else abatementDateTime
                              (when inactive), else onsetDateTime
finding                       Observation iechs#<finding> (e.g. iechs#hemophagocytosis),
  code, present, grade        valueBoolean = present, component iechs#ctcae-grade valueInteger
treatment.drug                MedicationAdministration.medicationCodeableConcept, or the
  .dose, .unit, .route        Medication its medicationReference names (an entry or contained),
                              or the reference's display; dosage.dose and dosage.route. Read by
                              `iechs.fhir.medications`, as order-sign reads draft orders: an
                              RxNorm ingredient code of a guideline drug, else the drug's name
                              or a synonym as a word of the text ("dexamethasone 4 MG/ML
                              Injectable Solution" is dexamethasone), else the text as written
treatment.indication          reasonCode iechs#iec_hs, #crs, #icans, #infection or #other
treatment.at                  effectiveDateTime (or effectivePeriod.start)
response                      Observation iechs#response, valueCodeableConcept iechs#improving,
                              #stable, #worsening or #resolved
close                         Observation iechs#episode-closed, valueCodeableConcept
                              iechs#follow_up_complete, #death or #transfer; or
                              Patient.deceasedDateTime (reason death) if there is no such
                              Observation

Units are read by `iechs.units`, as in a native timeline: the guideline's accepted units in any
spelling UCUM allows (`ng/ml`, `ug/l`, `mg/dl`, `10*9/l`, `[IU]/L`) and any unit UCUM converts to
one of them (ferritin in mg/L, AST in ukat/L, platelets per uL or nL); a temperature in `[degF]`
is converted to Cel; weight `g`, `[lb_av]` -> kg; age `mo` (or any UCUM time) -> years.

What is wrong and what is ignored. A `TimelineError` (exit 2, naming the file and the JSON
path) when the Bundle would give a wrong timeline: not valid FHIR R4 (per fhir.resources); no
Patient, several, or none with an id; no CAR-T infusion, or several; a resource about another
patient, or whose patient iechs cannot check: an Observation without a subject (FHIR allows one,
but a laboratory value of unknown provenance must not decide for this patient), a subject with no
reference and no identifier of the Patient; a death (Patient.deceasedDateTime, or an
episode-closed Observation with reason death) before the CAR-T infusion, which contradicts it; a
code of the iechs CodeSystem that does not exist or does not fit where it stands (e.g.
`iechs#crs-grad`); a value of the wrong type for an iechs concept; a LOINC code that names
another observation than the iechs code beside it; a known laboratory value without a time or
unit, or with a unit or value the guideline rejects; a time without a time of day; a
MedicationAdministration without a drug name or time, or whose codes and names disagree on the
drug (`iechs.fhir.medications`); an infection Condition without a verification status; a status
outside FHIR's codes; an event after the episode closed (any other close before the infusion is
only recorded, as the engine records any event before it).
Everything iechs has no use for is kept in `Timeline.ignored` (path and reason) and printed by
`iechs run`: resource types it does not read (Encounter, DiagnosticReport, ...); a
MedicationRequest (an order) or a MedicationStatement (a report that a drug is or was taken),
which records no dose given at a time (the report names the drug, and says so when it is one of
the guideline's: chart its doses as MedicationAdministration); Observations of codes the
guideline does not read (e.g. sodium, LOINC 2951-2), Conditions and Procedures other than the
infection and the infusion, entries whose status voids them (not-done, entered-in-error,
cancelled, registered, preparation), laboratory results without a number or with a comparator
(`>100000` is a bound, not a value: the engine treats it as missing and says so), a reasonCode
outside the iechs CodeSystem or a reasonReference (the engine infers the indication, unless an
iechs reasonCode gives it), a second iechs indication, components outside the iechs CodeSystem,
body weights and ages other than the one used, a birthDate that is not a full date, Medications
no administration refers to.

`timeline_to_bundle` writes the reverse: a `collection` Bundle (validated by fhir.resources),
deterministic (ids derive from the patient id and entry order; no clock). Reading it back gives
the same timeline, except what FHIR cannot say: an empty text (route, dose unit, product field)
is left out, and a product with no field at all is no product; the engine decides alike. An
observation event whose `loinc` names another observation than its `code` (a native timeline may
give both) is written with its code and reads back without that `loinc`.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any

import attrs
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.medication import Medication
from fhir.resources.R4B.medicationadministration import MedicationAdministration
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.medicationstatement import MedicationStatement
from fhir.resources.R4B.observation import Observation, ObservationComponent
from fhir.resources.R4B.patient import Patient as FhirPatient
from fhir.resources.R4B.procedure import Procedure
from fhir.resources.R4B.quantity import Quantity
from fhir.resources.R4B.reference import Reference
from fhir.resources.R4B.resource import Resource
from pydantic import ValidationError

from ..errors import Problem, TimelineError, unknown_name
from ..model import Guideline
from ..timeline import (
    AssessmentEvent,
    CloseEvent,
    Event,
    FindingEvent,
    ObservationEvent,
    Patient,
    ResponseEvent,
    Timeline,
    TreatmentEvent,
    format_time,
    parse_timeline,
)
from ..units import to_canonical, unit_factor
from .codes import (
    AGE_LOINC,
    AGE_UNITS,
    ASSESSMENT_FIELDS,
    CONDITION_CLINICAL,
    CONDITION_VERIFICATION,
    DOSE_UCUM,
    EXT_COSTIMULATORY_DOMAIN,
    EXT_TARGET,
    LOINC,
    OBSERVATION_CATEGORY,
    PATIENT_ID_SYSTEM,
    SYSTEM,
    UCUM,
    VALUE_DISPLAY,
    VALUE_SETS,
    VITAL_SIGNS,
    WEIGHT_LOINC,
    WEIGHT_UNITS,
    loinc_of,
    observation_codes,
    ucum_of,
)
from .medications import Formulary, MedicationRead, read_medication, source_of

__all__ = ["FHIR_PACKAGE", "bundle_to_timeline", "timeline_to_bundle"]

#: The fhir.resources package whose models parse and validate the Bundles.
FHIR_PACKAGE = "fhir.resources.R4B"

_OBSERVATION_USED = {"preliminary", "final", "amended", "corrected", "unknown"}
_OBSERVATION_VOID = {"registered", "cancelled", "entered-in-error"}
_ADMINISTRATION_USED = {"in-progress", "on-hold", "completed", "stopped", "unknown"}
_ADMINISTRATION_VOID = {"not-done", "entered-in-error"}
_PROCEDURE_USED = {"in-progress", "on-hold", "stopped", "completed", "unknown"}
_PROCEDURE_VOID = {"preparation", "not-done", "entered-in-error"}
_SUSPECTED = {"unconfirmed", "provisional", "differential"}
_VERIFICATION = {*_SUSPECTED, "confirmed", "refuted", "entered-in-error"}
_INACTIVE = {"inactive", "resolved", "remission"}
_CLINICAL = {"active", "recurrence", "relapse", *_INACTIVE}
_VALUE_FIELDS = (
    "valueQuantity",
    "valueCodeableConcept",
    "valueString",
    "valueBoolean",
    "valueInteger",
    "valueRange",
    "valueRatio",
    "valueSampledData",
    "valueTime",
    "valueDateTime",
    "valuePeriod",
)
_PRODUCT_EXTENSIONS = {EXT_TARGET: "target", EXT_COSTIMULATORY_DOMAIN: "costimulatory_domain"}
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_NS = uuid.UUID("0f4b7c1e-93a2-4d5e-8c61-2b7f3e9a4d10")  # namespace of the writer's urn:uuid ids
_EVENT_PATH = re.compile(r"\$\.events\[(\d+)\]\.?(.*)")
_LAST_STEP = re.compile(r"(\.[^.\[]+|\[\d+\])$")


# --- reading -------------------------------------------------------------------------------------


def _entry(i: int) -> str:
    return f"$.entry[{i}].resource"


def _loc(loc: Sequence[int | str]) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)


def _validate(data: Mapping[str, Any], file: str | None) -> Bundle:
    """The Bundle as fhir.resources R4B models, or a TimelineError naming each invalid place."""
    problems: list[Problem] = []
    entries = data.get("entry")
    for i, entry in enumerate(entries if isinstance(entries, list) else []):
        resource = entry.get("resource") if isinstance(entry, Mapping) else None
        if not isinstance(resource, Mapping):
            continue
        kind = resource.get("resourceType")
        try:
            known = isinstance(kind, str) and issubclass(get_fhir_model_class(kind), Resource)
        except (KeyError, ValueError):
            known = False
        if not known:
            problems.append(
                Problem(f"{kind!r} is not a FHIR R4 resource type", f"{_entry(i)}.resourceType")
            )
    if problems:
        raise TimelineError(problems, file)
    try:
        return Bundle.model_validate(data)
    except ValidationError as exc:
        raise TimelineError(
            [
                Problem(
                    f"not valid FHIR R4: {e['msg'].removeprefix('Value error, ')}", _loc(e["loc"])
                )
                for e in exc.errors()
            ],
            file,
        ) from None
    except (KeyError, ValueError, TypeError) as exc:  # e.g. an unknown type in `contained`
        raise TimelineError([Problem(f"not valid FHIR R4: {exc}")], file) from None


def _utc(value: object, path: str, problems: list[Problem]) -> str | None:
    """A FHIR dateTime as an ISO timestamp in UTC; a bare date has no time of day."""
    if isinstance(value, datetime):
        try:
            return value.astimezone(UTC).isoformat()
        except OverflowError:
            problems.append(Problem(f"{value.isoformat()} is out of range", path))
            return None
    problems.append(
        Problem(f"{value!s} has no time of day: give the date, the time and a zone", path)
    )
    return None


def _texts(cc: CodeableConcept | None, path: str) -> list[tuple[str, str]]:
    """The human names of a concept with their paths: its text, then each coding's display."""
    if cc is None:
        return []
    out = [(cc.text, f"{path}.text")] if cc.text else []
    for k, coding in enumerate(cc.coding or []):
        if coding.display:
            out.append((coding.display, f"{path}.coding[{k}].display"))
    return out


def _ours(cc: CodeableConcept | None, path: str) -> tuple[str, str] | None:
    """The first code of the iechs CodeSystem in a concept, with the path of that code."""
    for k, coding in enumerate(cc.coding or [] if cc is not None else []):
        if coding.system == SYSTEM and coding.code:
            return coding.code, f"{path}.coding[{k}].code"
    return None


def _shown(cc: CodeableConcept | None) -> str:
    """A concept as a reader would name it: `LOINC 2951-2 (Sodium)`."""
    if cc is None:
        return "no code"
    names = []
    for coding in cc.coding or []:
        system = "LOINC" if coding.system == LOINC else coding.system or "no system"
        name = f"{system} {coding.code}"
        names.append(f"{name} ({coding.display})" if coding.display else name)
    if not names:
        return repr(cc.text) if cc.text else "no code"
    return ", ".join(names)


def _named(medication: MedicationRead) -> str:
    """What a medication names, for a report."""
    if medication.drug is None:
        return "it names no drug iechs can read"
    if medication.formulary:
        return (
            f"it names {medication.drug}, a drug of the guideline: if it was given, record the "
            "dose as a MedicationAdministration"
        )
    return f"it names {medication.drug!r}"


def _status(cc: CodeableConcept | None, system: str) -> str | None:
    """The code of a status concept in its HL7 code system."""
    for coding in cc.coding or [] if cc is not None else []:
        if coding.system == system and coding.code:
            return coding.code
    return None


def _quantity_unit(q: Quantity) -> str | None:
    """The unit of a quantity: its UCUM code, else its unit text."""
    if q.code and q.system in (UCUM, None):
        return q.code
    return q.unit or q.code


def _unit_path(q: Quantity, path: str) -> str:
    if q.code and q.system in (UCUM, None):
        return f"{path}.code"
    return f"{path}.unit" if q.unit else path


@attrs.define
class _Event:
    entry: int
    data: dict[str, Any]
    #: native field ("" for the event itself) -> path in the Bundle
    places: dict[str, str]


@attrs.define
class _Candidate:
    """An age or body weight, until the one to use is chosen."""

    entry: int
    at: datetime | None
    value: float
    path: str


class _Reader:
    def __init__(self, g: Guideline, file: str | None) -> None:
        self.g = g
        self.file = file
        self.problems: list[Problem] = []
        self.ignored: list[tuple[int, Problem]] = []
        self.events: list[_Event] = []
        self.patient: dict[str, Any] = {"risk_factors": [], "baseline": {}}
        #: native patient path -> path in the Bundle
        self.places: dict[str, str] = {}
        self.observation_codes = observation_codes(g)
        self.loinc: dict[str, str] = {}
        for code, obs in g.observations.items():
            self.loinc.update(dict.fromkeys(obs.loinc, code))
        self.patient_refs: set[str] = set()
        self.patient_entry: int | None = None
        self.infusion_entry: int | None = None
        self.closed_by: int | None = None
        self.ages: list[_Candidate] = []
        self.weights: list[_Candidate] = []
        self.medications: dict[str, int] = {}
        self.used_medications: set[int] = set()
        self.formulary = Formulary.of(g)
        self.patient_identifiers: set[tuple[str | None, str]] = set()
        self.birth: tuple[object, str] = (None, "")
        self.deceased: tuple[object, bool | None, str] = (None, None, "")

    # -- helpers --

    def problem(self, message: str, path: str) -> None:
        self.problems.append(Problem(message, path))

    def ignore(self, i: int, message: str, path: str) -> None:
        self.ignored.append((i, Problem(message, path)))

    def coded_value(
        self, cc: CodeableConcept | None, allowed: Sequence[str], what: str, path: str
    ) -> str | None:
        found = _ours(cc, path)
        if found is None:
            self.problem(
                f"{what} needs a valueCodeableConcept coded in {SYSTEM} "
                f"(one of: {', '.join(allowed)})",
                path,
            )
            return None
        code, where = found
        if code not in allowed:
            self.problem(unknown_name(what, code, allowed), where)
            return None
        return code

    def subject(self, ref: Reference | None, path: str) -> None:
        """A resource about another patient than the Bundle's, or about a subject iechs cannot
        check (no reference, and no identifier of the Patient), is refused."""
        if ref is None:
            return
        if not ref.reference:
            x = ref.identifier
            if x is not None and x.value and (x.system, x.value) in self.patient_identifiers:
                return
            self.problem(
                "the subject names no resource (no reference) nor an identifier of the Bundle's "
                "Patient: iechs cannot tell whose this is",
                f"{path}.subject",
            )
            return
        target = ref.reference
        if target in self.patient_refs or any(
            r.startswith("Patient/") and target.endswith(f"/{r}") for r in self.patient_refs
        ):
            return
        self.problem(
            f"refers to {target!r}, not to the Bundle's Patient: a Bundle holds one patient",
            f"{path}.subject.reference",
        )

    def add_event(self, i: int, data: dict[str, Any], places: dict[str, str]) -> None:
        self.events.append(_Event(i, data, places))

    # -- the Bundle --

    def read(self, bundle: Bundle) -> Timeline:
        entries = bundle.entry or []
        for i, entry in enumerate(entries):
            res = entry.resource
            if isinstance(res, FhirPatient):
                self.read_patient(i, res, entry.fullUrl)
            elif isinstance(res, Medication):
                for key in (entry.fullUrl, f"Medication/{res.id}" if res.id else None):
                    if key:
                        self.medications[key] = i
        if self.patient_entry is None:
            self.problem("the Bundle has no Patient", "$.entry")
        for i, entry in enumerate(entries):
            res = entry.resource
            path = _entry(i)
            if res is None:
                self.ignore(i, "an entry without a resource", f"$.entry[{i}]")
            elif isinstance(res, FhirPatient | Medication):
                continue
            elif isinstance(res, Observation):
                self.subject(res.subject, path)
                self.read_observation(i, res, path)
            elif isinstance(res, MedicationAdministration):
                self.subject(res.subject, path)
                self.read_administration(i, res, path, entries)
            elif isinstance(res, MedicationStatement | MedicationRequest):
                self.subject(res.subject, path)
                self.read_not_given(i, res, path, entries)
            elif isinstance(res, Procedure):
                self.subject(res.subject, path)
                self.read_procedure(i, res, path)
            elif isinstance(res, Condition):
                self.subject(res.subject, path)
                self.read_condition(i, res, path)
            else:
                self.ignore(i, f"iechs does not read {res.get_resource_type()} resources", path)
        for i in sorted(set(self.medications.values()) - self.used_medications):
            self.ignore(i, "no MedicationAdministration refers to this Medication", _entry(i))
        if self.infusion_entry is None:
            self.problem(
                f"the Bundle has no CAR-T infusion: a Procedure coded {SYSTEM}#car-t-infusion "
                "with performedDateTime",
                "$.entry",
            )
        if self.problems:
            raise TimelineError(self.problems, self.file)
        infusion = datetime.fromisoformat(self.patient["infusion_at"])
        self.choose("age_years", self.ages, "age", infusion)
        self.choose("weight_kg", self.weights, "body weight", infusion)
        self.patient_details(infusion)
        if self.problems:
            raise TimelineError(self.problems, self.file)
        return self.timeline()

    # -- Patient --

    def read_patient(self, i: int, res: FhirPatient, full_url: str | None) -> None:
        path = _entry(i)
        if self.patient_entry is not None:
            self.problem(
                f"a second Patient (the first is $.entry[{self.patient_entry}]): a Bundle holds "
                "one patient",
                path,
            )
            return
        self.patient_entry = i
        self.places["$.patient"] = path
        identifiers = list(enumerate(res.identifier or []))
        ours = [(k, x.value) for k, x in identifiers if x.system == PATIENT_ID_SYSTEM and x.value]
        others = [(k, x.value) for k, x in identifiers if x.value]
        if ours:
            k, pid = ours[0]
            self.places["$.patient.id"] = f"{path}.identifier[{k}].value"
        elif res.id:
            pid = res.id
            self.places["$.patient.id"] = f"{path}.id"
        elif others:
            k, pid = others[0]
            self.places["$.patient.id"] = f"{path}.identifier[{k}].value"
        else:
            self.problem("the Patient has no id and no identifier", path)
            pid = None
        self.patient["id"] = pid
        self.patient_identifiers.update((x.system, x.value) for _, x in identifiers if x.value)
        self.patient_refs.update(
            r for r in (full_url, f"Patient/{res.id}" if res.id else None) if r
        )
        self.birth = (res.birthDate, f"{path}.birthDate")
        self.deceased = (res.deceasedDateTime, res.deceasedBoolean, path)

    def patient_details(self, infusion: datetime) -> None:
        """Age from birthDate when no age Observation gives it; death as the episode's close."""
        born, where = self.birth
        if "age_years" not in self.patient and born is not None:
            if isinstance(born, date):
                on = infusion.astimezone(UTC).date()
                years = on.year - born.year - ((on.month, on.day) < (born.month, born.day))
                self.patient["age_years"] = float(years)
                self.places["$.patient.age_years"] = where
            else:
                assert self.patient_entry is not None
                self.ignore(
                    self.patient_entry, f"birthDate {born!s} is not a full date: no age", where
                )
        when, dead, path = self.deceased
        if when is None and not dead:
            return
        assert self.patient_entry is not None
        at = None
        if when is not None:
            at = _utc(when, f"{path}.deceasedDateTime", self.problems)
            if at is None:
                return
            if datetime.fromisoformat(at) < infusion:
                # A patient who died cannot be infused: a Bundle that says both is wrong, and
                # iechs will not guess which time is (nor drop the death, as it once did).
                self.problem(
                    self.died_before(datetime.fromisoformat(at), infusion),
                    f"{path}.deceasedDateTime",
                )
                return
        if self.closed_by is not None:
            self.ignore(
                self.patient_entry,
                f"the episode-closed Observation $.entry[{self.closed_by}] closes the episode",
                f"{path}.deceased{'DateTime' if when is not None else 'Boolean'}",
            )
        elif at is None:
            self.problem(
                "deceasedBoolean is true but no time says when: give deceasedDateTime or an "
                f"Observation {SYSTEM}#episode-closed",
                f"{path}.deceasedBoolean",
            )
        else:
            self.add_event(
                self.patient_entry,
                {"at": at, "kind": "close", "reason": "death"},
                {"": f"{path}.deceasedDateTime"},
            )

    def died_before(self, at: datetime, infusion: datetime) -> str:
        """Why a death recorded before the infusion is refused."""
        where = self.places.get("$.patient.infusion_at", "$")
        return (
            f"a death at {format_time(at)}, before the CAR-T infusion at {format_time(infusion)} "
            f"({where}): the Bundle contradicts itself; correct the time of death or of the "
            "infusion"
        )

    def choose(
        self, field: str, candidates: list[_Candidate], what: str, infusion: datetime
    ) -> None:
        """The value at or last before the infusion (an undated one counts as at the infusion),
        else the first after; ties go to the first in the Bundle. The others are reported."""
        if not candidates:
            return
        before = [c for c in candidates if c.at is None or c.at <= infusion]
        if before:
            chosen = max(before, key=lambda c: c.at or infusion)
        else:
            chosen = min(candidates, key=lambda c: c.at or infusion)
        self.patient[field] = chosen.value
        self.places[f"$.patient.{field}"] = chosen.path
        for c in candidates:
            if c is not chosen:
                self.ignore(
                    c.entry,
                    f"another {what} is used ($.entry[{chosen.entry}])",
                    _entry(c.entry),
                )

    # -- Procedure: the CAR-T infusion --

    def read_procedure(self, i: int, res: Procedure, path: str) -> None:
        found = _ours(res.code, f"{path}.code")
        if found is None:
            self.ignore(i, f"a Procedure iechs does not read ({_shown(res.code)})", path)
            return
        code, where = found
        if code != "car-t-infusion":
            self.problem(
                unknown_name(f"Procedure code of {SYSTEM}", code, ["car-t-infusion"]), where
            )
            return
        if res.status in _PROCEDURE_VOID:
            self.ignore(i, f"an infusion with status {res.status}: not given", f"{path}.status")
            return
        if res.status not in _PROCEDURE_USED:
            self.problem(f"{res.status!r} is not a Procedure status", f"{path}.status")
            return
        if self.infusion_entry is not None:
            self.problem(
                f"a second CAR-T infusion (the first is $.entry[{self.infusion_entry}]): "
                "a Bundle holds one episode",
                path,
            )
            return
        self.infusion_entry = i
        if res.performedDateTime is not None:
            at = _utc(res.performedDateTime, f"{path}.performedDateTime", self.problems)
            self.places["$.patient.infusion_at"] = f"{path}.performedDateTime"
        elif res.performedPeriod is not None and res.performedPeriod.start is not None:
            at = _utc(res.performedPeriod.start, f"{path}.performedPeriod.start", self.problems)
            self.places["$.patient.infusion_at"] = f"{path}.performedPeriod.start"
        else:
            self.problem("the CAR-T infusion needs performedDateTime", path)
            at = None
        self.patient["infusion_at"] = at
        self.places["$.patient.product"] = path
        product: dict[str, str] = {}
        names = _texts(res.usedCode[0] if res.usedCode else None, f"{path}.usedCode[0]")
        if names:
            product["name"] = names[0][0]
            self.places["$.patient.product.name"] = names[0][1]
        for k, ext in enumerate(res.extension or []):
            field = _PRODUCT_EXTENSIONS.get(ext.url or "")
            if field is None:
                continue
            if ext.valueString is None:
                self.problem(f"the extension {ext.url} needs valueString", f"{path}.extension[{k}]")
                continue
            product[field] = ext.valueString
            self.places[f"$.patient.product.{field}"] = f"{path}.extension[{k}].valueString"
        if product:
            self.patient["product"] = product

    # -- Observation --

    def read_observation(self, i: int, res: Observation, path: str) -> None:
        if res.status in _OBSERVATION_VOID:
            self.ignore(i, f"status {res.status}: no result to use", f"{path}.status")
            return
        if res.status not in _OBSERVATION_USED:
            self.problem(f"{res.status!r} is not an Observation status", f"{path}.status")
            return
        identified = self.identify(i, res, path)
        if identified is None:
            return
        if res.subject is None:
            # FHIR lets an Observation have no subject (a device's, a group's); iechs will not
            # take one to be the Patient's: a ferritin of someone else would decide for them.
            self.problem(
                "an Observation without a subject: iechs cannot tell whose it is; give subject, "
                "a reference to the Bundle's Patient",
                f"{path}.subject",
            )
            return
        code, loinc, code_path = identified
        baseline = any(
            coding.system == SYSTEM and coding.code == "baseline"
            for category in res.category or []
            for coding in category.coding or []
        )
        if baseline and code not in self.g.observations:
            self.problem(f"{SYSTEM}#baseline is a category of laboratory values only", path)
            return
        if code in (AGE_LOINC, WEIGHT_LOINC):
            self.read_patient_measure(i, res, path, code)
        elif code in self.g.observations:
            self.read_laboratory(
                i, res, path, code, loinc=loinc, code_path=code_path, baseline=baseline
            )
        elif code == "risk-factor":
            self.read_risk_factor(res, path)
        else:
            at = self.effective(res, path)
            if at is None:
                return
            if code in self.g.findings:
                self.read_finding(i, res, path, code, at)
            elif code == "assessment":
                self.read_panel(i, res, path, at)
            elif code in ASSESSMENT_FIELDS:
                field = ASSESSMENT_FIELDS[code]
                found = self.field_value(code, res, path)
                if found is not None:
                    self.add_event(
                        i,
                        {"at": at, "kind": "assessment", field: found[0]},
                        {"": path, field: found[1]},
                    )
            elif code == "response":
                self.read_coded(i, res, path, at, kind="response", field="assessment")
            elif code == "episode-closed":
                if self.closed_by is None:
                    self.closed_by = i
                self.read_coded(i, res, path, at, kind="close", field="reason")

    def read_risk_factor(self, res: Observation, path: str) -> None:
        where = f"{path}.valueCodeableConcept"
        factor = self.coded_value(
            res.valueCodeableConcept, list(self.g.risk_factors), "risk factor", where
        )
        if factor is not None:
            k = len(self.patient["risk_factors"])
            self.patient["risk_factors"].append(factor)
            self.places[f"$.patient.risk_factors[{k}]"] = where

    def read_coded(
        self, i: int, res: Observation, path: str, at: str, *, kind: str, field: str
    ) -> None:
        """A response or close: one coded value."""
        where = f"{path}.valueCodeableConcept"
        concept = "response" if kind == "response" else "episode-closed"
        what = "response" if kind == "response" else "reason for closing"
        value = self.coded_value(res.valueCodeableConcept, VALUE_SETS[concept], what, where)
        if value is not None:
            self.add_event(i, {"at": at, "kind": kind, field: value}, {"": path, field: where})

    def identify(self, i: int, res: Observation, path: str) -> tuple[str, str | None, str] | None:
        """What an Observation records: an iechs code (or the age and weight LOINC codes), the
        LOINC code it was identified by alone (if so), and the path of the code used."""
        codings = list(enumerate(res.code.coding or []))
        ours = _ours(res.code, f"{path}.code")
        if ours is not None:
            code, where = ours
            if code not in self.observation_codes:
                self.problem(
                    unknown_name(f"Observation code of {SYSTEM}", code, self.observation_codes),
                    where,
                )
                return None
            for k, coding in codings:
                other = self.loinc.get(coding.code or "") if coding.system == LOINC else None
                if other is not None and other != code:
                    self.problem(
                        f"LOINC {coding.code} is {other}, but the iechs code beside it says {code}",
                        f"{path}.code.coding[{k}].code",
                    )
                    return None
            return code, None, where
        for k, coding in codings:
            if coding.system != LOINC or not coding.code:
                continue
            where = f"{path}.code.coding[{k}].code"
            if coding.code in (AGE_LOINC, WEIGHT_LOINC):
                return coding.code, None, where
            if coding.code in self.loinc:
                return self.loinc[coding.code], coding.code, where
        self.ignore(i, f"the guideline does not read {_shown(res.code)}", f"{path}.code")
        return None

    def effective(self, res: Observation, path: str) -> str | None:
        if res.effectiveDateTime is not None:
            return _utc(res.effectiveDateTime, f"{path}.effectiveDateTime", self.problems)
        if res.effectiveInstant is not None:
            return _utc(res.effectiveInstant, f"{path}.effectiveInstant", self.problems)
        if res.effectivePeriod is not None and res.effectivePeriod.start is not None:
            return _utc(res.effectivePeriod.start, f"{path}.effectivePeriod.start", self.problems)
        self.problem("the Observation needs effectiveDateTime (when it was measured)", path)
        return None

    def quantity(self, i: int, res: Observation, path: str) -> tuple[float, str, str] | None:
        """(value, unit, path of the unit) of a numeric result, or None (ignored or wrong)."""
        q = res.valueQuantity
        if q is None or q.value is None:
            given = [f for f in _VALUE_FIELDS if getattr(res, f) is not None]
            if res.dataAbsentReason is not None:
                given.append(f"dataAbsentReason {_shown(res.dataAbsentReason)}")
            self.ignore(
                i,
                f"no number ({', '.join(given) or 'no value'}): the engine treats it as missing",
                path,
            )
            return None
        if q.comparator is not None:
            self.ignore(
                i,
                f"{q.comparator}{q.value} is a bound, not a value: the engine treats it as missing",
                f"{path}.valueQuantity.comparator",
            )
            return None
        unit = _quantity_unit(q)
        if unit is None:
            self.problem("the quantity has no unit (code or unit)", f"{path}.valueQuantity")
            return None
        return float(q.value), unit, _unit_path(q, f"{path}.valueQuantity")

    def read_laboratory(
        self,
        i: int,
        res: Observation,
        path: str,
        code: str,
        *,
        loinc: str | None,
        code_path: str,
        baseline: bool,
    ) -> None:
        measured = self.quantity(i, res, path)
        if measured is None:
            return
        value, unit, unit_path = measured
        # Units are read by `iechs.units` (in `parse_timeline`); only a temperature on another
        # scale ([degF]), which no factor converts, is converted here, by the same module.
        obs = self.g.observations[code]
        if unit_factor(unit, obs.units, canonical=obs.unit) is None:
            converted = to_canonical(value, unit, obs.units, canonical=obs.unit)
            if converted is not None:
                value, unit = converted, obs.unit
        value_path = f"{path}.valueQuantity.value"
        if baseline:
            if code in self.patient["baseline"]:
                self.problem(f"a second baseline value of {code}", path)
                return
            self.patient["baseline"][code] = {"value": value, "unit": unit}
            where = f"$.patient.baseline.{code}"
            self.places.update(
                {where: path, f"{where}.value": value_path, f"{where}.unit": unit_path}
            )
            return
        at = self.effective(res, path)
        if at is None:
            return
        data: dict[str, Any] = {"at": at, "kind": "observation", "code": code}
        if loinc is not None:
            data["loinc"] = loinc
        data.update(value=value, unit=unit)
        places = {"": path, "code": code_path, "loinc": code_path}
        self.add_event(i, data, {**places, "value": value_path, "unit": unit_path})

    def read_patient_measure(self, i: int, res: Observation, path: str, loinc: str) -> None:
        measured = self.quantity(i, res, path)
        if measured is None:
            return
        value, unit, unit_path = measured
        units, what, into = (
            (AGE_UNITS, "age", self.ages)
            if loinc == AGE_LOINC
            else (WEIGHT_UNITS, "body weight", self.weights)
        )
        factor = unit_factor(unit, units)  # by UCUM: `wk` is an age too
        if factor is None:
            self.problem(f"unknown unit {unit!r} for {what} (UCUM: {', '.join(units)})", unit_path)
            return
        at = None
        if res.effectiveDateTime is not None:
            at_text = _utc(res.effectiveDateTime, f"{path}.effectiveDateTime", self.problems)
            at = datetime.fromisoformat(at_text) if at_text else None
        value = value if factor == 1 else value * factor
        into.append(_Candidate(i, at, value, f"{path}.valueQuantity.value"))

    def field_value(
        self, code: str, holder: Observation | ObservationComponent, path: str
    ) -> tuple[Any, str] | None:
        """The value of an assessment field and its path, by the field's value type."""
        if code in ("crs-grade", "icans-grade"):
            if holder.valueInteger is None:
                self.problem(f"{code} needs valueInteger (0-4)", path)
                return None
            return holder.valueInteger, f"{path}.valueInteger"
        if code == "antimicrobials-started":
            if holder.valueBoolean is None:
                self.problem(f"{code} needs valueBoolean", path)
                return None
            return holder.valueBoolean, f"{path}.valueBoolean"
        where = f"{path}.valueCodeableConcept"
        value = self.coded_value(
            holder.valueCodeableConcept, VALUE_SETS["infection-status"], "infection status", where
        )
        return None if value is None else (value, where)

    def components(
        self, i: int, res: Observation, path: str, allowed: Sequence[str]
    ) -> list[tuple[str, ObservationComponent, str]]:
        """The components coded in the iechs CodeSystem (code, component, path); others are
        reported as ignored, unknown iechs codes as errors, repeats as errors."""
        out: list[tuple[str, ObservationComponent, str]] = []
        for k, comp in enumerate(res.component or []):
            where = f"{path}.component[{k}]"
            found = _ours(comp.code, f"{where}.code")
            if found is None:
                self.ignore(i, f"a component iechs does not read ({_shown(comp.code)})", where)
                continue
            code, code_path = found
            if code not in allowed:
                self.problem(unknown_name("component code", code, allowed), code_path)
            elif any(c == code for c, _, _ in out):
                self.problem(f"a second {code} component", where)
            else:
                out.append((code, comp, where))
        return out

    def read_panel(self, i: int, res: Observation, path: str, at: str) -> None:
        data: dict[str, Any] = {"at": at, "kind": "assessment"}
        places = {"": path}
        for code, comp, where in self.components(i, res, path, list(ASSESSMENT_FIELDS)):
            value = self.field_value(code, comp, where)
            if value is not None:
                field = ASSESSMENT_FIELDS[code]
                data[field] = value[0]
                places[field] = value[1]
        self.add_event(i, data, places)

    def read_finding(self, i: int, res: Observation, path: str, code: str, at: str) -> None:
        if res.valueBoolean is None:
            self.problem(f"the finding {code} needs valueBoolean (present or not)", path)
            return
        data: dict[str, Any] = {"at": at, "kind": "finding", "code": code}
        data["present"] = res.valueBoolean
        places = {"": path, "code": f"{path}.code", "present": f"{path}.valueBoolean"}
        for _, comp, where in self.components(i, res, path, ["ctcae-grade"]):
            if comp.valueInteger is None:
                self.problem("ctcae-grade needs valueInteger (1-5)", where)
                continue
            data["grade"] = comp.valueInteger
            places["grade"] = f"{where}.valueInteger"
        self.add_event(i, data, places)

    # -- Condition: infection --

    def read_condition(self, i: int, res: Condition, path: str) -> None:
        found = _ours(res.code, f"{path}.code")
        if found is None:
            self.ignore(i, f"a Condition iechs does not read ({_shown(res.code)})", path)
            return
        code, where = found
        if code != "infection":
            self.problem(
                f"iechs reads Conditions coded {SYSTEM}#infection only, not {code!r}: record CRS "
                "and ICANS grades as Observations crs-grade and icans-grade",
                where,
            )
            return
        status_path = f"{path}.verificationStatus"
        verification = _status(res.verificationStatus, CONDITION_VERIFICATION)
        clinical = _status(res.clinicalStatus, CONDITION_CLINICAL)
        if verification == "entered-in-error":
            self.ignore(i, "verificationStatus entered-in-error", status_path)
            return
        if verification is not None and verification not in _VERIFICATION:
            self.problem(f"{verification!r} is not a Condition verification status", status_path)
            return
        if clinical is not None and clinical not in _CLINICAL:
            self.problem(
                f"{clinical!r} is not a Condition clinical status", f"{path}.clinicalStatus"
            )
            return
        inactive = clinical in _INACTIVE
        if inactive or verification == "refuted":
            infection = "none"
        elif verification is None:
            self.problem(
                "an infection Condition needs verificationStatus (unconfirmed, provisional, "
                "differential, confirmed or refuted)",
                path,
            )
            return
        else:
            infection = "confirmed" if verification == "confirmed" else "suspected"
        if res.recordedDate is not None:
            at = _utc(res.recordedDate, f"{path}.recordedDate", self.problems)
        elif inactive and res.abatementDateTime is not None:
            at = _utc(res.abatementDateTime, f"{path}.abatementDateTime", self.problems)
        elif res.onsetDateTime is not None:
            at = _utc(res.onsetDateTime, f"{path}.onsetDateTime", self.problems)
        else:
            self.problem("the Condition needs recordedDate or onsetDateTime", path)
            return
        if at is not None:
            self.add_event(
                i,
                {"at": at, "kind": "assessment", "infection": infection},
                {"": path, "infection": path},
            )

    # -- MedicationAdministration --

    def read_administration(
        self,
        i: int,
        res: MedicationAdministration,
        path: str,
        entries: Sequence[Any],
    ) -> None:
        if res.status in _ADMINISTRATION_VOID:
            self.ignore(i, f"status {res.status}: not given", f"{path}.status")
            return
        if res.status not in _ADMINISTRATION_USED:
            self.problem(
                f"{res.status!r} is not a MedicationAdministration status", f"{path}.status"
            )
            return
        medication = read_medication(
            source_of(res, path, lambda target: self.find_medication(target, entries, True)),
            self.formulary,
        )
        self.problems += medication.problems
        if res.effectiveDateTime is not None:
            at = _utc(res.effectiveDateTime, f"{path}.effectiveDateTime", self.problems)
            at_path = f"{path}.effectiveDateTime"
        elif res.effectivePeriod is not None and res.effectivePeriod.start is not None:
            at = _utc(res.effectivePeriod.start, f"{path}.effectivePeriod.start", self.problems)
            at_path = f"{path}.effectivePeriod.start"
        else:
            self.problem("the MedicationAdministration needs effectiveDateTime", path)
            return
        if medication.problems or medication.drug is None or at is None:
            return
        data: dict[str, Any] = {"at": at, "kind": "treatment", **medication.as_event()}
        places = {"": path, "at": at_path, **medication.places}
        self.read_reasons(i, res, path, data, places)
        self.add_event(i, data, places)

    def read_reasons(
        self,
        i: int,
        res: MedicationAdministration,
        path: str,
        data: dict[str, Any],
        places: dict[str, str],
    ) -> None:
        """The indication: the first reasonCode of the iechs CodeSystem; the others reported."""
        reasons = [
            (reason, f"{path}.reasonCode[{k}]") for k, reason in enumerate(res.reasonCode or [])
        ]
        for reason, where in reasons:
            if _ours(reason, where) is None:
                continue
            if "indication" in data:
                self.ignore(i, "a second indication: the first is used", where)
                continue
            value = self.coded_value(reason, VALUE_SETS["indication"], "indication", where)
            if value is not None:
                data["indication"] = value
                places["indication"] = where
        then = (
            "the first iechs indication is used"
            if "indication" in data
            else ("the engine infers the indication")
        )
        for reason, where in reasons:
            if _ours(reason, where) is None:
                self.ignore(i, f"reason {_shown(reason)} is not an iechs indication: {then}", where)
        for k, _ in enumerate(res.reasonReference or []):
            self.ignore(
                i, f"iechs does not follow reasonReference: {then}", f"{path}.reasonReference[{k}]"
            )

    def find_medication(
        self, target: str, entries: Sequence[Any], used: bool
    ) -> tuple[Medication, str] | None:
        """The Medication entry of the Bundle a reference names (`Medication/id` or its
        fullUrl), with its path; `used`: an administration uses it (not reported as unused)."""
        j = self.medications.get(target)
        if j is None:
            return None
        if used:
            self.used_medications.add(j)
        med = entries[j].resource
        assert isinstance(med, Medication)
        return med, _entry(j)

    def read_not_given(
        self,
        i: int,
        res: MedicationStatement | MedicationRequest,
        path: str,
        entries: Sequence[Any],
    ) -> None:
        """A MedicationRequest (an order) or a MedicationStatement (a drug is or was taken)
        records no dose given at a time: it is reported as ignored, naming its drug, so that a
        drug of the guideline charted only that way is seen, not silently dropped."""
        medication = read_medication(
            source_of(res, path, lambda target: self.find_medication(target, entries, False)),
            self.formulary,
        )
        kind = res.get_resource_type()
        what = "an order" if isinstance(res, MedicationRequest) else "a report of a drug taken"
        self.ignore(
            i,
            f"a {kind} is {what}, not a dose given: iechs reads doses from "
            f"MedicationAdministration ({_named(medication)})",
            path,
        )

    # -- the timeline --

    def remap(self, path: str) -> str:
        """The Bundle path of a native timeline path (as `parse_timeline` names it)."""
        match = _EVENT_PATH.fullmatch(path)
        if match:
            event = self.events[int(match.group(1))]
            return event.places.get(match.group(2), event.places[""])
        while path not in self.places:
            shorter = _LAST_STEP.sub("", path)
            if shorter == path:
                return "$"
            path = shorter
        return self.places[path]

    def timeline(self) -> Timeline:
        """The native timeline, checked by `parse_timeline`, its problems at Bundle paths."""
        doc = {"patient": self.patient, "events": [e.data for e in self.events]}
        try:
            timeline = parse_timeline(doc, self.g, self.file)
        except TimelineError as exc:
            raise TimelineError(
                [attrs.evolve(p, path=self.remap(p.path)) for p in exc.problems], self.file
            ) from None
        # An episode takes nothing after its close: say where, as the Bundle has it (the engine
        # would name `$.events[i]`). A close before the infusion, like any event then, is only
        # recorded, as in a native timeline; but a death before it is a contradiction.
        closed: str | None = None
        problems: list[Problem] = []
        infusion = timeline.patient.infusion_at
        for event, n in zip(timeline.events, timeline.positions, strict=True):
            where = self.events[n].places[""]
            if isinstance(event, CloseEvent) and event.reason == "death" and event.at < infusion:
                problems.append(Problem(self.died_before(event.at, infusion), where))
            elif closed is not None:
                problems.append(Problem(f"recorded after the episode closed ({closed})", where))
            elif isinstance(event, CloseEvent) and event.at >= timeline.patient.infusion_at:
                closed = f"{format_time(event.at)}, {where}"
        if problems:
            raise TimelineError(problems, self.file)
        ignored = [p for _, p in sorted(self.ignored, key=lambda item: item[0])]
        return attrs.evolve(
            timeline,
            positions=tuple(self.events[n].entry for n in timeline.positions),
            ignored=tuple(ignored),
        )


def bundle_to_timeline(data: Mapping[str, Any], g: Guideline, file: str | None = None) -> Timeline:
    """A patient timeline from a FHIR R4 Bundle (the mapping is in this module's docstring).

    Raises `TimelineError` (with the Bundle's JSON paths) when the Bundle would give a wrong
    timeline; what iechs does not use is listed in `Timeline.ignored`.
    """
    if not isinstance(data, Mapping) or data.get("resourceType") != "Bundle":
        raise TimelineError([Problem("expected a FHIR Bundle (resourceType Bundle)")], file)
    return _Reader(g, file).read(_validate(data, file))


# --- writing -------------------------------------------------------------------------------------


def _fhir_time(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def _concept(code: str, display: str | None = None) -> dict[str, Any]:
    return {"coding": [_coding(SYSTEM, code, display)]}


def _quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


class _Writer:
    def __init__(self, patient: Patient, g: Guideline | None) -> None:
        self.p = patient
        self.g = g
        self.entries: list[dict[str, Any]] = []
        self.loinc: dict[str, str] = {}
        for code, obs in g.observations.items() if g is not None else ():
            self.loinc.update(dict.fromkeys(obs.loinc, code))
        self.subject = {"reference": self.url(0)}

    def url(self, n: int) -> str:
        name = f"{json.dumps(self.p.id)}#{n}"  # JSON escapes: any text hashes
        return f"urn:uuid:{uuid.uuid5(_NS, name)}"

    def add(self, resource: dict[str, Any]) -> None:
        self.entries.append({"fullUrl": self.url(len(self.entries)), "resource": resource})

    def observation(self, code: dict[str, Any], **fields: Any) -> None:
        self.add(
            {
                "resourceType": "Observation",
                "status": "final",
                "code": code,
                "subject": self.subject,
                **fields,
            }
        )

    def name(self, code: str) -> str | None:
        g = self.g
        if g is None:
            return None
        if code in g.observations:
            return g.observations[code].name
        if code in g.findings:
            return g.findings[code].name
        return None

    def laboratory(self, code: str, loinc: str | None = None) -> dict[str, Any]:
        """The code of a laboratory Observation: LOINC alone when the event was identified by
        its LOINC code, else the iechs code with the guideline's LOINC code beside it."""
        name = self.name(code)
        if loinc is not None and (self.g is None or self.loinc.get(loinc) == code):
            codings = [_coding(LOINC, loinc)]
        else:
            codings = [_coding(SYSTEM, code, name)]
            standard = loinc_of(code, self.g) if self.g is not None else None
            if standard is not None:
                codings.append(_coding(LOINC, standard))
        out: dict[str, Any] = {"coding": codings}
        if name:
            out["text"] = name
        return out

    def category(self, code: str) -> dict[str, Any]:
        kind = "vital-signs" if code in VITAL_SIGNS else "laboratory"
        return {"coding": [_coding(OBSERVATION_CATEGORY, kind)]}

    def patient(self) -> None:
        p = self.p
        fhir_id = p.id if _FHIR_ID.fullmatch(p.id) else str(uuid.uuid5(_NS, json.dumps(p.id)))
        self.add(
            {
                "resourceType": "Patient",
                "id": fhir_id,
                "identifier": [{"system": PATIENT_ID_SYSTEM, "value": p.id}],
            }
        )
        infusion: dict[str, Any] = {
            "resourceType": "Procedure",
            "status": "completed",
            "code": {**_concept("car-t-infusion", "CAR-T cell infusion"), "text": "CAR-T infusion"},
            "subject": self.subject,
            "performedDateTime": _fhir_time(p.infusion_at),
        }
        product = p.product
        if product is not None and product.name:
            infusion["usedCode"] = [{"text": product.name}]
        extensions = [
            {"url": url, "valueString": value}
            for url, value in (
                (EXT_TARGET, product.target if product else None),
                (EXT_COSTIMULATORY_DOMAIN, product.costimulatory_domain if product else None),
            )
            if value
        ]
        if extensions:
            infusion["extension"] = extensions
        self.add(infusion)
        at = _fhir_time(p.infusion_at)
        if p.age_years is not None:
            self.observation(
                {"coding": [_coding(LOINC, AGE_LOINC, "Age")]},
                effectiveDateTime=at,
                valueQuantity=_quantity(p.age_years, "a"),
            )
        if p.weight_kg is not None:
            self.observation(
                {"coding": [_coding(LOINC, WEIGHT_LOINC, "Body weight")]},
                category=[{"coding": [_coding(OBSERVATION_CATEGORY, "vital-signs")]}],
                effectiveDateTime=at,
                valueQuantity=_quantity(p.weight_kg, "kg"),
            )
        risk_texts = self.g.risk_factors if self.g is not None else {}
        for factor in p.risk_factors:
            shown = risk_texts[factor].text if factor in risk_texts else None
            self.observation(
                _concept("risk-factor", "IEC-HS risk factor"),
                valueCodeableConcept=_concept(factor, shown),
            )
        for code, measured in p.baseline.items():
            self.observation(
                self.laboratory(code),
                category=[self.category(code), _concept("baseline", "Baseline value")],
                valueQuantity=_quantity(measured.value, ucum_of(measured.unit)),
            )

    def event(self, ev: Event) -> None:
        at = _fhir_time(ev.at)
        if isinstance(ev, ObservationEvent):
            assert ev.code is not None
            self.observation(
                self.laboratory(ev.code, ev.loinc),
                category=[self.category(ev.code)],
                effectiveDateTime=at,
                valueQuantity=_quantity(ev.value, ucum_of(ev.unit)),
            )
        elif isinstance(ev, AssessmentEvent):
            components = []
            for code, field in ASSESSMENT_FIELDS.items():
                value = getattr(ev, field)
                if value is None:
                    continue
                component: dict[str, Any] = {"code": _concept(code)}
                if isinstance(value, bool):
                    component["valueBoolean"] = value
                elif isinstance(value, int):
                    component["valueInteger"] = value
                else:
                    component["valueCodeableConcept"] = _concept(value, VALUE_DISPLAY[value])
                components.append(component)
            self.observation(
                _concept("assessment", "IEC-HS assessment"),
                effectiveDateTime=at,
                component=components,
            )
        elif isinstance(ev, FindingEvent):
            fields: dict[str, Any] = {"effectiveDateTime": at, "valueBoolean": ev.present}
            if ev.grade is not None:
                fields["component"] = [
                    {"code": _concept("ctcae-grade", "CTCAE grade"), "valueInteger": ev.grade}
                ]
            self.observation(_concept(ev.code, self.name(ev.code)), **fields)
        elif isinstance(ev, TreatmentEvent):
            self.add(self.administration(ev, at))
        elif isinstance(ev, ResponseEvent):
            self.observation(
                _concept("response", "Response assessment"),
                effectiveDateTime=at,
                valueCodeableConcept=_concept(ev.assessment, VALUE_DISPLAY[ev.assessment]),
            )
        else:
            self.observation(
                _concept("episode-closed", "IEC-HS episode closed"),
                effectiveDateTime=at,
                valueCodeableConcept=_concept(ev.reason, VALUE_DISPLAY[ev.reason]),
            )

    def administration(self, ev: TreatmentEvent, at: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "resourceType": "MedicationAdministration",
            "status": "completed",
            "medicationCodeableConcept": {"text": ev.drug},
            "subject": self.subject,
            "effectiveDateTime": at,
        }
        dosage: dict[str, Any] = {}
        dose: dict[str, Any] = {}
        if ev.dose is not None:
            dose["value"] = ev.dose
        if ev.unit:
            dose["unit"] = ev.unit
            if ev.unit in DOSE_UCUM:
                dose.update(system=UCUM, code=ev.unit)
        if dose:
            dosage["dose"] = dose
        if ev.route:
            dosage["route"] = {"text": ev.route}
        if dosage:
            out["dosage"] = dosage
        if ev.indication is not None:
            out["reasonCode"] = [_concept(ev.indication, VALUE_DISPLAY[ev.indication])]
        return out


def timeline_to_bundle(timeline: Timeline, guideline: Guideline | None = None) -> dict[str, Any]:
    """A timeline as a FHIR R4 `collection` Bundle, validated by fhir.resources R4B.

    With the guideline, laboratory Observations also carry its LOINC codes and names, and an
    event's `loinc` is checked against its `code`; without it, they carry the iechs codes and
    an event's `loinc` is taken to name its code (true of every event the parser identified by
    its `loinc`). Either way `bundle_to_timeline` reads it back as the same timeline
    (exceptions: module docstring).
    """
    writer = _Writer(timeline.patient, guideline)
    writer.patient()
    for event in timeline.events:
        writer.event(event)
    bundle = Bundle.model_validate(
        {"resourceType": "Bundle", "type": "collection", "entry": writer.entries}
    )
    out: dict[str, Any] = bundle.model_dump(mode="json", exclude_none=True)
    return out
