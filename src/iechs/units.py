"""Units of measure: the spellings a laboratory writes, read against the guideline's unit table.

Each observation of the guideline lists its accepted units, each with the factor to the canonical
unit (`observations.<code>.units` in `guideline/iec-hs.yaml`). `unit_factor` finds the factor of a
unit as written, in three steps, the first that answers winning:

1. the unit exactly as the table spells it;
2. the unit and the table's spellings both normalised (`normalise_unit`): Unicode NFKC, the micro
   sign (U+00B5) and the Greek mu (U+03BC) as UCUM's `u`, no spaces, `10^N` and a superscript
   `10⁹` as UCUM's `10*N`, and the litre `l` as `L` (UCUM has both spellings of the litre; every
   other symbol keeps its case: `U`, the enzyme unit, is not `u`); UCUM's international unit
   `[IU]` (or `[iU]`) also matches a table's `IU`, as `[IU]/L` matches `IU/L`;
3. a conversion by UCUM (the `ucumvert` library: a UCUM grammar over pint, with UCUM's own unit
   definitions) from the unit to a unit of the table, times that unit's factor: mg/L -> ng/mL
   x 1000, g/dL -> mg/dL x 1000, /uL or /mm3 -> 10*9/L x 0.001, ukat/L -> U/L x 60 (UCUM: U =
   umol/min, kat = mol/s), mmol/dL -> mmol/L x 10 (then the guideline's molar factor).

UCUM never crosses between amount of substance and mass: that needs a molar mass, which is
guideline content (the table's umol/L and mmol/L entries), never invented here. Step 3 therefore
takes a table unit as a target only when UCUM reads it as the guideline does: commensurable with
the canonical unit and with the same factor (a table spelling UCUM reads otherwise, such as `C`
for Celsius, which UCUM reads as the coulomb, is no target), or differing from the canonical unit
exactly by substance/mass (a molar entry, whose factor the guideline supplies). Conversions that
are not a plain factor (Cel, [degF], K: offset units) have no factor: `unit_factor` never makes
them, and `to_canonical`, which converts a value, makes them by UCUM for temperatures only
(101.3 [degF] -> 38.5 Cel). A bare `u` (UCUM's unified
atomic mass unit, e.g. `u/l`) is refused: no laboratory reports daltons per litre, and it is
nearly always a mis-cased `U`. So is a bare number as a factor (`109/L` is 109 per litre in
UCUM, and nearly always `10⁹/L` that lost its superscript when copied).

Lookups are cached: the UCUM registry is built once, lazily (about a second; step 3 only), and
each (unit, table) pair is resolved once per process.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

__all__ = ["normalise_unit", "to_canonical", "unit_factor"]

_SUPERSCRIPT = "⁰¹²³⁴⁵⁶⁷⁸⁹⁻⁺"
_SUPERSCRIPT_DIGITS = str.maketrans(_SUPERSCRIPT, "0123456789-+")
#: `10⁹` is a power of ten; NFKC alone would make it the number 109.
_TEN_TO_SUPERSCRIPT = re.compile(f"10([{_SUPERSCRIPT}]+)")
_TEN_TO_CARET = re.compile(r"10\^")
#: the litre written `l`, as a whole symbol with an optional UCUM prefix: `l`, `ml`, `/dl`, `.ul2`,
#: but not the `l` inside `mol`, `cal`, `lm` or `[lb_av]`.
_LITRE = re.compile(r"(^|[/.])(da|[YZEPTGMkhdcmunpfazy]?)l(?=$|[/.0-9+-])")
#: UCUM's `u` (unified atomic mass unit) as a whole symbol.
_BARE_U = re.compile(r"(^|[/.])u(?=$|[/.0-9+-])")
#: a number standing as a factor of its own, such as the 109 of `109/L` (not `10*9`, not the
#: exponent of `mm3`).
_BARE_NUMBER = re.compile(r"(^|[/.(])[0-9]+(?=$|[/.)])")
#: UCUM's international unit, which a table may spell `IU` (not a UCUM symbol).
_INTERNATIONAL_UNIT = re.compile(r"\[[Ii]U\]")
#: factors are rounded to this many significant digits (binary floating point gives
#: 999.9999999999999 for mg/L -> ng/mL).
_DIGITS = 12


def normalise_unit(text: str) -> str:
    """A unit as UCUM's case-sensitive form reads it, tolerant of how people write it.

    `μg/L` and `µg/L` -> `ug/L`; `ng/ml` -> `ng/mL`; `10⁹ / l` -> `10*9/L`; `U/l` -> `U/L`
    (`U` keeps its case). Idempotent.
    """
    s = _TEN_TO_SUPERSCRIPT.sub(lambda m: "10*" + m.group(1).translate(_SUPERSCRIPT_DIGITS), text)
    s = unicodedata.normalize("NFKC", s)  # also: µ (U+00B5) -> μ (U+03BC), ℃ -> °C, ³ -> 3
    s = s.replace("\u03bc", "u").replace("\u00b5", "u")
    s = "".join(s.split())
    s = _TEN_TO_CARET.sub("10*", s)
    return _LITRE.sub(lambda m: f"{m.group(1)}{m.group(2)}L", s)


def unit_factor(
    unit: str, accepted: Mapping[str, float], *, canonical: str | None = None
) -> float | None:
    """The factor from `unit` to the canonical unit of an observation, or None if unknown.

    `accepted` is the observation's table (unit -> factor to the canonical unit); `canonical` is
    the canonical unit (default: a table unit whose factor is 1). See the module docstring for
    the three steps.
    """
    factor = accepted.get(unit)
    if factor is not None:
        return factor
    return _factor(unit, tuple(accepted.items()), canonical)


def to_canonical(
    value: float, unit: str, accepted: Mapping[str, float], *, canonical: str | None = None
) -> float | None:
    """`value` in `unit` converted to the canonical unit, or None if the unit is unknown.

    By `unit_factor`; else, for a temperature on another scale (UCUM's [degF] or K, whose zero
    is offset from Celsius), by UCUM's own conversion to the canonical unit.
    """
    factor = unit_factor(unit, accepted, canonical=canonical)
    if factor is not None:
        return value * factor
    if canonical is None:
        canonical = next((key for key, f in accepted.items() if f == 1), None)
    if canonical is None:
        return None
    return _temperature(value, normalise_unit(unit), normalise_unit(canonical))


def _temperature(value: float, unit: str, canonical: str) -> float | None:
    source, target = _ucum(unit), _ucum(canonical)
    if source is None or target is None:
        return None
    registry = _registry()
    temperature = registry.get_dimensionality("[temperature]")
    if source.dimensionality != temperature or target.dimensionality != temperature:
        return None
    try:
        converted = float(registry.Quantity(value, source.units).to(target.units).magnitude)
    except Exception:  # pint's own errors: no conversion
        return None
    return float(f"{converted:.{_DIGITS}g}") if math.isfinite(converted) else None


def _spelling(norm: str) -> str:
    """A normalised unit as the guideline's tables may spell it (`[IU]/L` -> `IU/L`)."""
    return _INTERNATIONAL_UNIT.sub("IU", norm)


