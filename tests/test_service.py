"""The CDS Hooks service (`iechs serve`), started as a separate process on a loopback port and
called over HTTP, over a SQLite store the engine recorded beforehand."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from iechs import Engine, load_timeline, parse_event
from iechs.audit import open_log, open_store, run_recorded
from iechs.audit.chain import read_record
from iechs.cli import main
from iechs.service.core import ORDER_ALERTS
from iechs.timeline import format_time
from sibling import load

S = load("test_service_helpers")
# first_line_steroids since its last event, dexamethasone at 2026-07-10T21:00Z; the tocilizumab
# therapy (2026-07-09T19:30Z, 2026-07-10T03:00Z, in suspected) was judged then.
IL6 = S.EXAMPLES / "tocilizumab-monotherapy-deviation.json"
DAY14 = S.EXAMPLES / "day14-steroid-response.json"  # closed


def _variant(base: Path, patient: str, extra: list[dict[str, Any]], keep: int | None = None) -> Any:
    data = json.loads(base.read_text())
    data["patient"]["id"] = patient
    data["events"] = data["events"][:keep] + extra
    return data


@pytest.fixture(scope="module")
def timelines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The patients of the store: example timelines and variants of the no-steroid one."""
    folder = tmp_path_factory.mktemp("timelines")
    later = "2026-05-17T10:00:00Z"
    icans = {"at": later, "kind": "assessment", "crs_grade": 0, "icans_grade": 2}
    infection = {"at": later, "kind": "assessment", "infection": "suspected"}
    steroid = {
        "at": later,
        "kind": "treatment",
        "drug": "dexamethasone",
        "dose": 10,
        "unit": "mg",
        "route": "IV",
        "indication": "iec_hs",
    }
    return {
        "svc-no-steroid": S.NO_STEROID,
        "il6-monotherapy": IL6,
        "demo-day14": DAY14,
        "svc-icans": S.write_timeline(
            folder / "icans.json", _variant(S.NO_STEROID, "svc-icans", [icans])
        ),
        "svc-infection": S.write_timeline(
            folder / "infection.json", _variant(S.NO_STEROID, "svc-infection", [infection])
        ),
        # first_line_steroids: dexamethasone at 2026-05-17T10:00Z, its last event.
        "svc-steroid": S.write_timeline(
            folder / "steroid.json", _variant(S.NO_STEROID, "svc-steroid", [steroid])
        ),
        # CRS grade 2, IEC-HS criteria not met: tocilizumab treats CRS (outside the guideline).
        "svc-crs": S.write_timeline(folder / "crs.json", _variant(IL6, "svc-crs", [], keep=2)),
    }


@pytest.fixture(scope="module")
def store(
    tmp_path_factory: pytest.TempPathFactory, engine: Engine, timelines: dict[str, Path]
) -> str:
    location = str(tmp_path_factory.mktemp("store") / "audit.db")
    for path in timelines.values():
        run_recorded(engine, path, location)
    return location


