"""Auditor views of the log: one record in full (`audit show --record`), CDS Hooks feedback
shown as feedback, unknown episodes and records refused, and episode exports (`audit export
--episode`): what they hold, how they verify alone and against the full log, and what refuses
them. Stores are made by `iechs run --store`, feedback by the service's own code."""

from __future__ import annotations

import doctest
import json
import re
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from iechs.audit import canonical, open_log
from iechs.audit import feedback as feedback_module
from iechs.audit.chain import read_record
from iechs.audit.feedback import feedback_of, parse_feedback
from iechs.audit.records import AuditRecord
from iechs.audit.show import print_record
from iechs.cli import main
from iechs.service.cards import OVERRIDE_REASONS, OVERRIDE_SYSTEM
from iechs.service.core import ORDER_SIGN, PATIENT_VIEW, HookService, ServiceConfig

ROOT = Path(__file__).resolve().parents[1]
DAY14 = ROOT / "examples" / "day14-steroid-response.json"  # 17 records, closed
IL6 = ROOT / "examples" / "tocilizumab-monotherapy-deviation.json"  # open: takes feedback


def logged(location: str) -> list[AuditRecord]:
    with open_log(location) as log, log.reading() as view:
        found = [read_record(item)[0] for item in view.records()]
    assert all(r is not None for r in found)
    return [r for r in found if r is not None]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Two episodes run through `iechs run --store`, then two CDS Hooks feedback items on the
    open one, recorded by the service's core (as `POST /cds-services/.../feedback` does)."""
    db = str(tmp_path_factory.mktemp("views") / "log.db")
    for timeline in (DAY14, IL6):
        assert main(["run", str(timeline), "--store", db, "--format", "json"]) == 0
    service = HookService(ServiceConfig(store=db))
    try:
        context = {"patientId": "il6-monotherapy", "userId": "Practitioner/haem-1"}
        cards = service.patient_view(context, None, None, "http://localhost/review")
        overridable = next(c for c in cards if c.get("overrideReasons"))
        service.feedback(
            PATIENT_VIEW,
            [
                {
                    "card": overridable["uuid"],
                    "outcome": "overridden",
                    "outcomeTimestamp": "2026-07-11T08:00:00Z",
                    "overrideReason": {
                        "reason": {"system": OVERRIDE_SYSTEM, "code": "record-incomplete"},
                        "userComment": "labs drawn; result pending",
                    },
                },
            ],
            "Practitioner/haem-1",
        )
        # accepted: an order-sign card's suggestion, named as CDS Hooks cds-fb-2 requires
        order = {  # ruxolitinib on the first line skips a line: a card suggesting to remove it
            "resourceType": "MedicationRequest",
            "id": "rux-1",
            "status": "draft",
            "intent": "order",
            "medicationCodeableConcept": {"text": "ruxolitinib"},
        }
        draft = {"resourceType": "Bundle", "entry": [{"resource": order}]}
        signed = service.order_sign(
            {**context, "draftOrders": draft}, None, None, "http://localhost/review"
        )
        with_suggestion = next(c for c in signed if c.get("suggestions"))
        service.feedback(
            ORDER_SIGN,
            [
                {
                    "card": with_suggestion["uuid"],
                    "outcome": "accepted",
                    "outcomeTimestamp": "2026-07-11T08:01Z",
                    "acceptedSuggestions": [{"id": with_suggestion["suggestions"][0]["uuid"]}],
                },
            ],
            "Practitioner/haem-1",
        )
    finally:
        service.close()
    return db


@pytest.fixture
def capture(capsys: pytest.CaptureFixture[str]) -> Any:
    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def wide(record_seq: int, location: str) -> str:
    """`print_record` on a console wide enough that no line wraps."""
    buf = StringIO()
    with open_log(location) as log:
        print_record(log, record_seq, Console(file=buf, width=400, highlight=False))
    return buf.getvalue()


# --- one record in full -------------------------------------------------------------------------


