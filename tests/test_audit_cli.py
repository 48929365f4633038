"""`iechs run --store` and `iechs audit ...` on good and bad input; replay of every example."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from iechs import Engine, load_timeline
from iechs.audit import canonical, open_log, replay_log
from iechs.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.json"))
DAY14 = ROOT / "examples" / "day14-steroid-response.json"


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    capsys.readouterr()
    assert main(["run", *argv, "--format", "json"]) == 0
    doc: dict[str, object] = json.loads(capsys.readouterr().out)
    return doc


def records(db: Path) -> list[dict[str, object]]:
    import sqlite3

    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT body FROM iechs_records ORDER BY seq").fetchall()
    return [json.loads(b) for (b,) in rows]


def snapshots(db: Path) -> list[dict[str, object]]:
    import sqlite3

    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT snapshot FROM iechs_episodes ORDER BY id").fetchall()
    return [json.loads(b) for (b,) in rows]


@pytest.fixture(scope="module")
def all_examples(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[str]]]:
    """Every example run through `iechs run --store`; the steps `iechs run` printed for each."""
    db = tmp_path_factory.mktemp("examples") / "log.db"
    steps: dict[str, list[str]] = {}
    for path in EXAMPLES:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "iechs",
                "run",
                str(path),
                "--store",
                str(db),
                "--format",
                "json",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        doc = json.loads(out.stdout)
        steps[doc["patient"]["id"]] = [canonical(s) for s in doc["steps"]]
    return db, steps


def test_replay_reproduces_every_example_byte_for_byte(
    all_examples: tuple[Path, dict[str, list[str]]], engine: Engine
) -> None:
    db, steps = all_examples
    assert len(steps) == len(EXAMPLES)
    with open_log(str(db)) as log:
        report = replay_log(log, [engine.guideline], keep_decisions=True)
    assert report.ok, report.differences
    assert set(report.episodes) == set(steps)
    logged = records(db)
    assert report.records == len(logged) == sum(len(s) for s in steps.values())
    by_episode: dict[str, list[str]] = {}
    for record in logged:
        seq, episode = record["seq"], str(record["episode"])
        # logged == replayed == what `iechs run` printed, as canonical bytes
        assert canonical(record["decision"]) == report.replayed[int(str(seq))]
        by_episode.setdefault(episode, []).append(report.replayed[int(str(seq))])
    assert by_episode == steps


def test_replay_cli_on_every_example(
    all_examples: tuple[Path, dict[str, list[str]]], capsys: pytest.CaptureFixture[str]
) -> None:
    db, steps = all_examples
    assert main(["audit", "replay", str(db), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True
    assert doc["differences"] == []
    assert sorted(doc["episodes"]) == sorted(steps)
    assert main(["audit", "replay", "--store", str(db)]) == 0
    assert "SAME: every replayed decision equals the logged one." in capsys.readouterr().out


def test_run_store_continues_an_episode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    whole = json.loads(DAY14.read_text())
    # Cut after a whole order set (the file's events 0-9 end with every 2026-03-15T08:00Z
    # value): the first process decided exactly what a whole run decides up to there.
    assert whole["events"][9]["at"] == "2026-03-15T08:00:00Z" != whole["events"][10]["at"]
    first = {**whole, "events": whole["events"][:10]}
    (tmp_path / "first.json").write_text(json.dumps(first))
    db = str(tmp_path / "log.db")
    half = run_json(capsys, str(tmp_path / "first.json"), "--store", db)
    assert len(half["steps"]) == 11  # type: ignore[arg-type]
    # A later process: the full timeline repeats the recorded events and adds the rest.
    resumed = run_json(capsys, str(DAY14), "--store", db)
    assert resumed == run_json(capsys, str(DAY14))
    assert len(records(tmp_path / "log.db")) == 17
    # Running it again records nothing new; a timeline with only the new events continues too.
    assert run_json(capsys, str(DAY14), "--store", db) == resumed
    assert len(records(tmp_path / "log.db")) == 17
    db2 = str(tmp_path / "log2.db")
    run_json(capsys, str(tmp_path / "first.json"), "--store", db2)
    rest = {**whole, "events": whole["events"][10:]}
    (tmp_path / "rest.json").write_text(json.dumps(rest))
    assert run_json(capsys, str(tmp_path / "rest.json"), "--store", db2) == resumed
    assert records(tmp_path / "log2.db") == records(tmp_path / "log.db")
    assert main(["audit", "verify", db]) == 0


def test_run_store_completes_an_order_set_in_a_later_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first file has part of the 2026-03-15T08:00Z order set (AST, ferritin, LDH), the
    second repeats it with the fibrinogen, which sorts among the recorded values: the episode
    continues with the events not recorded (it does not restart and refuse the timeline)."""
    whole = json.loads(DAY14.read_text())
    assert whole["events"][9]["code"] == "fibrinogen"
    first = {**whole, "events": whole["events"][:9]}
    (tmp_path / "first.json").write_text(json.dumps(first))
    db = str(tmp_path / "log.db")
    half = run_json(capsys, str(tmp_path / "first.json"), "--store", db)
    resumed = run_json(capsys, str(DAY14), "--store", db)
    assert resumed["steps"][:10] == half["steps"]  # type: ignore[index]
    stepped = [s["event"] for s in resumed["steps"][10:]]  # type: ignore[index]
    assert stepped[0] == {
        "at": "2026-03-15T08:00:00Z",
        "kind": "observation",
        "code": "fibrinogen",
        "value": 110.0,
        "unit": "mg/dL",
    }
    assert len(stepped) == 7
    assert resumed["final_state"] == "closed"
    # What the first file's process knew is what it decided: not what a whole run decides.
    plain = run_json(capsys, str(DAY14))
    assert plain["steps"][9] != resumed["steps"][9]  # type: ignore[index]
    assert plain["path"] == resumed["path"]
    # Running it again records nothing new; the log is intact and replays.
    assert run_json(capsys, str(DAY14), "--store", db) == resumed
    assert len(records(tmp_path / "log.db")) == 17
    assert main(["audit", "verify", db]) == 0
    assert main(["audit", "replay", db]) == 0


