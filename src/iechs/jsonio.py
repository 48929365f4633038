"""Bounded JSON reading for every door that takes JSON (timelines, FHIR Bundles, audit exports).

Python's `json` would recurse until it fails on a deeply nested document, and would build an
integer of any length (and then fail converting it). Input here is clinical data: nothing in
it is nested deeper than `MAX_DEPTH`, no integer has more than `MAX_INT_DIGITS` digits, and
`NaN` or `Infinity` is never a measurement. Each bound is a clear `IechsError` naming the file
and the place, never a traceback.
"""

from __future__ import annotations

import json
import math
from typing import Any

import attrs

from .errors import IechsError, Problem

__all__ = ["MAX_DEPTH", "MAX_INT_DIGITS", "JSONBoundError", "loads", "parse"]

#: deeper than any FHIR Bundle or timeline needs (a Bundle's deepest path is about 12).
MAX_DEPTH = 64
#: a count, a dose or an identifier never needs more.
MAX_INT_DIGITS = 40


@attrs.frozen
class _Refused:
    """A number parsed but not allowed; the walk reports it with its JSON path."""

    reason: str


def _int(text: str) -> int | _Refused:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        return _Refused(f"an integer of {digits} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def _float(text: str) -> float | _Refused:
    value = float(text)
    if not math.isfinite(value):
        return _Refused(f"{text[:40]} is not a finite number")
    return value


def _constant(name: str) -> _Refused:
    return _Refused(f"{name} is not a finite number (and not JSON)")


class JSONBoundError(ValueError):
    """A JSON text beyond the bounds: `path` names the place, `reason` what is wrong."""

    def __init__(self, reason: str, path: str = "$") -> None:
        super().__init__(f"{path}: {reason}")
        self.reason = reason
        self.path = path


def parse(text: str | bytes) -> Any:
    """`json.loads` within the bounds above: `json.JSONDecodeError` or `JSONBoundError` (both
    `ValueError`s) otherwise, for callers that report a bad line in their own way."""
    try:
        data = json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except RecursionError:
        raise JSONBoundError(f"nested more than {MAX_DEPTH} levels deep") from None
    # A lone surrogate (`"\ud800"`) is valid JSON but no text: it cannot be written back out.
    # Strings are searched only when the text escapes one (rare), to keep parsing fast.
    raw = text if isinstance(text, str) else text.decode("utf-8", "replace")
    if (found := _refused(data, "\\ud" in raw.lower())) is not None:
        raise JSONBoundError(found[1], found[0])
    return data


def loads(
    text: str | bytes, file: str, error: type[IechsError] = IechsError, *, lines: bool = True
) -> Any:
    """Parse JSON within the bounds above; an `error` (an `IechsError`) naming `file`
    otherwise. `lines=False` when `file` already names a line (`cohort.jsonl:7`)."""
    try:
        return parse(text)
    except json.JSONDecodeError as exc:
        raise error(
            [
                Problem(
                    f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
                    "$",
                    exc.lineno if lines else None,
                )
            ],
            file,
        ) from None
    except JSONBoundError as exc:
        raise error([Problem(exc.reason, exc.path)], file) from None


def _refused(data: Any, strings: bool = False) -> tuple[str, str] | None:
    """(JSON path, reason) of the first value nested deeper than `MAX_DEPTH` or refused; with
    `strings`, also of the first text (value or key) that is not valid Unicode."""
    kinds: tuple[type, ...] = (dict, list, _Refused, str) if strings else (dict, list, _Refused)
    stack: list[tuple[Any, int, str]] = [(data, 0, "$")]
    while stack:
        value, depth, path = stack.pop()
        if isinstance(value, _Refused):
            return path, value.reason
        if isinstance(value, str):
            if not _unicode(value):
                return path, "text with a lone surrogate (\\ud800-\\udfff) is not Unicode"
            continue
        if depth > MAX_DEPTH:
            return path, f"nested more than {MAX_DEPTH} levels deep"
        # only what can nest or was refused goes on the stack
        if isinstance(value, dict):
            if strings and (bad := next((k for k in value if not _unicode(k)), None)):
                return path, f"a key with a lone surrogate is not Unicode ({bad!r})"
            stack.extend(
                (v, depth + 1, f"{path}.{k}") for k, v in value.items() if isinstance(v, kinds)
            )
        elif isinstance(value, list):
            stack.extend(
                (v, depth + 1, f"{path}[{i}]") for i, v in enumerate(value) if isinstance(v, kinds)
            )
    return None


def _unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
