"""The fast path of timeline parsing (`iechs.timeline.fast_timeline`, msgspec) against the slow
path it stands in for (`jsonio.loads`, then `parse_timeline`), and the faster `format_time`,
`event_to_json` and `canonical_order` against the implementations they replace.

The fast path may decline anything (the slow path then takes the input); what it accepts, the
slow path accepts too, into the very same Timeline. So at every door that uses it (the cohort's
`timeline_of`, `load_timeline`) the answer is the slow path's: the same Timeline, or the same
message.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from iechs import Guideline, IechsError
from iechs.cohort import Encoded, _line, replay_encoded, timeline_of
from iechs.errors import TimelineError
from iechs.jsonio import loads
from iechs.timeline import (
    AssessmentEvent,
    CloseEvent,
    Event,
    FindingEvent,
    ObservationEvent,
    ResponseEvent,
    Timeline,
    TreatmentEvent,
    canonical_order,
    event_to_json,
    fast_timeline,
    format_time,
    load_timeline,
    parse_timeline,
)
from sibling import load

fuzz = load("test_timeline_fuzz")

# --- the references: today's slow path, and the implementations replaced -------------------------


def slow(text: str, g: Guideline, file: str = "c.jsonl:1") -> Timeline | str:
    """What the cohort's `timeline_of` gave before the fast path: the Timeline, or the rendered
    error."""
    from iechs.fhir.input import bundle_to_timeline

    try:
        data = loads(text, file, lines=False)
        if isinstance(data, dict) and data.get("resourceType") == "Bundle":
            return bundle_to_timeline(data, g, file)
        return parse_timeline(data, g, file)
    except IechsError as exc:
        return exc.render()


def via_cohort(text: str, g: Guideline, file: str = "c.jsonl:1") -> Timeline | str:
    try:
        return timeline_of(file, text, g)
    except IechsError as exc:
        return exc.render()


def same(a: Timeline | str, b: Timeline | str) -> None:
    """Equal, and equal in every detail `==` passes over (-0.0 and 0.0, 1 and 1.0)."""
    assert a == b
    assert repr(a) == repr(b)


def check_text(text: str, g: Guideline) -> Timeline | None:
    """The fast path gives the slow path's Timeline or declines; the cohort door gives the slow
    path's answer either way."""
    reference = slow(text, g)
    fast = fast_timeline(text, g, "c.jsonl:1")
    if fast is not None:
        assert isinstance(reference, Timeline), (text, reference)
        same(fast, reference)
    same(via_cohort(text, g), reference)
    return fast


