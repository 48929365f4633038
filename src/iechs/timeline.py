"""Patient timelines: the JSON input format of DESIGN.md, parsed into typed, canonical events.

Parsing is cattrs structuring (shape and types) followed by checks against the guideline's
vocabulary (codes, units, plausible ranges). Values are converted to the canonical unit; events
are sorted by time, stable for ties. Every problem names its JSON path, e.g. `$.events[3].unit`.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import attrs
import msgspec

from .errors import Problem, TimelineError, structuring_problems, unknown_name
from .model import Guideline
from .units import unit_factor
from .vocab import ROUTES, dose_unit_problem, route_code

if TYPE_CHECKING:
    import cattrs

__all__ = [
    "AssessmentEvent",
    "CloseEvent",
    "Event",
    "FindingEvent",
    "Measurement",
    "ObservationEvent",
    "Patient",
    "Product",
    "ResponseEvent",
    "Timeline",
    "TreatmentEvent",
    "canonical_order",
    "event_to_json",
    "format_time",
    "load_timeline",
    "parse_event",
    "parse_time",
    "parse_timeline",
]

Infection = Literal["none", "suspected", "confirmed"]
Indication = Literal["iec_hs", "crs", "icans", "infection", "other"]
ResponseKind = Literal["improving", "stable", "worsening", "resolved"]
CloseReason = Literal["follow_up_complete", "death", "transfer"]


@attrs.frozen(kw_only=True)
class Product:
    name: str | None = None
    target: str | None = None
    costimulatory_domain: str | None = None


@attrs.frozen(kw_only=True)
class Measurement:
    value: float
    unit: str


@attrs.frozen(kw_only=True)
class Patient:
    id: str
    infusion_at: datetime
    age_years: float | None = None
    weight_kg: float | None = None
    product: Product | None = None
    risk_factors: tuple[str, ...] = ()
    baseline: dict[str, Measurement] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class ObservationEvent:
    at: datetime
    kind: Literal["observation"] = "observation"
    code: str | None = None
    loinc: str | None = None
    value: float
    unit: str


@attrs.frozen(kw_only=True)
class AssessmentEvent:
    at: datetime
    kind: Literal["assessment"] = "assessment"
    crs_grade: int | None = None
    icans_grade: int | None = None
    infection: Infection | None = None
    antimicrobials: bool | None = None


@attrs.frozen(kw_only=True)
class FindingEvent:
    at: datetime
    kind: Literal["finding"] = "finding"
    code: str
    present: bool
    grade: int | None = None


@attrs.frozen(kw_only=True)
class TreatmentEvent:
    at: datetime
    kind: Literal["treatment"] = "treatment"
    drug: str
    dose: float | None = None
    unit: str | None = None
    route: str | None = None
    indication: Indication | None = None


@attrs.frozen(kw_only=True)
class ResponseEvent:
    at: datetime
    kind: Literal["response"] = "response"
    assessment: ResponseKind


@attrs.frozen(kw_only=True)
class CloseEvent:
    at: datetime
    kind: Literal["close"] = "close"
    reason: CloseReason


Event = (
    ObservationEvent | AssessmentEvent | FindingEvent | TreatmentEvent | ResponseEvent | CloseEvent
)
_EVENT_TYPES: dict[str, type[Any]] = {
    "observation": ObservationEvent,
    "assessment": AssessmentEvent,
    "finding": FindingEvent,
    "treatment": TreatmentEvent,
    "response": ResponseEvent,
    "close": CloseEvent,
}


@attrs.frozen(kw_only=True)
class Timeline:
    patient: Patient
    events: tuple[Event, ...]
    #: where each event stood in the input (`$.events[i]`), for messages about it.
    positions: tuple[int, ...] = ()
    file: str | None = None
    #: parts of the input read but not used, each with its path and why (FHIR input fills it).
    ignored: tuple[Problem, ...] = ()


def parse_time(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"expected an ISO 8601 timestamp, got {value!r}")
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"not an ISO 8601 timestamp: {value!r}") from None
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"timestamp {value!r} has no time zone (add Z or an offset)")
    try:
        return t.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"timestamp {value!r} is out of range") from None


def format_time(t: datetime) -> str:
    """`t` in UTC as `2026-01-05T11:00:00Z` (whole seconds), exactly as
    `t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")` writes it, only faster: it is on the
    engine's hot path. A plain `datetime` in UTC (every parsed time) is formatted once by
    `isoformat` and remembered; anything else (a subclass) goes through `strftime`."""
    if type(t) is datetime:
        if t.tzinfo is not UTC:
            t = t.astimezone(UTC)  # as before: another zone converted, a naive time as local
        text = _FORMATTED.get(t)
        if text is None:
            # `strftime`'s `%Y` is not padded to 4 digits below year 1000 (on glibc): keep it
            text = t.isoformat()[:19] + "Z" if t.year >= 1000 else t.strftime(_TIME_FORMAT)
            if len(_FORMATTED) >= _FORMATTED_MAX:
                _FORMATTED.clear()
            _FORMATTED[t] = text
        return text
    return t.astimezone(UTC).strftime(_TIME_FORMAT)


_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
#: UTC times already formatted (equal times, equal text); cleared when full, so bounded.
_FORMATTED: dict[datetime, str] = {}
_FORMATTED_MAX = 1 << 15


def _shown(value: Any) -> str:
    """A value as the JSON author wrote it, for messages (objects and lists by kind)."""
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return json.dumps(value) if isinstance(value, str | int | float | bool) else repr(value)


@functools.cache
def _converter() -> cattrs.Converter:
    """The timelines' converter, made on first use: a valid native timeline is read by
    `fast_timeline` (msgspec), so `iechs run` imports no cattrs and generates no code for it."""
    import cattrs  # noqa: PLC0415
    from cattrs.gen import make_dict_structure_fn  # noqa: PLC0415

    conv = cattrs.Converter(forbid_extra_keys=True)

    def strict(kind: type, label: str) -> Any:
        def hook(value: Any, _: Any) -> Any:
            if isinstance(value, bool) and kind is not bool:
                raise ValueError(f"expected {label}, got {value!r}")
            if kind is float and isinstance(value, int | float):
                try:
                    number = float(value)
                except OverflowError:
                    raise ValueError("the number is too large") from None
                if not math.isfinite(number):
                    raise ValueError(f"expected a finite number, got {value!r}")
                return number
            if isinstance(value, kind):
                return value
            raise ValueError(f"expected {label}, got {_shown(value)}")

        return hook

    def texts(value: Any, _: Any) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise ValueError(f"expected a list, got {_shown(value)}")
        return tuple(conv.structure(v, str) for v in value)

    conv.register_structure_hook_func(lambda t: t == tuple[str, ...], texts)

    conv.register_structure_hook(str, strict(str, "text"))
    conv.register_structure_hook(bool, strict(bool, "true or false"))
    conv.register_structure_hook(float, strict(float, "a number"))
    conv.register_structure_hook(int, strict(int, "a whole number"))
    conv.register_structure_hook(datetime, lambda v, _: parse_time(v))
    types: list[type[Any]] = [Patient, *_EVENT_TYPES.values()]
    for cls in types:
        conv.register_structure_hook(
            cls, make_dict_structure_fn(cls, conv, _cattrs_forbid_extra_keys=True)
        )

    def event(value: Any, _: Any) -> Event:
        if not isinstance(value, Mapping):
            raise ValueError(f"expected an event object, got {type(value).__name__}")
        kind = value.get("kind")
        cls = _EVENT_TYPES.get(kind) if isinstance(kind, str) else None
        if cls is None:
            raise ValueError(
                f"unknown event kind {kind!r} (expected one of {', '.join(_EVENT_TYPES)})"
            )
        result: Event = conv.structure(value, cls)
        return result

    conv.register_structure_hook(Event, event)
    return conv


@attrs.frozen(kw_only=True)
class _RawTimeline:
    patient: Patient
    events: list[Event]


def _structure(data: Any, cls: type[Any], file: str | None, root: str = "$") -> Any:
    try:
        return _converter().structure(data, cls)
    except Exception as exc:  # cattrs groups every structuring error; transform_error reads them
        raise TimelineError(structuring_problems(exc, root), file) from None


def _canonical_observation(
    ev: ObservationEvent, g: Guideline, path: str, problems: list[Problem]
) -> ObservationEvent:
    code = ev.code
    if code is None and ev.loinc is not None:
        code = next((c for c, o in g.observations.items() if ev.loinc in o.loinc), None)
        if code is None:
            problems.append(Problem(f"unknown LOINC code {ev.loinc!r}", f"{path}.loinc"))
            return ev
    if code is None:
        problems.append(Problem("an observation needs a code (or a loinc)", path))
        return ev
    measured = _canonical_value(code, ev.value, ev.unit, g=g, path=path, problems=problems)
    if measured is None:
        return ev
    return attrs.evolve(ev, code=code, value=measured.value, unit=measured.unit)


def _canonical_value(
    code: str, value: float, unit: str, *, g: Guideline, path: str, problems: list[Problem]
) -> Measurement | None:
    obs = g.observations.get(code)
    if obs is None:
        problems.append(
            Problem(unknown_name("observation code", code, g.observations), f"{path}.code")
        )
        return None
    factor = unit_factor(unit, obs.units, canonical=obs.unit)
    if factor is None:
        problems.append(
            Problem(
                f"unknown unit {unit!r} for {code} (accepted: {', '.join(sorted(obs.units))})",
                f"{path}.unit",
            )
        )
        return None
    if value < 0:
        problems.append(Problem(f"negative value {value:g} for {code}", f"{path}.value"))
        return None
    canonical = value * factor
    lo, hi = obs.plausible
    if not lo <= canonical <= hi:
        problems.append(
            Problem(
                f"implausible {code} {value:g} {unit} (plausible: {lo:g}-{hi:g} {obs.unit})",
                f"{path}.value",
            )
        )
        return None
    return Measurement(value=round(canonical, 6), unit=obs.unit)


def check_event(ev: Event, g: Guideline, path: str, problems: list[Problem]) -> Event:
    """Check one structured event against the guideline's vocabulary; return it canonical."""
    if isinstance(ev, ObservationEvent):
        return _canonical_observation(ev, g, path, problems)
    if isinstance(ev, FindingEvent):
        if ev.code not in g.findings:
            problems.append(Problem(unknown_name("finding", ev.code, g.findings), f"{path}.code"))
        if ev.grade is not None and not 1 <= ev.grade <= 5:
            problems.append(
                Problem(f"grade {ev.grade} is not a CTCAE grade (1-5)", f"{path}.grade")
            )
    elif isinstance(ev, AssessmentEvent):
        for field in ("crs_grade", "icans_grade"):
            grade = getattr(ev, field)
            if grade is not None and not 0 <= grade <= 4:
                problems.append(Problem(f"{field} {grade} is outside 0-4", f"{path}.{field}"))
        if all(
            getattr(ev, f) is None
            for f in ("crs_grade", "icans_grade", "infection", "antimicrobials")
        ):
            problems.append(Problem("an assessment records at least one field", path))
    elif isinstance(ev, TreatmentEvent):
        drug = ev.drug.strip().lower()
        if not drug:
            problems.append(Problem("a treatment names its drug", f"{path}.drug"))
        if ev.dose is not None and ev.dose <= 0:
            what = "negative dose" if ev.dose < 0 else "a dose of"
            problems.append(
                Problem(f"{what} {ev.dose:g}: a dose given is more than 0", f"{path}.dose")
            )
        if ev.unit is not None and (why := dose_unit_problem(ev.unit)) is not None:
            problems.append(Problem(why, f"{path}.unit"))
        elif ev.dose is not None and ev.unit is None:
            problems.append(Problem("a dose needs its unit", f"{path}.unit"))
        if ev.route is not None and route_code(ev.route) is None:
            problems.append(
                Problem(
                    f"unknown route {ev.route!r} (one of {', '.join(ROUTES)}, or its name "
                    "or SNOMED CT code)",
                    f"{path}.route",
                )
            )
        return attrs.evolve(ev, drug=drug)
    return ev


