"""CDS Hooks at its edges, against a real `iechs serve` process: the specification's own example
requests and feedback (cds-hooks/docs, docs/specification/current.md, 2.0), a prefetch that
failed (the OperationOutcome a client sends instead), card uuids per hook call, `hookInstance`
as a UUID, the feedback rules cds-fb-2 and cds-fb-3 (HL7/cds-hooks, input/fsh/invariants),
feedback limits, and latency that does not grow with the feedback an episode has taken."""

from __future__ import annotations

import json
import statistics
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from iechs import Engine, parse_event
from iechs.audit import RecordedEpisode, open_store, run_recorded
from iechs.service.cards import card_uuid, content_of
from iechs.service.episodes import RestoredEpisodes
from sibling import load

S = load("test_service_helpers")
PATIENT = "svc-no-steroid"  # IEC-HS suspected, criteria met, no corticosteroid yet
CLOSED = "demo-day14"

#: The specification's example patient-view request ("Example", under "Calling a CDS Service"),
#: for our patient (its `prefetch` key is not one of ours: ignored).
SPEC_REQUEST: dict[str, Any] = {
    "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
    "fhirServer": "http://hooks.smarthealthit.org:9080",
    "hook": "patient-view",
    "fhirAuthorization": {
        "access_token": "some-opaque-fhir-access-token",
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "user/Patient.read user/Observation.read",
        "subject": "cds-service4",
    },
    "context": {"userId": "Practitioner/example", "patientId": PATIENT, "encounterId": "89284"},
    "prefetch": {
        "patientToGreet": {
            "resourceType": "Patient",
            "gender": "male",
            "birthDate": "1925-12-23",
            "id": "1288992",
            "active": True,
        }
    },
}
#: The specification's example OperationOutcome (STU, "Returning OperationOutcome"), which a
#: client sends in place of a prefetch it could not fetch.
SPEC_OUTCOME: dict[str, Any] = {
    "resourceType": "OperationOutcome",
    "id": "missing-allergies",
    "issue": [
        {
            "severity": "error",
            "code": "processing",
            "details": {
                "text": "Cannot evaluate order-select guidance: no AllergyIntolerance resources "
                "supplied."
            },
            "diagnostics": "CDS Hooks prefetch key 'patientAllergies' was absent or empty.",
            "expression": ["Bundle.entry.resource.ofType(AllergyIntolerance)"],
        }
    ],
}


def new_store(folder: Path, engine: Engine) -> str:
    location = str(folder / "audit.db")
    for path in (S.NO_STEROID, S.EXAMPLES / "day14-steroid-response.json"):
        run_recorded(engine, path, location)
    return location


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, engine: Engine) -> str:
    return new_store(tmp_path_factory.mktemp("edge"), engine)


