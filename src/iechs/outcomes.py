"""What happened to one patient, in a few lines: the summary `replay-cohort` writes per patient.

A summary is plain JSON built from an episode's decisions, so that cohort tools (`iechs report`,
`iechs compare`, an analyst's notebook) never need the full step-by-step run:

- `path` and `final_state`: the states in order (states passed through within a step included);
- `entered`: each state entry with its time;
- `alerts` and `deviation_events`: code and time of each (`deviations` keeps their count);
- `actions`: each drug the guideline asked for, from when it was first asked for until it was
  given (`given_at`) or stopped being asked for (`until`), and the state it was asked for in.
  An action asked for and never given while it was asked for is *not followed*.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .decision import Decision, state_entries
from .timeline import format_time

__all__ = ["SUMMARY_FORMAT", "summarise"]

#: the `format` of a summary line; bumped when a field changes meaning.
SUMMARY_FORMAT = "iechs.summary/1"


def summarise(source: str, patient: str, decisions: Sequence[Decision]) -> dict[str, Any]:
    """The summary of one replayed course (see the module docstring)."""
    entries = state_entries(decisions)
    return {
        "format": SUMMARY_FORMAT,
        "source": source,
        "patient": patient,
        "final_state": decisions[-1].target if decisions else None,
        "path": [state for state, _ in entries],
        "entered": [{"state": state, "at": format_time(at)} for state, at in entries],
        "alerts": [{"code": a.code, "at": format_time(a.at)} for d in decisions for a in d.alerts],
        "deviations": sum(len(d.deviations) for d in decisions),
        "deviation_events": [
            {"code": dev.alert, "drug": dev.drug, "at": format_time(d.at)}
            for d in decisions
            for dev in d.deviations
        ],
        "actions": _drug_actions(decisions),
    }


def _drug_actions(decisions: Sequence[Decision]) -> list[dict[str, Any]]:
    """Each run of a drug action over consecutive steps, and whether the drug was given.

    A run opens at the first step that asks for the drug, and closes at the first later step
    that no longer asks for it. It is followed when a treatment with that drug is recorded at or
    before the step that closes it (the step that records the drug usually closes it).
    """
    open_runs: dict[tuple[str, str], dict[str, Any]] = {}
    done: list[dict[str, Any]] = []
    for d in decisions:
        if not open_runs and not d.actions:
            continue  # nothing asked for, nothing open: nothing to do
        given = d.given_drug if open_runs else None
        for key, run in open_runs.items():
            if given == key[1] and "given_at" not in run:
                run["given_at"] = format_time(d.at)
        asked = {(a.code, a.drug): a for a in d.actions if a.drug is not None}
        for key in [k for k in open_runs if k not in asked]:
            run = open_runs.pop(key)
            run["until"] = format_time(d.at)
            done.append(run)
        for key in asked:
            if key not in open_runs:
                open_runs[key] = {
                    "code": key[0],
                    "drug": key[1],
                    "state": d.target,
                    "from": format_time(d.at),
                }
    done.extend(open_runs.values())  # still asked for when the course ends
    for run in done:
        run["followed"] = "given_at" in run
    done.sort(key=lambda r: (r["from"], r["code"], r["drug"]))
    return done