def parse_event(data: Any, g: Guideline, path: str = "$", file: str | None = None) -> Event:
    """Parse one event (as used by embedders stepping events one at a time)."""
    ev: Event = _structure(data, Event, file, path)  # type: ignore[arg-type]
    problems: list[Problem] = []
    ev = check_event(ev, g, path, problems)
    if problems:
        raise TimelineError(problems, file)
    return ev


def parse_timeline(data: Any, g: Guideline, file: str | None = None) -> Timeline:
    if not isinstance(data, Mapping):
        raise TimelineError([Problem("expected a JSON object with patient and events")], file)
    raw: _RawTimeline = _structure(data, _RawTimeline, file)
    problems: list[Problem] = []
    patient = _check_patient(raw.patient, g, problems)
    events = [check_event(ev, g, f"$.events[{i}]", problems) for i, ev in enumerate(raw.events)]
    for i, ev in enumerate(events):
        if isinstance(ev, CloseEvent) and ev.reason == "death" and ev.at < patient.infusion_at:
            problems.append(
                Problem(
                    f"a death at {format_time(ev.at)}, before the CAR-T infusion at "
                    f"{format_time(patient.infusion_at)} ($.patient.infusion_at): the timeline "
                    "contradicts itself",
                    f"$.events[{i}].at",
                )
            )
    if problems:
        raise TimelineError(problems, file)
    order = canonical_order(events, g)
    return Timeline(
        patient=patient, events=tuple(events[i] for i in order), positions=tuple(order), file=file
    )


