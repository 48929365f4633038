"""Hostile guideline YAML and timeline JSON: each is refused with exit 2, a message naming the
file and the place, no traceback, and in bounded memory."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest

from iechs.cli import main

ROOT = Path(__file__).resolve().parents[1]
GUIDELINE = (ROOT / "guideline" / "iec-hs.yaml").read_text(encoding="utf-8")
FERRITIN_ULN = "  ferritin_uln:\n    value: 300"


def _laughs() -> str:
    """Nine levels of ten aliases each: a billion values once expanded."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    return "\n".join(lines) + "\n"


def _with_ferritin_uln(value: str) -> str:
    assert FERRITIN_ULN in GUIDELINE
    return GUIDELINE.replace(FERRITIN_ULN, f"  ferritin_uln:\n    value: {value}", 1)


YAML_CASES = {
    "billion-laughs": (_laughs(), "$: more than 250,000 values once aliases are expanded"),
    "recursive-anchor": ("a: &a [1, *a]\n", ":1: $: nested more than 64 levels deep"),
    "deep-nesting": ("a: " + "[" * 900 + "]" * 900 + "\n", ":1: $: nested more than 64"),
    "libyaml-depth": ("a: " + "[" * 50_000 + "\n", "exceeded maximum nesting depth"),
    "5000-digit-integer": ("a: " + "9" * 5000 + "\n", "(4300 digits)"),
    "nan-parameter": (_with_ferritin_uln(".nan"), ":83: $.parameters.ferritin_uln.value"),
    "inf-parameter": (_with_ferritin_uln("-.inf"), "expected a finite number, got -inf"),
    "overflowing-parameter": (_with_ferritin_uln("9" * 400), "a number too large to use"),
}


@pytest.mark.parametrize("name", sorted(YAML_CASES))
@pytest.mark.parametrize("command", ["validate", "verify"])
def test_hostile_guideline_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, command: str
) -> None:
    text, expected = YAML_CASES[name]
    path = tmp_path / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert main([command, str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"iechs {command}: {path}")
    assert expected in err
    assert "Traceback" not in err
    # bounded: well under the gigabytes a billion laughs would take (ru_maxrss is in KB)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000


JSON_CASES = {
    "deep-array": ('{"patient": ' + "[" * 5000 + "]" * 5000 + "}", ": $: nested more than 64"),
    "deep-but-parseable": (
        '{"patient": ' + "[" * 900 + "]" * 900 + "}",
        ": $.patient[0][0]",
    ),
    "5000-digit-integer": ('{"patient": ' + "9" * 5000 + "}", "$.patient: an integer of 5000"),
    "nan": ('{"patient": {"id": "p", "age": NaN}}', "$.patient.age: NaN is not a finite"),
    "overflowing-float": ('{"events": [{"value": 1e400}]}', "$.events[0].value: 1e400 is not"),
    "lone-surrogate": ('{"patient": {"id": "\\ud800"}}', "$.patient.id: text with a lone"),
    "lone-surrogate-key": ('{"patient": {"\\udfff": 1}}', "$.patient: a key with a lone"),
}


@pytest.mark.parametrize("name", sorted(JSON_CASES))
def test_hostile_timeline_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    text, expected = JSON_CASES[name]
    path = tmp_path / f"{name}.json"
    path.write_text(text, encoding="utf-8")
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"iechs run: {path}")
    assert expected in err
    assert "Traceback" not in err