def old_format_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def old_event_to_json(ev: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in attrs.fields(type(ev)):
        value = getattr(ev, field.name)
        if value is None:
            continue
        out[field.name] = old_format_time(value) if isinstance(value, datetime) else value
    return out


_KIND_RANK = {
    "observation": 0,
    "finding": 1,
    "assessment": 2,
    "response": 3,
    "treatment": 4,
    "close": 5,
}


def old_canonical_order(events: list[Any], g: Guideline) -> list[int]:
    sequence = g.order_sets.sequence if g.order_sets is not None else ()
    rank = {cls: i for i, cls in enumerate(sequence)}

    def key(i: int) -> tuple[Any, ...]:
        ev = events[i]
        cls_rank = len(rank)
        if isinstance(ev, TreatmentEvent):
            cls = g.drug_class_of(ev.drug)
            cls_rank = rank.get(cls, len(rank)) if cls is not None else len(rank)
        content = json.dumps(old_event_to_json(ev), sort_keys=True)
        return (ev.at, _KIND_RANK[ev.kind], cls_rank, content)

    return sorted(range(len(events)), key=key)


# --- valid input: the same Timeline ---------------------------------------------------------------


@given(data=st.data())
def test_valid_timelines_parse_alike(guideline: Guideline, data: st.DataObject) -> None:
    doc = data.draw(fuzz.valid_timelines(guideline), label="doc")
    ascii_only = data.draw(st.booleans(), label="ensure_ascii")
    indent = data.draw(st.sampled_from([None, 1, "\t"]), label="indent")
    text = json.dumps(doc, ensure_ascii=ascii_only, indent=indent)
    fast = fast_timeline(text, guideline, "c.jsonl:1")
    assert fast is not None, text  # a valid timeline takes the fast path
    same(fast, parse_timeline(json.loads(text), guideline, "c.jsonl:1"))
    check_text(text, guideline)


def test_the_synthetic_cohort_takes_the_fast_path(guideline: Guideline) -> None:
    from iechs.synthetic import synthetic_cohort

    for doc in synthetic_cohort(40, seed=11):
        doc.pop("course")
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        fast = fast_timeline(text, guideline, "x")
        assert fast is not None
        same(fast, parse_timeline(json.loads(text), guideline, "x"))


def test_load_timeline_takes_either_path_alike(guideline: Guideline, tmp_path: Path) -> None:
    examples = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.json"))
    native = [p for p in examples if '"resourceType"' not in p.read_text(encoding="utf-8")]
    assert native
    for path in native:
        text = path.read_text(encoding="utf-8")
        same(load_timeline(path, guideline), parse_timeline(json.loads(text), guideline, str(path)))
    bad = tmp_path / "bad.json"
    text = '{"patient": {"id": "p", "infusion_at": "2026-01-01T10:00Z"}, "events": 1}'
    bad.write_text(text, encoding="utf-8")
    with pytest.raises(IechsError) as expected:
        parse_timeline(loads(text, str(bad), TimelineError), guideline, str(bad))
    with pytest.raises(IechsError) as caught:
        load_timeline(bad, guideline)
    assert caught.value.render() == expected.value.render()
    assert "$.events" in caught.value.render()


# --- invalid input: the slow path's message -------------------------------------------------------


@given(data=st.data())
def test_near_valid_timelines_answer_alike(guideline: Guideline, data: st.DataObject) -> None:
    doc = data.draw(fuzz.near_valid_timelines(guideline), label="doc")
    check_text(json.dumps(doc), guideline)


@given(data=st.data())
def test_random_json_answers_alike(guideline: Guideline, data: st.DataObject) -> None:
    doc = data.draw(
        fuzz.json_values
        | st.fixed_dictionaries(
            {"patient": fuzz.json_values, "events": st.lists(fuzz.json_values)}
        ),
        label="doc",
    )
    check_text(json.dumps(doc), guideline)


#: characters a mutation puts into JSON text: its syntax, numbers, escapes, and a few others.
_JSONISH = '{}[]:,"\\ 0123456789.eE+-tfnul' + "\t\n" + "é\u2028\U0001f600"


@given(data=st.data())
def test_mutated_json_text_answers_alike(guideline: Guideline, data: st.DataObject) -> None:
    """Valid timeline text cut, spliced and garbled character by character: wherever the two
    JSON readers could differ (numbers, escapes, whitespace, structure), the answer is the slow
    path's."""
    doc = data.draw(fuzz.valid_timelines(guideline), label="doc")
    text = json.dumps(doc)
    rng = random.Random(data.draw(st.integers(0, 2**32), label="seed"))
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        at = rng.randrange(len(text) + 1)
        action = rng.choice(["insert", "delete", "replace", "duplicate"])
        piece = "".join(rng.choice(_JSONISH) for _ in range(rng.randint(1, 3)))
        if action == "insert":
            text = text[:at] + piece + text[at:]
        elif action == "delete":
            text = text[:at] + text[at + rng.randint(1, 3) :]
        elif action == "replace":
            text = text[:at] + piece + text[at + len(piece) :]
        else:
            text = text[:at] + text[at : at + rng.randint(1, 30)] + text[at:]
    check_text(text, guideline)


def _valid(g: Guideline, event: str = "") -> str:
    extra = f", {event}" if event else ""
    return (
        '{"patient": {"id": "P1", "infusion_at": "2026-01-01T10:00:00Z"}, "events": ['
        '{"at": "2026-01-02T10:00:00Z", "kind": "observation", "code": "ferritin", '
        f'"value": 800, "unit": "ng/mL"}}{extra}]}}'
    )


TREATMENT = '{"at": "2026-01-02T11:00:00Z", "kind": "treatment", "drug": "anakinra", '

#: text the fast path must decline (or accept alike): bounds, duplicates, encodings.
EDGE_CASES: dict[str, Callable[[Guideline], str]] = {
    "valid": _valid,
    "41-digit dose": lambda g: _valid(g, TREATMENT + f'"dose": {"1" * 41}, "unit": "mg"}}'),
    "40-digit dose": lambda g: _valid(g, TREATMENT + f'"dose": {"1" * 40}, "unit": "mg"}}'),
    "39-digit dose": lambda g: _valid(g, TREATMENT + f'"dose": {"1" * 39}, "unit": "mg"}}'),
    "huge float dose": lambda g: _valid(g, TREATMENT + '"dose": 1e300, "unit": "mg"}'),
    "overflowing dose": lambda g: _valid(g, TREATMENT + '"dose": 1e400, "unit": "mg"}'),
    "NaN dose": lambda g: _valid(g, TREATMENT + '"dose": NaN, "unit": "mg"}'),
    "Infinity dose": lambda g: _valid(g, TREATMENT + '"dose": Infinity, "unit": "mg"}'),
    "tiny dose": lambda g: _valid(g, TREATMENT + '"dose": 1e-400, "unit": "mg"}'),
    "negative zero": lambda g: _valid(g).replace('"value": 800', '"value": -0.0'),
    "integer negative zero": lambda g: _valid(g).replace('"value": 800', '"value": -0'),
    "41-digit grade": lambda g: _valid(
        g, '{"at": "2026-01-02T11:00:00Z", "kind": "assessment", "crs_grade": ' + "1" * 41 + "}"
    ),
    "bool grade": lambda g: _valid(
        g, '{"at": "2026-01-02T11:00:00Z", "kind": "assessment", "crs_grade": true}'
    ),
    "float grade": lambda g: _valid(
        g, '{"at": "2026-01-02T11:00:00Z", "kind": "assessment", "crs_grade": 1.0}'
    ),
    "lone surrogate": lambda g: _valid(g).replace('"P1"', '"P\\ud800"'),
    "lone low surrogate": lambda g: _valid(g).replace('"P1"', '"\\udfffP"'),
    "surrogate pair": lambda g: _valid(g).replace('"P1"', '"P\\ud83d\\ude00"'),
    "lone surrogate key": lambda g: _valid(g).replace('"id"', '"\\ud800"'),
    "escapes": lambda g: _valid(g).replace('"P1"', '"P\\"\\\\\\/\\b\\f\\n\\r\\t\\u0000\\u00e9"'),
    "duplicate key, last valid": lambda g: _valid(g).replace(
        '"value": 800', '"value": "x", "value": 800'
    ),
    "duplicate key, first valid": lambda g: _valid(g).replace(
        '"value": 800', '"value": 800, "value": 900'
    ),
    "duplicate kind": lambda g: _valid(g).replace(
        '"kind": "observation"', '"kind": "observation", "kind": "finding"'
    ),
    "duplicate baseline": lambda g: _valid(g).replace(
        '"id": "P1"',
        '"id": "P1", "baseline": {"ferritin": {"value": 100, "unit": "ng/mL"}, '
        '"ldh": {"value": 200, "unit": "U/L"}, "ferritin": {"value": 300, "unit": "ug/L"}}',
    ),
    "duplicate patient": lambda g: _valid(g).replace('{"patient": ', '{"patient": 1, "patient": '),
    "deep nesting": lambda g: _valid(g).replace(
        '"value": 800', '"value": ' + "[" * 100 + "]" * 100
    ),
    "deep unknown key": lambda g: _valid(g).replace(
        '"value": 800', '"value": 800, "x": ' + "[" * 100 + "]" * 100
    ),
    "byte order mark": lambda g: "\ufeff" + _valid(g),
    "trailing garbage": lambda g: _valid(g) + " x",
    "trailing whitespace": lambda g: "\n " + _valid(g) + " \r\n",
    "raw control character": lambda g: _valid(g).replace('"P1"', '"P\t1"'),
    "FHIR Bundle": lambda g: '{"resourceType": "Bundle", "type": "collection", "entry": []}',
    "not an object": lambda g: "[]",
    "empty": lambda g: "",
    "no zone": lambda g: _valid(g).replace("2026-01-02T10:00:00Z", "2026-01-02T10:00:00"),
    "far offset": lambda g: _valid(g).replace("2026-01-02T10:00:00Z", "0001-01-01T00:00:00+01:00"),
    "offset": lambda g: _valid(g).replace("2026-01-02T10:00:00Z", "2026-01-02T10:00:00.5+05:30"),
    "short time": lambda g: _valid(g).replace("2026-01-02T10:00:00Z", "2026-01-02T10Z"),
    "unknown kind": lambda g: _valid(g).replace('"kind": "observation"', '"kind": "lab"'),
    "no kind": lambda g: _valid(g).replace('"kind": "observation", ', ""),
    "null kind": lambda g: _valid(g).replace('"kind": "observation"', '"kind": null'),
    "null optional": lambda g: _valid(g).replace(
        '"code": "ferritin"', '"code": "ferritin", "loinc": null'
    ),
    "null required": lambda g: _valid(g).replace('"unit": "ng/mL"', '"unit": null'),
    "extra key": lambda g: _valid(g).replace('"id": "P1"', '"id": "P1", "sex": "F"'),
    "extra event key": lambda g: _valid(g).replace('"unit": "ng/mL"', '"unit": "ng/mL", "x": 1'),
    "extra product key": lambda g: _valid(g).replace(
        '"id": "P1"', '"id": "P1", "product": {"y": 1}'
    ),
    "extra top-level key": lambda g: _valid(g).replace('{"patient"', '{"x": 1, "patient"'),
    "unknown unit": lambda g: _valid(g).replace('"unit": "ng/mL"', '"unit": "mg/furlong"'),
    "UCUM unit": lambda g: _valid(g).replace('"unit": "ng/mL"', '"unit": "mg/L"'),
    "death before infusion": lambda g: _valid(
        g, '{"at": "2025-12-31T10:00:00Z", "kind": "close", "reason": "death"}'
    ),
    "route and dose": lambda g: _valid(
        g, TREATMENT + '"dose": 100, "unit": "mg", "route": "Intravenous route"}'
    ),
    "bad route": lambda g: _valid(g, TREATMENT + '"dose": 100, "unit": "mg", "route": "ear"}'),
    "dose without unit": lambda g: _valid(g, TREATMENT + '"dose": 100}'),
    "blank drug": lambda g: (
        '{"patient": {"id": "P1", "infusion_at": "2026-01-01T10:00:00Z"}, '
        '"events": [{"at": "2026-01-02T11:00:00Z", "kind": "treatment", "drug": " "}]}'
    ),
    "loinc only": lambda g: _valid(g).replace(
        '"code": "ferritin"', f'"loinc": "{g.observations["ferritin"].loinc[0]}"'
    ),
    "unknown loinc": lambda g: _valid(g).replace('"code": "ferritin"', '"loinc": "0000-0"'),
}


@pytest.mark.parametrize("name", sorted(EDGE_CASES))
def test_edge_cases_answer_alike(guideline: Guideline, name: str) -> None:
    text = EDGE_CASES[name](guideline)
    fast = check_text(text, guideline)
    accepted = {
        "valid",
        "39-digit dose",
        "negative zero",
        "integer negative zero",
        "surrogate pair",
        "escapes",
        "duplicate key, first valid",
        "duplicate baseline",
        "trailing whitespace",
        "offset",
        "short time",
        "null optional",
        "UCUM unit",
        "route and dose",
        "loinc only",
    }
    # each either takes the fast path or is declined, as planned (40 digits: a valid dose, but
    # the fast path cannot tell it from 41, so declines it)
    assert (fast is not None) == (name in accepted), name


def test_declined_input_gives_todays_message(guideline: Guideline) -> None:
    text = EDGE_CASES["41-digit dose"](guideline)
    with pytest.raises(IechsError) as caught:
        timeline_of("c.jsonl:3", text, guideline)
    assert caught.value.render() == (
        "c.jsonl:3: $.events[1].dose: an integer of 41 digits (at most 40)"
    )
    text = EDGE_CASES["unknown unit"](guideline)
    with pytest.raises(IechsError) as caught:
        timeline_of("c.jsonl:4", text, guideline)
    assert caught.value.render().startswith(
        "c.jsonl:4: $.events[0].unit: unknown unit 'mg/furlong' for ferritin"
    )


# --- the JSON readers agree on numbers and text ---------------------------------------------------


@given(
    st.from_regex(r"\A-?(0|[1-9][0-9]{0,45})(\.[0-9]{1,30})?([eE][+-]?[0-9]{1,3})?\Z")
    | st.floats(allow_nan=False, allow_infinity=False).map(repr)
    | st.integers(-(10**45), 10**45).map(str)
)
def test_numbers_read_alike(number: str) -> None:
    import msgspec

    try:
        fast = msgspec.json.decode(number, type=float)
    except msgspec.ValidationError:
        return  # out of range: declined
    reference = float(json.loads(number))
    assert repr(fast) == repr(reference)


@given(st.text(), st.booleans())
def test_text_reads_alike(text: str, ascii_only: bool) -> None:
    import msgspec

    encoded = json.dumps(text, ensure_ascii=ascii_only)
    try:
        fast = msgspec.json.decode(encoded, type=str)
    except (msgspec.DecodeError, UnicodeError):
        assert any(0xD800 <= ord(c) <= 0xDFFF for c in text)  # lone surrogates: declined
        return
    assert fast == text


# --- format_time, event_to_json, canonical_order: the same output as before ----------------------

EDGE_TIMES = [
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(9, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(999, 12, 31, 23, 59, 59, tzinfo=UTC),
    datetime(1000, 1, 1, tzinfo=UTC),
    datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC),
    datetime(2026, 1, 5, 11, 0, 0, 1, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2026, 3, 29, 1, 30, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
    datetime(1000, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1))),  # year 999 in UTC
    datetime(9999, 12, 31, 22, tzinfo=timezone(timedelta(hours=-1, seconds=-1))),
    datetime(2026, 1, 5, 11, 0, tzinfo=UTC),
    datetime(2026, 1, 5, 11, 0, tzinfo=timezone(timedelta(0))),
    datetime(2026, 1, 5, 11, 0),  # naive: read as local time by both
]