#: within one time, facts come before treatments, and the close comes last.
_KIND_RANK = {
    "observation": 0,
    "finding": 1,
    "assessment": 2,
    "response": 3,
    "treatment": 4,
    "close": 5,
}


def canonical_order(events: Sequence[Event], g: Guideline) -> list[int]:
    """The indexes of `events` in decision order: by time; events at one time are one order
    set, put in an order that does not depend on the input's: facts first, then treatments by
    their drug class in the guideline's `order_sets.sequence` (antimicrobials before the
    immunosuppression they go alongside), then by content."""
    sequence = g.order_sets.sequence if g.order_sets is not None else ()
    rank = {cls: i for i, cls in enumerate(sequence)}
    last = len(rank)

    def drug_rank(drug: str) -> int:
        cls = g.drug_class_of(drug)
        return rank.get(cls, last) if cls is not None else last

    # Sorted by (time, kind, drug class), then by content: the content is made only for events
    # tied on the rest, and sorting each run of ties by it gives the order that sorting by the
    # whole key would (both sorts are stable).
    keys = [
        (ev.at, _KIND_RANK[ev.kind], drug_rank(ev.drug) if isinstance(ev, TreatmentEvent) else last)
        for ev in events
    ]
    order = sorted(range(len(events)), key=keys.__getitem__)
    out: list[int] = []
    for _, run in groupby(order, key=keys.__getitem__):
        tied = list(run)
        out += tied if len(tied) == 1 else _by_content([events[i] for i in tied], tied)
    return out


