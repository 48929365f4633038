"""The CDS services, without the web framework: an answer is a function of the request and
of what the audit store holds when it arrives.

Each request restores the patient's episode from the store (no in-process copy can go stale,
so any number of service processes can serve any patient). `patient-view` and `order-sign`
work on that restored copy and record nothing; feedback appends to the episode, and when
another process appended first, reloads and tries again (the store refuses a write based on a
stale episode, so the chain never forks). Not thread-safe: the app runs it on one thread.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import attrs

from ..audit.errors import StoreError
from ..audit.recorder import RecordedEpisode
from ..audit.stores import AuditStore, open_store
from ..criteria import Evaluation
from ..decision import Alert, Decision
from ..engine import Engine
from ..errors import EpisodeError
from ..loader import load_guideline
from ..timeline import format_time, parse_time
from .cards import OVERRIDE_REASONS, OVERRIDE_SYSTEM, CardMaker, with_uuids
from .errors import ServiceError, bad_request
from .issued import IssuedCard, IssuedCards
from .orders import read_draft_orders

__all__ = [
    "EXT_NOW",
    "ORDER_ALERTS",
    "ORDER_SIGN",
    "PATIENT_ID_SYSTEM",
    "PATIENT_VIEW",
    "SERVICES",
    "HookService",
    "ServiceConfig",
]

PATIENT_VIEW = "iechs-patient-view"
ORDER_SIGN = "iechs-order-sign"
#: service id -> the hook it answers.
SERVICES = {PATIENT_VIEW: "patient-view", ORDER_SIGN: "order-sign"}
#: The request extension that carries the time the hook is about.
EXT_NOW = "dev.iechs.now"
#: Identifier system of the timeline's patient id: the same URL as
#: `iechs.fhir.codes.PATIENT_ID_SYSTEM` (a test holds them equal).
PATIENT_ID_SYSTEM = "https://iechs.dev/fhir/sid/patient-id"
#: The alerts the engine itself raises about a treatment (the guideline's treatment rules
#: add theirs), returned as order-sign cards.
ORDER_ALERTS = frozenset({"off_guideline_therapy", "treatment_unconfirmed"})
_RANK = {"critical": 0, "warning": 1, "info": 2}
_NO_TIME = datetime(2000, 1, 1, tzinfo=UTC)  # for orders read when there is no episode
_RETRIES = 8
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@attrs.frozen(kw_only=True)
class ServiceConfig:
    """How `iechs serve` was started."""

    store: str
    guideline: str | None = None
    runtime: Literal["statechart", "table"] = "statechart"
    #: where cards link to the review page; None: this service's `/review`.
    review_url: str | None = None
    #: the page served at `/review`; None: the checkout's diagrams/review.html.
    review_page: str | None = None
    #: the service's base URL as clients see it (JWT audience, absolute links); None: the
    #: request's own.
    public_url: str | None = None
    jwt_issuer: str | None = None
    jwt_key: str | None = None
    max_body: int = 1 << 20


def _event_text(event: Mapping[str, Any]) -> str:
    kind = event.get("kind")
    if kind == "start":
        return "the start of the episode (infusion)"
    if kind == "advance":
        return "time passing"
    if kind == "treatment":
        return f"the treatment {event.get('drug')}"
    if kind == "observation":
        return f"the observation {event.get('code')} {event.get('value')} {event.get('unit')}"
    return f"the {kind} recorded at {event.get('at')}"


class HookService:
    """The services of one guideline over one store."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.engine = Engine(load_guideline(config.guideline), runtime=config.runtime)
        self.g = self.engine.guideline
        self.order_alerts = ORDER_ALERTS | {
            r.alert for r in self.g.rules.values() if r.upon == "treatment"
        }
        self._store: AuditStore | None = None
        self._issued: IssuedCards | None = None

    # --- the store -------------------------------------------------------------------------

    @property
    def store(self) -> AuditStore:
        if self._store is None:
            try:
                self._store = open_store(self.config.store, create=False)
            except StoreError as exc:
                raise ServiceError(503, f"the store is unavailable: {exc.render()}") from None
        return self._store

    @property
    def issued(self) -> IssuedCards:
        if self._issued is None:
            self._issued = IssuedCards(self.config.store)
        return self._issued

    def close(self) -> None:
        for resource in (self._store, self._issued):
            if resource is not None:
                with contextlib.suppress(Exception):  # a broken connection is dropped anyway
                    resource.close()
        self._store = self._issued = None

    def _guarded(self, call: Any, *args: Any) -> Any:
        """Run `call`; a store failure drops the connections (the next request reconnects)."""
        try:
            return call(*args)
        except StoreError as exc:
            self.close()
            raise ServiceError(503, f"the store is unavailable: {exc.render()}") from None
        except ServiceError as exc:
            if exc.status == 503:
                self.close()
            raise

    def _resume(self, episode_id: str) -> RecordedEpisode | None:
        if self.store.episode(episode_id) is None:
            return None
        try:
            return RecordedEpisode.resume(self.engine, self.store, episode_id)
        except EpisodeError as exc:
            raise ServiceError(
                409, f"episode {episode_id!r} cannot be restored here: {exc.render()}"
            ) from None

    # --- requests --------------------------------------------------------------------------

    def discovery(self) -> dict[str, Any]:
        meta = self.g.guideline
        prefetch = {"patient": "Patient/{{context.patientId}}"}
        return {
            "services": [
                {
                    "hook": "patient-view",
                    "id": PATIENT_VIEW,
                    "title": "IEC-HS episode after CAR-T therapy",
                    "description": f"Guideline {meta.id} {meta.version}: the patient's IEC-HS "
                    "state, the recommendations in force, alerts, and what is due.",
                    "prefetch": prefetch,
                },
                {
                    "hook": "order-sign",
                    "id": ORDER_SIGN,
                    "title": "IEC-HS order check",
                    "description": f"Guideline {meta.id} {meta.version}: warns when draft "
                    "orders would give IL-6 blockade without a corticosteroid or "
                    "immunosuppression before antimicrobials during IEC-HS, or tocilizumab "
                    "with ICANS.",
                    "prefetch": prefetch,
                },
            ]
        }

    @staticmethod
    def episode_id(context: Mapping[str, Any], prefetch: Mapping[str, Any] | None) -> str:
        """The episode of the patient in context (see `PATIENT_ID_SYSTEM`)."""
        pid = str(context["patientId"])
        patient = (prefetch or {}).get("patient")
        if patient is None:
            return pid
        path = "$.prefetch.patient"
        if not isinstance(patient, Mapping) or patient.get("resourceType") != "Patient":
            raise bad_request(path, "expected a FHIR Patient resource")
        if patient.get("id") is not None and patient.get("id") != pid:
            raise bad_request(
                f"{path}.id",
                f"Patient {patient.get('id')!r} is not the patient in context ({pid!r})",
            )
        identifiers = patient.get("identifier") or []
        if not isinstance(identifiers, list):
            raise bad_request(f"{path}.identifier", "expected a JSON array")
        for k, ident in enumerate(identifiers):
            if not isinstance(ident, Mapping):
                raise bad_request(f"{path}.identifier[{k}]", "expected a JSON object")
            value = ident.get("value")
            if ident.get("system") == PATIENT_ID_SYSTEM:
                if (
                    not isinstance(value, str)
                    or not value.strip()
                    or len(value) > 256
                    or _CONTROL.search(value) is not None
                ):
                    raise bad_request(
                        f"{path}.identifier[{k}].value",
                        "expected a patient id (1-256 characters, no control characters)",
                    )
                return value
        return pid

    @staticmethod
    def _at(extension: Mapping[str, Any] | None, last: datetime | None) -> datetime | None:
        """The hook's time: the request's, else the episode's last event (`last`)."""
        if not extension or EXT_NOW not in extension:
            return last
        path = f"$.extension['{EXT_NOW}']"
        try:
            at = parse_time(extension[EXT_NOW])
        except ValueError as exc:
            raise bad_request(path, str(exc)) from None
        if last is not None and at < last:
            raise bad_request(
                path,
                f"{format_time(at)} is before the episode's last recorded event "
                f"({format_time(last)}): events arrive in time order",
            )
        return at

    def patient_view(
        self,
        context: Mapping[str, Any],
        prefetch: Mapping[str, Any] | None,
        extension: Mapping[str, Any] | None,
        review_url: str,
    ) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._guarded(
            self._patient_view, context, prefetch, extension, review_url
        )
        return result

    def _patient_view(
        self,
        context: Mapping[str, Any],
        prefetch: Mapping[str, Any] | None,
        extension: Mapping[str, Any] | None,
        review_url: str,
    ) -> list[dict[str, Any]]:
        episode_id = self.episode_id(context, prefetch)
        recorded = self._resume(episode_id)
        last = recorded.episode.decisions[-1].at if recorded is not None else None
        at = self._at(extension, last)  # checked even when there is no episode
        if recorded is None or at is None or last is None:
            return []  # no IEC-HS episode recorded for this patient: nothing to say
        ep = recorded.episode
        if not ep.closed and at > last:
            ep.advance(at)  # what is due now; on this copy only, never recorded
        entered_at = max(i for i, d in enumerate(ep.decisions) if d.step == 0 or d.changed)
        identified = None
        if "iec_hs_identified" in self.g.criteria and not ep.closed:
            identified = Evaluation(self.engine.plan, ep.facts)("iec_hs_identified").value
        maker = CardMaker(self.g, review_url)
        cards = []
        next_steps = maker.actions_card(
            ep.decisions[-1].actions, state=ep.state, patient=str(context["patientId"])
        )
        if next_steps is not None:
            cards.append(next_steps)
        cards.append(maker.state_card(ep.decisions[entered_at], ep.state, identified))
        latest: dict[str, tuple[Alert, Decision]] = {}
        for d in ep.decisions[entered_at:]:  # the alerts raised in the current state
            for alert in d.alerts:
                latest[alert.code] = (alert, d)
        ordered = sorted(latest.values(), key=lambda ad: (_RANK[ad[0].severity], ad[0].at))
        cards += [
            maker.alert_card(alert, state=ep.state, raised_by=_event_text(d.event))
            for alert, d in ordered
        ]
        return self._issue(PATIENT_VIEW, episode_id, cards)

    def order_sign(
        self,
        context: Mapping[str, Any],
        prefetch: Mapping[str, Any] | None,
        extension: Mapping[str, Any] | None,
        review_url: str,
    ) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._guarded(
            self._order_sign, context, prefetch, extension, review_url
        )
        return result

    def _order_sign(
        self,
        context: Mapping[str, Any],
        prefetch: Mapping[str, Any] | None,
        extension: Mapping[str, Any] | None,
        review_url: str,
    ) -> list[dict[str, Any]]:
        episode_id = self.episode_id(context, prefetch)
        recorded = self._resume(episode_id)
        last = recorded.episode.decisions[-1].at if recorded is not None else None
        at = self._at(extension, last)
        # Read the orders even when there is no episode: a malformed request is refused alike.
        orders = read_draft_orders(
            context.get("draftOrders"), self.g, at or _NO_TIME, patient=str(context["patientId"])
        )
        if recorded is None or recorded.episode.closed:
            return []
        ep = recorded.episode
        maker = CardMaker(self.g, review_url)
        cards = []
        for k, order in enumerate(orders):
            # The engine decides, on this copy of the episode: the same answer as recording.
            # The draft orders are one order set: each is judged knowing the others.
            try:
                decision = ep.step(order.event, later=[o.event for o in orders[k + 1 :]])
            except EpisodeError as exc:  # pragma: no cover - time and closure checked above
                raise ServiceError(409, exc.render()) from None
            cards += [
                maker.alert_card(alert, state=decision.source or decision.target, order=order)
                for alert in decision.alerts
                if alert.code in self.order_alerts
            ]
        cards.sort(key=lambda c: _RANK[c["indicator"]])
        return self._issue(ORDER_SIGN, episode_id, cards)

    def _issue(
        self, service: str, episode_id: str, cards: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        out = [with_uuids(c, service, episode_id) for c in cards]
        self.issued.add(service, episode_id, out)
        return out

    # --- feedback --------------------------------------------------------------------------

    def feedback(
        self, service_id: str, items: Sequence[Mapping[str, Any]], actor: str
    ) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._guarded(self._feedback, service_id, items, actor)
        return result

    def _feedback(
        self, service_id: str, items: Sequence[Mapping[str, Any]], actor: str
    ) -> list[dict[str, Any]]:
        if service_id not in SERVICES:
            raise ServiceError(404, f"no CDS service {service_id!r} (see GET /cds-services)")
        # Check everything first: a refused request changes nothing.
        planned: list[tuple[IssuedCard, str, str]] = []
        for i, item in enumerate(items):
            issued, reason = self._feedback_reason(service_id, item, f"$.feedback[{i}]")
            planned.append((issued, reason, str(item["outcome"])))
        for episode_id in dict.fromkeys(issued.episode for issued, _, _ in planned):
            self._writable(episode_id)
        return [
            {
                "card": issued.uuid,
                "outcome": outcome,
                "episode": issued.episode,
                "seq": self._record(issued.episode, actor, reason),
            }
            for issued, reason, outcome in planned
        ]

    def _feedback_reason(
        self, service_id: str, item: Mapping[str, Any], path: str
    ) -> tuple[IssuedCard, str]:
        card_id = str(item["card"])
        issued = self.issued.get(card_id)
        if issued is None or issued.service != service_id:
            raise bad_request(f"{path}.card", f"no card {card_id!r} was issued by {service_id}")
        try:
            when = format_time(parse_time(item["outcomeTimestamp"]))
        except ValueError as exc:
            raise bad_request(f"{path}.outcomeTimestamp", str(exc)) from None
        card = issued.card
        topic = card.get("source", {}).get("topic", {}).get("code", "?")
        text = (
            f"CDS Hooks feedback: card {issued.uuid} ({service_id}, {topic}, "
            f'{card.get("indicator")}: "{card.get("summary")}") {item["outcome"]} at {when}'
        )
        accepted = item.get("acceptedSuggestions") or []
        override = item.get("overrideReason") or {}
        if item["outcome"] == "overridden" and accepted:
            raise bad_request(f"{path}.acceptedSuggestions", "an overridden card accepts none")
        if item["outcome"] == "accepted" and override:
            raise bad_request(f"{path}.overrideReason", "an accepted card has no override reason")
        offered = {s.get("uuid"): s.get("label") for s in card.get("suggestions", [])}
        labels = []
        for k, suggestion in enumerate(accepted):
            if suggestion["id"] not in offered:
                raise bad_request(
                    f"{path}.acceptedSuggestions[{k}].id",
                    f"card {issued.uuid} has no suggestion {suggestion['id']!r}",
                )
            labels.append(f'"{offered[suggestion["id"]]}"')
        if labels:
            text += "; accepted suggestions: " + ", ".join(labels)
        reason = override.get("reason")
        if reason:
            display = reason.get("display") or (
                dict(OVERRIDE_REASONS).get(reason["code"])
                if reason.get("system") == OVERRIDE_SYSTEM
                else None
            )
            text += f"; override reason {reason.get('system') or ''}#{reason['code']}"
            text += f' "{display}"' if display else ""
        if override.get("userComment"):
            text += f'; comment: "{override["userComment"]}"'
        return issued, text

    def _writable(self, episode_id: str) -> None:
        recorded = self._resume(episode_id)
        if recorded is None:
            raise ServiceError(409, f"episode {episode_id!r} is no longer in the store")
        if recorded.episode.closed:
            raise ServiceError(
                409, f"episode {episode_id!r} is closed: no feedback can be recorded on it"
            )

    def _record(self, episode_id: str, actor: str, reason: str) -> int:
        """Append the feedback to the episode: an `advance` to its last event's time (nothing
        clinical changes; the record carries who and why). Retries when another process
        appended to the episode first."""
        for _ in range(_RETRIES):
            recorded = self._resume(episode_id)
            if recorded is None or recorded.episode.closed:
                self._writable(episode_id)  # raises the 409 that says which
            assert recorded is not None
            ep = recorded.episode
            ep.advance(ep.decisions[-1].at)
            try:
                sealed = recorded.flush(actor=actor, reason=reason)
            except StoreError:
                saved = self.store.episode(episode_id)
                if saved is not None and saved.steps != recorded.recorded:
                    continue  # another process wrote first: reload and try again
                raise
            return sealed[-1].seq
        raise ServiceError(
            409, f"episode {episode_id!r} kept changing while the feedback was recorded; retry"
        )
