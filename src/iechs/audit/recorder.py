"""Recording episodes: every decision an episode makes is appended to a store, with the
episode's snapshot, in the same transaction; a later process resumes the episode from there.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from ..decision import Decision, run_to_json
from ..engine import Engine, Episode
from ..timeline import Event, Patient, event_to_json, load_timeline, patient_to_json
from .errors import StoreError, problem
from .records import AuditRecord, canonical, draft_of
from .snapshots import episodes_of
from .stores import AuditStore, EpisodeUpdate, open_store

__all__ = ["RecordedEpisode", "episodes_of", "run_recorded"]


class RecordedEpisode:
    """An `Episode` whose decisions go to an audit store as they are made.

    `actor` and `reason` name who recorded a step and why (e.g. a clinician overriding the
    guideline); they are part of the hashed record. Not thread-safe: one writer per episode,
    and a second process writing the same episode is refused, not merged.
    """

    def __init__(self, episode: Episode, store: AuditStore, recorded: int) -> None:
        self.episode = episode
        self.store = store
        self.recorded = recorded

    @classmethod
    def start(
        cls,
        engine: Engine,
        store: AuditStore,
        patient: Patient,
        episode_id: str | None = None,
        *,
        actor: str | None = None,
        reason: str | None = None,
    ) -> RecordedEpisode:
        recorded = cls(engine.start(patient, episode_id), store, 0)
        recorded.flush(actor=actor, reason=reason)
        return recorded

    @classmethod
    def resume(cls, engine: Engine, store: AuditStore, episode_id: str) -> RecordedEpisode:
        saved = store.episode(episode_id)
        if saved is None:
            raise StoreError(problem(f"no episode {episode_id!r} in the store"), store.location)
        episode = engine.restore(saved.snapshot, f"{store.location} (episode {episode_id})")
        if len(episode.decisions) != saved.steps:
            raise StoreError(
                problem(
                    f"episode {episode_id!r}: the snapshot replays to {len(episode.decisions)} "
                    f"steps, the store recorded {saved.steps}"
                ),
                store.location,
            )
        return cls(episode, store, saved.steps)

    def step(
        self,
        event: Event,
        *,
        later: Sequence[Event] = (),
        actor: str | None = None,
        reason: str | None = None,
    ) -> Decision:
        """Step one event (`later`: what is known to follow it, as for `Episode.step`) and
        record the decision."""
        decision = self.episode.step(event, later=later)
        self.flush(actor=actor, reason=reason)
        return decision

    def advance(
        self, to: datetime, *, actor: str | None = None, reason: str | None = None
    ) -> Decision:
        decision = self.episode.advance(to)
        self.flush(actor=actor, reason=reason)
        return decision

    def step_all(self, events: Iterable[Event]) -> list[Decision]:
        """Step every event, as a retrospective run does (`Engine.run`: each knows what follows
        it), then record them all in one transaction."""
        listed = list(events)
        engine = self.episode.engine
        decisions = [
            self.episode.step(event, later=engine.later(listed, i))
            for i, event in enumerate(listed)
        ]
        self.flush()
        return decisions

    def flush(self, *, actor: str | None = None, reason: str | None = None) -> list[AuditRecord]:
        """Append the decisions not yet recorded, and the snapshot, in one transaction."""
        pending = self.episode.decisions[self.recorded :]
        if not pending:
            return []
        ep = self.episode
        patient = patient_to_json(ep.patient)
        drafts = [
            draft_of(
                d,
                episode=ep.episode_id,
                guideline=ep.engine.identity,
                patient=patient,
                actor=actor,
                reason=reason,
            )
            for d in pending
        ]
        sealed = self.store.append(drafts, self.update())
        self.recorded = len(ep.decisions)
        return sealed

    def update(self) -> EpisodeUpdate:
        """The snapshot `flush` saves with the decisions (a writer that keeps the snapshot's
        canonical text up to date gives it here, see `EpisodeUpdate.text`)."""
        ep = self.episode
        return EpisodeUpdate(
            ep.episode_id, ep.snapshot(), len(ep.decisions), expected_steps=self.recorded
        )


def run_recorded(
    engine: Engine, timeline_path: Path, location: str
) -> tuple[str, tuple[list[Decision], dict[str, Any]]]:
    """`iechs run TIMELINE --store LOCATION`: run and record, or continue a stored episode.

    When the store already holds the patient's episode, it is restored and only the timeline's
    events past those recorded are stepped (a timeline that repeats the recorded events and
    adds new ones continues the episode; running the same timeline again records nothing).
    The result covers the whole episode, as `iechs run` without a store prints it. The records
    are the same bytes in any store; only the write time the store keeps beside them differs.
    """
    timeline = load_timeline(timeline_path, engine.guideline)
    patient = timeline.patient
    with open_store(location, create=True) as store:
        saved = store.episode(patient.id)
        if saved is None:
            recorded = RecordedEpisode(engine.start(patient), store, 0)
            events: Sequence[Event] = timeline.events
        else:
            if saved.snapshot.get("patient") != patient_to_json(patient):
                raise StoreError(
                    problem(
                        f"the store holds episode {patient.id!r} with other patient details "
                        "(infusion time, product, risk factors or baseline): use another "
                        "patient id or another store"
                    ),
                    location,
                )
            recorded = RecordedEpisode.resume(engine, store, patient.id)
            # Only the timeline's own events count: `advance` inputs (what-is-due queries and
            # service feedback, at the last event's time) are not in the timeline file, and an
            # input's `later` (what a retrospective run knew to follow it) is not the event.
            done = [
                {k: v for k, v in i.items() if k != "later"}
                for i in saved.snapshot.get("inputs", [])
                if i.get("kind") != "advance"
            ]
            last = recorded.episode.decisions[-1].at
            events = _not_recorded(timeline.events, done, last)
        recorded.step_all(events)
    decisions = recorded.episode.decisions
    doc = run_to_json(engine.identity, patient.id, decisions)
    if timeline.ignored:  # as `iechs run` without a store reports them
        doc["ignored"] = [{"path": p.path, "message": p.message} for p in timeline.ignored]
    return patient.id, (decisions, doc)


def _not_recorded(
    events: Sequence[Event], done: list[dict[str, Any]], last: datetime
) -> Sequence[Event]:
    """The timeline's events still to step when the store holds `done` (the recorded events,
    in the order stepped; `last`: the time of the last recorded decision).

    A timeline that repeats the recorded events and adds later ones: the events past them. One
    that also adds events at the time of the last recorded one (an order set completed in a
    later file; they sort among the recorded events, `timeline.canonical_order`): every event
    not recorded, none of which is earlier than `last`. Otherwise (e.g. a file of only the new
    events) the whole timeline, which the episode refuses if it goes back in time.
    """
    given = [event_to_json(e) for e in events]
    if given[: len(done)] == done:
        return events[len(done) :]
    pending = Counter(canonical(d) for d in done)
    rest: list[Event] = []
    for event, as_json in zip(events, given, strict=True):
        key = canonical(as_json)
        if pending[key] > 0:
            pending[key] -= 1
        else:
            rest.append(event)
    if done and not +pending and all(e.at >= last for e in rest):
        return rest
    return events
