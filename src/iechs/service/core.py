"""The CDS services, without the web framework: an answer is a function of the request, of the
client asking and of what the audit store holds when it arrives.

Every request asks the store where the patient's episode stands (one read of constant cost) and
answers from the episode this process keeps when it is the store's, else reads it (its snapshot
checked against the chain) and continues or restores it (`episodes`): no in-process copy can
go stale, so any number of service processes can serve any patient, and the cost of a request
does not grow with the episode's length or the feedback it has taken. `patient-view` and
`order-sign` work on that episode and record nothing (patient-view's cards are reused while the
episode, the time and the links are the same; only their uuids are new); feedback appends to
the episode, and when another process appended first, reloads and tries again (the store
refuses a write based on a stale episode, so the chain never forks). A client reads only its
tenant's episodes and gives feedback only on the cards issued to it (`clients`). Not
thread-safe: the app runs it on one thread.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections import Counter, OrderedDict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import attrs

from ..audit.errors import SnapshotSealError, StoreError
from ..audit.recorder import RecordedEpisode
from ..audit.records import canonical
from ..audit.stores import AuditStore, EpisodeUpdate, SqliteStore, open_store
from ..criteria import Evaluation
from ..engine import Engine, Episode
from ..errors import EpisodeError
from ..loader import load_guideline
from ..timeline import format_time, parse_time
from .cards import (
    OVERRIDE_REASONS,
    OVERRIDE_SYSTEM,
    CardMaker,
    content_of,
    uuid_maker,
    with_uuids,
)
from .clients import ANONYMOUS, TENANT_PREFIX, Client
from .episodes import RestoredEpisodes, private_copy
from .errors import ServiceError, bad_request
from .issued import IssuedCard, IssuedCards, content_digest
from .orders import read_draft_orders
from .security import LEEWAY_S, MAX_TOKEN_LIFETIME_S
from .tables import ServiceTables
from .tokens import UsedTokens
from .wal import Checkpointer

__all__ = [
    "EXT_NOW",
    "ORDER_ALERTS",
    "ORDER_SIGN",
    "PATIENT_ID_SYSTEM",
    "PATIENT_VIEW",
    "SERVICES",
    "HookService",
    "Located",
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
#: how many patient-view answers (their cards) are kept for reuse.
_CARDS_MEMO = 64
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
    #: browser origins allowed to call (CORS); none: no CORS headers at all.
    allow_origins: tuple[str, ...] = ()
    #: the longest a JWT may live (`exp - iat`), in seconds.
    max_token_lifetime: float = MAX_TOKEN_LIFETIME_S
    #: feedback limits: per card ever, per client per minute, characters of a text.
    feedback_per_card: int = 10
    feedback_per_minute: int = 60
    max_feedback_text: int = 1000
    #: how long an issued card takes feedback, in days.
    keep_cards_days: float = 30.0


@attrs.frozen
class Located:
    """The episode a hook call is about."""

    episode: str
    #: the patient id the episode was found by.
    patient: str
    #: a prefetched resource that came as an error: (key, what its OperationOutcome says).
    prefetch_failed: tuple[str, str] | None = None


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
        self.episodes = RestoredEpisodes(self.engine)
        #: patient-view's cards of the kept episodes (`_episode_cards_of`), most recent last.
        self._cards_memo: OrderedDict[
            tuple[str, datetime, str, str], tuple[Episode, int, tuple[_Prepared, ...]]
        ] = OrderedDict()
        self._store: AuditStore | None = None
        self._tables: ServiceTables | None = None
        self._issued: IssuedCards | None = None
        self._tokens: UsedTokens | None = None
        self._checkpointer: Checkpointer | None = None

    # --- the store -------------------------------------------------------------------------

    @property
    def store(self) -> AuditStore:
        if self._store is None:
            try:
                self._store = open_store(self.config.store, create=False)
            except StoreError as exc:
                raise ServiceError(503, f"the store is unavailable: {exc.render()}") from None
            if isinstance(self._store, SqliteStore):
                self._checkpoint_apart(self._store.conn)
        return self._store

    @property
    def tables(self) -> ServiceTables:
        if self._tables is None:
            self._tables = ServiceTables(self.config.store)
            if not self._tables.postgres:
                self._checkpoint_apart(self._tables.conn)
        return self._tables

    def _checkpoint_apart(self, conn: sqlite3.Connection) -> None:
        """Leave the SQLite log's checkpoints to a thread of their own (`wal`), not to the
        commits of requests."""
        try:
            conn.execute("PRAGMA wal_autocheckpoint = 0")
        except sqlite3.Error:  # pragma: no cover - a pragma on an open connection
            return
        if self._checkpointer is None:
            self._checkpointer = Checkpointer(self.config.store)
            self._checkpointer.start()

    @property
    def issued(self) -> IssuedCards:
        if self._issued is None:
            self._issued = IssuedCards(self.tables, self.config.keep_cards_days)
        return self._issued

    @property
    def tokens(self) -> UsedTokens:
        if self._tokens is None:
            self._tokens = UsedTokens(self.tables, LEEWAY_S)
        return self._tokens

    def close(self) -> None:
        for resource in (self._store, self._tables):
            if resource is not None:
                with contextlib.suppress(Exception):  # a broken connection is dropped anyway
                    resource.close()
        self._store = self._tables = self._issued = self._tokens = None
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None

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

    def first_use_of_token(self, issuer: str, jti: str, expires: float) -> bool:
        """`security.FirstUse` over the store: a token id is used once, by all processes."""
        result: bool = self._guarded(self.tokens.first_use, issuer, jti, expires)
        return result

    def _resume(self, episode_id: str, *, private: bool = True) -> RecordedEpisode | None:
        """The episode as the store holds it now (None: no such episode): the kept one when the
        store's head of the episode is where it stands (one read of constant cost), else read
        and checked against the chain, and continued or restored (`episodes`). `private`: a
        copy the caller may change."""
        store = self.store
        at = store.episode_head(episode_id)
        if at is None:
            return None
        kept = self.episodes.current(episode_id, store.store_id, at, private=private)
        if kept is not None:
            return _Recorded(kept, store, at.steps, self.episodes)
        try:
            saved = store.episode(episode_id)
        except SnapshotSealError as exc:  # not the store failing: this episode is refused
            raise ServiceError(
                409, f"episode {episode_id!r} cannot be restored here: {exc.render()}"
            ) from None
        if saved is None:
            return None
        where = f"{self.store.location} (episode {episode_id})"
        try:
            episode = self.episodes.restore(saved, self.store.store_id, where, private=private)
        except EpisodeError as exc:
            raise ServiceError(
                409, f"episode {episode_id!r} cannot be restored here: {exc.render()}"
            ) from None
        return _Recorded(episode, self.store, saved.steps, self.episodes)

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
    def locate(
        context: Mapping[str, Any],
        prefetch: Mapping[str, Any] | None,
        client: Client = ANONYMOUS,
    ) -> Located:
        """The episode of the patient in context, among those `client` may read: the patient
        id is `context.patientId`, or the identifier of `PATIENT_ID_SYSTEM` of the prefetched
        Patient. A prefetched `patient` that is an OperationOutcome (the EHR could not fetch it)
        is as if there were none, and says so."""
        pid = _patient_id(context["patientId"], "$.context.patientId")
        patient = (prefetch or {}).get("patient")
        if patient is None:
            return Located(client.episode_id(pid), pid)
        path = "$.prefetch.patient"
        if isinstance(patient, Mapping) and patient.get("resourceType") == "OperationOutcome":
            return Located(client.episode_id(pid), pid, ("patient", _outcome_text(patient)))
        if not isinstance(patient, Mapping) or patient.get("resourceType") != "Patient":
            raise bad_request(path, "expected a FHIR Patient resource (or an OperationOutcome)")
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
            if ident.get("system") == PATIENT_ID_SYSTEM:
                value = _patient_id(ident.get("value"), f"{path}.identifier[{k}].value")
                return Located(client.episode_id(value), value)
        return Located(client.episode_id(pid), pid)

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
        *,
        hook_instance: str | None = None,
        client: Client = ANONYMOUS,
    ) -> list[dict[str, Any]]:
        """The patient-view cards for the call `hook_instance` (its card uuids derive from it)."""
        result: list[dict[str, Any]] = self._guarded(
            lambda: self._patient_view(
                context, prefetch, extension, review_url, hook_instance=hook_instance, client=client
            )
        )
        return result

    def _patient_view(
        self,
        context: Mapping[str, Any],
        prefetch: Mapping[str, Any] | None,
        extension: Mapping[str, Any] | None,
        review_url: str,
        *,
        hook_instance: str | None,
        client: Client,
    ) -> list[dict[str, Any]]:
        located = self.locate(context, prefetch, client)
        recorded = self._resume(located.episode, private=False)
        last = recorded.episode.decisions[-1].at if recorded is not None else None
        at = self._at(extension, last)  # checked even when there is no episode
        maker = CardMaker(self.g, review_url)
        cards: list[_Prepared] = []
        if recorded is not None and at is not None and last is not None:
            cards = self._episode_cards_of(
                maker, located.episode, recorded.episode, at, str(context["patientId"])
            )
        # else no IEC-HS episode recorded for this patient: nothing to say about it
        cards += [_prepared(c) for c in self._prefetch_cards(maker, located)]
        return self._issue(PATIENT_VIEW, located.episode, cards, hook_instance, client)

    def _episode_cards_of(
        self, maker: CardMaker, episode_id: str, kept: Episode, at: datetime, patient: str
    ) -> list[_Prepared]:
        """The cards of the episode `kept` (the store's, as kept: never changed here) at `at`.
        They are a function of the episode, the time, the review page's URL and the patient id
        shown: the same call about the same episode reuses them while the store holds no more
        of it (only their uuids, which derive from each call's `hookInstance`, are new)."""
        key = (episode_id, at, maker.review_url, patient)
        found = self._cards_memo.get(key)
        if found is not None and found[0] is kept and found[1] == len(kept.decisions):
            self._cards_memo.move_to_end(key)
            return list(found[2])
        ep = kept
        if not ep.closed and at > ep.decisions[-1].at:
            ep = private_copy(ep)  # what is due now: on a copy, never recorded
            ep.advance(at)
        cards = [_prepared(c) for c in self._episode_cards(maker, episode_id, ep, patient)]
        self._cards_memo[key] = (kept, len(kept.decisions), tuple(cards))
        while len(self._cards_memo) > _CARDS_MEMO:
            self._cards_memo.popitem(last=False)
        return cards

    def _episode_cards(
        self, maker: CardMaker, episode_id: str, ep: Episode, patient: str
    ) -> list[dict[str, Any]]:
        current = self.episodes.current_state(episode_id, ep)
        identified = None
        if "iec_hs_identified" in self.g.criteria and not ep.closed:
            identified = Evaluation(self.engine.plan, ep.facts).value("iec_hs_identified")
        cards = []
        next_steps = maker.actions_card(ep.decisions[-1].actions, state=ep.state, patient=patient)
        if next_steps is not None:
            cards.append(next_steps)
        cards.append(maker.state_card(ep.decisions[current.entered], ep.state, identified))
        # The alerts raised in the current state, the latest of each code.
        ordered = sorted(current.latest.values(), key=lambda ad: (_RANK[ad[0].severity], ad[0].at))
        cards += [
            maker.alert_card(alert, state=ep.state, raised_by=_event_text(d.event))
            for alert, d in ordered
        ]
        return cards

    @staticmethod
    def _prefetch_cards(maker: CardMaker, located: Located) -> list[dict[str, Any]]:
        if located.prefetch_failed is None:
            return []
        key, problem = located.prefetch_failed
        return [
            maker.prefetch_card(
                key,
                problem,
                looked_up=f"the episode was looked up by `context.patientId` "
                f"({located.patient!r}) alone, so an episode recorded under the patient's "
                f"identifier of `{PATIENT_ID_SYSTEM}` is not found this way.",
            )
        ]

    def order_sign(
        self,
        context: Mapping[str, Any],
        prefetch: Mapping[str, Any] | None,
        extension: Mapping[str, Any] | None,
        review_url: str,
        *,
        hook_instance: str | None = None,
        client: Client = ANONYMOUS,
    ) -> list[dict[str, Any]]:
        """The order-sign cards for the call `hook_instance` (its card uuids derive from it)."""
        result: list[dict[str, Any]] = self._guarded(
            lambda: self._order_sign(
                context, prefetch, extension, review_url, hook_instance=hook_instance, client=client
            )
        )
        return result

    def _order_sign(
        self,
        context: Mapping[str, Any],
        prefetch: Mapping[str, Any] | None,
        extension: Mapping[str, Any] | None,
        review_url: str,
        *,
        hook_instance: str | None,
        client: Client,
    ) -> list[dict[str, Any]]:
        located = self.locate(context, prefetch, client)
        recorded = self._resume(located.episode)
        last = recorded.episode.decisions[-1].at if recorded is not None else None
        at = self._at(extension, last)
        # Read the orders even when there is no episode: a malformed request is refused alike.
        orders = read_draft_orders(
            context.get("draftOrders"), self.g, at or _NO_TIME, patient=str(context["patientId"])
        )
        maker = CardMaker(self.g, review_url)
        cards = []
        if recorded is not None and not recorded.episode.closed:
            ep = recorded.episode
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
        cards += self._prefetch_cards(maker, located)
        prepared = [_prepared(c) for c in cards]
        return self._issue(ORDER_SIGN, located.episode, prepared, hook_instance, client)

    def _issue(
        self,
        service: str,
        episode_id: str,
        cards: Sequence[_Prepared],
        hook_instance: str | None,
        client: Client,
    ) -> list[dict[str, Any]]:
        out = []
        issued = []
        uuid_of = uuid_maker(service=service, episode=episode_id, hook_instance=hook_instance)
        for c in cards:
            card_id = uuid_of(c.text)
            out.append(with_uuids(c.card, card_id))
            issued.append((card_id, c.digest, c.text))
        self.issued.add_contents(service, episode_id, client.key, issued)
        return out

    # --- feedback --------------------------------------------------------------------------

    def feedback(
        self,
        service_id: str,
        items: Sequence[Mapping[str, Any]],
        client: Client | str = ANONYMOUS,
    ) -> list[dict[str, Any]]:
        """Record each feedback item (all or none) on the episode of its card, from `client`
        (a text: the actor an unauthenticated library caller records under)."""
        if isinstance(client, str):
            caller, actor = ANONYMOUS, client
        else:
            caller, actor = client, client.actor
        result: list[dict[str, Any]] = self._guarded(
            self._feedback, service_id, items, caller, actor
        )
        return result

    def _feedback(
        self, service_id: str, items: Sequence[Mapping[str, Any]], client: Client, actor: str
    ) -> list[dict[str, Any]]:
        if service_id not in SERVICES:
            raise ServiceError(404, f"no CDS service {service_id!r} (see GET /cds-services)")
        # Check everything first: a refused request changes nothing.
        planned: list[tuple[IssuedCard, str, str]] = []
        for i, item in enumerate(items):
            issued, reason = self._feedback_reason(service_id, item, f"$.feedback[{i}]", client)
            planned.append((issued, reason, str(item["outcome"])))
        for episode_id in dict.fromkeys(issued.episode for issued, _, _ in planned):
            self._writable(episode_id)
        self.issued.admit_feedback(
            Counter(issued.uuid for issued, _, _ in planned),
            client.key,
            per_card=self.config.feedback_per_card,
            per_minute=self.config.feedback_per_minute,
        )
        return [
            {
                "card": issued.uuid,
                "outcome": outcome,
                "episode": issued.episode,
                "seq": self._record(issued.episode, actor, reason),
            }
            for issued, reason, outcome in planned
        ]

    def _text(self, value: Any, path: str, *, required: bool = False) -> str:
        """A text of a feedback (a comment, a coding's parts): not blank, not too long."""
        text = str(value)
        if not text.strip():
            raise bad_request(path, "empty" if required else "empty: leave it out")
        if len(text) > self.config.max_feedback_text:
            raise ServiceError(
                413,
                f"{path}: {len(text)} characters, more than the "
                f"{self.config.max_feedback_text} taken (--max-feedback-text)",
            )
        return text

    def _feedback_reason(
        self, service_id: str, item: Mapping[str, Any], path: str, client: Client
    ) -> tuple[IssuedCard, str]:
        card_id = str(item["card"])
        issued = self.issued.get(card_id)
        if issued is None or issued.service != service_id or issued.client != client.key:
            # Another client's card is answered as an unknown one: no card leaks its existence.
            raise ServiceError(
                404, f"{path}.card: no card {card_id!r} was issued by {service_id} to this client"
            )
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
        accepted = item.get("acceptedSuggestions")
        override = item.get("overrideReason")
        if item["outcome"] == "accepted" and not accepted:
            raise bad_request(
                f"{path}.acceptedSuggestions",
                "an accepted card names the suggestions accepted (CDS Hooks cds-fb-2: if "
                "outcome is 'accepted', acceptedSuggestions SHALL be provided); a card whose "
                "advice was followed without a suggestion is not reported as accepted",
            )
        if item["outcome"] == "overridden" and accepted:
            raise bad_request(f"{path}.acceptedSuggestions", "an overridden card accepts none")
        if item["outcome"] == "accepted" and override is not None:
            raise bad_request(f"{path}.overrideReason", "an accepted card has no override reason")
        offered = {s.get("uuid"): s.get("label") for s in card.get("suggestions", [])}
        labels = []
        for k, suggestion in enumerate(accepted or []):
            if suggestion["id"] not in offered:
                raise bad_request(
                    f"{path}.acceptedSuggestions[{k}].id",
                    f"card {issued.uuid} has no suggestion {suggestion['id']!r}",
                )
            labels.append(f'"{offered[suggestion["id"]]}"')
        if labels:
            text += "; accepted suggestions: " + ", ".join(labels)
        if override is not None:
            text += self._override_text(override, f"{path}.overrideReason")
        return issued, text

    def _override_text(self, override: Mapping[str, Any], path: str) -> str:
        reason = override.get("reason")
        comment = override.get("userComment")
        if reason is None and comment is None:
            raise bad_request(
                path,
                "expected a reason, a userComment or both (CDS Hooks cds-fb-3: an "
                "overrideReason must contain a reason, a userComment, or both); a card "
                "dismissed without a reason is sent without overrideReason",
            )
        text = ""
        if reason is not None:
            code = self._text(reason.get("code"), f"{path}.reason.code", required=True)
            system = reason.get("system")
            if system is not None:
                system = self._text(system, f"{path}.reason.system")
            display = reason.get("display")
            if display is not None:
                display = self._text(display, f"{path}.reason.display")
            elif system == OVERRIDE_SYSTEM:
                display = dict(OVERRIDE_REASONS).get(code)
            text += f"; override reason {system or ''}#{code}"
            text += f' "{display}"' if display else ""
        if comment is not None:
            text += f'; comment: "{self._text(comment, f"{path}.userComment")}"'
        return text

    def _writable(self, episode_id: str) -> None:
        recorded = self._resume(episode_id, private=False)
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
                at = self.store.episode_head(episode_id)
                if at is not None and at.steps != recorded.recorded:
                    continue  # another process wrote first: reload and try again
                raise
            # This copy is what the store now holds: kept, the next request need not read it.
            last = sealed[-1]
            self.episodes.recorded(self.store.store_id, ep, recorded.recorded, last.seq, last.hash)
            return last.seq
        raise ServiceError(
            409, f"episode {episode_id!r} kept changing while the feedback was recorded; retry"
        )


class _Recorded(RecordedEpisode):
    """A `RecordedEpisode` that saves its snapshot with the text the service keeps up to date
    (`episodes.SnapshotText`): an append costs the same however long the episode."""

    def __init__(
        self, episode: Episode, store: AuditStore, recorded: int, kept: RestoredEpisodes
    ) -> None:
        super().__init__(episode, store, recorded)
        self.kept = kept

    def update(self) -> EpisodeUpdate:
        update = super().update()
        text = self.kept.snapshot_text(update.id, update.snapshot)
        return attrs.evolve(update, text=text)


@attrs.frozen
class _Prepared:
    """A card without uuids, with its content's canonical JSON and that text's digest."""

    card: dict[str, Any]
    text: str
    digest: str


def _prepared(card: dict[str, Any]) -> _Prepared:
    text = canonical(content_of(card))
    return _Prepared(card, text, content_digest(text))


def _patient_id(value: Any, path: str) -> str:
    """A patient id from a request: 1-256 characters, no control characters, not starting
    with `TENANT_PREFIX` (reserved for tenants' episodes, see `clients`)."""
    if (
        not isinstance(value, str)
        or not value.strip()
        or len(value) > 256
        or _CONTROL.search(value) is not None
    ):
        raise bad_request(path, "expected a patient id (1-256 characters, no control characters)")
    if value.startswith(TENANT_PREFIX):
        raise bad_request(
            path, f"a patient id does not start with {TENANT_PREFIX!r} (tenants' episodes do)"
        )
    return value


def _outcome_text(outcome: Mapping[str, Any]) -> str:
    """What an OperationOutcome says, in one short line (its issues' diagnostics, details or
    codes, as plain text)."""
    said = []
    issues = outcome.get("issue")
    for issue in issues if isinstance(issues, list) else []:
        if not isinstance(issue, Mapping):
            continue
        details = issue.get("details")
        text = issue.get("diagnostics") or (
            details.get("text") if isinstance(details, Mapping) else None
        )
        if not isinstance(text, str) or not text.strip():
            text = " ".join(str(issue.get(k)) for k in ("severity", "code") if issue.get(k))
        if text.strip():
            said.append(" ".join(_CONTROL.sub(" ", text).split()))
    shown = "; ".join(said[:3]) or "no issue described"
    if len(shown) > 300:
        shown = shown[:297].rsplit(" ", 1)[0] + "…"
    return f'"{shown}"'
