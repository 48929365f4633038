"""No traceback at any door: hostile and random JSON through `iechs run` (native and FHIR),
`replay-cohort`, `compare`, `report` and `audit import`.

Each door must either succeed (exit 0) or refuse with exit 2 and a message naming the input;
an exception escaping `main` (a traceback for the user) fails the test. The documents mix the
shapes an attacker would send (nesting past any sane depth, integers of thousands of digits,
NaN and Infinity, numbers that overflow a float) with random JSON and with valid inputs mutated
at a random place, so that the checks deep inside each parser are reached too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iechs.cli import main
from sibling import load

ROOT = Path(__file__).resolve().parents[1]
TIMELINE = json.loads((ROOT / "examples" / "day14-steroid-response.json").read_text())
BUNDLE = json.loads((ROOT / "examples" / "fhir" / "day14-steroid-response.bundle.json").read_text())

# --- hostile texts ----------------------------------------------------------------------------


@st.composite
def deep(draw: st.DrawFn) -> str:
    """Arrays or objects nested from 60 to 5,000 levels (closed or cut short)."""
    depth = draw(st.integers(60, 5000))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    inner = draw(st.sampled_from(["1", "null", '"x"', ""]))
    close = closer * depth if draw(st.booleans()) else ""
    return opener * depth + inner + close


hostile_scalars = st.sampled_from(
    [
        "9" * 5000,
        "-" + "9" * 4400,
        "1e400",
        "-1e400",
        "NaN",
        "Infinity",
        "-Infinity",
        "1" * 50,
        '"\\ud800"',
        '"' + "x" * 100_000 + '"',
    ]
)


def _splice(doc: Any, path: list[Any], text: str) -> str:
    """`doc` as JSON with the value at `path` replaced by the raw JSON text `text`."""
    marker = "__FUZZ_MARKER__"
    copy = json.loads(json.dumps(doc))
    node = copy
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = marker
    return json.dumps(copy).replace(f'"{marker}"', text, 1)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[list[Any]]:
    out: list[list[Any]] = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.append([*prefix, k])
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out.append([*prefix, i])
            out.extend(_paths(v, (*prefix, i)))
    return out


TIMELINE_PATHS = _paths(TIMELINE)
BUNDLE_PATHS = _paths(BUNDLE)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
    max_leaves=12,
)


@st.composite
def mutated(draw: st.DrawFn, doc: Any, paths: list[list[Any]]) -> str:
    """A valid document with one value replaced by something hostile or random."""
    path = draw(st.sampled_from(paths))
    value = draw(hostile_scalars | deep() | json_values.map(json.dumps))
    return _splice(doc, path, value)


documents = st.one_of(
    deep(),
    hostile_scalars,
    json_values.map(json.dumps),
    mutated(TIMELINE, TIMELINE_PATHS),
    mutated(BUNDLE, BUNDLE_PATHS),
)

FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _door(
    args: list[str], capsys: pytest.CaptureFixture[str], allowed: tuple[int, ...] = (0, 2)
) -> None:
    code = main(args)  # an exception here is a traceback for the user: the test fails
    err = capsys.readouterr().err
    assert code in allowed, (code, err[-2000:])
    assert "Traceback" not in err
    if code == 2:
        assert err.strip(), "exit 2 says why"


@FUZZ
@given(text=documents)
def test_run_never_tracebacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    path = tmp_path / "t.json"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    _door(["run", str(path), "--format", "json"], capsys)


@FUZZ
@given(lines=st.lists(documents.map(lambda t: t.replace("\n", " ")), min_size=1, max_size=3))
def test_cohort_doors_never_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], lines: list[str]
) -> None:
    cohort = tmp_path / "c.jsonl"
    cohort.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    out = tmp_path / "r.jsonl"
    out.unlink(missing_ok=True)
    _door(
        ["replay-cohort", str(cohort), "--workers", "1", "--no-progress", "--out", str(out)], capsys
    )
    _door(["report", str(cohort), "--format", "json", "--out", str(tmp_path / "r.json")], capsys)
    baseline = str(ROOT / "guideline" / "iec-hs.yaml")
    _door(["compare", str(cohort), "--baseline", baseline, "--format", "json"], capsys)


@pytest.fixture(scope="module")
def export_lines(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The JSON Lines export of a real log: the audit import door is fuzzed from it."""
    folder = tmp_path_factory.mktemp("log")
    store = str(folder / "log.db")
    assert (
        main(["run", str(ROOT / "examples" / "day14-steroid-response.json"), "--store", store]) == 0
    )
    out = folder / "log.jsonl"
    assert main(["audit", "export", store, "--format", "jsonl", "--out", str(out)]) == 0
    return out.read_text(encoding="utf-8").splitlines()


@FUZZ
@given(data=st.data())
def test_audit_import_never_tracebacks(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    export_lines: list[str],
    data: st.DataObject,
) -> None:
    lines = list(export_lines)
    i = data.draw(st.integers(0, len(lines) - 1))
    record = json.loads(lines[i])
    paths = _paths(record)
    lines[i] = data.draw(documents.map(lambda t: t.replace("\n", " ")) | mutated(record, paths))
    export = tmp_path / "x.jsonl"
    export.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    store = tmp_path / "new.db"
    store.unlink(missing_ok=True)
    _door(["audit", "import", str(export), "--store", str(store)], capsys, (0, 1, 2))
    _door(["audit", "verify", str(export)], capsys, (0, 1, 2))  # 1: tampering found


# --- the service: hostile bodies to a real server ---------------------------------------------


S = load("test_service_helpers")
HOOK: dict[str, Any] = {
    "hook": "patient-view",
    "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
    "context": {"userId": "Practitioner/haem-1", "patientId": "svc-no-steroid"},
}
FEEDBACK: dict[str, Any] = {
    "feedback": [
        {
            "card": "981157ae-16d4-5a8d-83db-d28e57e73b01",
            "outcome": "overridden",
            "outcomeTimestamp": "2026-05-17T09:41:00Z",
            "overrideReason": {"userComment": "given before transfer"},
        }
    ]
}
ENDPOINTS = {
    "/cds-services/iechs-patient-view": HOOK,
    "/cds-services/iechs-order-sign": {
        **HOOK,
        "hook": "order-sign",
        "context": {**HOOK["context"], "draftOrders": {"resourceType": "Bundle", "entry": []}},
    },
    "/cds-services/iechs-order-sign/feedback": FEEDBACK,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("serve")
    store = str(folder / "audit.db")
    assert (
        main(
            [
                "run",
                str(ROOT / "examples" / "service" / "iec-hs-no-steroid.json"),
                "--store",
                store,
                "--format",
                "json",
            ]
        )
        == 0
    )
    with S.serving(store, log_dir=folder) as running:
        yield running


@FUZZ
@given(data=st.data())
def test_service_never_answers_5xx(server: Any, data: st.DataObject) -> None:
    """A hostile body is a 4xx with `{"error": ...}` naming the problem; never a 5xx, never a
    dropped connection (what a traceback in the service would give)."""
    import httpx

    path = data.draw(st.sampled_from(sorted(ENDPOINTS)))
    body = ENDPOINTS[path]
    text = data.draw(documents | mutated(body, _paths(body)))
    response = httpx.post(
        f"{server.url}{path}",
        content=text.encode("utf-8", "surrogatepass"),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        assert set(response.json()) == {"error"}
