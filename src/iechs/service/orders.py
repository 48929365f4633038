"""Draft orders (`context.draftOrders` of the order-sign hook: a FHIR R4 Bundle) read as the
engine's treatment events, so that the engine itself says what signing them would do.

Each `MedicationRequest` (other resource types are not this guideline's business) becomes one
`treatment` event at the hook's time:

- drug: `medicationCodeableConcept` (text, a coding's display, or its code), else the
  Medication that `medicationReference` points to (contained, or another entry of the Bundle),
  else the reference's display. A name the guideline knows is preferred, then a name that
  contains one as a word (RxNorm's `Tocilizumab 20 MG/ML Injectable Solution` is tocilizumab).
- dose, unit: `dosageInstruction[0].doseAndRate[0].doseQuantity` (value; UCUM code, else the
  unit's text).
- route: `dosageInstruction[0].route` (text, a coding's display, or its code).
- indication: the first `reasonCode` coding of the iechs CodeSystem (`iec_hs`, `crs`, `icans`,
  `infection`, `other`); without one the engine infers it, as for a recorded treatment.

Orders whose status voids them (`cancelled`, `entered-in-error`, `stopped`) are skipped. The
orders are signed together, as one order set: they are stepped in the guideline's order
(`timeline.canonical_order`: antimicrobials before the immunosuppression they go alongside, a
corticosteroid before an IL-6 blocker), so the Bundle's order never changes the answer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, get_args

import attrs

from ..errors import TimelineError
from ..model import Guideline
from ..timeline import Indication, TreatmentEvent, canonical_order, format_time, parse_event
from .errors import bad_request

__all__ = ["IECHS_SYSTEM", "DraftOrder", "read_draft_orders"]

#: The project's FHIR CodeSystem: the same URL as `iechs.fhir.codes.SYSTEM` (a test holds them
#: equal; not imported from there, because importing `iechs.fhir` loads the FHIR models).
IECHS_SYSTEM = "https://iechs.dev/fhir/CodeSystem/iechs"
_INDICATIONS: tuple[str, ...] = get_args(Indication)
_VOID = frozenset({"cancelled", "entered-in-error", "stopped"})
#: treatment field -> where it comes from in the MedicationRequest (for messages).
_FIELD_PATH = {
    "drug": ".medicationCodeableConcept",
    "dose": ".dosageInstruction[0].doseAndRate[0].doseQuantity.value",
    "unit": ".dosageInstruction[0].doseAndRate[0].doseQuantity.unit",
    "route": ".dosageInstruction[0].route",
    "indication": ".reasonCode",
}


@attrs.frozen
class DraftOrder:
    """One draft MedicationRequest as a treatment event."""

    path: str
    #: `MedicationRequest/<id>` when the resource has an id (what a delete suggestion names).
    reference: str | None
    event: TreatmentEvent

    @property
    def shown(self) -> str:
        e = self.event
        dose = f" {e.dose:g} {e.unit or ''}".rstrip() if e.dose is not None else ""
        route = f" {e.route}" if e.route else ""
        return f"{e.drug}{dose}{route}"


def _object(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise bad_request(path, f"expected a JSON object, got {_kind(value)}")
    return value


def _list(value: Any, path: str) -> Sequence[Any]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise bad_request(path, f"expected a JSON array, got {_kind(value)}")
    return value


def _text(value: Any, path: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad_request(path, f"expected text, got {_kind(value)}")
    return value.strip() or None


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _concept_names(value: Any, path: str) -> list[str]:
    """Names in a CodeableConcept, in order: text, then each coding's display, then its code."""
    if value is None:
        return []
    concept = _object(value, path)
    names = [_text(concept.get("text"), f"{path}.text")]
    codings = [
        _object(c, f"{path}.coding[{k}]")
        for k, c in enumerate(_list(concept.get("coding"), f"{path}.coding"))
    ]
    names += [_text(c.get("display"), f"{path}.coding[{k}].display") for k, c in enumerate(codings)]
    names += [_text(c.get("code"), f"{path}.coding[{k}].code") for k, c in enumerate(codings)]
    return [n for n in names if n]