class _Subclass(datetime):
    pass


def _both(t: datetime) -> None:
    try:
        expected: str | type[BaseException] = old_format_time(t)
    except (OverflowError, ValueError) as exc:
        expected = type(exc)
    for _ in range(2):  # the second time from the cache
        try:
            got: str | type[BaseException] = format_time(t)
        except (OverflowError, ValueError) as exc:
            got = type(exc)
        assert got == expected, t


@pytest.mark.parametrize("t", EDGE_TIMES, ids=str)
def test_format_time_edges(t: datetime) -> None:
    _both(t)
    _both(_Subclass.fromisoformat(t.isoformat()))


@given(
    st.datetimes(
        timezones=st.just(UTC) | fuzz.zones | st.timezones(),
        allow_imaginary=False,
    )
    | st.datetimes(
        min_value=datetime(1, 1, 1), max_value=datetime(1100, 1, 1), timezones=st.just(UTC)
    )
)
def test_format_time_as_before(t: datetime) -> None:
    _both(t)


texts = st.text(max_size=6) | st.sampled_from(["ferritin", "ldh", "ast", "a", "a b", 'a"', "a\\"])
numbers = (
    st.floats()
    | st.integers(-(10**20), 10**20)
    | st.sampled_from([0.0, -0.0, 1e16, 1e-7, True, False])
)
instants = st.sampled_from(
    [
        datetime(2026, 1, 5, 12, tzinfo=UTC),
        datetime(2026, 1, 5, 13, tzinfo=timezone(timedelta(hours=1))),
    ]
) | st.datetimes(timezones=st.just(UTC))


