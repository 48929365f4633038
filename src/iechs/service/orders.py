"""Draft orders (`context.draftOrders` of the order-sign hook: a FHIR R4 Bundle) read as the
engine's treatment events, so that the engine itself says what signing them would do.

Each `MedicationRequest` (other resource types are not this guideline's business) becomes one
`treatment` event at the hook's time:

- drug, dose, unit, route: read by `iechs.fhir.medications`, the reader `iechs run` uses for a
  Bundle's MedicationAdministration, so that one medication is one drug through either door: an
  RxNorm ingredient code of a guideline drug, else the drug's name or a synonym (a brand name the
  guideline lists) as a word of the text (RxNorm's `Tocilizumab 20 MG/ML Injectable Solution` is
  tocilizumab), else the name as written. `medicationCodeableConcept`, else the Medication that
  `medicationReference` points to (contained, or another entry of the Bundle), else the
  reference's display. Dose `dosageInstruction[0].doseAndRate[0].doseQuantity` (value; UCUM
  code, else the unit's text); route `dosageInstruction[0].route`. These parts are validated as
  fhir.resources R4B models; the rest of a draft is not (a draft may lack what a signed order
  has, such as its subject).
- indication: the first `reasonCode` coding of the iechs CodeSystem (`iec_hs`, `crs`, `icans`,
  `infection`, `other`); without one the engine infers it, as for a recorded treatment.

Orders whose status voids them (`cancelled`, `entered-in-error`, `stopped`) are skipped. The
orders are signed together, as one order set: they are stepped in the guideline's order
(`timeline.canonical_order`: antimicrobials before the immunosuppression they go alongside, a
corticosteroid before an IL-6 blocker), so the Bundle's order never changes the answer. Every
refusal is a 400 naming the JSON path of the field at fault.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar, get_args

import attrs

from ..errors import TimelineError
from ..model import Guideline
from ..timeline import Indication, TreatmentEvent, canonical_order, format_time, parse_event
from .errors import bad_request

if TYPE_CHECKING:  # the FHIR models load on the first order read (about a second)
    from fhir.resources.R4B.medication import Medication
    from pydantic import BaseModel

    from ..fhir.medications import Formulary, MedicationRead

__all__ = ["IECHS_SYSTEM", "DraftOrder", "read_draft_orders"]

#: The project's FHIR CodeSystem: the same URL as `iechs.fhir.codes.SYSTEM` (a test holds them
#: equal; not imported from there, because importing `iechs.fhir` loads the FHIR models).
IECHS_SYSTEM = "https://iechs.dev/fhir/CodeSystem/iechs"
_INDICATIONS: tuple[str, ...] = get_args(Indication)
_VOID = frozenset({"cancelled", "entered-in-error", "stopped"})
_Model = TypeVar("_Model", bound="BaseModel")


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


def _validated(cls: type[_Model], value: Any, path: str) -> _Model | None:
    """`value` (a JSON object, or absent) as a fhir.resources model; a 400 naming the invalid
    place otherwise."""
    from pydantic import ValidationError  # noqa: PLC0415 - with the FHIR models, on first use

    if value is None:
        return None
    data = _object(value, path)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = path + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"])
        raise bad_request(
            where, f"not valid FHIR R4: {error['msg'].removeprefix('Value error, ')}"
        ) from None
    except (KeyError, ValueError, TypeError) as exc:  # e.g. an unknown type in `contained`
        raise bad_request(path, f"not valid FHIR R4: {exc}") from None


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
        from ..fhir.medications import Formulary  # noqa: PLC0415 - loads the FHIR models

        self.formulary: Formulary = Formulary.of(g)

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
        medication = self.medication(resource, path)
        data: dict[str, Any] = {"at": format_time(at), "kind": "treatment"}
        data.update(medication.as_event())
        indication = self.indication(resource, path)
        if indication is not None:
            data["indication"] = indication
        try:
            event = parse_event(data, self.g, "$")
        except TimelineError as exc:
            first_problem = exc.problems[0]
            field = first_problem.path.removeprefix("$.").split(".")[0]
            where = medication.places.get(field, f"{path}.reasonCode" if field else path)
            raise bad_request(where, first_problem.message) from None
        assert isinstance(event, TreatmentEvent)
        rid = resource.get("id")
        reference = f"MedicationRequest/{rid}" if isinstance(rid, str) and rid else None
        return DraftOrder(path, reference, event)

    def medication(self, resource: Mapping[str, Any], path: str) -> MedicationRead:
        """The drug, dose, unit and route of one order, read as `iechs run` reads a Bundle's."""
        from fhir.resources.R4B.codeableconcept import CodeableConcept  # noqa: PLC0415
        from fhir.resources.R4B.dosage import Dosage  # noqa: PLC0415
        from fhir.resources.R4B.reference import Reference  # noqa: PLC0415

        from ..fhir.medications import (  # noqa: PLC0415
            MedicationSource,
            dosage_parts,
            read_medication,
        )

        where = f"{path}.medicationCodeableConcept"
        concept = _validated(CodeableConcept, resource.get("medicationCodeableConcept"), where)
        reference = _validated(
            Reference, resource.get("medicationReference"), f"{path}.medicationReference"
        )
        found = None
        if concept is None and reference is not None and reference.reference:
            found = self.referenced(resource, reference.reference, path)
        dosage = None
        dosages = _list(resource.get("dosageInstruction"), f"{path}.dosageInstruction")
        dosage_path = f"{path}.dosageInstruction[0]"
        if dosages:
            first = _object(dosages[0], dosage_path)
            self.check_dose_value(first, dosage_path)
            dosage = _validated(Dosage, first, dosage_path)
        dose, dose_path, route, route_path = dosage_parts(dosage, dosage_path)
        source = MedicationSource(
            kind="MedicationRequest",
            path=path,
            concept=concept,
            medication=found,
            reference=reference,
            dose=dose,
            dose_path=dose_path,
            route=route,
            route_path=route_path,
        )
        read = read_medication(source, self.formulary)
        if read.problems:
            problem = read.problems[0]
            raise bad_request(problem.path, problem.message)
        return read

    def referenced(
        self, resource: Mapping[str, Any], target: str, path: str
    ) -> tuple[Medication, str] | None:
        """The Medication a reference names: contained (`#id`) or an entry of the Bundle."""
        from fhir.resources.R4B.medication import Medication  # noqa: PLC0415

        if target.startswith("#"):
            for k, item in enumerate(_list(resource.get("contained"), f"{path}.contained")):
                where = f"{path}.contained[{k}]"
                contained = _object(item, where)
                if contained.get("id") == target[1:]:
                    medication = _validated(Medication, contained, where)
                    return (medication, where) if medication is not None else None
            return None
        for i, entry in enumerate(self.entries):
            other = entry.get("resource")
            if not isinstance(other, Mapping) or other.get("resourceType") != "Medication":
                continue
            if target in (entry.get("fullUrl"), f"Medication/{other.get('id')}"):
                where = f"{self.root}.entry[{i}].resource"
                medication = _validated(Medication, other, where)
                return (medication, where) if medication is not None else None
        return None

    def check_dose_value(self, dosage: Mapping[str, Any], path: str) -> None:
        """FHIR writes a decimal as a JSON number: `"8"` is refused (fhir.resources would take
        it)."""
        rates = _list(dosage.get("doseAndRate"), f"{path}.doseAndRate")
        if not rates:
            return
        rate = _object(rates[0], f"{path}.doseAndRate[0]")
        qpath = f"{path}.doseAndRate[0].doseQuantity"
        if rate.get("doseQuantity") is None:
            return
        value = _object(rate.get("doseQuantity"), qpath).get("value")
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise bad_request(f"{qpath}.value", f"expected a number, got {_kind(value)}")

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
