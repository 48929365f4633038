"""CDS Hooks feedback as the log keeps it, read back for an auditor.

The service (`iechs.service.core`) records what a clinician did with a card as an `advance`
of the episode to its last event's time (nothing clinical changes), with the clinician as the
record's `actor` and the feedback, in one sentence, as its `reason`:

    CDS Hooks feedback: card UUID (SERVICE, TOPIC, INDICATOR: "SUMMARY") OUTCOME at TIME
    [; accepted suggestions: "LABEL", ...] [; override reason SYSTEM#CODE ["DISPLAY"]]
    [; comment: "TEXT"]

`feedback_of` reads that sentence back into its parts, so that `iechs audit show` displays a
feedback record as feedback, not as time passing.

>>> fb = parse_feedback('CDS Hooks feedback: card 7f0c (iechs-order-sign, il6_monotherapy, '
...     'critical: "IL-6 blockade without a corticosteroid") overridden at 2026-05-17T10:05:00Z'
...     '; override reason https://x.org/r#record-incomplete "The record is incomplete"')
>>> (fb.card, fb.topic, fb.outcome, fb.override_code, fb.override_display)
('7f0c', 'il6_monotherapy', 'overridden', 'record-incomplete', 'The record is incomplete')
"""

from __future__ import annotations

import re

import attrs

from .records import AuditRecord

__all__ = ["FEEDBACK_PREFIX", "Feedback", "feedback_of", "is_feedback", "parse_feedback"]

#: How the service's feedback sentence starts (`HookService._feedback_reason`).
FEEDBACK_PREFIX = "CDS Hooks feedback: "

_HEAD = re.compile(
    r"CDS Hooks feedback: card (?P<card>\S+) \((?P<service>[^,]*), (?P<topic>[^,]*), "
    r'(?P<indicator>[^:]*): "(?P<summary>.*?)"\) (?P<outcome>accepted|overridden) '
    r"at (?P<at>[^;\s]+)(?P<rest>;.*)?",
    re.DOTALL,
)
_REST = re.compile(
    r"(?:; accepted suggestions: (?P<accepted>.*?))?"
    r'(?:; override reason (?P<system>[^#;]*)#(?P<code>[^\s;"]+)(?: "(?P<display>[^"]*)")?)?'
    r'(?:; comment: "(?P<comment>.*)")?',
    re.DOTALL,
)
_LABEL = re.compile(r'"([^"]*)"')


@attrs.frozen(kw_only=True)
class Feedback:
    """What a clinician did with a card the service issued."""

    card: str
    service: str
    topic: str
    indicator: str
    summary: str
    #: `accepted` or `overridden` (CDS Hooks).
    outcome: str
    #: when the clinician acted (the feedback's `outcomeTimestamp`, UTC).
    at: str
    accepted: tuple[str, ...] = ()
    override_system: str | None = None
    override_code: str | None = None
    override_display: str | None = None
    comment: str | None = None

    @property
    def override(self) -> str | None:
        """The override reason in words (its display, else its code)."""
        return self.override_display or self.override_code

    def describe(self) -> str:
        """One line: `overridden card 7f0c… (il6_monotherapy, critical) at T; reason: ...`."""
        text = f"{self.outcome} card {self.card[:8]}… ({self.topic}, {self.indicator}) at {self.at}"
        if self.accepted:
            text += "; accepted: " + ", ".join(f'"{label}"' for label in self.accepted)
        if self.override is not None:
            text += f"; reason: {self.override}"
        if self.comment:
            text += f'; comment: "{self.comment}"'
        return text


def parse_feedback(reason: str) -> Feedback | None:
    """The parts of a feedback sentence, or None when `reason` is not one (or not in the
    service's form: a caller then shows the sentence as it is)."""
    head = _HEAD.fullmatch(reason)
    if head is None:
        return None
    rest = _REST.fullmatch(head["rest"] or "")
    if rest is None:
        return None
    return Feedback(
        card=head["card"],
        service=head["service"],
        topic=head["topic"],
        indicator=head["indicator"],
        summary=head["summary"],
        outcome=head["outcome"],
        at=head["at"],
        accepted=tuple(_LABEL.findall(rest["accepted"] or "")),
        override_system=rest["system"] or None,
        override_code=rest["code"],
        override_display=rest["display"],
        comment=rest["comment"],
    )


def is_feedback(record: AuditRecord) -> bool:
    """A record the service wrote for CDS Hooks feedback (an `advance` whose reason says so)."""
    return record.event.get("kind") == "advance" and (record.reason or "").startswith(
        FEEDBACK_PREFIX
    )


def feedback_of(record: AuditRecord) -> Feedback | None:
    """The feedback a record holds, when it is a feedback record in the service's form."""
    if not is_feedback(record):
        return None
    assert record.reason is not None
    return parse_feedback(record.reason)
