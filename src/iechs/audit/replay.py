"""Replaying a log: every logged event goes again through the guideline version that decided
it (found by its SHA-256), and each new decision is compared, byte for byte in canonical form,
with the logged one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs

from .._version import __version__
from ..decision import Decision
from ..engine import Engine, Episode
from ..errors import IechsError
from ..model import Guideline
from ..timeline import parse_patient, parse_time
from .chain import read_record
from .errors import AuditError, problem
from .records import AuditRecord, canonical
from .stores import Log

__all__ = ["Difference", "ReplayReport", "first_difference", "replay_log"]


@attrs.frozen
class Difference:
    """A logged decision the replay does not reproduce (or a record it cannot replay)."""

    seq: int
    episode: str
    step: int | None
    path: str
    recorded: Any
    replayed: Any
    message: str

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "episode": self.episode,
            "step": self.step,
            "path": self.path,
            "recorded": self.recorded,
            "replayed": self.replayed,
            "message": self.message,
        }


@attrs.frozen(kw_only=True)
class ReplayReport:
    location: str
    records: int
    episodes: tuple[str, ...]
    guidelines: tuple[str, ...]
    engine_versions: tuple[str, ...]
    differences: tuple[Difference, ...]
    #: the replayed decisions, canonical JSON text, by record number (for callers that compare).
    replayed: dict[int, str] = attrs.field(eq=False, repr=False, factory=dict)

    @property
    def ok(self) -> bool:
        return not self.differences

    def to_json(self) -> dict[str, Any]:
        return {
            "format": "iechs.audit-replay/1",
            "log": self.location,
            "ok": self.ok,
            "records": self.records,
            "episodes": list(self.episodes),
            "guidelines": list(self.guidelines),
            "recorded_with_engine": list(self.engine_versions),
            "replayed_with_engine": __version__,
            "differences": [d.to_json() for d in self.differences],
        }


def first_difference(recorded: Any, replayed: Any, path: str = "$") -> tuple[str, Any, Any] | None:
    """The first place two JSON values differ: (path, recorded value, replayed value)."""
    if isinstance(recorded, dict) and isinstance(replayed, dict):
        for key in sorted(set(recorded) | set(replayed)):
            if key not in recorded or key not in replayed:
                return f"{path}.{key}", recorded.get(key), replayed.get(key)
            found = first_difference(recorded[key], replayed[key], f"{path}.{key}")
            if found is not None:
                return found
        return None
    if isinstance(recorded, list) and isinstance(replayed, list):
        for i, (a, b) in enumerate(zip(recorded, replayed, strict=False)):
            found = first_difference(a, b, f"{path}[{i}]")
            if found is not None:
                return found
        if len(recorded) != len(replayed):
            return f"{path}.length", len(recorded), len(replayed)
        return None
    if canonical(recorded) != canonical(replayed):
        return path, recorded, replayed
    return None


class _Replayer:
    def __init__(self, guidelines: Sequence[Guideline], location: str) -> None:
        self.location = location
        self.guidelines = {g.sha256: g for g in guidelines}
        self.engines: dict[str, Engine] = {}
        self.live: dict[str, Episode] = {}

    def engine(self, record: AuditRecord) -> Engine:
        sha = record.guideline.sha256
        if sha not in self.engines:
            guideline = self.guidelines.get(sha)
            if guideline is None:
                raise AuditError(
                    problem(
                        f"record {record.seq} was decided by guideline {record.guideline.label}, "
                        "which is neither the bundled guideline nor one given with --guideline: "
                        "pass that guideline's file with --guideline"
                    ),
                    self.location,
                )
            self.engines[sha] = Engine(guideline)
        return self.engines[sha]

    def decide(self, record: AuditRecord) -> Decision | str:
        """Re-make the record's decision, or say why it cannot be replayed."""
        engine = self.engine(record)
        where = f"{self.location} record {record.seq}"
        try:
            if record.step == 0:
                if record.patient is None:
                    return "the episode's first record lacks the patient"
                patient = parse_patient(record.patient, engine.guideline, where)
                episode = engine.start(patient, record.episode)
                self.live[record.episode] = episode
                return episode.decisions[0]
            episode_or_none = self.live.get(record.episode)
            if episode_or_none is None:
                return f"step {record.step} of an episode whose first record is not in the log"
            event = record.event
            if event.get("kind") == "advance":
                return episode_or_none.advance(parse_time(event.get("at")))
            later = record.decision.get("later", [])
            parsed, known = engine.parse_input(
                {**event, "later": later} if later else event, "$.decision.event", where
            )
            return episode_or_none.step(parsed, later=known)
        except IechsError as exc:
            return f"the engine refuses the logged event: {exc.render()}"
        except ValueError as exc:
            return f"the engine refuses the logged event: {exc}"


def replay_log(
    log: Log, guidelines: Sequence[Guideline], *, keep_decisions: bool = False
) -> ReplayReport:
    """Replay every record of `log` with whichever of `guidelines` decided it.

    `keep_decisions` keeps each replayed decision's canonical text in the report.
    """
    replayer = _Replayer(guidelines, log.location)
    differences: list[Difference] = []
    replayed: dict[int, str] = {}
    episodes: dict[str, None] = {}
    used: dict[str, None] = {}
    engines: dict[str, None] = {}
    count = 0
    with log.reading() as view:
        for item in view.records():
            count += 1
            record, defect = read_record(item)
            if record is None:
                differences.append(
                    Difference(
                        count,
                        "",
                        None,
                        "$",
                        None,
                        None,
                        f"{item.where}: unreadable ({defect}); run `iechs audit verify`",
                    )
                )
                continue
            episodes[record.episode] = None
            used[record.guideline.label] = None
            engines[record.engine] = None
            outcome = replayer.decide(record)
            if isinstance(outcome, str):
                differences.append(
                    Difference(record.seq, record.episode, record.step, "$", None, None, outcome)
                )
                continue
            text = canonical(outcome.to_json())
            if keep_decisions:
                replayed[record.seq] = text
            if text == canonical(record.decision):
                continue
            again = json.loads(text)
            found = first_difference(record.decision, again) or ("$", None, None)
            differences.append(
                Difference(
                    record.seq,
                    record.episode,
                    record.step,
                    found[0],
                    found[1],
                    found[2],
                    f"{record.where()}: the replayed decision differs at {found[0]}",
                )
            )
    return ReplayReport(
        location=log.location,
        records=count,
        episodes=tuple(episodes),
        guidelines=tuple(used),
        engine_versions=tuple(engines),
        differences=tuple(differences),
        replayed=replayed,
    )