def events(g: Guideline) -> st.SearchStrategy[Any]:
    """Events of every kind with any values, often tied on time: what `canonical_order` and
    `event_to_json` may be given (by the parser, the service, an embedder)."""
    maybe_texts = st.none() | texts
    maybe_numbers = st.none() | numbers
    return st.one_of(
        st.builds(
            ObservationEvent,
            at=instants,
            code=st.none() | st.sampled_from(["ferritin", "ldh", "ast"]) | texts,
            loinc=maybe_texts,
            value=numbers,
            unit=texts,
        ),
        st.builds(
            FindingEvent, at=instants, code=texts, present=st.booleans(), grade=maybe_numbers
        ),
        st.builds(
            AssessmentEvent,
            at=instants,
            crs_grade=maybe_numbers,
            icans_grade=maybe_numbers,
            infection=st.none() | st.sampled_from(["none", "suspected"]),
            antimicrobials=st.none() | st.booleans(),
        ),
        st.builds(
            TreatmentEvent,
            at=instants,
            drug=st.sampled_from(sorted(g.drugs)) | texts,
            dose=maybe_numbers,
            unit=maybe_texts,
            route=maybe_texts,
            indication=st.none() | st.just("iec_hs"),
        ),
        st.builds(ResponseEvent, at=instants, assessment=st.sampled_from(["stable", "improving"])),
        st.builds(  # a kind that is not its class's: tied with the other class's events
            ObservationEvent,
            at=instants,
            kind=st.sampled_from(sorted(_KIND_RANK)),
            code=texts,
            value=numbers,
            unit=texts,
        ),
        st.builds(CloseEvent, at=instants, reason=st.sampled_from(["death", "transfer"])),
    )


