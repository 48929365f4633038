"""FHIR medications read once, for every door: which drug a MedicationAdministration,
MedicationStatement or MedicationRequest names, with its dose, unit and route.

`iechs run` (a Bundle, `iechs.fhir.input`) and the CDS Hooks order-sign hook (draft
MedicationRequests, `iechs.service.orders`) both call `read_medication`, so the same medication
is the same drug whichever door it comes through. The parts are read as `fhir.resources.R4B`
models; every problem names its JSON path.

Which drug (the guideline's `drugs:`, through `Formulary`):

1. an RxNorm coding (system http://www.nlm.nih.gov/research/umls/rxnorm) whose code is an
   ingredient code (RxCUI, term type IN) listed under a drug's `rxnorm` — in
   `medicationCodeableConcept`, or in the referenced Medication's `code` or its active
   `ingredient[].itemCodeableConcept`. Clinical and branded drug codes (SCD, SBD: 1812194
   "dexamethasone 4 MG/ML Injectable Solution") are not ingredient codes: the name decides;
2. else a drug's id or one of its `synonyms` (brand names) as a whole word in the names the
   resource gives, in order: the concept's text, its codings' displays, the Medication's (and its
   ingredients') text and displays, the reference's display. RxNorm's names start with the
   ingredient ("dexamethasone 4 MG/ML Injectable Solution" is dexamethasone); a brand name is
   matched only where the guideline lists it ("Kineret 100 MG/0.67ML Prefilled Syringe" is
   anakinra). A suffix after a hyphen still matches (`tocilizumab-aazg`, a biosimilar);
3. else the drug is the first name as written: a drug the guideline does not know (an
   antimicrobial, supportive care), which the engine records as such.

Refused, with the path: no name at all (a code alone that is not an ingredient code of the
guideline says nothing a clinician could check); RxNorm ingredient codes of two drugs; a name
that names two drugs of the guideline; a code and a name, or two names, that name different drugs
(`RxNorm 3264 is dexamethasone, but 'methylprednisolone ...' names methylprednisolone`): one
administration or order records one drug, and a contradiction is not for iechs to settle.

Dose: the quantity's value (negative or above 10^9 refused); its UCUM code (system UCUM or none)
spelled as `iechs.units.normalise_unit` reads it (`MG` stays what it is; `ml` is `mL`), else its
unit text. A MedicationAdministration's `dosage.dose`; a MedicationStatement's `dosage[0]` and a
MedicationRequest's `dosageInstruction[0]`: `doseAndRate[0].doseQuantity`. Route: the route's
text, else a coding's display, else its code.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.coding import Coding
from fhir.resources.R4B.dosage import Dosage
from fhir.resources.R4B.medication import Medication
from fhir.resources.R4B.medicationadministration import (
    MedicationAdministration,
    MedicationAdministrationDosage,
)
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.medicationstatement import MedicationStatement
from fhir.resources.R4B.quantity import Quantity
from fhir.resources.R4B.reference import Reference

from ..errors import Problem
from ..model import Guideline
from ..units import normalise_unit
from .codes import UCUM

__all__ = [
    "RXNORM",
    "Formulary",
    "MedicationRead",
    "MedicationSource",
    "read_medication",
    "source_of",
]

#: RxNorm's code system URI in FHIR.
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
#: a dose at or above this is a typing error, not a dose.
_IMPLAUSIBLE_DOSE = 1e9

#: The Medication of the Bundle a reference names, with its path; None when it names none.
MedicationLookup = Callable[[str], tuple[Medication, str] | None]


@attrs.frozen
class Formulary:
    """The guideline's drugs as FHIR medications name them: by RxNorm ingredient code, and by
    id or synonym as a whole word in a name."""

    by_code: Mapping[str, str]
    #: lower-case name (id or synonym) -> drug id
    by_name: Mapping[str, str]
    pattern: re.Pattern[str] | None

    @classmethod
    def of(cls, g: Guideline) -> Formulary:
        by_code = {code: did for did, d in g.drugs.items() for code in d.rxnorm}
        by_name: dict[str, str] = {}
        for did, d in g.drugs.items():
            for name in (did, *d.synonyms):
                by_name.setdefault(" ".join(name.lower().split()), did)
        # Longest first: at one place the longest name wins ("liposomal amphotericin b").
        names = sorted(by_name, key=lambda n: (-len(n), n))
        alternatives = "|".join(r"\s+".join(map(re.escape, n.split())) for n in names)
        pattern = re.compile(rf"(?<![\w-])({alternatives})(?!\w)") if names else None
        return cls(by_code, by_name, pattern)

    def named_in(self, text: str) -> list[str]:
        """The guideline's drugs `text` names as whole words, in order, each once."""
        if self.pattern is None:
            return []
        found: list[str] = []
        for match in self.pattern.finditer(text.lower()):
            drug = self.by_name[" ".join(match.group(1).split())]
            if drug not in found:
                found.append(drug)
        return found