@pytest.fixture(scope="module")
def server(store: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with S.serving(store, log_dir=tmp_path_factory.mktemp("logs")) as running:
        yield running


@pytest.fixture
def client(server: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def head(store: str) -> tuple[int, str]:
    with open_store(store) as s:
        h = s.head()
    return h.seq, h.hash


def order_alerts(engine: Engine) -> frozenset[str]:
    """The alerts order-sign returns: the engine's own about a treatment, and those of the
    guideline's treatment rules."""
    rules = {r.alert for r in engine.guideline.rules.values() if r.upon == "treatment"}
    return ORDER_ALERTS | rules


def expected_alerts(
    engine: Engine, timeline: Path, orders: list[dict[str, Any]], now: str | None = None
) -> list[str]:
    """What the engine itself says when these treatments are recorded as one order set (the
    oracle): each knows the rest of the set (`later`), as in a retrospective run."""
    episode = engine.run(load_timeline(timeline, engine.guideline))
    at = now or format_time(episode.decisions[-1].at)
    events = [parse_event({"at": at, "kind": "treatment", **o}, engine.guideline) for o in orders]
    codes: list[str] = []
    for k, event in enumerate(events):
        decision = episode.step(event, later=events[k + 1 :])
        codes += [a.code for a in decision.alerts if a.code in order_alerts(engine)]
    return sorted(codes)


def cards(client: httpx.Client, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["cards"]
    for card in found:  # CDS Hooks: short summary, a source with a label, a known indicator
        assert len(card["summary"]) < 140
        assert card["source"]["label"]
        assert card["indicator"] in ("info", "warning", "critical")
    return found


# --- discovery and patient-view ----------------------------------------------------------------


def test_discovery_lists_both_services(client: httpx.Client) -> None:
    services = client.get("/cds-services").json()["services"]
    assert [(s["id"], s["hook"]) for s in services] == [
        ("iechs-patient-view", "patient-view"),
        ("iechs-order-sign", "order-sign"),
    ]
    assert all(s["description"] and s["prefetch"]["patient"] for s in services)


def test_patient_view_shows_state_recommendations_and_citations(
    client: httpx.Client, server: Any
) -> None:
    # The leading card says what to do next; the state card follows (no alert in suspected).
    actions, card = cards(client, S.PATIENT_VIEW, S.patient_view("svc-no-steroid"))
    assert actions["source"]["topic"]["code"] == "actions"
    assert (
        actions["summary"] == "Next: Start high-dose corticosteroids for IEC-HS now (first line)."
    )
    assert actions["indicator"] == "warning"  # a treatment to start
    assert "1. `start_corticosteroid`: " in actions["detail"]
    assert "dexamethasone, 10-20 mg, IV, every 6 h" in actions["detail"]  # the sourced dose
    (suggestion,) = actions["suggestions"]
    (create,) = suggestion["actions"]
    assert create["type"] == "create"
    assert create["resource"]["medicationCodeableConcept"] == {"text": "dexamethasone"}
    assert create["resource"]["subject"] == {"reference": "Patient/svc-no-steroid"}
    assert card["indicator"] == "info"
    # Suspected from the 09:30 assessment: the CRS grade of 2026-05-09 was stale at 08:00
    # (older than assessment_validity_hours), so the labs alone could not tell it from CRS.
    assert card["summary"] == "IEC-HS episode: IEC-HS suspected (since 2026-05-17 09:30 UTC)"
    assert "IEC-HS criteria (`iec_hs_identified`): **met**" in card["detail"]
    assert "Recommendations in force" in card["detail"]
    assert "*(not yet verified)*" in card["detail"]
    assert "PMID [36906275]" in card["detail"]  # every citation, in full
    assert card["source"]["topic"]["code"] == "state"
    assert card["source"]["url"] == "https://pubmed.ncbi.nlm.nih.gov/36906275/"
    assert card["links"] == [
        {
            "label": card["links"][0]["label"],
            "url": f"{server.url}/review",
            "type": "absolute",
        }
    ]
    review = client.get("/review")
    assert review.status_code == 200
    assert "text/html" in review.headers["content-type"]
    assert '<code id="guideline-sha256">' in review.text


def test_patient_view_says_what_is_due_at_the_hooks_time(
    client: httpx.Client, engine: Engine
) -> None:
    # svc-no-steroid: last reassessment 2026-05-17T09:30Z (its last event); reassess every 12 h.
    assert "reassessment_overdue" not in S.topics(
        cards(client, S.PATIENT_VIEW, S.patient_view("svc-no-steroid"))
    )
    assert "reassessment_overdue" not in S.topics(
        cards(client, S.PATIENT_VIEW, S.patient_view("svc-no-steroid", "2026-05-17T21:30:00Z"))
    )
    now = "2026-05-17T22:00:00Z"
    due = cards(client, S.PATIENT_VIEW, S.patient_view("svc-no-steroid", now))
    overdue = [c for c in due if c["source"]["topic"]["code"] == "reassessment_overdue"]
    assert len(overdue) == 1
    assert overdue[0]["indicator"] == "warning"
    # The engine's own answer for the same question.
    episode = engine.run(load_timeline(S.NO_STEROID, engine.guideline))
    decision = episode.advance(episode.decisions[-1].at.replace(hour=22, minute=0))
    assert [a.message for a in decision.alerts] == [overdue[0]["detail"].split("\n\n")[0]]
    assert "due by 2026-05-17T21:30:00Z" in decision.alerts[0].message
    # Asking changed nothing: the same answer again, with the same card uuids.
    again = cards(client, S.PATIENT_VIEW, S.patient_view("svc-no-steroid", now))
    assert [c["uuid"] for c in again] == [c["uuid"] for c in due]
    # il6-monotherapy entered first line at 2026-07-10T21:00Z: the clock restarted then, so
    # the overdue card the next morning is the first line's (due by 09:00), not suspected's.
    morning = cards(
        client, S.PATIENT_VIEW, S.patient_view("il6-monotherapy", "2026-07-11T10:00:00Z")
    )
    (late,) = [c for c in morning if c["source"]["topic"]["code"] == "reassessment_overdue"]
    assert late["summary"].startswith(
        "Reassessment overdue: last at 2026-07-10T21:00:00Z, due by 2026-07-11T09:00:00Z"
    )


def test_alerts_of_the_current_state_are_shown(client: httpx.Client) -> None:
    found = cards(client, S.PATIENT_VIEW, S.patient_view("il6-monotherapy"))
    # The dexamethasone that entered first_line_steroids came 13 h after the last
    # reassessment (reassessment_overdue, warning). The tocilizumab alerts were raised in
    # suspected (il6_monotherapy, off_guideline_therapy): not shown in this state.
    assert S.topics(found) == ["actions", "state", "reassessment_overdue"]
    assert found[1]["summary"] == (
        "IEC-HS episode: First line - corticosteroids (since 2026-07-10 21:00 UTC)"
    )
    assert found[2]["indicator"] == "warning"
    assert found[2]["overrideReasons"]


def test_unknown_and_closed_patients(client: httpx.Client) -> None:
    assert cards(client, S.PATIENT_VIEW, S.patient_view("nobody")) == []
    assert cards(client, S.ORDER_SIGN, S.order_sign("nobody", S.medication_request("x"))) == []
    (closed,) = cards(client, S.PATIENT_VIEW, S.patient_view("demo-day14"))
    assert closed["summary"].startswith("IEC-HS episode: Episode closed")
    toci = S.medication_request("tocilizumab", "t1")
    assert cards(client, S.ORDER_SIGN, S.order_sign("demo-day14", toci)) == []


def test_prefetched_patient_identifier_names_the_episode(client: httpx.Client) -> None:
    patient = {
        "resourceType": "Patient",
        "id": "fhir-123",
        "identifier": [
            {"system": "urn:oid:1.2.3", "value": "MRN-9"},
            {"system": "https://iechs.dev/fhir/sid/patient-id", "value": "svc-no-steroid"},
        ],
    }
    body = S.patient_view("fhir-123", prefetch={"patient": patient})
    found = cards(client, S.PATIENT_VIEW, body)
    assert S.topics(found) == ["actions", "state"]
    assert found[1]["summary"].startswith("IEC-HS episode: IEC-HS suspected")
    wrong = S.patient_view("fhir-999", prefetch={"patient": patient})
    response = client.post(S.PATIENT_VIEW, json=wrong)
    assert response.status_code == 400
    assert response.json()["error"].startswith("$.prefetch.patient.id: Patient 'fhir-123'")


# --- order-sign: the engine's answers ----------------------------------------------------------


@pytest.mark.parametrize(
    ("patient", "orders", "now", "expected"),
    [
        # IEC-HS criteria met, no corticosteroid: IL-6 blockade alone is critical.
        ("svc-no-steroid", [{"drug": "tocilizumab"}], None, ["il6_monotherapy"]),
        ("svc-no-steroid", [{"drug": "siltuximab"}], None, ["il6_monotherapy"]),
        # A corticosteroid in the same order set counts (listed after: it is stepped first):
        # IL-6 blockade with it is still no line of this guideline.
        (
            "svc-no-steroid",
            [{"drug": "tocilizumab"}, {"drug": "dexamethasone", "indication": "iec_hs"}],
            None,
            ["off_guideline_therapy"],
        ),
        # Dexamethasone recorded 11 h before: not monotherapy; 24 h after it, it is.
        (
            "svc-steroid",
            [{"drug": "tocilizumab"}],
            "2026-05-17T21:00:00Z",
            ["off_guideline_therapy"],
        ),
        (
            "svc-steroid",
            [{"drug": "tocilizumab"}],
            "2026-05-18T09:59:00Z",
            ["off_guideline_therapy"],
        ),
        ("svc-steroid", [{"drug": "tocilizumab"}], "2026-05-18T10:01:00Z", ["il6_monotherapy"]),
        # A dose within 72 h of the last continues that therapy, judged once already (here at
        # 2026-07-09T19:30Z and 2026-07-10T03:00Z); after 72 h it is a new therapy, judged anew
        # (the dexamethasone of 2026-07-10T21:00Z is then 84 h old).
        ("il6-monotherapy", [{"drug": "tocilizumab"}], None, []),
        ("il6-monotherapy", [{"drug": "tocilizumab"}], "2026-07-13T02:59:00Z", []),
        ("il6-monotherapy", [{"drug": "tocilizumab"}], "2026-07-14T09:00:00Z", ["il6_monotherapy"]),
        # ICANS: tocilizumab is a warning (and here monotherapy too).
        (
            "svc-icans",
            [{"drug": "tocilizumab"}],
            None,
            ["il6_monotherapy", "tocilizumab_with_icans"],
        ),
        # Infection suspected, no antimicrobials: immunosuppression first is critical ...
        (
            "svc-infection",
            [{"drug": "dexamethasone"}],
            None,
            ["immunosuppression_before_antimicrobials"],
        ),
        # ... unless the antimicrobial is in the same order set.
        ("svc-infection", [{"drug": "dexamethasone"}, {"drug": "meropenem"}], None, []),
        # CRS active, criteria not met: tocilizumab treats CRS, outside this guideline.
        ("svc-crs", [{"drug": "tocilizumab"}], None, []),
        # Supportive care is not this guideline's business.
        ("svc-no-steroid", [{"drug": "paracetamol"}], None, []),
    ],
)
def test_order_sign_gives_the_engines_alerts(
    *,
    client: httpx.Client,
    engine: Engine,
    timelines: dict[str, Path],
    patient: str,
    orders: list[dict[str, Any]],
    now: str | None,
    expected: list[str],
) -> None:
    resources = [
        S.medication_request(o["drug"], f"mr-{i}", indication=o.get("indication"))
        for i, o in enumerate(orders)
    ]
    found = cards(client, S.ORDER_SIGN, S.order_sign(patient, *resources, now=now))
    assert sorted(S.topics(found)) == expected
    # The oracle: the engine recording the same treatments as one order set, in the
    # guideline's order (`order_sets.sequence`: antimicrobials, corticosteroids, ...).
    g = engine.guideline
    assert g.order_sets is not None
    rank = {cls: i for i, cls in enumerate(g.order_sets.sequence)}
    signed = sorted(orders, key=lambda o: rank.get(g.drug_class_of(o["drug"]) or "", len(rank)))
    assert expected == expected_alerts(engine, timelines[patient], signed, now)
    severity = {
        "il6_monotherapy": "critical",
        "immunosuppression_before_antimicrobials": "critical",
    }
    for card in found:
        code = card["source"]["topic"]["code"]
        assert card["indicator"] == severity.get(code, "warning")
        assert card["overrideReasons"]
        (suggestion,) = card["suggestions"]
        (action,) = suggestion["actions"]
        assert action["type"] == "delete"
        assert action["resourceId"].startswith("MedicationRequest/mr-")
        assert card["selectionBehavior"] == "at-most-one"


def test_order_sign_reads_fhir_medication_names(client: httpx.Client) -> None:
    rxnorm = {
        "resourceType": "MedicationRequest",
        "id": "rx-1",
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": {
            "coding": [
                {
                    "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                    "display": "Tocilizumab 20 MG/ML Injectable Solution",
                }
            ]
        },
    }
    referenced = {
        "resourceType": "MedicationRequest",
        "id": "rx-2",
        "status": "draft",
        "intent": "order",
        "medicationReference": {"reference": "#med"},
        "contained": [{"resourceType": "Medication", "id": "med", "code": {"text": "Siltuximab"}}],
    }
    cancelled = S.medication_request("tocilizumab", "rx-3", status="cancelled")

    def deleted(found: list[dict[str, Any]]) -> list[tuple[str, str]]:
        return [
            (c["summary"].split(" ", 1)[0], c["suggestions"][0]["actions"][0]["resourceId"])
            for c in found
        ]

    # Each name read: the RxNorm display, and the contained Medication's code.
    for order, name in ((rxnorm, "Tocilizumab"), (referenced, "Siltuximab")):
        found = cards(client, S.ORDER_SIGN, S.order_sign("svc-no-steroid", order, cancelled))
        assert S.topics(found) == ["il6_monotherapy"]
        assert deleted(found) == [(name, f"MedicationRequest/{order['id']}")]
        assert found[0]["summary"].startswith(f"{name} without a corticosteroid")
    # Together they are one IL-6 blockade therapy (one drug class), judged once: at its first
    # order in the guideline's order (by content within a class), whatever the Bundle's order.
    for bundle in ((rxnorm, referenced, cancelled), (cancelled, referenced, rxnorm)):
        found = cards(client, S.ORDER_SIGN, S.order_sign("svc-no-steroid", *bundle))
        assert deleted(found) == [("Siltuximab", "MedicationRequest/rx-2")]


def test_order_alerts_are_the_guidelines_treatment_rules(engine: Engine, store: str) -> None:
    from iechs.service.core import HookService, ServiceConfig

    assert frozenset({"off_guideline_therapy", "treatment_unconfirmed"}) == ORDER_ALERTS
    assert order_alerts(engine) == {
        "off_guideline_therapy",
        "treatment_unconfirmed",
        "il6_monotherapy",
        "tocilizumab_with_icans",
        "immunosuppression_before_antimicrobials",
    }
    service = HookService(ServiceConfig(store=store))
    try:
        assert service.order_alerts == order_alerts(engine)
    finally:
        service.close()


def test_order_sign_records_nothing(client: httpx.Client, store: str) -> None:
    before = head(store)
    toci = S.medication_request("tocilizumab", "t1")
    first = cards(client, S.ORDER_SIGN, S.order_sign("svc-no-steroid", toci))
    assert head(store) == before
    assert cards(client, S.ORDER_SIGN, S.order_sign("svc-no-steroid", toci)) == first


# --- malformed requests ------------------------------------------------------------------------

_PV = S.PATIENT_VIEW
_OS = S.ORDER_SIGN


def _bad_order(**changes: Any) -> dict[str, Any]:
    resource = {**S.medication_request("tocilizumab", "t1", dose=8, unit="mg/kg"), **changes}
    body: dict[str, Any] = S.order_sign("svc-no-steroid", resource)
    return body


@pytest.mark.parametrize(
    ("path", "body", "status", "error"),
    [
        (_PV, b"{", 400, "$: not valid JSON"),
        (_PV, b"[1, 2]", 400, "$: expected a JSON object"),
        (_PV, b"", 400, "$: a JSON body is required"),
        (_PV, {"hook": "patient-view", "hookInstance": "1"}, 400, "$.context: Field required"),
        (_PV, {**S.patient_view("p"), "hook": "order-sign"}, 400, "$.hook: Input should be"),
        (_PV, S.patient_view("a\u0000b"), 400, "$.context.patientId: String should match"),
        (_PV, S.patient_view("svc-no-steroid", "yesterday"), 400, "$.extension['dev.iechs.now']"),
        (
            _PV,
            S.patient_view(
                "p",
                prefetch={
                    "patient": {
                        "resourceType": "Patient",
                        "identifier": [
                            {"system": "https://iechs.dev/fhir/sid/patient-id", "value": "a\u0000"}
                        ],
                    }
                },
            ),
            400,
            "$.prefetch.patient.identifier[0].value: expected a patient id",
        ),
        (
            _PV,
            S.patient_view("svc-no-steroid", "2026-05-17T09:00:00"),
            400,
            "has no time zone",
        ),
        (
            _PV,
            S.patient_view("svc-no-steroid", "2026-05-17T09:00:00Z"),
            400,
            "is before the episode's last recorded event (2026-05-17T09:30:00Z)",
        ),
        (
            _OS,
            {**S.order_sign("svc-no-steroid"), "context": {"userId": "u", "patientId": "p"}},
            400,
            "$.context.draftOrders: Field required",
        ),
        (
            _OS,
            _bad_order(medicationCodeableConcept={"coding": [{"system": "x"}]}),
            400,
            "$.context.draftOrders.entry[0].resource.medicationCodeableConcept: a "
            "MedicationRequest names its drug",
        ),
        (
            _OS,
            _bad_order(dosageInstruction=[{"doseAndRate": [{"doseQuantity": {"value": "8"}}]}]),
            400,
            "resource.dosageInstruction[0].doseAndRate[0].doseQuantity.value: expected a number",
        ),
        (
            _OS,
            _bad_order(reasonCode=[{"coding": [{"system": S.IECHS_SYSTEM, "code": "iec-hs"}]}]),
            400,
            "resource.reasonCode[0].coding[0].code: 'iec-hs' is not an indication",
        ),
        (_OS, _bad_order(status=3), 400, "resource.status: expected text, got a number"),
        (
            _OS,
            _bad_order(subject={"reference": "Patient/someone-else"}),
            400,
            "resource.subject.reference: the order is for Patient/someone-else, not for the "
            "patient in context (Patient/svc-no-steroid)",
        ),
        ("/cds-services/nope", S.patient_view("p"), 404, "no such endpoint"),
        ("/cds-services/nope/feedback", {"feedback": []}, 400, "$.feedback: List should have"),
    ],
)
def test_malformed_requests_get_a_clear_4xx_and_change_nothing(
    *,
    client: httpx.Client,
    store: str,
    path: str,
    body: dict[str, Any] | bytes,
    status: int,
    error: str,
) -> None:
    before = head(store)
    if isinstance(body, bytes):
        response = client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        response = client.post(path, json=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert error in response.json()["error"]
    assert head(store) == before


def test_request_size_is_limited(client: httpx.Client) -> None:
    big = json.dumps({**S.patient_view("svc-no-steroid"), "pad": "x" * (1 << 20)}).encode()
    response = client.post(
        S.PATIENT_VIEW, content=big, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert "larger than 1048576 bytes" in response.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"pad": "'
        for _ in range(20):
            yield b"x" * 65536
        yield b'"}'

    response = client.post(S.PATIENT_VIEW, content=chunks())
    assert response.status_code == 413
    # Under the limit is fine, and the connection is still usable.
    small = json.dumps({**S.patient_view("svc-no-steroid"), "pad": "x" * 1000}).encode()
    json_type = {"content-type": "application/json"}
    assert client.post(S.PATIENT_VIEW, content=small, headers=json_type).status_code == 200


def test_json_only_with_a_json_content_type(client: httpx.Client) -> None:
    # A browser page may post a body without Content-Type (no CORS preflight): not read.
    body = json.dumps(S.patient_view("svc-no-steroid")).encode()
    for headers in ({}, {"content-type": "text/plain"}):
        response = client.post(S.PATIENT_VIEW, content=body, headers=headers)
        assert response.status_code == 400
        assert response.json()["error"] == (
            "$: expected a JSON body sent with Content-Type: application/json"
        )
    ok = client.post(S.PATIENT_VIEW, content=body, headers={"content-type": "application/json"})
    assert ok.status_code == 200


# --- feedback ----------------------------------------------------------------------------------


def test_feedback_is_recorded_in_the_audit_log(
    client: httpx.Client, store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    toci = S.medication_request("tocilizumab", "t1")
    (card,) = cards(client, S.ORDER_SIGN, S.order_sign("svc-icans", toci))[:1]
    suggestion = card["suggestions"][0]["uuid"]
    before = head(store)
    url = f"{S.ORDER_SIGN}/feedback"
    # A bad item anywhere refuses the whole request: nothing is written.
    bad = {
        "feedback": [
            {
                "card": card["uuid"],
                "outcome": "overridden",
                "outcomeTimestamp": "2026-05-17T10:05Z",
            },
            {
                "card": card["uuid"],
                "outcome": "accepted",
                "acceptedSuggestions": [{"id": "not-a-suggestion"}],
                "outcomeTimestamp": "2026-05-17T10:05:00Z",
            },
        ]
    }
    response = client.post(url, json=bad)
    assert response.status_code == 400
    assert response.json()["error"].startswith("$.feedback[1].acceptedSuggestions[0].id")
    assert head(store) == before
    wrong_service = {"feedback": [{**bad["feedback"][0]}]}
    response = client.post(f"{S.PATIENT_VIEW}/feedback", json=wrong_service)
    assert response.status_code == 404
    assert response.json()["error"] == (
        f"$.feedback[0].card: no card '{card['uuid']}' was issued by iechs-patient-view to "
        "this client"
    )
    good = {
        "feedback": [
            {
                "card": card["uuid"],
                "outcome": "overridden",
                "overrideReason": {
                    "reason": {
                        "system": "https://iechs.dev/cds/CodeSystem/override-reason",
                        "code": "record-incomplete",
                    },
                    "userComment": "dexamethasone given before transfer",
                },
                "outcomeTimestamp": "2026-05-17T10:05:00Z",
            },
            {
                "card": card["uuid"],
                "outcome": "accepted",
                "acceptedSuggestions": [{"id": suggestion}],
                "outcomeTimestamp": "2026-05-17T10:06:00Z",
            },
        ]
    }
    response = client.post(url, json=good)
    assert response.status_code == 200, response.text
    recorded = response.json()["recorded"]
    assert [(r["outcome"], r["episode"]) for r in recorded] == [
        ("overridden", "svc-icans"),
        ("accepted", "svc-icans"),
    ]
    assert [r["seq"] for r in recorded] == [before[0] + 1, before[0] + 2]
    with open_log(store) as log, log.reading() as view:
        records = [read_record(item)[0] for item in view.records()][-2:]
    overridden, accepted = records
    assert overridden is not None
    assert accepted is not None
    assert overridden.actor == "cds-client (unauthenticated)"
    assert overridden.event == {"kind": "advance", "at": "2026-05-17T10:00:00Z"}
    assert overridden.source == overridden.target == "suspected"
    assert overridden.reason is not None
    assert f"card {card['uuid']} (iechs-order-sign, il6_monotherapy, critical" in overridden.reason
    assert "overridden at 2026-05-17T10:05:00Z" in overridden.reason
    assert "override reason https://iechs.dev/cds/CodeSystem/override-reason#record-incomplete" in (
        overridden.reason
    )
    assert '"The record is incomplete' in overridden.reason
    assert 'comment: "dexamethasone given before transfer"' in overridden.reason
    assert accepted.reason is not None
    assert 'accepted suggestions: "Remove the tocilizumab order"' in accepted.reason
    # The log stays intact and every decision, feedback included, replays.
    assert main(["audit", "verify", store]) == 0
    assert main(["audit", "replay", store]) == 0
    assert "SAME" in capsys.readouterr().out
    # The episode goes on: the service answers as before.
    assert S.topics(cards(client, S.ORDER_SIGN, S.order_sign("svc-icans", toci))) == [
        "il6_monotherapy",
        "tocilizumab_with_icans",
    ]


def test_a_library_caller_records_feedback_under_its_own_actor(store: str) -> None:
    from iechs.service.core import HookService, ServiceConfig

    service = HookService(ServiceConfig(store=store))
    try:
        context = {"patientId": "svc-steroid", "userId": "Practitioner/haem-1"}
        cards = service.patient_view(context, None, None, "http://localhost/review")
        item = {
            "card": cards[-1]["uuid"],
            "outcome": "overridden",
            "outcomeTimestamp": "2026-05-17T11:00Z",
        }
        (done,) = service.feedback("iechs-patient-view", [item], "Practitioner/haem-1")
    finally:
        service.close()
    with open_log(store) as log, log.reading() as view:
        record = next(read_record(i)[0] for i in view.records() if i.seq == done["seq"])
    assert record is not None
    assert record.actor == "Practitioner/haem-1"


def test_feedback_on_a_closed_episode_is_refused(client: httpx.Client, store: str) -> None:
    (card,) = cards(client, S.PATIENT_VIEW, S.patient_view("demo-day14"))
    before = head(store)
    item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-05-01T00:00Z"}
    response = client.post(f"{S.PATIENT_VIEW}/feedback", json={"feedback": [item]})
    assert response.status_code == 409
    assert "episode 'demo-day14' is closed" in response.json()["error"]
    assert head(store) == before


def test_constants_agree_with_the_fhir_mapping() -> None:
    from iechs.fhir.codes import PATIENT_ID_SYSTEM, SYSTEM
    from iechs.service import core, orders

    assert orders.IECHS_SYSTEM == SYSTEM == S.IECHS_SYSTEM
    assert core.PATIENT_ID_SYSTEM == PATIENT_ID_SYSTEM


def test_serve_refuses_bad_configuration(
    tmp_path: Path, store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--store", str(tmp_path / "missing.db")]) == 2
    assert "no such store" in capsys.readouterr().err
    assert main(["serve", "--store", store, "--jwt-issuer", "https://ehr"]) == 2
    assert "--jwt-issuer and --jwt-key go together" in capsys.readouterr().err
    (tmp_path / "key.pem").write_text("not a key")
    jwt_options = ["--jwt-issuer", "x", "--jwt-key", str(tmp_path / "key.pem")]
    # The tokens' audience is the public URL, never the request's Host header.
    assert main(["serve", "--store", store, *jwt_options]) == 2
    assert "--jwt-issuer needs --public-url" in capsys.readouterr().err
    public = ["--public-url", "https://cds.example.org"]
    assert main(["serve", "--store", store, *jwt_options, *public]) == 2
    assert "not a PEM public key" in capsys.readouterr().err
    for bad, message in (
        (["--public-url", "cds.example.org"], "expected an absolute http(s) URL"),
        (["--allow-origin", "*"], "--allow-origin '*': expected an origin"),
        (["--allow-origin", "https://ehr.example.org/app"], "without path or wildcard"),
        (["--feedback-per-card", "0"], "--feedback-per-card must be at least 1"),
        (["--max-feedback-text", "0"], "--max-feedback-text must be at least 1"),
        (["--max-token-lifetime", "0"], "--max-token-lifetime must be more than 0"),
    ):
        assert main(["serve", "--store", store, *bad]) == 2
        assert message in capsys.readouterr().err
    (tmp_path / "page.html").write_text('<code id="guideline-sha256">' + "0" * 64 + "</code>")
    assert main(["serve", "--store", store, "--review-page", str(tmp_path / "page.html")]) == 2
    assert "is not the review page of this guideline" in capsys.readouterr().err


def test_store_passwords_stay_out_of_messages() -> None:
    from iechs.service.commands import _without_password

    assert _without_password("postgresql://u:secret@db:5432/x?sslmode=require") == (
        "postgresql://u:***@db:5432/x?sslmode=require"
    )
    assert _without_password("audit.db") == "audit.db"


def test_serve_binds_loopback_by_default_and_loads_no_web_framework_for_help() -> None:
    import subprocess
    import sys

    from iechs.cli import _parser

    args = _parser().parse_args(["serve", "--store", "x.db"])
    assert (args.host, args.port, args.max_body) == ("127.0.0.1", 8080, 1 << 20)
    code = (
        "import sys, iechs.cli; iechs.cli._parser(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('fastapi', 'uvicorn', 'starlette', 'pydantic', 'jwt', 'httpx')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_store_it_cannot_use_is_a_503_and_another_guideline_a_409(
    tmp_path: Path, engine: Engine
) -> None:
    from iechs import load_guideline
    from iechs.service.core import HookService, ServiceConfig
    from iechs.service.errors import ServiceError

    gone = HookService(ServiceConfig(store=str(tmp_path / "gone.db")))
    with pytest.raises(ServiceError) as raised:
        gone.patient_view({"patientId": "p"}, None, None, "http://x/review")
    assert raised.value.status == 503
    assert "the store is unavailable" in raised.value.message
    # An episode recorded with another guideline (a profile) is not continued here.
    other = Engine(load_guideline(S.ROOT / "guideline" / "profiles" / "astct-2023.yaml"))
    store = str(tmp_path / "profile.db")
    run_recorded(other, S.NO_STEROID, store)
    service = HookService(ServiceConfig(store=store))
    with pytest.raises(ServiceError) as raised:
        service.patient_view({"patientId": "svc-no-steroid"}, None, None, "http://x/review")
    assert raised.value.status == 409
    assert "episode 'svc-no-steroid' cannot be restored here" in raised.value.message
    assert "saved with guideline" in raised.value.message
    service.close()