def test_record_shows_event_decision_guards_and_the_values_read(store: str) -> None:
    records = logged(store)
    moved = next(
        r for r in records if r.episode == "demo-day14" and r.source == "surveillance" != r.target
    )
    text = wide(moved.seq, store)
    assert f"Record {moved.seq}" in text
    assert f"episode demo-day14, step {moved.step}, at {moved.at}" in text
    assert f"sha256 {moved.hash}" in text
    assert f"links to record {moved.seq - 1} ({moved.prev[:16]}" in text
    # the event, field by field, as stored
    for key, value in moved.event.items():
        shown = value if isinstance(value, str) else json.dumps(value)
        assert re.search(rf"^{key}\s+{re.escape(shown)}\s*$", text, re.M), key
    assert "surveillance -> suspected" in text
    # every guard: its transition, result and label; every criterion it read, with each value,
    # unit and time exactly as the record stores them
    criteria = moved.decision["criteria"]
    for guard in moved.decision["guards"]:
        assert (
            f"{guard['transition']} on {guard['event']}: {guard['result']} — {guard['label']}"
            in (text)
        )
        todo = list(guard["when"]) + list(guard["unless"])
        checked = 0
        while todo:
            name = todo.pop()
            verdict = criteria.get(name)
            if verdict is None:
                assert f"{name}: not evaluated (not needed)" in text
                continue
            assert f"{name} {verdict['result']}" in text
            for r in verdict.get("reads", []):
                line = f"read {r['what']} = {json.dumps(r['value'])}"
                line += f" {r['unit']}" if "unit" in r else ""
                line += f" at {r['at']}" if "at" in r else ""
                assert line in text
                checked += 1
            todo += verdict.get("combines", [])
        assert checked >= 4  # ferritin (twice), baseline ferritin, LDH...
    assert "read ferritin = 26000.0 ng/mL at 2026-03-15T08:00:00Z" in text
    for rec in moved.decision["recommendations"]:
        assert f"- {rec['id']}: {rec['text']}" in text
    for action in moved.decision["actions"]:
        assert f"- {action['code']}: {action['text']}" in text


def test_record_of_a_start_shows_the_patient_and_criteria_outside_guards(store: str) -> None:
    first = logged(store)[0]
    text = wide(first.seq, store)
    assert "Patient (the episode's start)" in text
    assert "infusion_at" in text
    assert "the episode starts in surveillance" in text
    # criteria evaluated for actions and rules are listed too, none left out
    for name in first.decision["criteria"]:
        assert name in text


def test_record_cli_and_alerts(store: str, capture: Any) -> None:
    records = logged(store)
    alerted = next(r for r in records if r.alerts)
    code, out, _ = capture("audit", "show", store, "--record", str(alerted.seq))
    assert code == 0
    assert "Alerts (" in out
    for alert in alerted.alerts:
        assert f"{alert['code']} ({alert['severity']}, {alert['at']})" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--episode", "nobody"], "no episode 'nobody' in the log"),
        (["--episode", "demo-day1"], "(did you mean 'demo-day14'?)"),
        (["--episode", "demo-day1"], "it holds 2 episode(s): demo-day14, il6-monotherapy"),
        (["--record", "999"], "no record 999 in the log; it holds records 1-"),
        (["--record", "0"], "no record 0 in the log"),
    ],
)
def test_unknown_episode_or_record_exits_2(
    store: str, capture: Any, argv: list[str], message: str
) -> None:
    code, out, err = capture("audit", "show", store, *argv)
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert out == ""


def test_record_and_episode_are_exclusive(store: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["audit", "show", store, "--record", "1", "--episode", "demo-day14"])
    assert exc.value.code == 2


# --- feedback -----------------------------------------------------------------------------------


def test_feedback_records_read_back_as_written(store: str) -> None:
    fed = [r for r in logged(store) if r.reason and r.reason.startswith("CDS Hooks feedback")]
    assert len(fed) == 2
    overridden, accepted = (feedback_of(r) for r in fed)
    assert overridden is not None
    assert accepted is not None
    assert (overridden.outcome, overridden.at) == ("overridden", "2026-07-11T08:00:00Z")
    assert overridden.service == PATIENT_VIEW
    assert overridden.override_system == OVERRIDE_SYSTEM
    assert overridden.override_code == "record-incomplete"
    assert overridden.override_display == dict(OVERRIDE_REASONS)["record-incomplete"]
    assert overridden.comment == "labs drawn; result pending"  # a "; " in a comment survives
    assert (accepted.outcome, accepted.at) == ("accepted", "2026-07-11T08:01:00Z")
    assert accepted.override_code is None
    assert fed[0].actor == "Practitioner/haem-1"
    assert fed[0].event["kind"] == "advance"