@attrs.frozen(kw_only=True)
class MedicationSource:
    """What one resource says about its medication: fhir.resources models, each with its path."""

    #: the resource type, for messages (`a MedicationRequest names its drug`)
    kind: str
    #: the resource
    path: str
    concept: CodeableConcept | None = None
    #: the Medication `medicationReference` names (contained or in the Bundle), and its path
    medication: tuple[Medication, str] | None = None
    reference: Reference | None = None
    dose: Quantity | None = None
    dose_path: str = ""
    route: CodeableConcept | None = None
    route_path: str = ""


@attrs.frozen(kw_only=True)
class MedicationRead:
    """The drug, dose, unit and route one resource gives, or the problems that stop it."""

    #: the guideline's drug id, or the name as written (a drug the guideline does not know)
    drug: str | None = None
    #: the drug is one of the guideline's
    formulary: bool = False
    #: how the drug was identified: `RxNorm 3264`, `name 'Kineret ...'`, or `as written`
    identified_by: str = ""
    dose: float | None = None
    unit: str | None = None
    route: str | None = None
    #: field (drug, dose, unit, route) -> JSON path it was read from
    places: Mapping[str, str] = attrs.field(factory=dict)
    problems: tuple[Problem, ...] = ()

    def as_event(self) -> dict[str, Any]:
        """The treatment event's fields (drug, dose, unit, route) that were given."""
        fields = {"drug": self.drug, "dose": self.dose, "unit": self.unit, "route": self.route}
        return {k: v for k, v in fields.items() if v is not None}


def source_of(
    resource: MedicationAdministration | MedicationStatement | MedicationRequest,
    path: str,
    lookup: MedicationLookup,
) -> MedicationSource:
    """Where a MedicationAdministration, MedicationStatement or MedicationRequest names its
    medication and dose. `lookup` finds a Medication of the Bundle by reference; `#id` names one
    contained in the resource."""
    medication = None
    ref = resource.medicationReference
    if ref is not None and ref.reference:
        target = ref.reference
        if target.startswith("#"):
            medication = contained_medication(resource.contained, target, path)
        else:
            medication = lookup(target)
    if isinstance(resource, MedicationAdministration):
        dose, dose_path, route, route_path = _administered(resource.dosage, f"{path}.dosage")
    elif isinstance(resource, MedicationStatement):
        dose, dose_path, route, route_path = _instructed(resource.dosage, f"{path}.dosage")
    else:
        dose, dose_path, route, route_path = _instructed(
            resource.dosageInstruction, f"{path}.dosageInstruction"
        )
    return MedicationSource(
        kind=resource.get_resource_type(),
        path=path,
        concept=resource.medicationCodeableConcept,
        medication=medication,
        reference=ref,
        dose=dose,
        dose_path=dose_path,
        route=route,
        route_path=route_path,
    )


