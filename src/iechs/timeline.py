"""Patient timelines: the JSON input format of DESIGN.md, parsed into typed, canonical events.

Parsing is cattrs structuring (shape and types) followed by checks against the guideline's
vocabulary (codes, units, plausible ranges). Values are converted to the canonical unit; events
are sorted by time, stable for ties. Every problem names its JSON path, e.g. `$.events[3].unit`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn

from .errors import Problem, TimelineError, structuring_problems, unknown_name
from .model import Guideline
from .units import unit_factor
from .vocab import ROUTES, dose_unit_problem, route_code

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
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _shown(value: Any) -> str:
    """A value as the JSON author wrote it, for messages (objects and lists by kind)."""
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return json.dumps(value) if isinstance(value, str | int | float | bool) else repr(value)


def _make_converter() -> cattrs.Converter:
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


_CONVERTER = _make_converter()


@attrs.frozen(kw_only=True)
class _RawTimeline:
    patient: Patient
    events: list[Event]


def _structure(data: Any, cls: type[Any], file: str | None, root: str = "$") -> Any:
    try:
        return _CONVERTER.structure(data, cls)
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

    def key(i: int) -> tuple[Any, ...]:
        ev = events[i]
        cls_rank = len(rank)
        if isinstance(ev, TreatmentEvent):
            cls = g.drug_class_of(ev.drug)
            cls_rank = rank.get(cls, len(rank)) if cls is not None else len(rank)
        content = json.dumps(event_to_json(ev), sort_keys=True)
        return (ev.at, _KIND_RANK[ev.kind], cls_rank, content)

    return sorted(range(len(events)), key=key)


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
    from .jsonio import loads  # noqa: PLC0415 - one bounded JSON reader for every door

    data = loads(text, shown, TimelineError)
    if isinstance(data, Mapping) and data.get("resourceType") == "Bundle":
        from .fhir.input import bundle_to_timeline  # noqa: PLC0415 - FHIR is loaded only when used

        return bundle_to_timeline(data, g, shown)
    return parse_timeline(data, g, shown)


def event_to_json(ev: Event) -> dict[str, Any]:
    """The canonical JSON form of an event (timestamps in UTC, no null fields)."""
    out: dict[str, Any] = {}
    for field in attrs.fields(type(ev)):
        value = getattr(ev, field.name)
        if value is None:
            continue
        out[field.name] = format_time(value) if isinstance(value, datetime) else value
    return out


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
