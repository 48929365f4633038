"""What the engine says at each step: `Decision`, with its `Alert`s, `Deviation`s and the
explanation of every guard it evaluated. Values only; `to_json` gives the documented format.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

import attrs

from .criteria import Verdict
from .model import Dose, Recommendation
from .timeline import TreatmentEvent, event_to_json, format_time

__all__ = [
    "ALERT_SEVERITY",
    "Action",
    "Alert",
    "Decision",
    "Deviation",
    "GuardResult",
    "make_decision",
    "run_to_json",
    "state_entries",
]

Severity = Literal["critical", "warning", "info"]

#: Alert codes of DESIGN.md and their fixed severities.
ALERT_SEVERITY: dict[str, Severity] = {
    "il6_monotherapy": "critical",
    "immunosuppression_before_antimicrobials": "critical",
    "tocilizumab_with_icans": "warning",
    "off_guideline_therapy": "warning",
    "treatment_unconfirmed": "warning",
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
    #: for missing_data and treatment_unconfirmed: what to measure or assess.
    measure: tuple[str, ...] = ()
    #: a guideline rule's alert carries the rule's severity; the engine's own alerts take the
    #: fixed severity of their code (DESIGN.md).
    level: Severity | None = None

    @property
    def severity(self) -> Severity:
        return self.level or ALERT_SEVERITY[self.code]

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
class Action:
    """What the guideline says to do now (DESIGN.md, "Actions")."""

    code: str
    text: str
    cite: tuple[str, ...] = ()
    verified: bool = False
    drug: str | None = None
    dose: Dose | None = None
    route: tuple[str, ...] = ()
    frequency: str | None = None
    due_by: datetime | None = None
    #: for `measure`: what to measure or assess.
    measure: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "code": self.code,
            "text": self.text,
            "cite": list(self.cite),
            "verified": self.verified,
        }
        _drug_to_json(out, self.drug, self.dose, self.route, self.frequency)
        if self.due_by is not None:
            out["due_by"] = format_time(self.due_by)
        if self.measure:
            out["measure"] = list(self.measure)
        return out


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
    _drug_to_json(out, r.drug, r.dose, r.route, r.frequency)
    return out


def _drug_to_json(
    out: dict[str, Any],
    drug: str | None,
    dose: Dose | None,
    route: tuple[str, ...],
    frequency: str | None,
) -> None:
    """The drug fields of a recommendation or an action, those that are set."""
    if drug is not None:
        out["drug"] = drug
    if dose is not None:
        out["dose"] = {"min": dose.min, "max": dose.max, "unit": dose.unit}
    if route:
        out["route"] = list(route)
    if frequency is not None:
        out["frequency"] = frequency


def _as_json(item: Any) -> Any:
    return item if isinstance(item, dict) else event_to_json(item)


def _all_as_json(items: Sequence[Any]) -> tuple[dict[str, Any], ...]:
    return tuple(_as_json(e) for e in items)


@attrs.define(kw_only=True)
class Decision:
    """What the engine decided at one step. `event` and `later` may be given as events: they
    are rendered as JSON when first read (the hot path does not pay for it). Never changed
    once made (not frozen only because frozen attrs classes are slow to build)."""

    step: int
    at: datetime
    _event: Any = attrs.field(alias="event", eq=_as_json)
    source: str | None
    target: str
    machine_event: str | None = None
    transition_label: str | None = None
    transition_cite: tuple[str, ...] = ()
    inferred: dict[str, str] | None = None
    guards: tuple[GuardResult, ...] = ()
    criteria: Sequence[Verdict] = ()
    recommendations: tuple[Recommendation, ...] = ()
    alerts: tuple[Alert, ...] = ()
    deviations: tuple[Deviation, ...] = ()
    #: states passed through on the way to `target` within this step (e.g. a recurrence:
    #: resolved -> suspected -> first_line_steroids).
    via: tuple[str, ...] = ()
    actions: tuple[Action, ...] = ()
    #: what the engine noted: a continuing therapy, a therapy counted in the line order, a
    #: treatment confirmed by fresh data.
    notes: tuple[str, ...] = ()
    #: treatments known to follow this event within the concurrency windows (a retrospective
    #: run): an input of the decision, kept so it can be replayed.
    _later: tuple[Any, ...] = attrs.field(alias="later", default=(), eq=_all_as_json)

    @property
    def event(self) -> dict[str, Any]:
        e = self._event
        if not isinstance(e, dict):
            e = event_to_json(e)
            self._event = e
        return e  # type: ignore[no-any-return]

    @property
    def given_drug(self) -> str | None:
        """The drug the step's event records as given, if it is a treatment (`event["drug"]`,
        without rendering the event)."""
        e = self._event
        if isinstance(e, dict):
            return e.get("drug") if e.get("kind") == "treatment" else None
        return e.drug if isinstance(e, TreatmentEvent) else None

    @property
    def later(self) -> tuple[dict[str, Any], ...]:
        items = self._later
        if items and not isinstance(items[0], dict):
            items = _all_as_json(items)
            self._later = items
        return items

    @property
    def changed(self) -> bool:
        return self.source is not None and (self.source != self.target or bool(self.via))

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
            "actions": [a.to_json() for a in self.actions],
        }
        if self.inferred is not None:
            out["inferred"] = self.inferred
        if self.via:
            out["via"] = list(self.via)
        if self.notes:
            out["notes"] = list(self.notes)
        if self.later:
            out["later"] = list(self.later)
        return out


_new_decision = object.__new__


def make_decision(  # noqa: PLR0917 - positional on purpose: the hot path
    step: int,
    at: datetime,
    event: Any,
    source: str | None,
    target: str,
    machine_event: str | None,
    transition_label: str | None,
    transition_cite: tuple[str, ...],
    inferred: dict[str, str] | None,
    guards: tuple[GuardResult, ...],
    criteria: Sequence[Verdict],
    recommendations: tuple[Recommendation, ...],
    alerts: tuple[Alert, ...],
    deviations: tuple[Deviation, ...],
    via: tuple[str, ...],
    actions: tuple[Action, ...],
    notes: tuple[str, ...],
    later: tuple[Any, ...],
) -> Decision:
    """`Decision(...)` from positional arguments, every field given: the engine's hot path
    (a keyword `__init__` with defaults costs twice as much). `tests/test_engine_fastpaths.py`
    holds it equal to the keyword form, field by field."""
    d: Decision = _new_decision(Decision)
    d.step = step
    d.at = at
    d._event = event
    d.source = source
    d.target = target
    d.machine_event = machine_event
    d.transition_label = transition_label
    d.transition_cite = transition_cite
    d.inferred = inferred
    d.guards = guards
    d.criteria = criteria
    d.recommendations = recommendations
    d.alerts = alerts
    d.deviations = deviations
    d.via = via
    d.actions = actions
    d.notes = notes
    d._later = later
    return d


def state_entries(decisions: Sequence[Decision]) -> list[tuple[str, datetime]]:
    """Each state entered, in order, with the time of the step that entered it (states passed
    through within a step included): the path of a run."""
    entries: list[tuple[str, datetime]] = []
    for d in decisions:
        for state in (*d.via, d.target):
            if not entries or entries[-1][0] != state:
                entries.append((state, d.at))
    return entries


def run_to_json(
    guideline: dict[str, str], patient_id: str, decisions: list[Decision]
) -> dict[str, Any]:
    """The `iechs run --format json` document."""
    path = [state for state, _ in state_entries(decisions)]
    return {
        "format": "iechs.run/1",
        "guideline": guideline,
        "patient": {"id": patient_id},
        "final_state": decisions[-1].target if decisions else None,
        "path": path,
        "steps": [d.to_json() for d in decisions],
        "alerts": [a.to_json() for d in decisions for a in d.alerts],
        "actions": [a.to_json() for a in decisions[-1].actions] if decisions else [],
    }
