"""Property tests of `iechs.parse_timeline` on arbitrary and near-valid JSON documents.

Whatever the document, parsing either returns a `Timeline` whose events are in time order, or
raises an `IechsError` whose problems name a JSON path; no other exception may escape.

Three sources of documents: random JSON (any shape); valid timelines built from the guideline's
vocabulary (which must parse); and those valid timelines with a few random mutations (a value
replaced by junk, a vocabulary word of the wrong field, a bad number or timestamp; a key removed;
a key added), which reach every check of the parser rather than stopping at the top level.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

import iechs

EVENT_KINDS = ("observation", "assessment", "finding", "treatment", "response", "close")
INFECTION = ("none", "suspected", "confirmed")
RESPONSE = ("improving", "stable", "worsening", "resolved")
CLOSE_REASONS = ("follow_up_complete", "death", "transfer")
INDICATIONS = ("iec_hs", "crs", "icans", "infection", "other")
INFUSION = datetime(2026, 1, 1, 10, tzinfo=UTC)
#: the kinds of facts, in the order they come within one time (DESIGN.md, order sets).
FACTS = ("observation", "finding", "assessment", "response")

# --- random JSON ---------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**1024, max_value=2**1100)  # too large for a float
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=24,
)

# --- timestamps and numbers ----------------------------------------------------------------------

#: UTC and whole-minute offsets within a day, like real time zones.
zones = st.just(UTC) | st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)


@st.composite
def good_timestamps(draw: st.DrawFn) -> str:
    """ISO 8601 with a zone (Z or an offset), from two days before infusion to two months after;
    whole hours, so that ties are common."""
    t = INFUSION + timedelta(hours=draw(st.integers(-48, 60 * 24)))
    text = t.astimezone(draw(zones)).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") and draw(st.booleans()) else text


@st.composite
def bad_timestamps(draw: st.DrawFn) -> Any:
    """No zone, junk text, the extremes of the calendar, or not text at all."""
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return draw(good_timestamps())[:19]  # the same time without its zone
    if choice == 1:
        return draw(
            st.sampled_from(["", "yesterday", "2026-13-40T99:00:00Z", "2026-01-01 10:00", "Z"])
            | st.text(max_size=25)
        )
    if choice == 2:  # anywhere in the calendar, e.g. 0001-01-01T00:00:00+01:00
        return draw(st.datetimes(timezones=st.none() | zones)).isoformat()
    return draw(json_scalars)


bad_numbers = st.one_of(
    st.integers(-(10**6), -1),
    st.floats(max_value=-1e-9),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=2**1024, max_value=2**1100),
    st.sampled_from([5e7, -0.0, 1e308, float("nan"), float("inf"), float("-inf"), True]),
)

# --- valid timelines -----------------------------------------------------------------------------


def valid_timelines(g: iechs.Guideline) -> st.SearchStrategy[dict[str, Any]]:
    """Timelines that must parse: vocabulary codes, fitting units, plausible values, zones."""

    def measurement(code: str) -> st.SearchStrategy[dict[str, Any]]:
        obs = g.observations[code]
        lo, hi = obs.plausible

        @st.composite
        def build(draw: st.DrawFn) -> dict[str, Any]:
            unit = draw(st.sampled_from(sorted(obs.units)))
            canonical = lo + draw(st.floats(0.01, 0.99)) * (hi - lo)
            value: float | int = canonical / obs.units[unit]
            if draw(st.booleans()) and obs.units[unit] == 1:
                value = int(value)  # JSON integers too
            return {"value": value, "unit": unit}

        return build()

    @st.composite
    def observation(draw: st.DrawFn) -> dict[str, Any]:
        code = draw(st.sampled_from(sorted(g.observations)))
        ev: dict[str, Any] = {"at": draw(good_timestamps()), "kind": "observation"}
        loinc = g.observations[code].loinc
        if len(loinc) > 0 and draw(st.booleans()):
            ev["loinc"] = draw(st.sampled_from(sorted(loinc)))
        else:
            ev["code"] = code
        ev.update(draw(measurement(code)))
        return ev

    grade = st.integers(0, 4)
    assessment = st.fixed_dictionaries(
        {"at": good_timestamps(), "kind": st.just("assessment"), "crs_grade": grade},
        optional={
            "icans_grade": grade,
            "infection": st.sampled_from(INFECTION),
            "antimicrobials": st.booleans(),
        },
    )
    finding = st.fixed_dictionaries(
        {
            "at": good_timestamps(),
            "kind": st.just("finding"),
            "code": st.sampled_from(sorted(g.findings)),
            "present": st.booleans(),
        },
        optional={"grade": st.integers(1, 5)},
    )
    treatment = st.fixed_dictionaries(
        {
            "at": good_timestamps(),
            "kind": st.just("treatment"),
            "drug": st.sampled_from([*sorted(g.drugs), "Dexamethasone", "piperacillin-tazobactam"]),
        },
        optional={
            "unit": st.sampled_from(["mg", "mg/kg", "mg/kg/day"]),
            "route": st.sampled_from(["IV", "SC", "PO"]),
            "indication": st.sampled_from(INDICATIONS),
        },
    ).flatmap(  # a dose is more than 0 and comes with its unit
        lambda ev: (
            st.just(ev)
            if "unit" not in ev
            else st.fixed_dictionaries(
                {
                    **{k: st.just(v) for k, v in ev.items()},
                    "dose": st.floats(0.001, 1000) | st.integers(1, 1000) | st.none(),
                }
            ).map(lambda e: {k: v for k, v in e.items() if v is not None})
        )
    )
    response = st.fixed_dictionaries(
        {
            "at": good_timestamps(),
            "kind": st.just("response"),
            "assessment": st.sampled_from(RESPONSE),
        }
    )
    close = st.fixed_dictionaries(
        {
            "at": good_timestamps(),
            "kind": st.just("close"),
            "reason": st.sampled_from(CLOSE_REASONS),
        }
    ).filter(  # a death before the infusion contradicts itself: refused (test_bad_input)
        lambda ev: (
            ev["reason"] != "death"
            or datetime.fromisoformat(ev["at"].replace("Z", "+00:00")) >= INFUSION
        )
    )
    baseline = st.sampled_from(sorted(g.observations)).flatmap(
        lambda code: st.tuples(st.just(code), measurement(code))
    )
    patient = st.fixed_dictionaries(
        {
            "id": st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-", min_size=1, max_size=8),
            "infusion_at": st.just(INFUSION).map(datetime.isoformat) | st.just("2026-01-01T10:00Z"),
        },
        optional={
            "age_years": st.integers(0, 120) | st.floats(0, 120),
            "weight_kg": st.floats(0.3, 400),
            "product": st.fixed_dictionaries(
                {},
                optional={
                    "name": st.sampled_from(["tisagenlecleucel", "axicabtagene ciloleucel"]),
                    "target": st.sampled_from(["CD19", "CD22", "BCMA"]),
                    "costimulatory_domain": st.sampled_from(["CD28", "4-1BB"]),
                },
            ),
            "risk_factors": st.lists(st.sampled_from(sorted(g.risk_factors)), max_size=3),
            "baseline": st.lists(baseline, max_size=3).map(dict),
        },
    )
    events = st.lists(
        st.one_of(observation(), assessment, finding, treatment, response, close), max_size=12
    )
    return st.fixed_dictionaries({"patient": patient, "events": events})


# --- mutations -----------------------------------------------------------------------------------

Key = str | int


def places(doc: Any, where: tuple[Key, ...] = ()) -> list[tuple[Key, ...]]:
    """Every key and index path in `doc` (not the root)."""
    out: list[tuple[Key, ...]] = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            out.append((*where, key))
            out += places(value, (*where, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            out.append((*where, i))
            out += places(value, (*where, i))
    return out


def near_valid_timelines(g: iechs.Guideline) -> st.SearchStrategy[Any]:
    """A valid timeline with zero to three mutations, each at a random place in the document."""
    vocabulary = sorted(
        {
            *EVENT_KINDS,
            *g.observations,
            *(u for o in g.observations.values() for u in o.units),
            *(code for o in g.observations.values() for code in o.loinc),
            *g.findings,
            *g.drugs,
            *g.risk_factors,
            *INFECTION,
            *RESPONSE,
            *CLOSE_REASONS,
            *INDICATIONS,
            "feritin",
            "mg/furlong",
            "",
            " ",
        }
    )
    words = st.sampled_from(vocabulary)  # real words, often of the wrong field
    junk = st.one_of(
        words, bad_numbers, bad_timestamps(), good_timestamps(), json_scalars, json_values
    )
    units = sorted({u for o in g.observations.values() for u in o.units})
    grades = st.integers(-2, 7) | st.integers()
    # Plausible mistakes for a field, weighed against any junk at all.
    mistakes: dict[Key, st.SearchStrategy[Any]] = {
        "at": bad_timestamps() | good_timestamps(),
        "infusion_at": bad_timestamps(),
        "kind": st.sampled_from([*EVENT_KINDS, "infusion", "Observation", "lab"]),
        "code": st.sampled_from([*g.observations, *g.findings, "feritin", "LDH", ""]),
        "loinc": st.sampled_from([*vocabulary, "0000-0", "2276-4 "]),
        "unit": st.sampled_from([*units, "mg/furlong", "ng/ml", "", "U / L"]),
        "value": bad_numbers | st.integers(0, 10**7) | st.floats(0, 1e7),
        "dose": bad_numbers,
        "drug": st.sampled_from(["", "  ", "\t", *g.drugs, "DEXAMETHASONE"]),
        "grade": grades,
        "crs_grade": grades,
        "icans_grade": grades,
        "age_years": bad_numbers | st.integers(100, 200),
        "weight_kg": bad_numbers | st.floats(0, 1),
        "id": st.sampled_from(["", " ", "\n"]),
        "infection": words,
        "assessment": words,
        "reason": words,
        "indication": words,
    }
    keys = st.sampled_from(
        ["code", "loinc", "value", "unit", "at", "kind", "drug", "dose", "grade", "extra", "id"]
    ) | st.text(max_size=8)

    @st.composite
    def build(draw: st.DrawFn) -> Any:
        doc: Any = copy.deepcopy(draw(valid_timelines(g)))
        for _ in range(draw(st.integers(0, 3))):
            spots = places(doc)
            if not spots:
                break
            where = draw(st.sampled_from(spots))
            parent: Any = doc
            for key in where[:-1]:
                parent = parent[key]
            action = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add"]))
            if action == "replace":
                mistake = mistakes.get(where[-1], junk)
                parent[where[-1]] = draw(st.one_of(mistake, mistake, junk))
            elif action == "delete" and isinstance(parent, dict):
                del parent[where[-1]]
            elif action == "delete":
                parent.pop(where[-1])
            elif isinstance(parent, dict):
                parent[draw(keys)] = draw(junk)
            else:
                parent.insert(draw(st.integers(0, len(parent))), draw(junk))
        return doc

    return build()


# --- properties ----------------------------------------------------------------------------------


def check_parse(doc: Any, g: iechs.Guideline) -> iechs.Timeline | None:
    """Parse `doc`; an `IechsError` must carry problems with JSON paths. Anything else escapes."""
    timeline: iechs.Timeline | None = None
    error: iechs.IechsError | None = None
    try:
        timeline = iechs.parse_timeline(doc, g)
    except iechs.IechsError as exc:
        error = exc
    if error is not None:
        assert isinstance(error, iechs.TimelineError)
        assert error.problems
        for p in error.problems:
            assert p.path.startswith("$"), p
            assert p.message.strip(), p
        assert error.render()
        return None
    assert timeline is not None
    times = [ev.at for ev in timeline.events]
    assert all(t.utcoffset() == timedelta(0) for t in times)
    assert times == sorted(times), "events are not in time order"
    return timeline


@given(data=st.data())
def test_random_json_never_escapes(guideline: iechs.Guideline, data: st.DataObject) -> None:
    doc = data.draw(json_values, label="doc")
    check_parse(doc, guideline)


@given(data=st.data())
def test_random_json_with_timeline_shape(guideline: iechs.Guideline, data: st.DataObject) -> None:
    doc = data.draw(
        st.fixed_dictionaries({"patient": json_values, "events": st.lists(json_values)}),
        label="doc",
    )
    check_parse(doc, guideline)


@given(data=st.data())
def test_near_valid_timelines(guideline: iechs.Guideline, data: st.DataObject) -> None:
    doc = data.draw(near_valid_timelines(guideline), label="doc")
    check_parse(doc, guideline)
    # The same document after a JSON round trip (what `iechs run` reads) behaves the same way.
    check_parse(json.loads(json.dumps(doc)), guideline)


@given(data=st.data())
def test_valid_timelines_parse_sorted_and_stable(
    guideline: iechs.Guideline, data: st.DataObject
) -> None:
    doc = data.draw(valid_timelines(guideline), label="doc")
    timeline = iechs.parse_timeline(doc, guideline)  # a valid timeline: must not raise
    check_parse(doc, guideline)
    # Sorted by time; events at one time (an order set) in the canonical order, whatever the
    # file's: facts, then treatments by the guideline's order-set sequence, then the close.
    one_by_one = [
        iechs.parse_event(ev, guideline, f"$.events[{i}]") for i, ev in enumerate(doc["events"])
    ]
    assert sorted(timeline.positions) == list(range(len(one_by_one)))
    assert list(timeline.events) == [one_by_one[i] for i in timeline.positions]
    assert guideline.order_sets is not None
    sequence = guideline.order_sets.sequence

    def rank(ev: Any) -> tuple[Any, ...]:
        kind = FACTS.index(ev.kind) if ev.kind in FACTS else len(FACTS)
        if ev.kind == "close":
            return (ev.at, kind + 1, 0)
        if ev.kind != "treatment":
            return (ev.at, kind, 0)
        cls = guideline.drug_class_of(ev.drug)
        return (ev.at, kind, sequence.index(cls) if cls in sequence else len(sequence))

    ranks = [rank(ev) for ev in timeline.events]
    assert ranks == sorted(ranks)
    # The file's order does not count: the reversed file gives the same timeline.
    backwards = iechs.parse_timeline({**doc, "events": doc["events"][::-1]}, guideline)
    assert backwards.events == timeline.events
