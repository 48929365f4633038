"""FHIR export of a log: each step as an R4 `AuditEvent`, its decision as a `GuidanceResponse`
and where that decision came from as a `Provenance`, in a `collection` Bundle.

The `Provenance` of a decision targets its GuidanceResponse; `recorded` is when the store wrote
the record (the `written_at` the store keeps beside the chain: metadata, never an input to a
decision, and not covered by the chain), `occurredDateTime` the event's time; the agent is the
engine (a Device, "iechs VERSION"; with the clinician as `enterer` when one acted, and the reason
as `reason`), and the entity, role `source`, the guideline as a PlanDefinition identified by
`urn:iechs:guideline` `ID|VERSION`, its SHA-256 in the extension `GUIDELINE_SHA256_EXTENSION`.

Every decision has its Provenance, also when no write time is known: a record written before the
store kept write times, or a FHIR export made from a JSON Lines export (which carries none). FHIR
requires `recorded`, so it then holds the event's time (as `occurredDateTime` does), and the
element carries the extension `WRITE_TIME_UNKNOWN_EXTENSION` (`valueBoolean` true) saying that
it is not the write time. Export from the store itself to get the write times.

Patients are referred to by the identifier the FHIR input reads them by
(`iechs.fhir.codes.PATIENT_ID_SYSTEM`, the timeline's `patient.id`), so an exported decision
names its patient as the Bundle that went in did.

Validated with `fhir.resources.R4B` (FHIR 4.3, which keeps R4's AuditEvent and
GuidanceResponse unchanged; the installed fhir.resources has no separate R4 package, its
top-level models are R5). Identifiers and `fullUrl`s derive from record hashes, so the same log
always exports the same Bundle (two stores fed the same input export Bundles that differ only in
their store ids and write times). Every `AuditEvent` carries the whole canonical record (base64)
with its hash and `prev`, so the chain can be re-verified from the export.
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import AuditError, problem
from .records import AuditRecord, canonical

__all__ = [
    "FHIR_PACKAGE",
    "GUIDELINE_SHA256_EXTENSION",
    "WRITE_TIME_UNKNOWN_EXTENSION",
    "audit_event",
    "guidance_response",
    "patient_reference",
    "provenance",
    "to_bundle",
]

#: The fhir.resources package whose models validate the export.
FHIR_PACKAGE = "fhir.resources.R4B"

_NS = uuid.UUID("6b1c2f0e-5d0a-4c36-9f0e-1e3c5a7b9d21")  # the namespace of our urn:uuid ids
_ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
_OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
_PARTICIPANT = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
_DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
#: The extension of a Provenance entity that carries the guideline's SHA-256 (valueString).
GUIDELINE_SHA256_EXTENSION = "https://iechs.dev/fhir/StructureDefinition/guideline-sha256"
#: The extension of `Provenance.recorded` (valueBoolean true) when the log keeps no write time
#: for the record: `recorded` then holds the event's time, not when the record was written.
WRITE_TIME_UNKNOWN_EXTENSION = "https://iechs.dev/fhir/StructureDefinition/write-time-unknown"
#: A write time as the store keeps it (`iechs.audit.stores.instant`): a FHIR `instant` in UTC.
_INSTANT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z")


def _urn(record: AuditRecord, kind: str) -> str:
    return f"urn:uuid:{uuid.uuid5(_NS, f'{kind}:{record.hash}')}"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def patient_reference(record: AuditRecord, patient_id: str | None = None) -> dict[str, Any]:
    """The record's patient, by the identifier the FHIR input reads (`patient.id`): `patient_id`,
    else the id in the record (an episode's first record carries the patient), else the
    episode's id (an episode recorded by `iechs run --store` or the service is its patient's)."""
    # Imported here: `iechs.fhir` loads the FHIR models, which only this export needs.
    from ..fhir.codes import PATIENT_ID_SYSTEM  # noqa: PLC0415

    if patient_id is None and record.patient is not None:
        found = record.patient.get("id")
        patient_id = found if isinstance(found, str) else None
    return {
        "type": "Patient",
        "identifier": {"system": PATIENT_ID_SYSTEM, "value": patient_id or record.episode},
    }


def audit_event(
    record: AuditRecord, store_id: str, patient_id: str | None = None
) -> dict[str, Any]:
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
                "what": patient_reference(record, patient_id),
                "type": {"system": _ENTITY_TYPE, "code": "1", "display": "Person"},
                "role": {"system": _OBJECT_ROLE, "code": "1", "display": "Patient"},
                "detail": [{"type": "episode", "valueString": record.episode}],
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


def guidance_response(record: AuditRecord, patient_id: str | None = None) -> dict[str, Any]:
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
        "subject": patient_reference(record, patient_id),
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


def provenance(record: AuditRecord, written_at: str | None = None) -> dict[str, Any]:
    """Where the decision came from, as a Provenance targeting its GuidanceResponse, `recorded`
    at `written_at`, the record's write time as the store keeps it (None: unknown, and then the
    event's time, flagged; see the module's text)."""
    g = record.guideline
    agents: list[dict[str, Any]] = [
        {
            "type": {
                "coding": [{"system": _PARTICIPANT, "code": "performer", "display": "Performer"}]
            },
            "who": {
                "type": "Device",
                "identifier": {"system": "urn:iechs:engine", "value": record.engine},
                "display": f"iechs {record.engine}",
            },
        }
    ]
    if record.actor is not None:
        agents.append(
            {
                "type": {
                    "coding": [{"system": _PARTICIPANT, "code": "enterer", "display": "Enterer"}]
                },
                "who": {"display": record.actor},
            }
        )
    resource: dict[str, Any] = {
        "resourceType": "Provenance",
        "id": f"iechs-provenance-{record.seq}",
        "target": [{"reference": _urn(record, "decision"), "type": "GuidanceResponse"}],
        "occurredDateTime": record.at,
        "recorded": record.at if written_at is None else written_at,
        "activity": {
            "coding": [{"system": _DATA_OPERATION, "code": "CREATE", "display": "create"}]
        },
        "agent": agents,
        "entity": [
            {
                "role": "source",
                "what": {
                    "type": "PlanDefinition",
                    "identifier": {"system": "urn:iechs:guideline", "value": f"{g.id}|{g.version}"},
                    "display": f"{g.id} {g.version} (sha256 {g.sha256})",
                },
                "extension": [{"url": GUIDELINE_SHA256_EXTENSION, "valueString": g.sha256}],
            }
        ],
    }
    if written_at is None:
        resource["_recorded"] = {
            "extension": [{"url": WRITE_TIME_UNKNOWN_EXTENSION, "valueBoolean": True}]
        }
    if record.reason is not None:
        resource["reason"] = [{"text": record.reason}]
    return resource


def to_bundle(
    records: Iterable[AuditRecord],
    store_id: str,
    written_at: Mapping[int, str | None] | None = None,
) -> dict[str, Any]:
    """A validated `collection` Bundle: every record's AuditEvent, GuidanceResponse and
    Provenance. `written_at` gives the records' write times by record number (as the store
    keeps them beside the chain); a record without one gets a Provenance at its event's time,
    flagged (`WRITE_TIME_UNKNOWN_EXTENSION`)."""
    written = written_at or {}
    # Imported here: the FHIR models take a while to load and only this export needs them.
    from fhir.resources.R4B.auditevent import AuditEvent  # noqa: PLC0415
    from fhir.resources.R4B.bundle import Bundle  # noqa: PLC0415
    from fhir.resources.R4B.guidanceresponse import GuidanceResponse  # noqa: PLC0415
    from fhir.resources.R4B.provenance import Provenance  # noqa: PLC0415
    from pydantic import ValidationError  # noqa: PLC0415

    entries: list[dict[str, Any]] = []
    patients: dict[str, str] = {}  # episode -> patient id, from the episode's first record
    for record in records:
        if record.patient is not None and isinstance(record.patient.get("id"), str):
            patients[record.episode] = record.patient["id"]
        patient_id = patients.get(record.episode)
        when = written.get(record.seq)
        if when is not None and _INSTANT.fullmatch(when) is None:
            raise AuditError(
                problem(
                    f"the write time the store keeps for record {record.seq} (metadata beside "
                    f"the chain, which does not cover it) is not a UTC instant: {when!r}"
                ),
                store_id,
            )
        try:
            event = AuditEvent.model_validate(audit_event(record, store_id, patient_id))
            decision = GuidanceResponse.model_validate(guidance_response(record, patient_id))
            origin = Provenance.model_validate(provenance(record, when))
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
        entries.append(
            {
                "fullUrl": _urn(record, "provenance"),
                "resource": origin.model_dump(mode="json", exclude_none=True),
            }
        )
    bundle = Bundle.model_validate(
        {"resourceType": "Bundle", "id": store_id, "type": "collection", "entry": entries}
    )
    out: dict[str, Any] = bundle.model_dump(mode="json", exclude_none=True)
    return out