def test_feedback_is_shown_as_feedback_not_as_time_passing(store: str, capture: Any) -> None:
    fed = [r for r in logged(store) if r.reason and r.reason.startswith("CDS Hooks feedback")]
    code, out, _ = capture("audit", "show", store, "--episode", "il6-monotherapy")
    assert code == 0
    assert "time passes" not in out
    flat = " ".join(out.split())
    assert flat.count("CDS Hooks feedback:") == 2
    assert "overridden card" in flat
    assert "accepted card" in flat
    first = feedback_of(fed[0])
    assert first is not None
    text = wide(fed[0].seq, store)
    assert "CDS Hooks feedback" in text
    assert "time passes" not in text
    for label, value in (
        ("card", first.card),
        ("issued by", PATIENT_VIEW),
        ("outcome", "overridden"),
        ("at", "2026-07-11T08:00:00Z"),
        ("by", "Practitioner/haem-1"),
        ("comment", '"labs drawn; result pending"'),
    ):
        assert re.search(rf"^{label}\s+{re.escape(value)}", text, re.M), label
    assert f'"{first.override_display}" ({OVERRIDE_SYSTEM}#record-incomplete)' in text
    assert f"{first.topic} ({first.indicator})" in text


def test_feedback_parser() -> None:
    assert doctest.testmod(feedback_module).failed == 0
    assert parse_feedback("a reason a clinician typed") is None
    text = (
        'CDS Hooks feedback: card u1 (iechs-order-sign, il6_monotherapy, critical: "IL-6 '
        'blockade without a corticosteroid") accepted at 2026-05-17T10:06:00Z; accepted '
        'suggestions: "Remove the tocilizumab order", "Add dexamethasone"'
    )
    fb = parse_feedback(text)
    assert fb is not None
    assert fb.accepted == ("Remove the tocilizumab order", "Add dexamethasone")
    assert fb.summary == "IL-6 blockade without a corticosteroid"
    assert fb.override is None


# --- episode exports ----------------------------------------------------------------------------


@pytest.fixture
def exported(store: str, tmp_path: Path, capture: Any) -> tuple[Path, Path]:
    whole, part = tmp_path / "whole.jsonl", tmp_path / "day14.jsonl"
    assert capture("audit", "export", store, "--out", str(whole))[0] == 0
    code, _, err = capture("audit", "export", store, "--episode", "demo-day14", "--out", str(part))
    assert code == 0
    assert "Exported 17 records" in err
    assert "episode demo-day14" in err
    return whole, part


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_episode_export_holds_the_episode_records_as_the_whole_export(
    exported: tuple[Path, Path], store: str
) -> None:
    whole, part = exported
    header, whole_header = json.loads(lines(part)[0]), json.loads(lines(whole)[0])
    # the whole export is unchanged: its header has no episode
    assert set(whole_header) == {"format", "store_id", "head"}
    assert whole_header["format"] == "iechs.audit-export/1"
    assert header == {
        **whole_header,
        "format": "iechs.audit-episode-export/1",
        "episode": "demo-day14",
        "records": 17,
    }
    # each line is byte for byte the whole export's line of that record
    day14 = [line for line in lines(whole)[1:] if '"episode":"demo-day14"' in line]
    assert lines(part)[1:] == day14
    assert [json.loads(line)["record"]["decision"]["step"] for line in day14] == list(range(17))
    for line in lines(part):
        assert canonical(json.loads(line)) == line


def test_episode_export_verifies_alone_and_against_the_log(
    exported: tuple[Path, Path], store: str, capture: Any
) -> None:
    _, part = exported
    code, out, _ = capture("audit", "verify", str(part))
    assert code == 0
    assert "INTACT: 17 records (steps 0-16 of the episode, no gap)" in out
    assert "whether later steps were cut off, is not checked here (pass --against LOG" in (
        " ".join(out.split())
    )
    code, out, _ = capture("audit", "verify", str(part), "--against", store)
    assert code == 0
    assert f"Against {store}: the log verifies" in " ".join(out.split())
    code, out, _ = capture("audit", "verify", str(part), "--against", store, "--format", "json")
    doc = json.loads(out)
    assert doc["ok"] is True
    assert doc["records"] == 17
    assert doc["episode_export"] == {"episode": "demo-day14", "against": store}
    # The whole log's verification JSON is as before: no episode_export key.
    code, out, _ = capture("audit", "verify", store, "--format", "json")
    assert "episode_export" not in json.loads(out)


