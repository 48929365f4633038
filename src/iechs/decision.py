"""What the engine says at each step: `Decision`, with its `Alert`s, `Deviation`s and the
explanation of every guard it evaluated. Values only; `to_json` gives the documented format.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import attrs

from .criteria import Verdict
from .model import Recommendation
from .timeline import format_time

__all__ = ["ALERT_SEVERITY", "Alert", "Decision", "Deviation", "GuardResult", "run_to_json"]

Severity = Literal["critical", "warning", "info"]

#: Alert codes of DESIGN.md and their fixed severities.
ALERT_SEVERITY: dict[str, Severity] = {
    "il6_monotherapy": "critical",
    "immunosuppression_before_antimicrobials": "critical",
    "tocilizumab_with_icans": "warning",
    "off_guideline_therapy": "warning",
    "reassessment_overdue": "warning",
    "escalation_due": "warning",
    "missing_data": "info",
    "high_risk_patient": "info",
}


@attrs.frozen
class Alert:
    code: str
    at: datetime
    message: str
    cite: tuple[str, ...] = ()
    #: for missing_data: what to measure or assess.
    measure: tuple[str, ...] = ()

    @property
    def severity(self) -> Severity:
        return ALERT_SEVERITY[self.code]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "code": self.code,
            "severity": self.severity,
            "at": format_time(self.at),
            "message": self.message,
        }
        if self.cite:
            out["cite"] = list(self.cite)
        if self.measure:
            out["measure"] = list(self.measure)
        return out


@attrs.frozen
class Deviation:
    """A recorded treatment the guideline does not sanction at that point (no state change)."""

    drug: str
    drug_class: str | None
    reason: str
    alert: str

    def to_json(self) -> dict[str, Any]:
        return {
            "drug": self.drug,
            "drug_class": self.drug_class,
            "reason": self.reason,
            "alert": self.alert,
        }


@attrs.frozen
class GuardResult:
    source: str
    target: str
    event: str
    label: str
    result: str
    when: tuple[str, ...]
    unless: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "transition": f"{self.source} -> {self.target}",
            "event": self.event,
            "label": self.label,
            "result": self.result,
            "when": list(self.when),
            "unless": list(self.unless),
        }


def recommendation_to_json(r: Recommendation) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": r.id,
        "text": r.text,
        "population": r.population,
        "cite": list(r.cite),
        "verified": r.verified,
    }
    if r.drug is not None:
        out["drug"] = r.drug
    if r.dose is not None:
        out["dose"] = {"min": r.dose.min, "max": r.dose.max, "unit": r.dose.unit}
    if r.route:
        out["route"] = list(r.route)
    if r.frequency is not None:
        out["frequency"] = r.frequency
    return out


@attrs.frozen(kw_only=True)
class Decision:
    step: int
    at: datetime
    event: dict[str, Any]
    source: str | None
    target: str
    machine_event: str | None = None
    transition_label: str | None = None
    transition_cite: tuple[str, ...] = ()
    inferred: dict[str, str] | None = None
    guards: tuple[GuardResult, ...] = ()
    criteria: tuple[Verdict, ...] = ()
    recommendations: tuple[Recommendation, ...] = ()
    alerts: tuple[Alert, ...] = ()
    deviations: tuple[Deviation, ...] = ()

    @property
    def changed(self) -> bool:
        return self.source is not None and self.source != self.target

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "step": self.step,
            "at": format_time(self.at),
            "event": self.event,
            "from": self.source,
            "to": self.target,
            "machine_event": self.machine_event,
            "transition": None
            if self.transition_label is None
            else {"label": self.transition_label, "cite": list(self.transition_cite)},
            "guards": [gr.to_json() for gr in self.guards],
            "criteria": {v.name: v.to_json() for v in self.criteria},
            "recommendations": [recommendation_to_json(r) for r in self.recommendations],
            "alerts": [a.to_json() for a in self.alerts],
            "deviations": [d.to_json() for d in self.deviations],
        }
        if self.inferred is not None:
            out["inferred"] = self.inferred
        return out


def run_to_json(
    guideline: dict[str, str], patient_id: str, decisions: list[Decision]
) -> dict[str, Any]:
    """The `iechs run --format json` document."""
    path: list[str] = []
    for d in decisions:
        if not path or path[-1] != d.target:
            path.append(d.target)
    return {
        "format": "iechs.run/1",
        "guideline": guideline,
        "patient": {"id": patient_id},
        "final_state": decisions[-1].target if decisions else None,
        "path": path,
        "steps": [d.to_json() for d in decisions],
        "alerts": [a.to_json() for d in decisions for a in d.alerts],
    }