def test_run_store_refuses_another_patient_under_the_same_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "log.db")
    run_json(capsys, str(DAY14), "--store", db)
    other = json.loads(DAY14.read_text())
    other["patient"]["infusion_at"] = "2026-03-01T09:00:00Z"
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert main(["run", str(tmp_path / "other.json"), "--store", db]) == 2
    err = capsys.readouterr().err
    assert "holds episode 'demo-day14' with other patient details" in err
    assert "Traceback" not in err


def test_show_prints_a_timeline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "log.db")
    run_json(capsys, str(DAY14), "--store", db)
    run_json(capsys, str(EXAMPLES[1]), "--store", db)
    assert main(["audit", "show", db, "--episode", "demo-day14"]) == 0
    out = capsys.readouterr().out
    assert "suspected -> first_line_steroids" in out
    assert "dexamethasone 10 mg IV for iec_hs" in out
    assert "missing_data" in out
    assert "17 records." in out
    assert main(["audit", "show", db]) == 0
    assert f"{len(records(tmp_path / 'log.db'))} records." in capsys.readouterr().out


def test_export_import_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "log.db")
    run_json(capsys, str(DAY14), "--store", db)
    assert main(["audit", "export", db, "--out", str(tmp_path / "a.jsonl")]) == 0
    assert (
        main(["audit", "import", str(tmp_path / "a.jsonl"), "--store", str(tmp_path / "b.db")]) == 0
    )
    assert (
        main(["audit", "export", str(tmp_path / "b.db"), "--out", str(tmp_path / "b.jsonl")]) == 0
    )
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert records(tmp_path / "log.db") == records(tmp_path / "b.db")
    # The imported store rebuilds the episode's snapshot from the records, what each step knew
    # to follow it (`later`) included.
    assert snapshots(tmp_path / "b.db") == snapshots(tmp_path / "log.db")
    inputs = snapshots(tmp_path / "b.db")[0]["inputs"]
    assert isinstance(inputs, list)
    assert any("later" in i for i in inputs)
    capsys.readouterr()
    # The imported store holds the episode too: a later run continues it.
    assert run_json(capsys, str(DAY14), "--store", str(tmp_path / "b.db")) == run_json(
        capsys, str(DAY14)
    )
    assert len(records(tmp_path / "b.db")) == 17
    # Importing into a store that holds records is refused.
    code = main(["audit", "import", str(tmp_path / "a.jsonl"), "--store", db])
    assert code == 2
    assert "already holds records" in capsys.readouterr().err
    # Standard output works too.
    assert main(["audit", "export", db]) == 0
    assert capsys.readouterr().out.encode() == (tmp_path / "a.jsonl").read_bytes()


def test_export_fhir_bundle_validates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fhir.resources.R4B.bundle import Bundle

    db = str(tmp_path / "log.db")
    run_json(capsys, str(DAY14), "--store", db)
    out = tmp_path / "fhir.json"
    assert main(["audit", "export", db, "--format", "fhir", "--out", str(out)]) == 0
    bundle = Bundle.model_validate_json(out.read_text()).model_dump(mode="json")
    kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert kinds == ["AuditEvent", "GuidanceResponse", "Provenance"] * 17
    first = out.read_bytes()
    assert main(["audit", "export", db, "--format", "fhir", "--out", str(out)]) == 0
    assert out.read_bytes() == first  # deterministic
    assert main(["audit", "export", db, "--format", "fhir", "--episode", "nobody"]) == 0
    assert json.loads(capsys.readouterr().out).get("entry") is None