@lru_cache(maxsize=4096)
def _factor(unit: str, table: tuple[tuple[str, float], ...], canonical: str | None) -> float | None:
    norm = normalise_unit(unit)
    spelled: dict[str, set[float]] = {}
    for key, factor in table:
        spelled.setdefault(_spelling(normalise_unit(key)), set()).add(factor)
    factors = spelled.get(_spelling(norm))
    if factors is not None:
        # two spellings of the table that normalise alike but disagree: the table decides nothing
        return next(iter(factors)) if len(factors) == 1 else None
    if _BARE_U.search(norm) or _BARE_NUMBER.search(norm):
        return None
    return _ucum_factor(norm, table, canonical)


def _ucum_factor(
    norm: str, table: tuple[tuple[str, float], ...], canonical: str | None
) -> float | None:
    quantity = _ucum(norm)
    if quantity is None:
        return None
    if canonical is None:
        canonical = next((key for key, factor in table if factor == 1), None)
    reference = None if canonical is None else _ucum(normalise_unit(canonical))
    if reference is None:
        return None
    for key, factor in table:
        target = _ucum(normalise_unit(key))
        if target is None or not _is_target(target, factor, reference):
            continue
        ratio = _ratio(quantity, target)
        if ratio is not None:
            return float(f"{ratio * factor:.{_DIGITS}g}")
    return None


def _is_target(target: Any, factor: float, reference: Any) -> bool:
    """Whether UCUM reads a table unit as the guideline does (see the module docstring)."""
    ucum = _ratio(target, reference)
    if ucum is not None:
        return math.isclose(ucum, factor, rel_tol=1e-6)
    try:
        dimension = (target / reference).dimensionality
    except Exception:  # offset units (Cel): no factor to compare
        return False
    registry = _registry()
    return dimension in (
        registry.get_dimensionality("[substance]/[mass]"),
        registry.get_dimensionality("[mass]/[substance]"),
    )


def _ratio(a: Any, b: Any) -> float | None:
    """How many `b` make one `a` per UCUM, if that is a plain factor; else None."""
    try:
        ratio = float((a / b).to("dimensionless").magnitude)
    except Exception:  # not commensurable, or offset units (Cel, [degF], K)
        return None
    return ratio if math.isfinite(ratio) and ratio > 0 else None


@lru_cache(maxsize=1024)
def _ucum(code: str) -> Any:
    """A UCUM code as a pint quantity (one of the unit), or None if it is not valid UCUM."""
    try:
        return _registry().from_ucum(code)
    except Exception:  # the library raises the parser's and pint's own errors: all mean "no"
        return None


@lru_cache(maxsize=1)
def _registry() -> Any:
    # imported here: pint and the UCUM grammar take about a second to load, and only units that
    # are neither in the table nor a spelling of one need them.
    from ucumvert import PintUcumRegistry  # type: ignore[import-untyped]  # noqa: PLC0415

    return PintUcumRegistry()