def _by_content(tied: list[Event], indexes: list[int]) -> list[int]:
    """`indexes` (of the events `tied`: one time, one kind) sorted by the events' content, the
    JSON text `json.dumps(event_to_json(ev), sort_keys=True)`.

    Observations or findings with distinct codes (the usual tie: labs drawn together) are sorted
    by their codes' JSON text, without making the content: each content is `{"at": "<the same
    time>", "code": ` then the code's JSON text then more, and no code's JSON text is the start
    of another's (each ends at its closing quote, which is never the next character of another
    text: a quote inside is escaped), so the first difference of two contents is within their
    codes' texts."""
    cls = type(tied[0])
    if cls is ObservationEvent or cls is FindingEvent:
        texts: list[str] = []
        for ev in tied:
            if type(ev) is not cls or type(ev.at) is not datetime:
                break
            code = ev.code  # both classes have one
            if type(code) is not str:
                break
            texts.append(_json_text(code))
        else:
            if len(set(texts)) == len(texts):  # distinct codes, distinct texts
                return [i for _, i in sorted(zip(texts, indexes, strict=True))]
    contents = [json.dumps(event_to_json(ev), sort_keys=True) for ev in tied]
    return [i for _, i in sorted(zip(contents, indexes, strict=True))]


#: `json.dumps`' own escaping of a text (ASCII only), with its quotes.
_json_text: Any = json.encoder.encode_basestring_ascii