@given(data=st.data())
def test_event_json_and_order_as_before(guideline: Guideline, data: st.DataObject) -> None:
    evs: list[Event] = data.draw(st.lists(events(guideline), max_size=12), label="events")
    for ev in evs:
        assert json.dumps(event_to_json(ev)) == json.dumps(old_event_to_json(ev))
    assert canonical_order(evs, guideline) == old_canonical_order(evs, guideline)


def test_ties_of_labs_are_ordered_as_before(guideline: Guideline) -> None:
    at = datetime(2026, 1, 5, 12, tzinfo=UTC)
    codes = ["ldh", "ferritin", "ast", "a", "a b", "a!", 'a"', "a\\", "é", "\x7f", "a\n", "ab"]
    for seed in range(200):
        rng = random.Random(seed)
        chosen = rng.sample(codes, rng.randint(2, len(codes)))
        if seed % 3 == 0:
            chosen.append(chosen[0])  # a duplicate code: ordered by the whole content
        cls = rng.choice([ObservationEvent, FindingEvent])
        evs: list[Event] = [
            ObservationEvent(
                at=at, code=c, value=rng.random(), unit=rng.choice(string.ascii_letters)
            )
            if cls is ObservationEvent
            else FindingEvent(at=at, code=c, present=rng.random() < 0.5)
            for c in chosen
        ]
        assert canonical_order(evs, guideline) == old_canonical_order(evs, guideline)


