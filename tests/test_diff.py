"""`iechs diff`: a semantic diff of two guideline versions or profiles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import pytest

from iechs import Guideline, load_guideline
from iechs.cli import main
from iechs.diagram.diff import CATEGORIES, Change, diff_guidelines, diff_to_json, diff_to_text
from iechs.model import Dose

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "guideline" / "iec-hs.yaml"
PROFILE = ROOT / "guideline" / "profiles" / "astct-2023.yaml"


def with_state(g: Guideline, sid: str, **changes: Any) -> Guideline:
    states = dict(g.states)
    states[sid] = attrs.evolve(states[sid], **changes)
    return attrs.evolve(g, states=states)


def only(changes: list[Change]) -> Change:
    assert len(changes) == 1, changes
    return changes[0]


def test_no_changes(guideline: Guideline) -> None:
    assert diff_guidelines(guideline, guideline) == []
    assert diff_to_text(guideline, guideline, []).endswith(": no changes\n")


def test_a_dose_change(guideline: Guideline) -> None:
    state = guideline.states["first_line_steroids"]
    rec = attrs.evolve(state.recommendations[0], dose=Dose(min=10, max=40, unit="mg"))
    new = with_state(
        guideline, "first_line_steroids", recommendations=(rec, *state.recommendations[1:])
    )
    c = only(diff_guidelines(guideline, new))
    assert (c.category, c.change) == ("dose", "changed")
    assert c.where == "recommendation dexamethasone-high-dose in first_line_steroids"
    assert c.before == "Dexamethasone 10–20 mg IV, every 6 h, adults"
    assert c.after == "Dexamethasone 10–40 mg IV, every 6 h, adults"


def test_a_threshold_change(guideline: Guideline) -> None:
    criteria = dict(guideline.criteria)
    c0 = criteria["ferritin_above_10000"]
    assert c0.threshold is not None
    criteria["ferritin_above_10000"] = attrs.evolve(
        c0, threshold=attrs.evolve(c0.threshold, value=5000.0)
    )
    c = only(diff_guidelines(guideline, attrs.evolve(guideline, criteria=criteria)))
    assert (c.category, c.where) == ("threshold", "criterion ferritin_above_10000")
    assert (c.before, c.after) == ("ferritin > 10000 ng/mL", "ferritin > 5000 ng/mL")


def test_a_parameter_is_a_threshold(guideline: Guideline) -> None:
    params = dict(guideline.parameters)
    params["min_hours_before_escalation"] = attrs.evolve(
        params["min_hours_before_escalation"], value=24.0
    )
    c = only(diff_guidelines(guideline, attrs.evolve(guideline, parameters=params)))
    assert (c.category, c.before, c.after) == ("threshold", "48 h", "24 h")


def test_guard_citation_and_verified_changes(guideline: Guideline) -> None:
    state = guideline.states["suspected"]
    t = attrs.evolve(
        state.transitions[0],
        when=("iec_hs_identified",),
        cite=("hines-2023",),
        verified=not state.transitions[0].verified,
    )
    new = with_state(guideline, "suspected", transitions=(t, *state.transitions[1:]))
    changes = {c.category: c for c in diff_guidelines(guideline, new)}
    assert set(changes) == {"guard", "citation", "verified"}
    where = "transition suspected --give_corticosteroid--> first_line_steroids"
    assert all(c.where == where for c in changes.values())
    assert changes["guard"].after == {"when": ["iec_hs_identified"]}
    assert changes["citation"].after == ["hines-2023"]
    text = changes["guard"].text()
    assert (
        text == f"~ guard: {where}: iec_hs_identified and infection_gate_open -> iec_hs_identified"
    )


def test_transitions_added_removed_and_reordering_is_no_change(guideline: Guideline) -> None:
    state = guideline.states["suspected"]
    reordered = with_state(guideline, "suspected", transitions=state.transitions[::-1])
    assert diff_guidelines(guideline, reordered) == []
    fewer = with_state(guideline, "suspected", transitions=state.transitions[1:])
    c = only(diff_guidelines(guideline, fewer))
    assert (c.category, c.change) == ("transition", "removed")
    assert c.before == state.transitions[0].label
    back = only(diff_guidelines(fewer, guideline))
    assert back.change == "added"
    assert back.text().startswith("+ transition: transition suspected")


def test_states_and_statements(guideline: Guideline) -> None:
    state = guideline.states["suspected"]
    caution = attrs.evolve(state.cautions[0], text="A new caution.")
    new = with_state(guideline, "suspected", cautions=(caution, *state.cautions[1:]))
    changes = diff_guidelines(guideline, new)
    assert {(c.category, c.change) for c in changes} == {
        ("statement", "added"),
        ("statement", "removed"),
    }
    renamed = with_state(guideline, "salvage", name="Salvage")
    c = only(diff_guidelines(guideline, renamed))
    assert (c.category, c.where, c.after) == ("state", "state salvage name", "Salvage")


def test_a_criterion_definition_change(guideline: Guideline) -> None:
    criteria = dict(guideline.criteria)
    criteria["iec_hs_identified"] = attrs.evolve(
        criteria["iec_hs_identified"], any_of=("hines_identification",)
    )
    c = only(diff_guidelines(guideline, attrs.evolve(guideline, criteria=criteria)))
    assert c.category == "criterion"
    assert c.after == "any of: hines_identification"


def test_the_profile_against_its_base() -> None:
    base, profile = load_guideline(BASE), load_guideline(PROFILE)
    changes = diff_guidelines(base, profile)
    added = {c.where for c in changes if c.change == "added" and c.category == "transition"}
    assert "transition suspected --give_anakinra--> second_line_anakinra" in added
    assert "transition second_line_anakinra --give_salvage--> salvage" in added
    guards = [c for c in changes if c.category == "guard"]
    assert [c.where for c in guards] == [
        "transition first_line_steroids --give_anakinra--> second_line_anakinra"
    ]
    assert any(c.category == "verified" for c in changes)
    assert any(c.category == "recommendation" and c.change == "added" for c in changes)
    order = [CATEGORIES.index(c.category) for c in changes]
    assert order == sorted(order)  # listed by category


def test_json_document() -> None:
    base, profile = load_guideline(BASE), load_guideline(PROFILE)
    changes = diff_guidelines(base, profile)
    doc = diff_to_json(base, profile, changes)
    assert doc["format"] == "iechs.diff/1"
    assert doc["old"]["sha256"] == base.sha256
    assert doc["new"]["id"] == "iec-hs-astct-2023"
    assert sum(doc["summary"].values()) == len(doc["changes"]) == len(changes)
    json.dumps(doc)  # serialisable as it is


def test_cli_text_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diff", str(BASE), str(PROFILE)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("iec-hs 0.1.0 (sha256 ")
    assert "+ transition: transition suspected --give_anakinra--> second_line_anakinra" in text
    assert main(["diff", str(BASE), str(PROFILE), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["summary"]["guard"] == 1


def test_cli_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diff", str(BASE), str(PROFILE), "--exit-code"]) == 1
    assert main(["diff", str(BASE), str(BASE), "--exit-code"]) == 0
    capsys.readouterr()


def test_cli_unreadable_file_is_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diff", "does-not-exist.yaml", str(BASE)]) == 2
    err = capsys.readouterr().err
    assert "does-not-exist.yaml" in err
    assert "Traceback" not in err