def _check_patient(p: Patient, g: Guideline, problems: list[Problem]) -> Patient:

    if not p.id.strip():
        problems.append(Problem("the patient id is empty", "$.patient.id"))
    if p.age_years is not None and not 0 <= p.age_years <= 120:
        problems.append(Problem(f"implausible age {p.age_years:g} years", "$.patient.age_years"))
    if p.weight_kg is not None and not 0.3 <= p.weight_kg <= 400:
        problems.append(Problem(f"implausible weight {p.weight_kg:g} kg", "$.patient.weight_kg"))
    for i, rf in enumerate(p.risk_factors):
        if rf not in g.risk_factors:
            problems.append(
                Problem(
                    unknown_name("risk factor", rf, g.risk_factors), f"$.patient.risk_factors[{i}]"
                )
            )
    baseline: dict[str, Measurement] = {}
    for code, meas in p.baseline.items():
        canon = _canonical_value(
            code, meas.value, meas.unit, g=g, path=f"$.patient.baseline.{code}", problems=problems
        )
        if canon is not None:
            baseline[code] = canon
    return attrs.evolve(p, baseline=baseline)


def load_timeline(path: str | Path, g: Guideline) -> Timeline:
    """Read a timeline JSON file; every failure is a `TimelineError` naming the file."""
    shown = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise TimelineError([Problem(f"cannot read the file: {exc.strerror}")], shown) from None
    except UnicodeDecodeError as exc:
        raise TimelineError([Problem(f"not UTF-8 text ({exc.reason})")], shown) from None
    timeline = fast_timeline(text, g, shown)  # a valid native timeline: the same, faster
    if timeline is not None:
        return timeline
    from .jsonio import loads  # noqa: PLC0415 - one bounded JSON reader for every door

    data = loads(text, shown, TimelineError)
    if isinstance(data, Mapping) and data.get("resourceType") == "Bundle":
        from .fhir.input import bundle_to_timeline  # noqa: PLC0415 - FHIR is loaded only when used

        return bundle_to_timeline(data, g, shown)
    return parse_timeline(data, g, shown)


def event_to_json(ev: Event) -> dict[str, Any]:
    """The canonical JSON form of an event (timestamps in UTC, no null fields)."""
    cls = type(ev)
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(field.name for field in attrs.fields(cls))
    out: dict[str, Any] = {}
    for name in names:
        value = getattr(ev, name)
        if value is not None:
            out[name] = format_time(value) if isinstance(value, datetime) else value
    return out


#: the field names of each event class, in order (what `attrs.fields` gives, looked up once).
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def patient_to_json(p: Patient) -> dict[str, Any]:
    out: dict[str, Any] = {"id": p.id, "infusion_at": format_time(p.infusion_at)}
    if p.age_years is not None:
        out["age_years"] = p.age_years
    if p.weight_kg is not None:
        out["weight_kg"] = p.weight_kg
    if p.product is not None:
        out["product"] = {k: v for k, v in attrs.asdict(p.product).items() if v is not None}
    out["risk_factors"] = list(p.risk_factors)
    out["baseline"] = {k: {"value": v.value, "unit": v.unit} for k, v in p.baseline.items()}
    return out


def parse_patient(data: Any, g: Guideline, file: str | None = None) -> Patient:
    patient: Patient = _structure(data, Patient, file, "$.patient")
    problems: list[Problem] = []
    patient = _check_patient(patient, g, problems)
    if problems:
        raise TimelineError(problems, file)
    return patient