# --- the cohort's results -------------------------------------------------------------------------


@given(
    st.dictionaries(
        st.text(max_size=5),
        st.none()
        | st.booleans()
        | st.integers()
        | st.text()
        | st.lists(st.dictionaries(st.text(max_size=3), st.text() | st.integers(), max_size=3)),
        max_size=6,
    )
)
def test_result_lines_as_before(result: dict[str, Any]) -> None:
    assert _line(result) == json.dumps(result, sort_keys=True, separators=(",", ":")) + "\n"


def test_workers_send_lines(guideline: Guideline, tmp_path: Path) -> None:
    from iechs import cohort
    from iechs.engine import Engine

    cohort._ENGINE = Engine(guideline)
    good = (Path(__file__).resolve().parents[1] / "examples").glob("*.json")
    text = next(p for p in sorted(good) if '"resourceType"' not in p.read_text()).read_text()
    got = replay_encoded(("a.json", text))
    assert isinstance(got, Encoded)
    assert not got.error
    assert got.line == _line(cohort.replay_one(("a.json", text)))
    assert replay_encoded(("b.json", "{")).error


def test_long_runs_show_progress_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from iechs import cohort
    from iechs.cli import main

    cohort_file = tmp_path / "c.jsonl"
    assert main(["synth", "--patients", "3", "--seed", "7", "--out", str(cohort_file)]) == 0
    monkeypatch.setattr(cohort, "PROGRESS_EVERY", 0.0)
    argv = ["replay-cohort", str(cohort_file), "--workers", "1", "--out", str(tmp_path / "r.jsonl")]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "replaying: 3 of 3 timelines (100%)" in err
    assert main([*argv[:-2], "--out", str(tmp_path / "s.jsonl"), "--no-progress"]) == 0
    assert "replaying:" not in capsys.readouterr().err


