"""`iechs synth` and `iechs replay-cohort`: deterministic, parallel, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iechs import Engine, parse_timeline
from iechs.cli import main
from iechs.synthetic import COURSES, synthetic_cohort, synthetic_timeline


def make_cohort(path: Path, n: int = 40) -> None:
    assert main(["synth", "--patients", str(n), "--seed", "7", "--out", str(path)]) == 0


def test_synth_is_reproducible(tmp_path: Path) -> None:
    make_cohort(tmp_path / "a.jsonl")
    make_cohort(tmp_path / "b.jsonl")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert synthetic_timeline(3, seed=1) != synthetic_timeline(3, seed=2)


def test_synthetic_courses_follow_their_shape(engine: Engine) -> None:
    expected_end = {
        "uneventful": ["surveillance", "closed"],
        "crs_only": ["surveillance", "closed"],
        "iec_hs_responds": ["first_line_steroids", "resolved", "closed"],
        "iec_hs_anakinra": ["second_line_anakinra", "resolved", "closed"],
        "iec_hs_refractory": ["refractory_ruxolitinib", "resolved", "closed"],
    }
    seen = set()
    for doc in synthetic_cohort(300, seed=5):
        course = doc.pop("course")
        seen.add(course)
        path: list[str] = []
        for d in engine.run(parse_timeline(doc, engine.guideline)).decisions:
            if not path or path[-1] != d.target:
                path.append(d.target)
        assert path[-len(expected_end[course]) :] == expected_end[course], (course, path)
        assert 55 <= len(doc["events"]) <= 110
    assert seen == set(COURSES)


def test_replay_is_the_same_with_one_or_two_workers(tmp_path: Path) -> None:
    make_cohort(tmp_path / "c.jsonl")
    for workers in ("1", "2"):
        out = tmp_path / f"r{workers}.jsonl"
        assert (
            main(
                [
                    "replay-cohort",
                    str(tmp_path / "c.jsonl"),
                    "--workers",
                    workers,
                    "--out",
                    str(out),
                    "--no-progress",
                ]
            )
            == 0
        )
    one, two = (tmp_path / "r1.jsonl").read_bytes(), (tmp_path / "r2.jsonl").read_bytes()
    assert one == two
    rows = [json.loads(line) for line in one.splitlines()]
    assert [r["source"] for r in rows] == [f"c.jsonl:{i}" for i in range(1, 41)]
    assert all(r["final_state"] == "closed" for r in rows)


def test_statechart_and_table_runtimes_replay_alike(tmp_path: Path) -> None:
    make_cohort(tmp_path / "c.jsonl", 15)
    for runtime in ("table", "statechart"):
        assert (
            main(
                [
                    "replay-cohort",
                    str(tmp_path / "c.jsonl"),
                    "--workers",
                    "1",
                    "--runtime",
                    runtime,
                    "--out",
                    str(tmp_path / f"{runtime}.jsonl"),
                    "--no-progress",
                ]
            )
            == 0
        )
    assert (tmp_path / "table.jsonl").read_bytes() == (tmp_path / "statechart.jsonl").read_bytes()


def test_resume_after_an_interruption(tmp_path: Path) -> None:
    make_cohort(tmp_path / "c.jsonl", 20)
    full = tmp_path / "full.jsonl"
    main(
        [
            "replay-cohort",
            str(tmp_path / "c.jsonl"),
            "--workers",
            "1",
            "--out",
            str(full),
            "--no-progress",
        ]
    )
    lines = full.read_bytes().splitlines(keepends=True)
    part = tmp_path / "part.jsonl"
    part.write_bytes(b"".join(lines[:7]) + lines[7][:25])  # killed in the middle of line 8
    assert (
        main(
            [
                "replay-cohort",
                str(tmp_path / "c.jsonl"),
                "--workers",
                "2",
                "--out",
                str(part),
                "--no-progress",
            ]
        )
        == 0
    )
    assert part.read_bytes() == full.read_bytes()


def test_bad_lines_are_reported_and_the_rest_replayed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_cohort(tmp_path / "c.jsonl", 3)
    text = (tmp_path / "c.jsonl").read_text().splitlines()
    text.insert(1, "{not json")
    text.insert(
        2, json.dumps({"patient": {"id": "X", "infusion_at": "2026-01-01T00:00:00"}, "events": []})
    )
    (tmp_path / "bad.jsonl").write_text("\n".join(text) + "\n")
    out = tmp_path / "r.jsonl"
    assert (
        main(
            [
                "replay-cohort",
                str(tmp_path / "bad.jsonl"),
                "--workers",
                "1",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 2
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [("error" in r) for r in rows] == [False, True, True, False, False]
    assert rows[1]["error"].startswith("bad.jsonl:2: $: not valid JSON")
    assert "$.patient.infusion_at" in rows[2]["error"]
    assert "has no time zone" in rows[2]["error"]
    assert f"5 replayed, 0 already in {out}, 2 with bad input" in capsys.readouterr().err
