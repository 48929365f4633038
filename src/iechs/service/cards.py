"""CDS Hooks cards from what the engine said: the state with its recommendations, and alerts.

Every card names its primary citation in `source` (label, url, topic) and lists all its
citations in `detail`; every card links to the guideline's review page. A card's uuid is
derived (uuid5) from the hook call's `hookInstance`, the service, the episode and the card's
content, and its suggestions' uuids from the card's: unique to each hook call, and the same
call answered by any service process, or again, gets the same uuids.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from ..audit.records import canonical
from ..criteria import Tri
from ..decision import Action, Alert, Decision
from ..model import Guideline, Recommendation
from ..timeline import format_time
from .orders import IECHS_SYSTEM, DraftOrder

__all__ = [
    "MAX_SUMMARY",
    "OVERRIDE_REASONS",
    "OVERRIDE_SYSTEM",
    "TOPIC_DISPLAY",
    "TOPIC_SYSTEM",
    "CardMaker",
    "card_uuid",
    "content_of",
    "summary_text",
    "uuid_maker",
    "uuid_of_content",
    "with_uuids",
]

#: The card's `summary` is shorter than this (CDS Hooks: "<140-character").
MAX_SUMMARY = 140
#: Topics of the cards (`source.topic`): `state`, or the alert's code.
TOPIC_SYSTEM = "https://iechs.dev/cds/CodeSystem/card-topic"
#: Override reasons offered on warning and critical cards (`overrideReasons`).
OVERRIDE_SYSTEM = "https://iechs.dev/cds/CodeSystem/override-reason"
OVERRIDE_REASONS: tuple[tuple[str, str], ...] = (
    ("clinical-judgement", "Clinical judgement: the expected benefit outweighs the risk"),
    (
        "record-incomplete",
        "The record is incomplete (e.g. a corticosteroid or antimicrobial given elsewhere)",
    ),
    ("other-condition", "Treats another condition (CRS, ICANS, infection or other)"),
    ("patient-preference", "Patient or family preference"),
)
#: How each alert's topic reads.
TOPIC_DISPLAY = {
    "il6_monotherapy": "IL-6 blockade without a corticosteroid",
    "immunosuppression_before_antimicrobials": "Immunosuppression before antimicrobials",
    "tocilizumab_with_icans": "Tocilizumab with ICANS",
    "off_guideline_therapy": "Treatment the guideline does not sanction now",
    "reassessment_overdue": "Reassessment overdue",
    "escalation_due": "Escalation due",
    "missing_data": "Data missing to decide",
    "treatment_unconfirmed": "Treatment not yet confirmed by the data",
    "actions": "What to do next",
    "high_risk_patient": "High risk of IEC-HS",
    "prefetch_failed": "Prefetched data unavailable",
}
_NAMESPACE = uuid.UUID("6c1f9d4e-2b7a-4f0e-9a53-8d2e1c7b4a90")
_YEAR = re.compile(r"\b(19|20)\d\d\b")


def summary_text(text: str) -> str:
    """`text` as a card summary: shorter than 140 characters, cut at a word if needed."""
    text = " ".join(text.split())
    text = text[:1].upper() + text[1:]
    if len(text) < MAX_SUMMARY:
        return text
    cut = text[: MAX_SUMMARY - 2].rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:") + "…"


def card_uuid(
    card: dict[str, Any], *, service: str, episode: str, hook_instance: str | None
) -> str:
    """The uuid of `card` (its content, without uuids) answering one hook call: derived from the
    call's `hookInstance` (None: from the content alone), the service, the episode and the
    content."""
    return uuid_of_content(
        canonical(content_of(card)), service=service, episode=episode, hook_instance=hook_instance
    )


def uuid_of_content(content: str, *, service: str, episode: str, hook_instance: str | None) -> str:
    """`card_uuid` of the card whose content's canonical JSON is `content`: the uuid5 of the
    canonical JSON of `{card, episode, hookInstance, service}`, written here in that (sorted)
    order around the content's text, so that a card's content is serialised once however
    often it is issued."""
    return uuid_maker(service=service, episode=episode, hook_instance=hook_instance)(content)


def uuid_maker(*, service: str, episode: str, hook_instance: str | None) -> Callable[[str], str]:
    """`uuid_of_content` for the cards of one hook call: what follows the content in the text
    hashed is the same for all of them, and written once."""
    rest = ',"episode":' + canonical(episode)
    if hook_instance is not None:
        rest += ',"hookInstance":' + canonical(hook_instance.lower())
    rest += ',"service":' + canonical(service) + "}"

    def of(content: str) -> str:
        return str(uuid.uuid5(_NAMESPACE, '{"card":' + content + rest))

    return of


def with_uuids(card: dict[str, Any], card_id: str) -> dict[str, Any]:
    """The card with its `uuid`, and its suggestions' uuids derived from it."""
    out = {"uuid": card_id, **{k: v for k, v in card.items() if k != "uuid"}}
    if "suggestions" in card:
        out["suggestions"] = [
            {**s, "uuid": str(uuid.uuid5(_NAMESPACE, f"{card_id}/suggestions/{i}"))}
            for i, s in enumerate(card["suggestions"])
        ]
    return out


