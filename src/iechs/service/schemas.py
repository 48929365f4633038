"""The CDS Hooks 2.0 requests and responses the service accepts and gives, as pydantic models:
they validate the requests and document both in the OpenAPI document (`/openapi.json`).

Unknown fields are allowed (and ignored) in requests, as CDS Hooks clients may send more.
Field names are the specification's JSON names (hence mixedCase).
"""

# ruff: noqa: N815

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.config import JsonDict
from pydantic_core import PydanticCustomError

__all__ = [
    "MAX_FEEDBACK_ITEMS",
    "Card",
    "CdsResponse",
    "Discovery",
    "ErrorBody",
    "FeedbackRequest",
    "FeedbackResponse",
    "OrderSignRequest",
    "PatientViewRequest",
]

_OPEN = ConfigDict(extra="allow")
#: A FHIR-style id: no control characters (a patient id is also a database key).
_ID = r"^[^\x00-\x1f\x7f]+$"
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
#: The most feedback items one request may carry.
MAX_FEEDBACK_ITEMS = 100


def _uuid(value: str) -> str:
    if _UUID.fullmatch(value) is None:
        raise PydanticCustomError(
            "uuid",
            "expected a UUID (CDS Hooks: a universally unique identifier for this hook call, "
            "e.g. d1577c69-dfbe-44ad-ba6d-3e05e953b2ea)",
        )
    return value


#: A UUID in its canonical text form (8-4-4-4-12 hexadecimal digits).
UuidText = Annotated[
    str,
    AfterValidator(_uuid),
    Field(json_schema_extra={"format": "uuid", "pattern": f"^{_UUID.pattern}$"}),
]


class Coding(BaseModel):
    model_config = _OPEN
    code: str
    system: str | None = None
    display: str | None = None


# --- requests ----------------------------------------------------------------------------------


class _Context(BaseModel):
    model_config = _OPEN
    userId: str = Field(description="who is acting, e.g. Practitioner/123")
    patientId: str = Field(
        min_length=1,
        max_length=256,
        pattern=_ID,
        description="the patient: the episode id in the store (the timeline's patient.id), "
        "unless prefetch.patient carries an identifier of https://iechs.dev/fhir/sid/patient-id",
    )
    encounterId: str | None = None


class PatientViewContext(_Context):
    pass


class BundleEntry(BaseModel):
    model_config = _OPEN
    fullUrl: str | None = None
    resource: dict[str, Any] | None = None


class DraftOrders(BaseModel):
    model_config = _OPEN
    resourceType: Literal["Bundle"]
    entry: list[BundleEntry] | None = None


class OrderSignContext(_Context):
    draftOrders: DraftOrders = Field(
        description="a FHIR R4 Bundle of the orders being signed; its MedicationRequests are "
        "checked"
    )


class _HookRequest(BaseModel):
    model_config = _OPEN
    hookInstance: UuidText = Field(
        description="a UUID for this hook call: the uuids of the cards answering it derive "
        "from it (and from their content)"
    )
    fhirServer: str | None = None
    fhirAuthorization: dict[str, Any] | None = None
    prefetch: dict[str, Any] | None = Field(
        default=None,
        description="optional `patient` (the Patient resource): its identifier of "
        "https://iechs.dev/fhir/sid/patient-id names the episode",
    )
    extension: dict[str, Any] | None = Field(
        default=None,
        description='`"dev.iechs.now"`: the time the hook is about (ISO 8601 with a time '
        "zone; not before the episode's last event). Without it, the time of the episode's "
        "last recorded event.",
    )


_TOCILIZUMAB: JsonDict = {
    "resourceType": "MedicationRequest",
    "id": "toci-1",
    "status": "draft",
    "intent": "order",
    "medicationCodeableConcept": {"text": "tocilizumab"},
    "dosageInstruction": [
        {"route": {"text": "IV"}, "doseAndRate": [{"doseQuantity": {"value": 8, "unit": "mg/kg"}}]}
    ],
}
_CONTEXT: JsonDict = {"userId": "Practitioner/haem-1", "patientId": "svc-no-steroid"}