def _contained_drug(name: str, g: Guideline) -> str | None:
    """The guideline drug that `name` contains as a word (the longest, if several)."""
    text = name.lower()
    hits = [
        drug
        for drug in g.drugs
        if re.search(rf"(?<![\w-]){re.escape(drug)}(?![\w])", text) is not None
    ]
    return max(hits, key=len) if hits else None


class _Reader:
    def __init__(
        self, bundle: Mapping[str, Any], g: Guideline, root: str, patient: str | None
    ) -> None:
        self.g = g
        self.root = root
        self.patient = patient
        self.entries = [
            _object(e, f"{root}.entry[{i}]")
            for i, e in enumerate(_list(bundle.get("entry"), f"{root}.entry"))
        ]

    def orders(self, at: datetime) -> list[DraftOrder]:
        found: list[DraftOrder] = []
        for i, entry in enumerate(self.entries):
            path = f"{self.root}.entry[{i}].resource"
            resource = entry.get("resource")
            if resource is None:
                continue
            resource = _object(resource, path)
            if resource.get("resourceType") != "MedicationRequest":
                continue  # NutritionOrder, ServiceRequest, ...: not this guideline's business
            status = _text(resource.get("status"), f"{path}.status")
            if status in _VOID:
                continue
            self.check_subject(resource, path)
            found.append(self.order(resource, path, at))
        return found

    def check_subject(self, resource: Mapping[str, Any], path: str) -> None:
        """An order for another patient than the one in context is refused."""
        subject = resource.get("subject")
        if subject is None or self.patient is None:
            return
        ref = _text(
            _object(subject, f"{path}.subject").get("reference"), f"{path}.subject.reference"
        )
        if ref is not None and ref.startswith("Patient/") and ref != f"Patient/{self.patient}":
            raise bad_request(
                f"{path}.subject.reference",
                f"the order is for {ref}, not for the patient in context (Patient/{self.patient})",
            )

    def order(self, resource: Mapping[str, Any], path: str, at: datetime) -> DraftOrder:
        data: dict[str, Any] = {
            "at": format_time(at),
            "kind": "treatment",
            "drug": self.drug(resource, path),
        }
        dosage = _list(resource.get("dosageInstruction"), f"{path}.dosageInstruction")
        if dosage:
            first = _object(dosage[0], f"{path}.dosageInstruction[0]")
            data.update(self.dose(first, f"{path}.dosageInstruction[0]"))
            routes = _concept_names(first.get("route"), f"{path}.dosageInstruction[0].route")
            if routes:
                data["route"] = routes[0]
        indication = self.indication(resource, path)
        if indication is not None:
            data["indication"] = indication
        try:
            event = parse_event(data, self.g, "$")
        except TimelineError as exc:
            first_problem = exc.problems[0]
            field = first_problem.path.removeprefix("$.").split(".")[0]
            raise bad_request(path + _FIELD_PATH.get(field, ""), first_problem.message) from None
        assert isinstance(event, TreatmentEvent)
        rid = resource.get("id")
        reference = f"MedicationRequest/{rid}" if isinstance(rid, str) and rid else None
        return DraftOrder(path, reference, event)

    def drug(self, resource: Mapping[str, Any], path: str) -> str:
        names = _concept_names(
            resource.get("medicationCodeableConcept"), f"{path}.medicationCodeableConcept"
        )
        ref = resource.get("medicationReference")
        if not names and ref is not None:
            ref = _object(ref, f"{path}.medicationReference")
            target = _text(ref.get("reference"), f"{path}.medicationReference.reference")
            medication = self.medication(resource, target, path) if target else None
            if medication is not None:
                names = _concept_names(medication[0].get("code"), f"{medication[1]}.code")
            display = _text(ref.get("display"), f"{path}.medicationReference.display")
            if display:
                names.append(display)
        if not names:
            raise bad_request(
                f"{path}.medicationCodeableConcept",
                "a MedicationRequest names its drug (medicationCodeableConcept text, coding "
                "display or code, or a medicationReference to a Medication with a code)",
            )
        known = [n for n in names if self.g.drug_class_of(n) is not None]
        if known:
            return known[0]
        for name in names:  # e.g. RxNorm's "Tocilizumab 20 MG/ML Injectable Solution"
            found = _contained_drug(name, self.g)
            if found is not None:
                return found
        return names[0]

    def medication(
        self, resource: Mapping[str, Any], target: str, path: str
    ) -> tuple[Mapping[str, Any], str] | None:
        if target.startswith("#"):
            for k, item in enumerate(_list(resource.get("contained"), f"{path}.contained")):
                contained = _object(item, f"{path}.contained[{k}]")
                if contained.get("id") == target[1:]:
                    return contained, f"{path}.contained[{k}]"
            return None
        for i, entry in enumerate(self.entries):
            other = entry.get("resource")
            if not isinstance(other, Mapping) or other.get("resourceType") != "Medication":
                continue
            if target in (entry.get("fullUrl"), f"Medication/{other.get('id')}"):
                return other, f"{self.root}.entry[{i}].resource"
        return None

    def dose(self, dosage: Mapping[str, Any], path: str) -> dict[str, Any]:
        rates = _list(dosage.get("doseAndRate"), f"{path}.doseAndRate")
        if not rates:
            return {}
        rate = _object(rates[0], f"{path}.doseAndRate[0]")
        if rate.get("doseQuantity") is None:
            return {}
        qpath = f"{path}.doseAndRate[0].doseQuantity"
        quantity = _object(rate.get("doseQuantity"), qpath)
        value = quantity.get("value")
        if value is None:
            return {}
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad_request(f"{qpath}.value", f"expected a number, got {_kind(value)}")
        if not 0 <= value < 1e9:
            raise bad_request(f"{qpath}.value", f"implausible dose {value!r}")
        out: dict[str, Any] = {"dose": float(value)}
        unit = _text(quantity.get("code"), f"{qpath}.code") or _text(
            quantity.get("unit"), f"{qpath}.unit"
        )
        if unit:
            out["unit"] = unit
        return out

    def indication(self, resource: Mapping[str, Any], path: str) -> str | None:
        for k, reason in enumerate(_list(resource.get("reasonCode"), f"{path}.reasonCode")):
            rpath = f"{path}.reasonCode[{k}]"
            concept = _object(reason, rpath)
            for j, item in enumerate(_list(concept.get("coding"), f"{rpath}.coding")):
                coding = _object(item, f"{rpath}.coding[{j}]")
                if coding.get("system") != IECHS_SYSTEM:
                    continue
                code = coding.get("code")
                if code not in _INDICATIONS:
                    raise bad_request(
                        f"{rpath}.coding[{j}].code",
                        f"{code!r} is not an indication of {IECHS_SYSTEM} (one of "
                        f"{', '.join(_INDICATIONS)})",
                    )
                return str(code)
        return None


def read_draft_orders(
    bundle: Any,
    g: Guideline,
    at: datetime,
    root: str = "$.context.draftOrders",
    patient: str | None = None,
) -> list[DraftOrder]:
    """The draft MedicationRequests of `bundle` as treatment events at `at`, in the order they
    are decided: one order set, in the guideline's order (antimicrobials first). An order whose
    `subject` is another Patient than `patient` (the FHIR id in context) is refused."""
    bundle = _object(bundle, root)
    if bundle.get("resourceType") != "Bundle":
        raise bad_request(f"{root}.resourceType", "expected 'Bundle'")
    orders = _Reader(bundle, g, root, patient).orders(at)

    # One order set: decided in the guideline's order (`order_sets`), whatever the Bundle's.
    return [orders[i] for i in canonical_order([o.event for o in orders], g)]
