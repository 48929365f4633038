"""FHIR export of a log: each step as an R4 `AuditEvent`, its decision as a `GuidanceResponse`,
in a `collection` Bundle.

Validated with `fhir.resources.R4B` (FHIR 4.3, which keeps R4's AuditEvent and
GuidanceResponse unchanged; the installed fhir.resources has no separate R4 package, its
top-level models are R5). Identifiers and `fullUrl`s derive from record hashes, so the same log
always exports the same Bundle. Every `AuditEvent` carries the whole canonical record (base64)
with its hash and `prev`, so the chain can be re-verified from the export.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterable
from typing import Any

from .errors import AuditError, problem
from .records import AuditRecord, canonical

__all__ = ["FHIR_PACKAGE", "audit_event", "guidance_response", "to_bundle"]

#: The fhir.resources package whose models validate the export.
FHIR_PACKAGE = "fhir.resources.R4B"

_NS = uuid.UUID("6b1c2f0e-5d0a-4c36-9f0e-1e3c5a7b9d21")  # the namespace of our urn:uuid ids
_ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
_OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"


def _urn(record: AuditRecord, kind: str) -> str:
    return f"urn:uuid:{uuid.uuid5(_NS, f'{kind}:{record.hash}')}"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _episode(record: AuditRecord) -> dict[str, Any]:
    return {"identifier": {"system": "urn:iechs:episode", "value": record.episode}}


def audit_event(record: AuditRecord, store_id: str) -> dict[str, Any]:
    """The step as an AuditEvent: who (engine, and the clinician if one acted), when (the
    event's time), what (the patient, the decision, the guideline)."""
    changed = record.source is not None and record.source != record.target
    agents: list[dict[str, Any]] = [
        {
            "type": {
                "coding": [
                    {
                        "system": "http://dicom.nema.org/resources/ontology/DCM",
                        "code": "110150",
                        "display": "Application",
                    }
                ]
            },
            "who": {"display": f"iechs engine {record.engine}"},
            "requestor": False,
        }
    ]
    if record.actor is not None:
        actor: dict[str, Any] = {"who": {"display": record.actor}, "requestor": True}
        if record.reason is not None:
            actor["purposeOfUse"] = [{"text": record.reason}]
        agents.append(actor)
    g = record.guideline
    return {
        "resourceType": "AuditEvent",
        "id": f"iechs-step-{record.seq}",
        "type": {"system": "urn:iechs:audit", "code": "engine-step", "display": "Guideline step"},
        "subtype": [{"system": "urn:iechs:event-kind", "code": str(record.event.get("kind"))}],
        "action": "E",
        "recorded": record.at,
        "outcome": "0",
        "outcomeDesc": f"{record.source} -> {record.target}"
        if changed
        else f"state {record.target}",
        "agent": agents,
        "source": {
            "site": store_id,
            "observer": {"display": f"iechs {record.engine}"},
            "type": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                    "code": "4",
                    "display": "Application Server",
                }
            ],
        },
        "entity": [
            {
                "what": _episode(record),
                "type": {"system": _ENTITY_TYPE, "code": "1", "display": "Person"},
                "role": {"system": _OBJECT_ROLE, "code": "1", "display": "Patient"},
            },
            {
                "what": {"reference": _urn(record, "decision")},
                "type": {"system": _ENTITY_TYPE, "code": "2", "display": "System Object"},
                "name": f"audit record {record.seq}",
                "detail": [
                    {"type": "seq", "valueString": str(record.seq)},
                    {"type": "hash", "valueString": record.hash},
                    {"type": "prev", "valueString": record.prev},
                    {"type": "event", "valueBase64Binary": _b64(canonical(record.event))},
                    {"type": "record", "valueBase64Binary": _b64(record.body)},
                ],
            },
            {
                "what": {
                    "identifier": {"system": "urn:iechs:guideline", "value": f"{g.id}|{g.version}"}
                },
                "type": {"system": _ENTITY_TYPE, "code": "2", "display": "System Object"},
                "name": "guideline",
                "detail": [{"type": "sha256", "valueString": g.sha256}],
            },
        ],
    }


