"""Schemathesis against the running service's own OpenAPI document (`/openapi.json`): requests
generated from the schema (valid ones, and invalid ones) must never get a 5xx, every status and
body must be the documented ones, and invalid requests must be refused with a 4xx."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode, checks

from iechs import Engine
from iechs.audit import open_store, run_recorded
from sibling import load

S = load("test_service_helpers")
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
]


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, engine: Engine) -> Iterator[Any]:
    folder = tmp_path_factory.mktemp("schema")
    store = str(folder / "audit.db")
    run_recorded(engine, S.NO_STEROID, store)  # the patient the schema's examples name
    with S.serving(store, log_dir=folder) as server:
        server.store = store
        yield server


@pytest.fixture(scope="module")
def api_schema(running: Any) -> Any:
    return schemathesis.openapi.from_url(f"{running.url}/openapi.json")


OPERATIONS = [
    ("GET", "/cds-services"),
    ("POST", "/cds-services/iechs-patient-view"),
    ("POST", "/cds-services/iechs-order-sign"),
    ("POST", "/cds-services/{service_id}/feedback"),
    ("GET", "/review"),
]


def test_every_operation_is_tested(api_schema: Any) -> None:
    found = [(r.ok().method.upper(), r.ok().path) for r in api_schema.get_all_operations()]
    assert sorted(found) == sorted(OPERATIONS)


@pytest.mark.parametrize(
    ("method", "path", "mode"),
    [(m, p, GenerationMode.POSITIVE) for m, p in OPERATIONS]
    # invalid data exists only where there is something to send (a body, a path parameter)
    + [(m, p, GenerationMode.NEGATIVE) for m, p in OPERATIONS if m == "POST"],
)
def test_the_service_keeps_its_openapi_contract(
    api_schema: Any, method: str, path: str, mode: GenerationMode
) -> None:
    # (schemathesis.pytest's lazy loader does not run under pytest 9: Hypothesis is driven
    # here directly, with schemathesis' strategies and checks.)
    operation = api_schema[path][method]
    strategies = [operation.as_strategy(generation_mode=mode)]
    if mode is GenerationMode.POSITIVE:
        strategies += operation.get_strategies_from_examples()  # the documented examples

    @given(case=st.one_of(*strategies))
    @settings(
        max_examples=200,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def call(case: Any) -> None:
        case.call_and_validate(checks=CHECKS)

    call()


def test_the_contract_test_left_the_log_intact(running: Any) -> None:
    # Runs after the generated requests (file order): whatever feedback they managed to write
    # went through the audit chain properly.
    from iechs.audit import verify_log

    with open_store(running.store) as store:
        assert verify_log(store).ok
    assert "Traceback" not in running.output()