def contained_medication(
    contained: Sequence[Any] | None, target: str, path: str
) -> tuple[Medication, str] | None:
    """The Medication contained in a resource that `#id` names, with its path."""
    if not target.startswith("#"):
        return None
    for k, item in enumerate(contained or []):
        if isinstance(item, Medication) and item.id == target[1:]:
            return item, f"{path}.contained[{k}]"
    return None


def dosage_parts(
    dosage: Dosage | None, path: str
) -> tuple[Quantity | None, str, CodeableConcept | None, str]:
    """The dose quantity and route of one Dosage (a request's or a statement's), with paths."""
    if dosage is None:
        return None, "", None, ""
    dose, dose_path = None, ""
    for k, rate in enumerate(dosage.doseAndRate or []):
        if rate.doseQuantity is not None:
            dose, dose_path = rate.doseQuantity, f"{path}.doseAndRate[{k}].doseQuantity"
        break  # the first doseAndRate only: the others are other schedules
    return dose, dose_path, dosage.route, f"{path}.route"


def _administered(
    dosage: MedicationAdministrationDosage | None, path: str
) -> tuple[Quantity | None, str, CodeableConcept | None, str]:
    if dosage is None:
        return None, "", None, ""
    return dosage.dose, f"{path}.dose", dosage.route, f"{path}.route"


def _instructed(
    dosages: Sequence[Dosage] | None, path: str
) -> tuple[Quantity | None, str, CodeableConcept | None, str]:
    return dosage_parts(dosages[0] if dosages else None, f"{path}[0]")


# --- the drug ------------------------------------------------------------------------------------


def _names(cc: CodeableConcept | None, path: str) -> list[tuple[str, str]]:
    """A concept's text, then each coding's display, as written, with their paths."""
    if cc is None:
        return []
    out = [(cc.text, f"{path}.text")] if cc.text else []
    for k, coding in enumerate(cc.coding or []):
        if coding.display:
            out.append((coding.display, f"{path}.coding[{k}].display"))
    return out


def _codings(cc: CodeableConcept | None, path: str) -> list[tuple[Coding, str]]:
    if cc is None:
        return []
    return [(c, f"{path}.coding[{k}].code") for k, c in enumerate(cc.coding or [])]


def _gathered(
    source: MedicationSource,
) -> tuple[list[tuple[str, str]], list[tuple[Coding, str]], str]:
    """Every name and coding the resource gives for its drug, in order of precedence, and the
    path a missing name is reported at."""
    names: list[tuple[str, str]] = []
    codings: list[tuple[Coding, str]] = []
    where = f"{source.path}.medicationCodeableConcept"
    if source.concept is not None:
        names += _names(source.concept, where)
        codings += _codings(source.concept, where)
    elif source.medication is not None:
        med, med_path = source.medication
        where = f"{med_path}.code"
        names += _names(med.code, where)
        codings += _codings(med.code, where)
        for k, ingredient in enumerate(med.ingredient or []):
            if ingredient.isActive is False:
                continue  # an excipient names no drug
            item = f"{med_path}.ingredient[{k}].itemCodeableConcept"
            names += _names(ingredient.itemCodeableConcept, item)
            codings += _codings(ingredient.itemCodeableConcept, item)
    elif source.reference is not None:
        where = f"{source.path}.medicationReference"
    ref = source.reference
    if source.concept is None and ref is not None and ref.display:
        names.append((ref.display, f"{source.path}.medicationReference.display"))
    return names, codings, where