@pytest.fixture(scope="module")
def server(store: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with S.serving(store, log_dir=tmp_path_factory.mktemp("logs")) as running:
        yield running


@pytest.fixture
def client(server: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def head(store: str) -> tuple[int, str]:
    with open_store(store) as s:
        h = s.head()
    return h.seq, h.hash


def cards(
    client: httpx.Client, path: str, body: dict[str, Any], **changes: Any
) -> list[dict[str, Any]]:
    response = client.post(path, json={**body, **changes})
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["cards"]
    return found


def new_call(body: dict[str, Any]) -> dict[str, Any]:
    """The same request as another hook call (a new hookInstance)."""
    return {**body, "hookInstance": str(uuid.uuid4())}


def feedback(client: httpx.Client, *items: dict[str, Any], service: str = S.PATIENT_VIEW) -> Any:
    return client.post(f"{service}/feedback", json={"feedback": list(items)})


def overridden(card: str, **more: Any) -> dict[str, Any]:
    return {
        "card": card,
        "outcome": "overridden",
        "outcomeTimestamp": "2026-05-17T10:00:00Z",
    } | more


# --- the specification's examples ----------------------------------------------------------------


def test_the_specifications_example_request_is_answered(client: httpx.Client) -> None:
    found = cards(client, S.PATIENT_VIEW, SPEC_REQUEST)
    assert S.topics(found) == ["actions", "state"]
    assert all(uuid.UUID(c["uuid"]) for c in found)


def test_the_specifications_example_feedback_is_recorded(client: httpx.Client, store: str) -> None:
    """The three feedback examples of the specification, with our cards' uuids: a suggestion
    accepted, a card overridden without a reason, and with a reason and a comment."""
    actions = cards(client, S.PATIENT_VIEW, new_call(SPEC_REQUEST))[0]
    suggestion = actions["suggestions"][0]["uuid"]
    before = head(store)[0]
    accepted = {
        "card": actions["uuid"],
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": suggestion}],
        "outcomeTimestamp": "2021-12-11T10:05:31Z",
    }
    plain = {
        "card": actions["uuid"],
        "outcome": "overridden",
        "outcomeTimestamp": "2020-12-11T00:00:00Z",
    }
    with_reason = {
        "card": actions["uuid"],
        "outcome": "overridden",
        "overrideReason": {
            "reason": {
                "code": "d7ecf885",
                "system": "https://example.com/cds-hooks/override-reason-system",
            },
            "userComment": "A comment entered by the clinician.",
        },
        "outcomeTimestamp": "2020-12-11T00:00:00Z",
    }
    response = feedback(client, accepted, plain, with_reason)
    assert response.status_code == 200, response.text
    assert [r["seq"] for r in response.json()["recorded"]] == [before + 1, before + 2, before + 3]


# --- a prefetch that failed -----------------------------------------------------------------------


def test_a_failed_prefetch_is_as_if_there_were_none_and_the_cards_say_so(
    client: httpx.Client,
) -> None:
    plain = cards(client, S.PATIENT_VIEW, S.patient_view(PATIENT))
    failed = cards(
        client, S.PATIENT_VIEW, S.patient_view(PATIENT, prefetch={"patient": SPEC_OUTCOME})
    )
    # The episode's cards as without the prefetch, then one that says what happened.
    assert S.topics(failed) == [*S.topics(plain), "prefetch_failed"]
    assert [content_of(c) for c in failed[:-1]] == [content_of(c) for c in plain]
    note = failed[-1]
    assert note["indicator"] == "info"
    assert note["summary"] == "Prefetched patient unavailable: the episode was looked up without it"
    assert "could not prefetch `patient`" in note["detail"]
    assert "CDS Hooks prefetch key 'patientAllergies' was absent or empty." in note["detail"]
    assert f"`context.patientId` ('{PATIENT}')" in note["detail"]
    # A patient with no episode here: the note alone (the episode may be under an identifier
    # that the failed prefetch would have carried).
    (alone,) = cards(
        client, S.PATIENT_VIEW, S.patient_view("nobody", prefetch={"patient": SPEC_OUTCOME})
    )
    assert alone["source"]["topic"]["code"] == "prefetch_failed"
    # order-sign alike: the engine's alert, then the note.
    toci = S.medication_request("tocilizumab", "t1")
    body = {**S.order_sign(PATIENT, toci), "prefetch": {"patient": SPEC_OUTCOME}}
    assert S.topics(cards(client, S.ORDER_SIGN, body)) == ["il6_monotherapy", "prefetch_failed"]
    # `null` (the client has no data) is no prefetch at all, and says nothing.
    assert cards(client, S.PATIENT_VIEW, S.patient_view(PATIENT, prefetch={"patient": None})) == (
        plain
    )
    # Anything else that is not a Patient is still refused.
    response = client.post(
        S.PATIENT_VIEW,
        json=S.patient_view(PATIENT, prefetch={"patient": {"resourceType": "Bundle"}}),
    )
    assert response.status_code == 400
    assert response.json()["error"].startswith("$.prefetch.patient: expected a FHIR Patient")


# --- card uuids and hookInstance ------------------------------------------------------------------


def test_card_uuids_are_unique_per_hook_call_and_reproducible(
    client: httpx.Client, store: str, tmp_path: Path
) -> None:
    body = S.patient_view(PATIENT)
    first = cards(client, S.PATIENT_VIEW, body)
    other = cards(client, S.PATIENT_VIEW, new_call(body))
    # Another hook call, the same content: new uuids, for the cards and their suggestions.
    assert [content_of(c) for c in other] == [content_of(c) for c in first]
    ids = {c["uuid"] for c in first} | {s["uuid"] for c in first for s in c.get("suggestions", [])}
    again = {c["uuid"] for c in other} | {
        s["uuid"] for c in other for s in c.get("suggestions", [])
    }
    assert not ids & again
    # The same call answered again, by this process or another one (replicas behind one
    # address: their cards link to the same review page): the same uuids.
    assert cards(client, S.PATIENT_VIEW, body) == first
    public = ("--public-url", "https://cds.example.org")
    with (
        S.serving(store, *public, log_dir=tmp_path) as a,
        S.serving(store, *public, log_dir=tmp_path) as b,
        httpx.Client(base_url=a.url) as ca,
        httpx.Client(base_url=b.url) as cb,
    ):
        assert cards(ca, S.PATIENT_VIEW, body) == cards(cb, S.PATIENT_VIEW, body)
        assert cards(ca, S.PATIENT_VIEW, body)[0]["uuid"] != first[0]["uuid"]  # other links
    # Derived from the hookInstance, the service, the episode and the content.
    for card in first:
        assert card["uuid"] == card_uuid(
            content_of(card),
            service="iechs-patient-view",
            episode=PATIENT,
            hook_instance=body["hookInstance"],
        )
    # Each call's cards take feedback.
    for found in (first, other):
        assert feedback(client, overridden(found[1]["uuid"])).status_code == 200


@pytest.mark.parametrize(
    ("instance", "error"),
    [
        ("8c0e1f", "$.hookInstance: expected a UUID"),
        ("urn:uuid:d1577c69-dfbe-44ad-ba6d-3e05e953b2ea", "$.hookInstance: expected a UUID"),
        ("d1577c69dfbe44adba6d3e05e953b2ea", "$.hookInstance: expected a UUID"),
        (17, "$.hookInstance: Input should be a valid string"),
        (None, "$.hookInstance: Input should be a valid string"),
    ],
)
def test_hook_instance_must_be_a_uuid(
    client: httpx.Client, store: str, instance: Any, error: str
) -> None:
    before = head(store)
    for path, body in (
        (S.PATIENT_VIEW, S.patient_view(PATIENT)),
        (S.ORDER_SIGN, S.order_sign(PATIENT, S.medication_request("tocilizumab", "t1"))),
    ):
        response = client.post(path, json={**body, "hookInstance": instance})
        assert response.status_code == 400, response.text
        assert response.json()["error"].startswith(error)
    missing = {k: v for k, v in S.patient_view(PATIENT).items() if k != "hookInstance"}
    response = client.post(S.PATIENT_VIEW, json=missing)
    assert response.json()["error"] == "$.hookInstance: Field required"
    assert head(store) == before
    upper = {**S.patient_view(PATIENT), "hookInstance": SPEC_REQUEST["hookInstance"].upper()}
    assert client.post(S.PATIENT_VIEW, json=upper).status_code == 200


# --- feedback: cds-fb-2, cds-fb-3, limits ---------------------------------------------------------


def test_feedback_keeps_cds_fb_2_and_cds_fb_3(client: httpx.Client, store: str) -> None:
    actions, state = cards(client, S.PATIENT_VIEW, new_call(S.patient_view(PATIENT)))
    suggestion = actions["suggestions"][0]["uuid"]
    ok = overridden(state["uuid"])
    before = head(store)
    refused = [
        # cds-fb-2: "If outcome is 'accepted', acceptedSuggestions SHALL be provided"
        (
            {
                "card": actions["uuid"],
                "outcome": "accepted",
                "outcomeTimestamp": "2026-05-17T10:00Z",
            },
            "$.feedback[1].acceptedSuggestions: an accepted card names the suggestions accepted "
            "(CDS Hooks cds-fb-2",
        ),
        (
            {**overridden(actions["uuid"]), "outcome": "accepted", "acceptedSuggestions": []},
            "$.feedback[1].acceptedSuggestions: an accepted card names the suggestions accepted",
        ),
        # cds-fb-3: "An overrideReason must contain a reason, a userComment, or both"
        (
            overridden(state["uuid"], overrideReason={}),
            "$.feedback[1].overrideReason: expected a reason, a userComment or both (CDS Hooks "
            "cds-fb-3",
        ),
        (
            overridden(state["uuid"], overrideReason={"reason": None, "userComment": None}),
            "$.feedback[1].overrideReason: expected a reason, a userComment or both",
        ),
        (
            overridden(state["uuid"], overrideReason={"userComment": ""}),
            "$.feedback[1].overrideReason.userComment: empty: leave it out",
        ),
        (
            overridden(state["uuid"], overrideReason={"userComment": " \n "}),
            "$.feedback[1].overrideReason.userComment: empty: leave it out",
        ),
        (
            overridden(state["uuid"], overrideReason={"reason": {"code": " "}}),
            "$.feedback[1].overrideReason.reason.code: empty",
        ),
        (
            overridden(actions["uuid"], acceptedSuggestions=[{"id": suggestion}]),
            "$.feedback[1].acceptedSuggestions: an overridden card accepts none",
        ),
    ]
    for item, error in refused:
        # A valid item first: a bad one anywhere refuses the whole request, and writes nothing.
        response = feedback(client, ok, item)
        assert response.status_code == 400, item
        assert response.json()["error"].startswith(error), response.text
    assert head(store) == before
    # The same, each made whole: recorded.
    fine = [
        {**refused[0][0], "acceptedSuggestions": [{"id": suggestion}]},
        overridden(state["uuid"], overrideReason={"userComment": "seen, not now"}),
        overridden(state["uuid"], overrideReason={"reason": {"code": "clinical-judgement"}}),
    ]
    response = feedback(client, *fine)
    assert response.status_code == 200, response.text
    assert head(store)[0] == before[0] + 3


def test_a_900_kb_comment_does_not_enter_the_chain(client: httpx.Client, store: str) -> None:
    (_, state) = cards(client, S.PATIENT_VIEW, new_call(S.patient_view(PATIENT)))
    before = head(store)
    big = "x" * (900 * 1024)
    response = feedback(client, overridden(state["uuid"], overrideReason={"userComment": big}))
    assert response.status_code == 413
    assert response.json()["error"] == (
        "$.feedback[0].overrideReason.userComment: 921600 characters, more than the 1000 taken "
        "(--max-feedback-text)"
    )
    long_code = {"reason": {"code": "c" * 1001, "system": "https://x.org"}}
    response = feedback(client, overridden(state["uuid"], overrideReason=long_code))
    assert response.status_code == 413
    assert response.json()["error"].startswith("$.feedback[0].overrideReason.reason.code: 1001")
    assert head(store) == before
    ok = overridden(state["uuid"], overrideReason={"userComment": "y" * 1000})
    assert feedback(client, ok).status_code == 200


def test_feedback_on_unknown_cards_and_services(client: httpx.Client) -> None:
    (_, state) = cards(client, S.PATIENT_VIEW, new_call(S.patient_view(PATIENT)))
    response = feedback(client, overridden(state["uuid"]), service=S.ORDER_SIGN)
    assert response.status_code == 404
    assert "was issued by iechs-order-sign to this client" in response.json()["error"]
    response = feedback(client, overridden(str(uuid.uuid4())))
    assert response.status_code == 404
    response = client.post("/cds-services/nope/feedback", json={"feedback": [overridden("x")]})
    assert response.status_code == 404
    too_many = [overridden(state["uuid"])] * 101
    response = client.post(f"{S.PATIENT_VIEW}/feedback", json={"feedback": too_many})
    assert response.status_code == 400
    assert response.json()["error"].startswith("$.feedback: List should have at most 100 items")


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, engine: Engine) -> Iterator[Any]:
    """A server of its own store (the per-minute count is kept in the store, per client)."""
    store = new_store(tmp_path_factory.mktemp("edge"), engine)
    options = (
        "--feedback-per-card",
        "2",
        "--feedback-per-minute",
        "5",
        "--max-feedback-text",
        "40",
    )
    with S.serving(store, *options, log_dir=tmp_path_factory.mktemp("limited")) as running:
        running.store = store
        yield running


def test_feedback_is_limited_per_card_and_per_minute(limited: Any) -> None:
    store = limited.store
    with httpx.Client(base_url=limited.url, timeout=60) as client:
        calls = [cards(client, S.PATIENT_VIEW, new_call(S.patient_view(PATIENT))) for _ in range(3)]
        states = [found[1]["uuid"] for found in calls]
        comment = {"overrideReason": {"userComment": "z" * 41}}
        response = feedback(client, overridden(states[0], **comment))
        assert response.status_code == 413
        assert "41 characters, more than the 40 taken" in response.json()["error"]
        before = head(store)
        # Two per card: a third is refused, whether in one request or later.
        response = feedback(client, *[overridden(states[0])] * 3)
        assert response.status_code == 429
        assert response.json()["error"] == (
            f"card {states[0]} takes at most 2 feedbacks (--feedback-per-card): it has taken 0, "
            "this request brings 3"
        )
        assert head(store) == before  # refused: nothing recorded, nothing counted
        assert feedback(client, *[overridden(states[0])] * 2).status_code == 200
        response = feedback(client, overridden(states[0]))
        assert response.status_code == 429
        assert "it has taken 2, this request brings 1" in response.json()["error"]
        # Five a minute from one client: two are taken, three more, then no more.
        assert feedback(client, *[overridden(s) for s in states[1:]]).status_code == 200
        assert feedback(client, overridden(states[1])).status_code == 200
        response = feedback(client, overridden(states[2]))
        assert response.status_code == 429
        error = response.json()["error"]
        assert error.startswith("at most 5 feedbacks a minute from one client")
        assert 1 <= int(response.headers["retry-after"]) <= 61
        assert head(store)[0] == before[0] + 5


# --- latency -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def roomy(tmp_path_factory: pytest.TempPathFactory, engine: Engine) -> Iterator[Any]:
    store = new_store(tmp_path_factory.mktemp("edge"), engine)
    options = ("--feedback-per-card", "100000", "--feedback-per-minute", "100000")
    with S.serving(store, *options, log_dir=tmp_path_factory.mktemp("roomy")) as running:
        running.store = store
        yield running


def _p50(client: httpx.Client, body: dict[str, Any], n: int = 40) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        response = client.post(S.PATIENT_VIEW, json=new_call(body))
        times.append(time.perf_counter() - start)
        assert response.status_code == 200
    return statistics.median(times)


def test_latency_does_not_grow_with_the_feedback_an_episode_takes(roomy: Any) -> None:
    # Restoring replays every recorded input, feedback included: 1,000 feedbacks once made
    # patient-view 5x slower (30x in-process). The service continues the episode it restored.
    later = "2026-05-18T09:00:00Z"
    body = S.patient_view(PATIENT)
    due = S.patient_view(PATIENT, later)  # with what is due at a later time: a copy advanced
    with httpx.Client(base_url=roomy.url, timeout=120) as client:
        before = (_p50(client, body), _p50(client, due))
        state = cards(client, S.PATIENT_VIEW, body)[1]["uuid"]
        for _ in range(10):
            items = [overridden(state, overrideReason={"userComment": "n"})] * 100
            response = feedback(client, *items)
            assert response.status_code == 200, response.text
        after = (_p50(client, body), _p50(client, due))
    with open_store(roomy.store) as s:
        saved = s.episode(PATIENT)
    assert saved is not None
    assert sum(1 for i in saved.snapshot["inputs"] if i.get("kind") == "advance") >= 1000
    # Replaying 1,000 feedbacks costs some 300 ms; what remains is the store reading the
    # snapshot's text (about 1 ms per 1,000 inputs). Generous for a busy machine.
    for was, now in zip(before, after, strict=True):
        assert now < 3 * was + 0.010, f"{was * 1000:.1f} ms -> {now * 1000:.1f} ms"


def test_a_kept_episode_continued_is_the_episode_a_full_restore_gives(
    tmp_path: Path, engine: Engine
) -> None:
    """The service continues the episode it restored with what another process recorded
    since; that must be exactly what restoring the whole snapshot gives."""
    store = new_store(tmp_path, engine)
    kept = RestoredEpisodes(engine)
    with open_store(store) as s:
        saved = s.episode(PATIENT)
        assert saved is not None
        kept.restore(saved, s.store_id, "test")
        # Another process records: feedback (advances), a treatment, what is due later.
        other = RecordedEpisode.resume(engine, s, PATIENT)
        last = other.episode.decisions[-1].at
        for _ in range(3):
            other.advance(last, reason="feedback")
        steroid = {"at": "2026-05-17T12:00:00Z", "kind": "treatment", "drug": "dexamethasone"}
        other.step(parse_event({**steroid, "dose": 10, "unit": "mg"}, engine.guideline))
        other.advance(other.episode.decisions[-1].at.replace(hour=23))
        saved = s.episode(PATIENT)
        assert saved is not None
        continued = kept.restore(saved, s.store_id, "test")
        assert (kept.continued, kept.replayed) == (1, 1)
        full = engine.restore(saved.snapshot)
        assert continued.snapshot() == full.snapshot() == saved.snapshot
        assert continued.decisions == full.decisions
        assert continued.state == full.state == "first_line_steroids"
        # The copies handed out go on alike, and leave the kept episode as it was.
        later = continued.decisions[-1].at.replace(day=19)
        assert continued.advance(later) == full.advance(later)
        again = kept.restore(saved, s.store_id, "test", private=False)
        assert len(again.decisions) == saved.steps
        # Another store (another id): restored from the start.
        kept.restore(saved, "another-store", "test")
        assert kept.replayed == 2


def test_the_feedback_limits_are_documented_in_the_openapi_document(client: httpx.Client) -> None:
    doc = client.get("/openapi.json").json()
    responses = doc["paths"]["/cds-services/{service_id}/feedback"]["post"]["responses"]
    assert {"404", "413", "429"} <= set(responses)
    request = doc["components"]["schemas"]["PatientViewRequest"]["properties"]["hookInstance"]
    assert request["format"] == "uuid"
    assert json.dumps(doc).count("cds-fb-") >= 2