# --- the fast path: a valid native timeline, parsed by msgspec ------------------------------------
#
# `fast_timeline` decodes the JSON text straight into the typed structs below (msgspec: compiled
# JSON decoding and type checking in one pass), then checks the values as `parse_timeline` does.
# It gives the Timeline `parse_timeline` would, or None for anything it is not sure of, so that
# the caller takes the slow path (`jsonio.loads`, then `parse_timeline`) and gives today's exact
# message. It accepts only what the slow path accepts:
#
# - the structs accept only the shape and types cattrs accepts (no unknown key, no null for a
#   required field, no bool for a number, a float for no whole number, a `kind` of the six);
# - JSON bounds (`jsonio`): nesting is that of the structs (4 levels); msgspec refuses NaN,
#   Infinity, a number out of a float's range and a lone surrogate; an integer of more than
#   `MAX_INT_DIGITS` digits is at least 1e40, refused by `_BIG` here;
# - duplicate keys: the last one wins in both (as `json.loads` does);
# - every check of `check_event` and `_check_patient` is made here with the same helpers, and
#   any problem gives None (the slow path then names it).

_BIG = 1e39  # a number at least this large may be an integer beyond `jsonio.MAX_INT_DIGITS`


class _FastProduct(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, gc=False):
    name: str | None = None
    target: str | None = None
    costimulatory_domain: str | None = None


class _FastMeasurement(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, gc=False):
    value: float
    unit: str


class _FastPatient(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, gc=False):
    id: str
    infusion_at: str
    age_years: float | None = None
    weight_kg: float | None = None
    product: _FastProduct | None = None
    risk_factors: tuple[str, ...] = ()
    baseline: dict[str, _FastMeasurement] = msgspec.field(default_factory=dict)


class _FastEvent(
    msgspec.Struct, forbid_unknown_fields=True, kw_only=True, gc=False, tag_field="kind"
):
    at: str


class _FastObservation(_FastEvent, tag="observation", kw_only=True):
    code: str | None = None
    loinc: str | None = None
    value: float
    unit: str


class _FastAssessment(_FastEvent, tag="assessment", kw_only=True):
    crs_grade: int | None = None
    icans_grade: int | None = None
    infection: Infection | None = None
    antimicrobials: bool | None = None


class _FastFinding(_FastEvent, tag="finding", kw_only=True):
    code: str
    present: bool
    grade: int | None = None


class _FastTreatment(_FastEvent, tag="treatment", kw_only=True):
    drug: str
    dose: float | None = None
    unit: str | None = None
    route: str | None = None
    indication: Indication | None = None


class _FastResponse(_FastEvent, tag="response", kw_only=True):
    assessment: ResponseKind


class _FastClose(_FastEvent, tag="close", kw_only=True):
    reason: CloseReason


