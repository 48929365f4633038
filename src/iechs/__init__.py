"""iechs: IEC-HS management after CAR-T therapy as a cited guideline run as a verified statechart.

The public API (stable; see README.md): load a guideline (`load_guideline`), start or restore
an episode (`Engine.start`, `Engine.restore`), step events (`Episode.step`, `parse_event`), ask
what is due (`Episode.advance`), read decisions (`Decision`, `Alert`), and record them in an
audit store (`open_store`, `RecordedEpisode`, `verify_log`).

>>> from iechs import Engine, load_guideline
>>> engine = Engine(load_guideline())
>>> engine.identity["id"]
'iec-hs'

Names are imported on first use (PEP 562), so that `iechs --help` does not pay for the engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .audit.chain import verify_log
    from .audit.errors import StoreError
    from .audit.recorder import RecordedEpisode
    from .audit.stores import AuditStore, open_store
    from .criteria import Tri, Verdict
    from .decision import Alert, Decision, Deviation, GuardResult, run_to_json
    from .engine import Engine, Episode
    from .errors import EpisodeError, GuidelineError, IechsError, Problem, TimelineError
    from .loader import default_guideline_path, load_guideline, parse_guideline
    from .model import Guideline
    from .timeline import Patient, Timeline, load_timeline, parse_event, parse_timeline

_EXPORTS = {
    "Alert": "decision",
    "AuditStore": "audit.stores",
    "Decision": "decision",
    "Deviation": "decision",
    "Engine": "engine",
    "Episode": "engine",
    "EpisodeError": "errors",
    "GuardResult": "decision",
    "Guideline": "model",
    "GuidelineError": "errors",
    "IechsError": "errors",
    "Patient": "timeline",
    "Problem": "errors",
    "RecordedEpisode": "audit.recorder",
    "StoreError": "audit.errors",
    "Timeline": "timeline",
    "TimelineError": "errors",
    "Tri": "criteria",
    "Verdict": "criteria",
    "default_guideline_path": "loader",
    "load_guideline": "loader",
    "load_timeline": "timeline",
    "open_store": "audit.stores",
    "parse_event": "timeline",
    "parse_guideline": "loader",
    "parse_timeline": "timeline",
    "run_to_json": "decision",
    "verify_log": "audit.chain",
}

__all__ = [
    "Alert",
    "AuditStore",
    "Decision",
    "Deviation",
    "Engine",
    "Episode",
    "EpisodeError",
    "GuardResult",
    "Guideline",
    "GuidelineError",
    "IechsError",
    "Patient",
    "Problem",
    "RecordedEpisode",
    "StoreError",
    "Timeline",
    "TimelineError",
    "Tri",
    "Verdict",
    "__version__",
    "default_guideline_path",
    "load_guideline",
    "load_timeline",
    "open_store",
    "parse_event",
    "parse_guideline",
    "parse_timeline",
    "run_to_json",
    "verify_log",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'iechs' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