def content_of(card: dict[str, Any]) -> dict[str, Any]:
    """The card without its uuids (what `with_uuids` adds)."""
    out = {k: v for k, v in card.items() if k != "uuid"}
    if "suggestions" in card:
        out["suggestions"] = [
            {k: v for k, v in s.items() if k != "uuid"} for s in card["suggestions"]
        ]
    return out


def _shown_time(t: datetime) -> str:
    return format_time(t).replace("T", " ").removesuffix(":00Z") + " UTC"


class CardMaker:
    """Builds cards for one guideline; `review_url` is where the review page is (absolute)."""

    def __init__(self, g: Guideline, review_url: str) -> None:
        self.g = g
        self.review_url = review_url
        meta = g.guideline
        self.guideline_label = f"IEC-HS guideline {meta.id} {meta.version} ({meta.status})"

    # --- citations -------------------------------------------------------------------------

    def _short(self, key: str) -> str:
        src = self.g.sources.get(key)
        if src is None:
            return key
        first = src.citation.split(". ", 1)[0].strip()
        if len(first) > 60:
            first = first[:58].rsplit(" ", 1)[0] + "…"
        year = _YEAR.search(src.citation)
        return f"{first} {year.group(0)}" if year and year.group(0) not in first else first

    def _url(self, key: str) -> str:
        src = self.g.sources.get(key)
        if src is not None and src.pmid:
            return f"https://pubmed.ncbi.nlm.nih.gov/{src.pmid}/"
        anchor = re.sub(r"[^0-9A-Za-z_-]", "-", key)
        return f"{self.review_url}#source-{anchor}"

    def source(self, cite: Sequence[str], topic: str, topic_display: str) -> dict[str, Any]:
        """`source`: the first citation (or the guideline itself when there is none)."""
        coding = {"system": TOPIC_SYSTEM, "code": topic, "display": topic_display}
        if not cite:
            return {"label": self.guideline_label, "url": self.review_url, "topic": coding}
        key = cite[0]
        label = f"{self._short(key)} (via {self.g.guideline.id} {self.g.guideline.version})"
        return {"label": label, "url": self._url(key), "topic": coding}

    def _sources_md(self, keys: Iterable[str]) -> str:
        lines = []
        for key in dict.fromkeys(keys):
            src = self.g.sources.get(key)
            text = " ".join(src.citation.split()) if src else "(not in the guideline's sources)"
            pmid = f" PMID [{src.pmid}]({self._url(key)})." if src and src.pmid else ""
            lines.append(f"- `{key}` ({src.kind if src else '?'}): {text}{pmid}")
        if not lines:
            return ""
        return "\n\n**Sources**\n\n" + "\n".join(lines)

    def _links(self) -> list[dict[str, Any]]:
        return [
            {
                "label": f"Guideline review page ({self.g.guideline.id} "
                f"{self.g.guideline.version})",
                "url": self.review_url,
                "type": "absolute",
            }
        ]

    def _footer(self) -> str:
        return (
            f"\n\n*{self.guideline_label}, sha256 {self.g.sha256[:12]}. Statements marked "
            "(not yet verified) have not been checked against their primary source. "
            "Not a medical device.*"
        )

    # --- cards -----------------------------------------------------------------------------

    def actions_card(
        self, actions: Sequence[Action], *, state: str, patient: str
    ) -> dict[str, Any] | None:
        """The leading card: what the guideline says to do now, in its order; a drug action
        with a sourced dose comes with a suggestion to create the draft order."""
        if not actions:
            return None
        lines = ["**What to do next**", ""]
        cites: list[str] = []
        for i, a in enumerate(actions, 1):
            extra = []
            if a.drug is not None:
                extra.append(a.drug)
            if a.dose is not None:
                extra.append(f"{a.dose.min:g}-{a.dose.max:g} {a.dose.unit}")
            if a.route:
                extra.append("/".join(a.route))
            if a.frequency:
                extra.append(a.frequency)
            if a.due_by is not None:
                extra.append(f"due by {_shown_time(a.due_by)}")
            flag = "" if a.verified else " *(not yet verified)*"
            more = f" ({', '.join(extra)})" if extra else ""
            lines.append(f"{i}. `{a.code}`: {a.text}{more} [{', '.join(a.cite)}]{flag}")
            cites += a.cite
        treatment = any(a.code.startswith(("start_", "add_")) for a in actions)
        first = actions[0]
        card: dict[str, Any] = {
            "summary": summary_text(f"Next: {first.text}"),
            "detail": "\n".join(lines)
            + f"\n\nThe episode is in **{self.g.states[state].name}** (`{state}`)."
            + self._sources_md(cites)
            + self._footer(),
            "indicator": "warning" if treatment else "info",
            "source": self.source(cites, "actions", TOPIC_DISPLAY["actions"]),
        }
        suggestions = [
            _order_suggestion(a, patient) for a in actions if a.drug is not None and a.dose
        ]
        if suggestions:
            card["suggestions"] = suggestions
            card["selectionBehavior"] = "at-most-one"
        card["links"] = self._links()
        return card

    def _statement(self, text: str, cite: Sequence[str], verified: bool) -> str:
        flag = "" if verified else " *(not yet verified)*"
        return f"- {text} [{', '.join(cite)}]{flag}"

    def _recommendation(self, r: Recommendation) -> str:
        extra = []
        if r.dose is not None:
            extra.append(f"dose {r.dose.min:g}-{r.dose.max:g} {r.dose.unit}")
        if r.route:
            extra.append("/".join(r.route))
        if r.frequency:
            extra.append(r.frequency)
        if r.population != "all":
            extra.append(r.population)
        text = r.text + (f" ({', '.join(extra)})" if extra else "")
        return self._statement(text, r.cite, r.verified)

    def state_card(self, entered: Decision, state: str, identified: Tri | None) -> dict[str, Any]:
        """The episode's state since `entered`, with what the guideline recommends in it."""
        s = self.g.states[state]
        since = _shown_time(entered.at)
        how = f' ("{entered.transition_label}")' if entered.transition_label else ""
        lines = [f"**{s.name}** (`{state}`) since {since}{how}. {s.description.strip()}"]
        if identified is not None and not s.final:
            verdict = {
                Tri.TRUE: "**met**",
                Tri.FALSE: "not met",
                Tri.UNKNOWN: "cannot be decided yet (data missing or stale)",
            }[identified]
            lines.append(f"IEC-HS criteria (`iec_hs_identified`): {verdict}.")
        cites: list[str] = []
        sections = (
            ("Recommendations in force", s.recommendations),
            ("Monitoring", s.monitoring),
            ("Cautions", s.cautions),
        )
        for title, items in sections:
            if not items:
                continue
            body = [
                self._recommendation(i)
                if isinstance(i, Recommendation)
                else self._statement(i.text, i.cite, i.verified)
                for i in items
            ]
            lines.append(f"**{title}**\n\n" + "\n".join(body))
            cites += [k for i in items for k in i.cite]
        card: dict[str, Any] = {
            "summary": summary_text(f"IEC-HS episode: {s.name} (since {since})"),
            "detail": "\n\n".join(lines) + self._sources_md(cites) + self._footer(),
            "indicator": "info",
            "source": self.source(cites, "state", "IEC-HS episode state"),
            "links": self._links(),
        }
        return card

    def alert_card(
        self,
        alert: Alert,
        *,
        state: str,
        raised_by: str = "",
        order: DraftOrder | None = None,
    ) -> dict[str, Any]:
        """A card for one alert raised by `raised_by` (an event, in words); for an order-sign
        alert, `order` is the draft order it is about (the card then suggests removing that
        order, when the order has an id)."""
        lines = [alert.message[:1].upper() + alert.message[1:]]
        where = f"the episode is in **{self.g.states[state].name}** (`{state}`)"
        if order is not None:
            lines.append(
                f"Signing the draft order {order.reference or order.path} ({order.shown}) at "
                f"{_shown_time(alert.at)} raises this: the engine's answer for that treatment; "
                f"{where}."
            )
        else:
            lines.append(f"Raised at {_shown_time(alert.at)} by {raised_by}; {where}.")
        if alert.measure:
            lines.append("Measure or assess: " + ", ".join(alert.measure) + ".")
        if alert.code == "il6_monotherapy":
            window = self.g.parameters.get("concurrent_steroid_window_hours")
            hours = f"{window.value:g}" if window else "24"
            lines.append(
                f"A corticosteroid recorded in the last {hours} h, or ordered in the same "
                "order set, counts as concurrent."
            )
        card: dict[str, Any] = {
            "summary": summary_text(alert.message),
            "detail": "\n\n".join(lines) + self._sources_md(alert.cite) + self._footer(),
            "indicator": alert.severity,
            "source": self.source(
                alert.cite, alert.code, TOPIC_DISPLAY.get(alert.code, alert.code)
            ),
        }
        if order is not None and order.reference is not None:
            card["suggestions"] = [
                {
                    "label": f"Remove the {order.event.drug} order",
                    "actions": [
                        {
                            "type": "delete",
                            "description": f"Remove the draft order {order.reference} "
                            f"({order.shown})",
                            "resourceId": order.reference,
                        }
                    ],
                }
            ]
            card["selectionBehavior"] = "at-most-one"
        if alert.severity != "info":
            card["overrideReasons"] = [
                {"system": OVERRIDE_SYSTEM, "code": code, "display": display}
                for code, display in OVERRIDE_REASONS
            ]
        card["links"] = self._links()
        return card

    def prefetch_card(self, key: str, problem: str, *, looked_up: str) -> dict[str, Any]:
        """An info card: the prefetched `key` came as an error (an OperationOutcome saying
        `problem`), and the service carried on without it (`looked_up`: how)."""
        return {
            "summary": summary_text(
                f"Prefetched {key} unavailable: the episode was looked up without it"
            ),
            "detail": f"The EHR could not prefetch `{key}`: it sent an OperationOutcome instead "
            f"({problem}). The service carried on as if `{key}` had not been prefetched: "
            f"{looked_up}" + self._footer(),
            "indicator": "info",
            "source": self.source((), "prefetch_failed", TOPIC_DISPLAY["prefetch_failed"]),
            "links": self._links(),
        }