def test_episode_export_can_be_shown_replayed_and_exported_as_fhir(
    exported: tuple[Path, Path], capture: Any
) -> None:
    _, part = exported
    code, out, _ = capture("audit", "show", str(part))
    assert code == 0
    assert "episode export of demo-day14 (not a whole chain)" in " ".join(out.split())
    assert "17 records." in out
    code, out, _ = capture("audit", "replay", str(part))
    assert code == 0
    assert "SAME" in out
    code, out, _ = capture("audit", "export", str(part), "--format", "fhir")
    assert code == 0
    assert len(json.loads(out)["entry"]) == 3 * 17  # AuditEvent, GuidanceResponse, Provenance


def test_episode_export_is_refused_where_a_whole_chain_is_needed(
    exported: tuple[Path, Path], tmp_path: Path, capture: Any
) -> None:
    _, part = exported
    target = tmp_path / "new.db"
    code, _, err = capture("audit", "import", str(part), "--store", str(target))
    assert code == 2
    assert "an episode export (episode 'demo-day14', 17 records) is not a whole chain" in err
    assert not target.exists()  # refused before a store is made
    code, _, err = capture("audit", "export", str(part))
    assert code == 2
    assert "this is an episode export (episode 'demo-day14'), not a whole log" in err
    key = tmp_path / "k.pem"
    assert capture("audit", "keygen", "--out", str(key))[0] == 0
    code, _, err = capture("audit", "checkpoint", str(part), "--key", str(key), "--out", "c.json")
    assert code == 2
    assert "has no head of its own to sign" in err


def test_whole_log_and_episode_options_refused(store: str, tmp_path: Path, capture: Any) -> None:
    code, _, err = capture("audit", "verify", store, "--against", store)
    assert code == 2
    assert "--against compares an episode export" in err
    code, _, err = capture("audit", "export", store, "--episode", "nobody")
    assert code == 2
    assert "no episode 'nobody' in the log" in err


def write(path: Path, rows: list[str]) -> Path:
    path.write_text("".join(row + "\n" for row in rows), encoding="utf-8")
    return path


def test_episode_export_tampering(
    exported: tuple[Path, Path], store: str, tmp_path: Path, capture: Any
) -> None:
    _, part = exported
    rows = lines(part)
    header = json.loads(rows[0])

    def verdict(name: str, body: list[str], *extra: str) -> tuple[int, str]:
        code, out, _ = capture("audit", "verify", str(write(tmp_path / name, body)), *extra)
        return code, " ".join(out.split())

    # a middle record dropped (and the count fixed): the steps show the gap
    fixed = canonical({**header, "records": 16})
    code, out = verdict("gap.jsonl", [fixed, *rows[1:5], *rows[6:]])
    assert code == 1
    assert "TAMPERED (missing): step 4 of episode 'demo-day14' is missing" in out
    # a value changed: the record no longer matches its hash
    line = json.loads(rows[12])
    line["record"]["decision"]["event"]["value"] = 1.0
    code, out = verdict("altered.jsonl", [*rows[:12], canonical(line), *rows[13:]])
    assert code == 1
    assert "TAMPERED (altered)" in out
    # the header's count
    code, out = verdict("count.jsonl", [canonical({**header, "records": 18}), *rows[1:]])
    assert code == 1
    assert "the export's header says 18 records, it holds 17" in out
    # the last record cut off and the count fixed: alone it cannot tell, the full log can
    cut = [canonical({**header, "records": 16}), *rows[1:-1]]
    assert verdict("cut.jsonl", cut)[0] == 0
    code, out = verdict("cut2.jsonl", cut, "--against", store)
    assert code == 1
    assert "TAMPERED (missing): record" in out
    assert "of episode 'demo-day14' is in" in out
    # another store's log
    other = tmp_path / "other.db"
    assert main(["run", str(DAY14), "--store", str(other)]) == 0
    code, out = verdict("same.jsonl", rows, "--against", str(other))
    assert code == 1
    assert "TAMPERED (against): the export is of store" in out
    # a checkpoint vouches for a whole chain only
    key = tmp_path / "k.pem"
    assert main(["audit", "keygen", "--out", str(key)]) == 0
    assert (
        main(["audit", "checkpoint", store, "--key", str(key), "--out", str(tmp_path / "c")]) == 0
    )
    code, _, err = capture("audit", "verify", str(part), "--checkpoint", str(tmp_path / "c"))
    assert code == 2
    assert "a checkpoint cannot vouch for it" in err
