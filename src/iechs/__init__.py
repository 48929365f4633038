"""iechs: IEC-HS management after CAR-T therapy as a cited guideline run as a verified statechart.

The public API (stable; see README.md):

>>> from iechs import Engine, load_guideline
>>> engine = Engine(load_guideline())
>>> engine.identity["id"]
'iec-hs'
"""

from ._version import __version__
from .criteria import Tri, Verdict
from .decision import Alert, Decision, Deviation, GuardResult, run_to_json
from .engine import Engine, Episode
from .errors import EpisodeError, GuidelineError, IechsError, Problem, TimelineError
from .loader import default_guideline_path, load_guideline, parse_guideline
from .model import Guideline
from .timeline import Patient, Timeline, load_timeline, parse_event, parse_timeline

__all__ = [
    "Alert",
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
    "Timeline",
    "TimelineError",
    "Tri",
    "Verdict",
    "__version__",
    "default_guideline_path",
    "load_guideline",
    "load_timeline",
    "parse_event",
    "parse_guideline",
    "parse_timeline",
    "run_to_json",
]