class _FastTimeline(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    patient: _FastPatient
    events: list[
        _FastObservation
        | _FastAssessment
        | _FastFinding
        | _FastTreatment
        | _FastResponse
        | _FastClose
    ]


_DECODER = msgspec.json.Decoder(_FastTimeline)


class _DeclinedError(Exception):
    """The fast path is not sure: the slow path takes the input."""


#: parsed timestamps, dose units and routes (each a pure function of its text); bounded.
_TIMES: dict[str, datetime] = {}
_DOSE_UNITS: dict[str, bool] = {}
_ROUTES: dict[str, bool] = {}
_MEMO_MAX = 1 << 15


def _time(text: str) -> datetime:
    t = _TIMES.get(text)
    if t is None:
        t = parse_time(text)  # a ValueError declines
        if len(_TIMES) >= _MEMO_MAX:
            _TIMES.clear()
        _TIMES[text] = t
    return t


def _memo(cache: dict[str, bool], text: str, good: Any) -> bool:
    ok = cache.get(text)
    if ok is None:
        ok = bool(good(text))
        if len(cache) >= _MEMO_MAX:
            cache.clear()
        cache[text] = ok
    return ok


def _good_dose_unit(unit: str) -> bool:
    return dose_unit_problem(unit) is None


def _good_route(route: str) -> bool:
    return route_code(route) is not None


class _Vocabulary:
    """What the fast path looks up in one guideline."""

    def __init__(self, g: Guideline) -> None:
        self.g = g
        self.loinc: dict[str, str] = {}
        for code, obs in g.observations.items():  # the first observation listing a LOINC code
            for loinc in obs.loinc:
                self.loinc.setdefault(loinc, code)


_VOCABULARIES: dict[int, _Vocabulary] = {}


def _vocabulary(g: Guideline) -> _Vocabulary:
    v = _VOCABULARIES.get(id(g))
    if v is None or v.g is not g:
        if len(_VOCABULARIES) >= 8:
            _VOCABULARIES.clear()
        v = _VOCABULARIES[id(g)] = _Vocabulary(g)
    return v


def _measurement(code: str, value: float, unit: str, g: Guideline) -> Measurement:
    if not -_BIG < value < _BIG:
        raise _DeclinedError
    scratch: list[Problem] = []
    measured = _canonical_value(code, value, unit, g=g, path="$", problems=scratch)
    if measured is None:
        raise _DeclinedError
    return measured


def _fast_patient(p: _FastPatient, g: Guideline) -> Patient:
    if not p.id.strip():
        raise _DeclinedError
    if p.age_years is not None and not 0 <= p.age_years <= 120:
        raise _DeclinedError
    if p.weight_kg is not None and not 0.3 <= p.weight_kg <= 400:
        raise _DeclinedError
    for rf in p.risk_factors:
        if rf not in g.risk_factors:
            raise _DeclinedError
    baseline = {
        code: _measurement(code, meas.value, meas.unit, g) for code, meas in p.baseline.items()
    }
    product = p.product
    return Patient(
        id=p.id,
        infusion_at=_time(p.infusion_at),
        age_years=p.age_years,
        weight_kg=p.weight_kg,
        product=None
        if product is None
        else Product(
            name=product.name,
            target=product.target,
            costimulatory_domain=product.costimulatory_domain,
        ),
        risk_factors=p.risk_factors,
        baseline=baseline,
    )


def _slot_setters(cls: type, names: tuple[str, ...]) -> tuple[Any, ...] | None:
    """The slot setters of the fields `names` of `cls` (all of them, in order), when its attrs
    `__init__` does nothing but set them (no validator, converter, pre- or post-init): then an
    object made by `object.__new__` and these setters is the very one `cls(...)` makes, made
    faster (a frozen class's `__init__` sets each field through `object.__setattr__`)."""
    fields = attrs.fields(cls)
    if tuple(f.name for f in fields) != names or "__slots__" not in cls.__dict__:
        return None
    if any(f.validator is not None or f.converter is not None for f in fields):
        return None
    if hasattr(cls, "__attrs_post_init__") or hasattr(cls, "__attrs_pre_init__"):
        return None
    return tuple(cls.__dict__[name].__set__ for name in names)


def _observation_maker() -> Any:
    setters = _slot_setters(ObservationEvent, ("at", "kind", "code", "loinc", "value", "unit"))
    if setters is None:  # pragma: no cover - the class changed: its own __init__, then

        def made(at: datetime, code: str, loinc: str | None, value: float, unit: str) -> Any:
            return ObservationEvent(at=at, code=code, loinc=loinc, value=value, unit=unit)

        return made
    s_at, s_kind, s_code, s_loinc, s_value, s_unit = setters
    new = object.__new__

    def make(at: datetime, code: str, loinc: str | None, value: float, unit: str) -> Any:
        ev = new(ObservationEvent)
        s_at(ev, at)
        s_kind(ev, "observation")
        s_code(ev, code)
        s_loinc(ev, loinc)
        s_value(ev, value)
        s_unit(ev, unit)
        return ev

    return make


def _assessment_maker() -> Any:
    names = ("at", "kind", "crs_grade", "icans_grade", "infection", "antimicrobials")
    setters = _slot_setters(AssessmentEvent, names)
    if setters is None:  # pragma: no cover - the class changed: its own __init__, then

        def made(at: datetime, crs: Any, icans: Any, infection: Any, antimicrobials: Any) -> Any:
            return AssessmentEvent(
                at=at,
                crs_grade=crs,
                icans_grade=icans,
                infection=infection,
                antimicrobials=antimicrobials,
            )

        return made
    s_at, s_kind, s_crs, s_icans, s_infection, s_antimicrobials = setters
    new = object.__new__

    def make(at: datetime, crs: Any, icans: Any, infection: Any, antimicrobials: Any) -> Any:
        ev = new(AssessmentEvent)
        s_at(ev, at)
        s_kind(ev, "assessment")
        s_crs(ev, crs)
        s_icans(ev, icans)
        s_infection(ev, infection)
        s_antimicrobials(ev, antimicrobials)
        return ev

    return make


#: `ObservationEvent(at=, code=, loinc=, value=, unit=)` and `AssessmentEvent(at=, crs_grade=,
#: icans_grade=, infection=, antimicrobials=)`, by position: the same objects, made faster.
_observation = _observation_maker()
_assessment = _assessment_maker()


def _fast_event(e: Any, g: Guideline, v: _Vocabulary) -> Event:
    at = _time(e.at)
    kind = type(e)
    if kind is _FastObservation:
        code = e.code
        if code is None:
            if e.loinc is None:
                raise _DeclinedError
            code = v.loinc.get(e.loinc)
            if code is None:
                raise _DeclinedError
        # `_canonical_value`, inlined: the unit as the table spells it, else `unit_factor`
        obs = g.observations.get(code)
        value = e.value
        if obs is None or not 0 <= value < _BIG:
            raise _DeclinedError
        factor = obs.units.get(e.unit)
        if factor is None:
            factor = unit_factor(e.unit, obs.units, canonical=obs.unit)
            if factor is None:
                raise _DeclinedError
        canonical = value * factor
        lo, hi = obs.plausible
        if not lo <= canonical <= hi:
            raise _DeclinedError
        observation: ObservationEvent = _observation(
            at, code, e.loinc, round(canonical, 6), obs.unit
        )
        return observation
    if kind is _FastAssessment:
        crs, icans = e.crs_grade, e.icans_grade
        if (crs is not None and not 0 <= crs <= 4) or (icans is not None and not 0 <= icans <= 4):
            raise _DeclinedError
        if crs is None and icans is None and e.infection is None and e.antimicrobials is None:
            raise _DeclinedError
        assessment: AssessmentEvent = _assessment(at, crs, icans, e.infection, e.antimicrobials)
        return assessment
    if kind is _FastFinding:
        if e.code not in g.findings or (e.grade is not None and not 1 <= e.grade <= 5):
            raise _DeclinedError
        return FindingEvent(at=at, code=e.code, present=e.present, grade=e.grade)
    if kind is _FastTreatment:
        drug = e.drug.strip().lower()
        dose, unit, route = e.dose, e.unit, e.route
        if not drug or (dose is not None and not 0 < dose < _BIG):
            raise _DeclinedError
        if unit is not None:
            if not _memo(_DOSE_UNITS, unit, _good_dose_unit):
                raise _DeclinedError
        elif dose is not None:
            raise _DeclinedError
        if route is not None and not _memo(_ROUTES, route, _good_route):
            raise _DeclinedError
        return TreatmentEvent(
            at=at, drug=drug, dose=dose, unit=unit, route=route, indication=e.indication
        )
    if kind is _FastResponse:
        return ResponseEvent(at=at, assessment=e.assessment)
    if kind is _FastClose:
        return CloseEvent(at=at, reason=e.reason)
    raise _DeclinedError  # pragma: no cover - the decoder gives only the kinds above


def fast_timeline(text: str | bytes, g: Guideline, file: str | None = None) -> Timeline | None:
    """The Timeline of a JSON text that is a valid native timeline, the very one that
    `parse_timeline(jsonio.loads(text))` gives; None for anything else (not JSON, beyond the
    bounds, a FHIR Bundle, any problem at all): the caller then takes that slow path, which
    names the problem."""
    try:
        raw = _DECODER.decode(text)
        vocabulary = _vocabulary(g)
        patient = _fast_patient(raw.patient, g)
        events = [_fast_event(e, g, vocabulary) for e in raw.events]
    except Exception:  # declined, not JSON, beyond a bound, a bad time: all for the slow path
        return None
    infusion = patient.infusion_at
    if any(
        isinstance(ev, CloseEvent) and ev.reason == "death" and ev.at < infusion for ev in events
    ):
        return None
    order = canonical_order(events, g)
    return Timeline(
        patient=patient, events=tuple(events[i] for i in order), positions=tuple(order), file=file
    )