def _notes(decision: dict[str, Any]) -> list[dict[str, str]]:
    notes: list[str] = []
    for guard in decision.get("guards", []):
        notes.append(
            f"Guard {guard.get('transition')} ({guard.get('label')}): {guard.get('result')}"
        )
    for rec in decision.get("recommendations", []):
        checked = "verified" if rec.get("verified") else "NOT VERIFIED against its source"
        notes.append(
            f"Recommendation {rec.get('id')}: {rec.get('text')} "
            f"[cite: {', '.join(rec.get('cite', []))}; {checked}]"
        )
    for alert in decision.get("alerts", []):
        notes.append(f"Alert {alert.get('severity')} {alert.get('code')}: {alert.get('message')}")
    for dev in decision.get("deviations", []):
        notes.append(f"Deviation: {dev.get('drug')}: {dev.get('reason')}")
    return [{"text": n} for n in notes]


def guidance_response(record: AuditRecord) -> dict[str, Any]:
    """The decision as a GuidanceResponse: the guideline module, the outcome, the guards,
    recommendations, alerts and deviations as notes, and what to measure when data is missing."""
    g = record.guideline
    decision = record.decision
    measures = [m for a in record.alerts for m in a.get("measure", [])]
    resource: dict[str, Any] = {
        "resourceType": "GuidanceResponse",
        "id": f"iechs-decision-{record.seq}",
        "requestIdentifier": {"system": "urn:iechs:audit-record", "value": record.hash},
        "identifier": [{"system": "urn:iechs:audit-record", "value": record.hash}],
        "moduleCodeableConcept": {
            "coding": [{"system": "urn:iechs:guideline", "code": g.id, "version": g.version}],
            "text": f"{g.id} {g.version} (sha256 {g.sha256})",
        },
        "status": "data-required" if measures else "success",
        "subject": _episode(record),
        "occurrenceDateTime": record.at,
        "performer": {"display": f"iechs engine {record.engine}"},
    }
    transition = decision.get("transition")
    if isinstance(transition, dict):
        resource["reasonCode"] = [{"text": str(transition.get("label"))}]
    notes = _notes(decision)
    if notes:
        resource["note"] = notes
    if measures:
        resource["dataRequirement"] = [
            {
                "type": "Observation",
                "codeFilter": [
                    {"path": "code", "code": [{"system": "urn:iechs:measure", "code": m}]}
                ],
            }
            for m in dict.fromkeys(measures)
        ]
    return resource


def to_bundle(records: Iterable[AuditRecord], store_id: str) -> dict[str, Any]:
    """A validated `collection` Bundle of every record's AuditEvent and GuidanceResponse."""
    # Imported here: the FHIR models take a while to load and only this export needs them.
    from fhir.resources.R4B.auditevent import AuditEvent  # noqa: PLC0415
    from fhir.resources.R4B.bundle import Bundle  # noqa: PLC0415
    from fhir.resources.R4B.guidanceresponse import GuidanceResponse  # noqa: PLC0415
    from pydantic import ValidationError  # noqa: PLC0415

    entries: list[dict[str, Any]] = []
    for record in records:
        try:
            event = AuditEvent.model_validate(audit_event(record, store_id))
            decision = GuidanceResponse.model_validate(guidance_response(record))
        except ValidationError as exc:
            raise AuditError(
                problem(f"record {record.seq} does not map to valid FHIR: {exc}"), store_id
            ) from None
        entries.append(
            {
                "fullUrl": _urn(record, "step"),
                "resource": event.model_dump(mode="json", exclude_none=True),
            }
        )
        entries.append(
            {
                "fullUrl": _urn(record, "decision"),
                "resource": decision.model_dump(mode="json", exclude_none=True),
            }
        )
    bundle = Bundle.model_validate(
        {"resourceType": "Bundle", "id": store_id, "type": "collection", "entry": entries}
    )
    out: dict[str, Any] = bundle.model_dump(mode="json", exclude_none=True)
    return out