def old_drug_actions(decisions: Any) -> list[dict[str, Any]]:
    """`outcomes._drug_actions` as it was: every step's event rendered."""
    open_runs: dict[tuple[str, str], dict[str, Any]] = {}
    done: list[dict[str, Any]] = []
    for d in decisions:
        event = d.event
        given = event.get("drug") if event.get("kind") == "treatment" else None
        for key, run in open_runs.items():
            if given == key[1] and "given_at" not in run:
                run["given_at"] = old_format_time(d.at)
        asked = {(a.code, a.drug): a for a in d.actions if a.drug is not None}
        for key in [k for k in open_runs if k not in asked]:
            run = open_runs.pop(key)
            run["until"] = old_format_time(d.at)
            done.append(run)
        for key in asked:
            if key not in open_runs:
                open_runs[key] = {
                    "code": key[0],
                    "drug": key[1],
                    "state": d.target,
                    "from": old_format_time(d.at),
                }
    done.extend(open_runs.values())
    for run in done:
        run["followed"] = "given_at" in run
    done.sort(key=lambda r: (r["from"], r["code"], r["drug"]))
    return done


def test_summaries_as_before(guideline: Guideline) -> None:
    from iechs.engine import Engine
    from iechs.outcomes import summarise
    from iechs.synthetic import synthetic_cohort

    engine = Engine(guideline)
    followed = unfollowed = 0
    for doc in synthetic_cohort(60, seed=3):
        doc.pop("course")
        # some treatments left out, so that some actions are not followed
        doc["events"] = [
            ev for i, ev in enumerate(doc["events"]) if ev["kind"] != "treatment" or i % 3
        ]
        timeline = parse_timeline(doc, guideline)
        fresh = engine.run(timeline).decisions  # decisions whose events are not yet rendered
        summary = summarise("s", timeline.patient.id, fresh)
        rendered = engine.run(timeline).decisions
        assert summary["actions"] == old_drug_actions(rendered)
        followed += sum(a["followed"] for a in summary["actions"])
        unfollowed += sum(not a["followed"] for a in summary["actions"])
    assert followed
    assert unfollowed
