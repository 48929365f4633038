"""The project's error types.

Every failure a user can cause (a bad guideline, a bad timeline, a bad saved episode) is an
`IechsError`. Each carries `Problem`s that name the file, the place (YAML line or JSON path) and
what is wrong, so the CLI can print a clear message and exit 2 without a traceback.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any, Literal, get_args, get_origin

import attrs

from ._attrs_code import install

# Every iechs module that makes attrs classes imports this one or `iechs.model` first, or calls
# `install()` itself (a test holds them to it): from here on their methods' code comes from the
# cache (`iechs._attrs_code`).
install()

__all__ = [
    "EpisodeError",
    "GuidelineError",
    "IechsError",
    "Problem",
    "TimelineError",
    "structuring_problems",
    "unknown_name",
]

_KEY_PATH = re.compile(r"\['([^'\]]*)'\]")


def _format(exc: BaseException, type_: Any) -> str:
    # Our own hooks raise ValueError with a precise message: keep it. Otherwise cattrs' wording,
    # in plain words where it would speak Python (Literal choices).
    if type(exc) is ValueError and exc.args:
        return str(exc.args[0])
    if isinstance(exc, AttributeError) and ("'keys'" in str(exc) or "'items'" in str(exc)):
        return "expected an object"
    literals = [t for t in (type_, *get_args(type_)) if get_origin(t) is Literal]
    if literals:
        choices = ", ".join(repr(c) for c in get_args(literals[0]))
        got = str(exc).split(" not in literal", 1)[0]
        return f"expected one of {choices}, got {got!r}"
    from cattrs.v import format_exception  # noqa: PLC0415 - keeps `iechs --help` light

    return format_exception(exc, type_)


def structuring_problems(
    exc: Exception, root: str = "$", rename: Callable[[str], str] = lambda p: p
) -> list[Problem]:
    """Turn a cattrs structuring failure into Problems (`$.events[3].value`-style paths)."""
    import cattrs  # noqa: PLC0415 - keeps `iechs --help` light

    problems = []
    for msg in cattrs.transform_error(exc, path=root, format_exception=_format):
        text, _, path = msg.rpartition(" @ ")
        path = rename(_KEY_PATH.sub(lambda mt: f".{mt.group(1)}", path))
        problems.append(Problem(text or msg, path))
    return problems


def unknown_name(kind: str, name: str, known: Iterable[str]) -> str:
    """`unknown criterion 'ferittin_high' (did you mean 'ferritin_high'?)`."""
    import difflib  # noqa: PLC0415 - only for a message; keeps start-up light

    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {kind} {name!r}{hint}"


@attrs.frozen
class Problem:
    """One thing wrong with an input, at one place."""

    message: str
    path: str = "$"
    line: int | None = None
    #: the file this place is in, when it differs from the error's (a profile and its base).
    file: str | None = None

    def render(self, file: str | None) -> str:
        where = self.file or file or "<input>"
        if self.line is not None:
            where = f"{where}:{self.line}"
        return f"{where}: {self.path}: {self.message}"


class IechsError(Exception):
    """Base class of every error this project raises on bad input."""

    def __init__(self, problems: Iterable[Problem], file: str | None = None) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        self.file = file
        super().__init__(self.render())

    def render(self) -> str:
        return "\n".join(p.render(self.file) for p in self.problems)


class GuidelineError(IechsError, ValueError):
    """The guideline document cannot be loaded or fails a semantic check."""


class TimelineError(IechsError, ValueError):
    """A patient timeline (or a single event) is malformed or implausible."""


class EpisodeError(IechsError, ValueError):
    """An episode cannot be restored, or an event does not fit the episode (e.g. out of order)."""