class PatientViewRequest(_HookRequest):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "hook": "patient-view",
                    "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
                    "context": _CONTEXT,
                },
                {
                    "hook": "patient-view",
                    "hookInstance": "5b0b9a4e-2f7c-4a37-8a3e-2a4f4f1f3c11",
                    "context": _CONTEXT,
                    "extension": {"dev.iechs.now": "2026-05-18T09:00:00Z"},
                },
            ]
        },
    )
    hook: Literal["patient-view"]
    context: PatientViewContext


class OrderSignRequest(_HookRequest):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "hook": "order-sign",
                    "hookInstance": "0b8f3f0e-6a47-4a8e-9b1c-5d2f7e9a1c34",
                    "context": _CONTEXT
                    | {
                        "draftOrders": {
                            "resourceType": "Bundle",
                            "type": "collection",
                            "entry": [{"resource": _TOCILIZUMAB}],
                        },
                    },
                }
            ]
        },
    )
    hook: Literal["order-sign"]
    context: OrderSignContext


class AcceptedSuggestion(BaseModel):
    model_config = _OPEN
    id: str = Field(max_length=64, description="the suggestion's uuid")


class OverrideReason(BaseModel):
    """CDS Hooks cds-fb-3: a reason, a userComment, or both (checked by the service, which
    also limits their length: --max-feedback-text, 413)."""

    model_config = _OPEN
    reason: Coding | None = None
    userComment: str | None = None


class FeedbackItem(BaseModel):
    """CDS Hooks cds-fb-2: an `accepted` outcome names its acceptedSuggestions (checked by the
    service, with the card's own suggestions)."""

    model_config = _OPEN
    card: str = Field(max_length=64, description="the card's uuid")
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[AcceptedSuggestion] | None = None
    overrideReason: OverrideReason | None = None
    outcomeTimestamp: str = Field(max_length=64, description="ISO 8601 timestamp of the action")


class FeedbackRequest(BaseModel):
    model_config = _OPEN
    feedback: list[FeedbackItem] = Field(min_length=1, max_length=MAX_FEEDBACK_ITEMS)


# --- responses ---------------------------------------------------------------------------------


class Service(BaseModel):
    hook: str
    id: str
    title: str | None = None
    description: str
    prefetch: dict[str, str] | None = None


class Discovery(BaseModel):
    services: list[Service]


class Link(BaseModel):
    label: str
    url: str
    type: Literal["absolute", "smart"]
    appContext: str | None = None


class Source(BaseModel):
    label: str
    url: str | None = None
    icon: str | None = None
    topic: Coding | None = None


class Action(BaseModel):
    type: Literal["create", "update", "delete"]
    description: str
    resource: dict[str, Any] | None = None
    resourceId: str | None = None


class Suggestion(BaseModel):
    label: str
    uuid: str | None = None
    isRecommended: bool | None = None
    actions: list[Action] | None = None


class Card(BaseModel):
    uuid: str | None = None
    summary: str = Field(max_length=139)
    detail: str | None = None
    indicator: Literal["info", "warning", "critical"]
    source: Source
    suggestions: list[Suggestion] | None = None
    selectionBehavior: Literal["at-most-one", "any"] | None = None
    overrideReasons: list[Coding] | None = None
    links: list[Link] | None = None


class CdsResponse(BaseModel):
    cards: list[Card]


class RecordedFeedback(BaseModel):
    card: str
    outcome: Literal["accepted", "overridden"]
    episode: str
    seq: int = Field(description="the audit record that holds it")


class FeedbackResponse(BaseModel):
    recorded: list[RecordedFeedback]


class ErrorBody(BaseModel):
    error: str = Field(description="what is wrong, naming the field (`$.context.patientId: ...`)")