def _drug(source: MedicationSource, formulary: Formulary) -> tuple[MedicationRead, str]:
    """The drug (`MedicationRead` with drug, formulary, identified_by) and the path it came from;
    problems instead when the resource does not name one drug."""
    names, codings, where = _gathered(source)
    names = [(name, path) for name, path in names if name.strip()]
    coded: list[tuple[str, str, str]] = []  # (drug, code, path)
    for coding, path in codings:
        drug = formulary.by_code.get(coding.code or "") if coding.system == RXNORM else None
        if drug is not None:
            coded.append((drug, str(coding.code), path))
    named: list[tuple[str, str, str]] = []  # (drug, name, path)
    for name, path in names:
        drugs = formulary.named_in(name)
        if len(drugs) > 1:
            return _refused(
                f"{name!r} names {' and '.join(drugs)}: record each drug as its own {source.kind}",
                path,
            ), path
        named += [(drugs[0], name, path)] if drugs else []
    if coded:
        drug, code, path = coded[0]
        for other, other_code, other_path in coded[1:]:
            if other != drug:
                return _refused(
                    f"RxNorm {other_code} is {other}, but RxNorm {code} is {drug}: "
                    f"record each drug as its own {source.kind}",
                    other_path,
                ), other_path
        for other, name, other_path in named:
            if other != drug:
                return _refused(
                    f"RxNorm {code} is {drug}, but {name!r} names {other}", other_path
                ), other_path
        return MedicationRead(drug=drug, formulary=True, identified_by=f"RxNorm {code}"), path
    if named:
        drug, name, path = named[0]
        for other, other_name, other_path in named[1:]:
            if other != drug:
                return _refused(
                    f"{other_name!r} names {other}, but {name!r} names {drug}",
                    other_path,
                ), other_path
        return MedicationRead(drug=drug, formulary=True, identified_by=f"name {name!r}"), path
    if names:
        name, path = names[0]
        return MedicationRead(drug=name, identified_by="as written"), path
    ref = source.reference
    if source.concept is None and source.medication is None and ref is not None and ref.reference:
        return _refused(f"no Medication {ref.reference!r} in the Bundle or contained", where), where
    message = (
        f"a {source.kind} names its drug: medicationCodeableConcept text or a coding's display, "
        "or a medicationReference to a Medication with a code"
    )
    rxnorm = [str(c.code) for c, _ in codings if c.system == RXNORM and c.code]
    if rxnorm:
        message += (
            f" (RxNorm {', '.join(rxnorm)} is not the ingredient code of a drug of the "
            "guideline: a clinical or branded drug is read by its name)"
        )
    return _refused(message, where), where


def _refused(message: str, path: str) -> MedicationRead:
    return MedicationRead(problems=(Problem(message, path),))


# --- dose and route ------------------------------------------------------------------------------


def _unit(q: Quantity, path: str) -> tuple[str, str] | None:
    """A quantity's unit and its path: the UCUM code as UCUM reads it, else the unit text as
    written, else a code of another system."""
    if q.code and q.system in (UCUM, None):
        return normalise_unit(q.code), f"{path}.code"
    if q.unit:
        return q.unit, f"{path}.unit"
    if q.code:
        return q.code, f"{path}.code"
    return None


def _route(cc: CodeableConcept | None, path: str) -> tuple[str, str] | None:
    """The route as written: the text, else a coding's display, else its code."""
    if cc is None:
        return None
    found = _names(cc, path) + [
        (c.code, f"{path}.coding[{k}].code") for k, c in enumerate(cc.coding or []) if c.code
    ]
    return found[0] if found else None


def read_medication(source: MedicationSource, formulary: Formulary) -> MedicationRead:
    """The drug, dose, unit and route of one resource (this module's docstring says how)."""
    read, drug_path = _drug(source, formulary)
    problems = list(read.problems)
    places = {"drug": drug_path} if read.drug is not None else {}
    dose = unit = route = None
    q = source.dose
    if q is not None:
        if q.value is not None:
            dose = float(q.value)
            where = f"{source.dose_path}.value"
            if dose < 0:
                problems.append(Problem(f"negative dose {dose:g}", where))
            elif dose >= _IMPLAUSIBLE_DOSE:
                problems.append(Problem(f"implausible dose {dose:g}", where))
            places["dose"] = where
        found = _unit(q, source.dose_path)
        if found is not None:
            unit, places["unit"] = found
    found = _route(source.route, source.route_path)
    if found is not None:
        route, places["route"] = found
    return attrs.evolve(
        read, dose=dose, unit=unit, route=route, places=places, problems=tuple(problems)
    )