def test_verify_json_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "log.db")
    run_json(capsys, str(DAY14), "--store", db)
    assert main(["audit", "verify", db, "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True
    assert doc["records"] == 17
    assert doc["findings"] == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["audit", "verify", "{tmp}/absent.db"], "absent.db: $: no such store"),
        (["audit", "verify", "{tmp}/text.db"], "database error"),
        (["audit", "verify", "{tmp}/absent.jsonl"], "no such export file"),
        (["audit", "verify", "{tmp}/text.jsonl"], "line 1 is not an iechs audit export header"),
        (["audit", "verify"], "name the log: LOG or --store"),
        (["audit", "verify", "a.db", "--store", "b.db"], "LOG 'a.db' and --store 'b.db' differ"),
        (["audit", "verify", "{db}", "--checkpoint", "{tmp}/text.jsonl"], "not a JSON checkpoint"),
        (["audit", "verify", "{db}", "--public-key", "{tmp}/text.db"], "not a PEM public key"),
        (["audit", "checkpoint", "{db}", "--key", "{tmp}/none.pem", "--out", "c"], "cannot read"),
        (["audit", "export", "{db}", "--episode", "x"], "no episode 'x' in the log"),
        (["audit", "replay", "{db}", "--guideline", "{tmp}/none.yaml"], "none.yaml"),
        (["run", str(DAY14), "--store", "{tmp}/x.jsonl"], "a .jsonl export is read-only"),
        (["run", str(DAY14), "--store", "postgresql://nobody@127.0.0.1:1/x"], "cannot connect"),
    ],
)
def test_bad_input_exits_2_with_a_message(
    tmp_path: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "log.db"
    main(["run", str(DAY14), "--store", str(db)])
    (tmp_path / "text.db").write_text("not a database " * 200)
    (tmp_path / "text.jsonl").write_text("not json\n")
    capsys.readouterr()
    args = [a.format(tmp=tmp_path, db=db) for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_keygen_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "keygen", "--out", str(tmp_path / "k.pem")]) == 0
    assert "k.pub.pem" in capsys.readouterr().out
    assert main(["audit", "keygen", "--out", str(tmp_path / "k.pem")]) == 2
    assert "refusing to overwrite a key" in capsys.readouterr().err


def test_audit_help_stays_light() -> None:
    # Building the parser imports the audit CLI module only, not the commands behind it.
    code = (
        "import sys, iechs.cli as c; c._parser(); "
        "heavy = [m for m in ('iechs.audit.commands', 'cryptography', 'psycopg', 'fhir') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_timeline_events_survive_the_log(engine: Engine, tmp_path: Path) -> None:
    # The logged event is the engine's input in canonical form (units converted, UTC).
    db = tmp_path / "log.db"
    main(["run", str(DAY14), "--store", str(db)])
    timeline = load_timeline(DAY14, engine.guideline)
    from iechs.timeline import event_to_json

    logged = [r["decision"]["event"] for r in records(db)[1:]]  # type: ignore[index]
    assert logged == [event_to_json(e) for e in timeline.events]


def test_run_store_prints_what_run_prints_for_a_fhir_bundle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundles = sorted((ROOT / "examples" / "fhir").glob("*.json"))
    assert bundles
    for bundle in bundles:
        plain = run_json(capsys, str(bundle))
        stored = run_json(capsys, str(bundle), "--store", str(tmp_path / "log.db"))
        assert stored == plain
    assert main(["audit", "replay", str(tmp_path / "log.db")]) == 0


def test_run_store_continues_after_an_advance(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Service feedback and what-is-due queries are recorded as `advance` inputs at the last
    # event's time; a longer timeline file must still continue the episode.
    from iechs import Engine, open_store
    from iechs.audit.recorder import RecordedEpisode

    whole = json.loads(DAY14.read_text())
    first = {**whole, "events": whole["events"][:9]}
    (tmp_path / "first.json").write_text(json.dumps(first))
    db = str(tmp_path / "log.db")
    run_json(capsys, str(tmp_path / "first.json"), "--store", db)
    with open_store(db) as store:
        recorded = RecordedEpisode.resume(Engine(), store, "demo-day14")
        recorded.advance(recorded.episode.decisions[-1].at)
    resumed = run_json(capsys, str(DAY14), "--store", db)
    assert resumed["final_state"] == "closed"
    assert len(resumed["steps"]) == 18  # type: ignore[arg-type]  # 17 decisions + the advance
    assert main(["audit", "verify", db]) == 0