def _order_suggestion(a: Action, patient: str) -> dict[str, Any]:
    """A draft MedicationRequest for a drug action, with the guideline's dose range."""
    assert a.drug is not None
    assert a.dose is not None

    def quantity(value: float) -> dict[str, Any]:
        return {
            "value": value,
            "unit": a.dose.unit if a.dose else "",
            "system": "http://unitsofmeasure.org",
            "code": a.dose.unit if a.dose else "",
        }

    dosage: dict[str, Any] = {
        "text": f"{a.dose.min:g}-{a.dose.max:g} {a.dose.unit}"
        + (f" {'/'.join(a.route)}" if a.route else "")
        + (f" {a.frequency}" if a.frequency else ""),
        "doseAndRate": [{"doseRange": {"low": quantity(a.dose.min), "high": quantity(a.dose.max)}}],
    }
    if a.route:
        dosage["route"] = {"text": a.route[0]}
    resource = {
        "resourceType": "MedicationRequest",
        "status": "draft",
        "intent": "proposal",
        "subject": {"reference": f"Patient/{patient}"},
        "medicationCodeableConcept": {"text": a.drug},
        "dosageInstruction": [dosage],
        "reasonCode": [{"coding": [{"system": IECHS_SYSTEM, "code": "iec_hs"}]}],
    }
    return {
        "label": f"Order {a.drug} {a.dose.min:g}-{a.dose.max:g} {a.dose.unit} ({a.code})",
        "actions": [
            {
                "type": "create",
                "description": f"Draft order: {a.drug} ({a.text})",
                "resource": resource,
            }
        ],
    }
