"""Episodes restored from the store, kept to be continued rather than replayed from the start.

Restoring an episode replays every input it recorded, feedback included (the service records a
feedback as an `advance`): without help, the cost of every request would grow with the
feedback the episode has taken. A restored episode is therefore kept (the `size` most recently
used), with where the store stood when it was read: its id, the episode's step count, its last
record's number and that record's hash.

Every request asks the store first where the episode stands now (`AuditStore.episode_head`: one
read of constant cost, neither the snapshot nor the chain). When that is where the kept episode
stands, the kept episode is the store's, and is used as it is (`current`): the cost of a request
does not grow with the episode's length or the feedback it has taken. Otherwise the snapshot is
read and checked against the chain (`AuditStore.episode`); when it is a later one of the same
store (the store appends to an episode only on top of the steps it holds, so its later
snapshots extend the earlier ones: checked on the store's id, the step and record numbers, and
the inputs at both ends of the kept ones), only the inputs past the kept ones are replayed.
Restoring is a function of the snapshot alone, so the result is the episode a full restore
gives (a test holds the two equal); anything else falls back to the full restore. An episode
this process appended to is kept as it was appended (`recorded`): the snapshot it saved is its
own. The store stays the truth: several processes can serve one store, each with its own kept
episodes, each checking them against the store on every request.

Callers that change the episode get their own copy, sharing the decisions and inputs, which are
never changed once made. What patient-view shows of the current state (where it began, the
alerts raised since) is kept too, and brought up to date the same way.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import attrs

from ..audit.errors import StoreError, problem
from ..audit.records import canonical
from ..audit.stores import EpisodeHead, StoredEpisode
from ..decision import Alert, Decision
from ..engine import Engine, Episode
from ..errors import EpisodeError
from ..timeline import parse_time

__all__ = ["CurrentState", "RestoredEpisodes", "SnapshotText", "private_copy"]


@attrs.frozen
class CurrentState:
    """Of an episode's first `upto` decisions: where the current state began (`entered`, the
    index of the decision that entered it) and the latest alert of each code raised since."""

    upto: int = 0
    last: Decision | None = None
    entered: int = 0
    latest: dict[str, tuple[Alert, Decision]] = attrs.field(factory=dict)

    def extended(self, decisions: Sequence[Decision]) -> CurrentState:
        """The same for `decisions`: from this one when they continue the decisions it was
        made of, else from the start."""
        if self.upto <= len(decisions) and (
            self.upto == 0 or decisions[self.upto - 1] is self.last
        ):
            start, entered, latest = self.upto, self.entered, dict(self.latest)
        else:
            start, entered, latest = 0, 0, {}
        for i in range(start, len(decisions)):
            d = decisions[i]
            if d.step == 0 or d.changed:
                entered, latest = i, {}
            for alert in d.alerts:
                latest[alert.code] = (alert, d)
        return CurrentState(len(decisions), decisions[-1] if decisions else None, entered, latest)


class SnapshotText:
    """The canonical JSON of an episode's snapshot (`records.canonical`, what the store saves
    and the chain seals), kept up to date as the episode grows: each input is serialised once,
    so saving the snapshot after a feedback costs the same after a thousand of them (but for
    joining, hashing and writing the text, in C). The inputs serialised are kept with their
    text and checked by identity against the episode's (an episode's inputs are never changed
    once recorded; a copy shares them up to where it went its own way)."""

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._texts: list[str] = []

    def of(self, snapshot: dict[str, Any]) -> str:
        """`canonical(snapshot)`, the inputs' part from what is kept."""
        inputs = snapshot["inputs"]
        items, texts = self._items, self._texts
        same = len(items)
        # A copy that went its own way made its own inputs from there on: when the last one
        # kept is the episode's, so is every one before it.
        if not (same <= len(inputs) and (same == 0 or items[-1] is inputs[same - 1])):
            same = 0
            for kept, item in zip(items, inputs, strict=False):
                if kept is not item:
                    break
                same += 1
            del items[same:], texts[same:]
        for item in inputs[same:]:
            items.append(item)
            texts.append(canonical(item))
        # Sorted keys, no whitespace: the text `canonical` writes for the whole snapshot.
        return (
            "{"
            + ",".join(
                canonical(key)
                + ":"
                + ("[" + ",".join(texts) + "]" if key == "inputs" else canonical(snapshot[key]))
                for key in sorted(snapshot)
            )
            + "}"
        )


@attrs.define
class _Kept:
    store_id: str
    head: dict[str, Any]
    steps: int
    head_seq: int
    #: the hash of record `head_seq`, the episode's last (None: not known, never current).
    head_hash: str | None
    episode: Episode
    current: CurrentState = attrs.field(factory=CurrentState)
    text: SnapshotText = attrs.field(factory=SnapshotText)

    def stands_at(self, store_id: str, at: EpisodeHead) -> bool:
        """Whether the store, where the episode stands at `at`, holds exactly this episode."""
        return (
            self.head_hash is not None
            and self.store_id == store_id
            and self.steps == at.steps
            and self.head_seq == at.head_seq
            and self.head_hash == at.hash
        )


