"""Write `tests/golden/runs.json`: the sha256 of every decision the engine makes on a fixed set
of courses (the same under both runtimes) (`python tests/golden_runs.py`).

The differential test `tests/test_golden_runs.py` holds the engine to these bytes: a change to
how the engine computes (lazy explanations, incremental criteria, lighter records) must not
change what it says. Regenerate only for an intended change of what the engine says, and say
so in the commit.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from iechs import Engine, Episode, load_guideline, load_timeline, parse_timeline
from iechs.decision import run_to_json
from iechs.synthetic import synthetic_cohort
from iechs.timeline import Timeline

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).with_name("golden") / "runs.json"
SEED, PATIENTS = 20261127, 120


def courses() -> Iterator[tuple[str, Timeline]]:
    g = load_guideline()
    for path in sorted((ROOT / "examples").glob("*.json")):
        yield f"example:{path.name}", load_timeline(path, g)
    for doc in synthetic_cohort(PATIENTS, SEED):
        doc.pop("course", None)
        yield f"synthetic:{doc['patient']['id']}", parse_timeline(doc, g)


def prospective(engine: Engine, timeline: Timeline) -> Episode:
    """Events one at a time with nothing known to follow, and time advanced between them."""
    ep = engine.start(timeline.patient)
    for event in timeline.events:
        if ep.closed:
            break
        if ep.decisions and event.at > ep.decisions[-1].at + timedelta(hours=6):
            ep.advance(event.at - timedelta(hours=1))
        ep.step(event)
    return ep


def digest(doc: Any) -> str:
    text = json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def record(engine: Engine, name: str, timeline: Timeline) -> dict[str, str]:
    out = {}
    for mode, ep in (("run", engine.run(timeline)), ("prospective", prospective(engine, timeline))):
        out[mode] = digest(run_to_json(engine.identity, ep.patient.id, ep.decisions))
        out[f"{mode}.snapshot"] = digest(ep.snapshot())
        out[f"{mode}.restored"] = digest(
            run_to_json(engine.identity, ep.patient.id, engine.restore(ep.snapshot()).decisions)
        )
    return out


def golden(runtime: str) -> dict[str, dict[str, str]]:
    engine = Engine(load_guideline(), runtime=runtime)  # type: ignore[arg-type]
    return {name: record(engine, name, t) for name, t in courses()}


if __name__ == "__main__":
    runs = golden("statechart")
    if runs != golden("table"):
        sys.exit("the two runtimes disagree: fix that first (tests/test_runtime_equivalence.py)")
    OUT.write_text(json.dumps(runs, indent=1, sort_keys=True) + "\n")
    sys.stderr.write(f"wrote {OUT}\n")