class RestoredEpisodes:
    """The episodes of one engine restored from one store; not thread-safe."""

    def __init__(self, engine: Engine, size: int = 64) -> None:
        self.engine = engine
        self.size = size
        self._kept: OrderedDict[str, _Kept] = OrderedDict()
        #: how many requests found the kept episode current, how many restores continued a kept
        #: episode, and how many replayed from the start.
        self.reused = 0
        self.continued = 0
        self.replayed = 0

    def current(
        self, episode_id: str, store_id: str, at: EpisodeHead, *, private: bool = True
    ) -> Episode | None:
        """The kept episode when the store (of id `store_id`, where the episode stands at `at`)
        holds exactly it, else None (then `restore` it). `private` as for `restore`."""
        kept = self._kept.get(episode_id)
        if kept is None or not kept.stands_at(store_id, at):
            return None
        self.reused += 1
        self._kept.move_to_end(episode_id)
        return private_copy(kept.episode) if private else kept.episode

    def recorded(
        self, store_id: str, episode: Episode, steps: int, head_seq: int, head_hash: str
    ) -> None:
        """`episode` was just appended to the store (of id `store_id`) by this process, up to
        `steps` steps, its last record `head_seq` hashing to `head_hash`: it is the store's
        episode now, kept as such (the caller no longer changes it)."""
        before = self._kept.pop(episode.episode_id, None)
        if before is not None and before.store_id == store_id:
            head, current, text = before.head, before.current, before.text
        else:
            head, current, text = _head(episode.snapshot()), CurrentState(), SnapshotText()
        self._kept[episode.episode_id] = _Kept(
            store_id, head, steps, head_seq, head_hash, episode, current, text
        )
        self._trim()

    def snapshot_text(self, episode_id: str, snapshot: dict[str, Any]) -> str:
        """`canonical(snapshot)`, the snapshot of episode `episode_id` (`SnapshotText`, kept
        with the kept episode of that id, of which it may be a copy that went further)."""
        kept = self._kept.get(episode_id)
        text = kept.text if kept is not None else SnapshotText()
        return text.of(snapshot)

    def _trim(self) -> None:
        while len(self._kept) > self.size:
            self._kept.popitem(last=False)

    def restore(
        self, saved: StoredEpisode, store_id: str, where: str, *, private: bool = True
    ) -> Episode:
        """The episode `saved` holds (`EpisodeError` when it cannot be restored here; `where`
        names it in messages). `private`: a copy the caller may change; otherwise the kept
        episode itself, which the caller must not change."""
        snapshot = saved.snapshot
        kept = self._continued(saved, store_id)
        if kept is None:
            episode = self.engine.restore(snapshot, where)
            self.replayed += 1
            if len(episode.decisions) != saved.steps:
                raise StoreError(
                    problem(
                        f"episode {saved.id!r}: the snapshot replays to "
                        f"{len(episode.decisions)} steps, the store recorded {saved.steps}"
                    ),
                    where,
                )
            kept = _Kept(
                store_id, _head(snapshot), saved.steps, saved.head_seq, saved.head_hash, episode
            )
        else:
            self.continued += 1
        self._kept[saved.id] = kept
        self._kept.move_to_end(saved.id)
        self._trim()
        return private_copy(kept.episode) if private else kept.episode

    def current_state(self, episode_id: str, episode: Episode) -> CurrentState:
        """What patient-view shows of `episode`'s current state (kept for the kept episode, and
        extended from it for a copy that went further)."""
        kept = self._kept.get(episode_id)
        if kept is None:
            return CurrentState().extended(episode.decisions)
        current = kept.current.extended(episode.decisions)
        if episode is kept.episode:
            kept.current = current
        return current

    def _continued(self, saved: StoredEpisode, store_id: str) -> _Kept | None:
        """The kept episode brought up to `saved`, or None (then restore it in full)."""
        kept = self._kept.pop(saved.id, None)  # changed below: kept again only on success
        snapshot = saved.snapshot
        if kept is None or not isinstance(snapshot, dict):
            return None
        episode = kept.episode
        inputs = snapshot.get("inputs")
        done = len(episode.inputs)
        if (
            kept.store_id != store_id
            or _head(snapshot) != kept.head
            or saved.steps < kept.steps
            or saved.head_seq < kept.head_seq
            or (saved.steps == kept.steps) != (saved.head_seq == kept.head_seq)
            or not isinstance(inputs, list)
            or len(inputs) < done
            or (done and (inputs[0] != episode.inputs[0] or inputs[done - 1] != episode.inputs[-1]))
        ):
            return None
        try:
            for i in range(done, len(inputs)):  # as `Engine.restore` replays an input
                item = inputs[i]
                if isinstance(item, dict) and item.get("kind") == "advance":
                    episode.advance(parse_time(item.get("at")))
                else:
                    event, later = self.engine.parse_input(item, f"$.inputs[{i}]", None)
                    episode.step(event, later=later)
        except (EpisodeError, ValueError):
            return None
        if episode.state != snapshot.get("state") or len(episode.decisions) != saved.steps:
            return None
        kept.steps, kept.head_seq, kept.head_hash = saved.steps, saved.head_seq, saved.head_hash
        return kept


def _head(snapshot: Any) -> dict[str, Any]:
    """What must be the same for a kept episode to continue: everything but the inputs and
    the state they lead to."""
    if not isinstance(snapshot, dict):
        return {}
    return {k: v for k, v in snapshot.items() if k not in ("inputs", "state")}


def private_copy(episode: Episode) -> Episode:
    """A copy that can be stepped without changing `episode` (`Episode.fork`)."""
    return episode.fork()
