"""Bad input through the real CLI (and the library): exit 2 and a clear message, no traceback.

Every bad-input message must name the file, the place (`file:LINE:` for YAML, a JSON path such as
`$.events[3].unit` for timelines) and the problem. Guideline variants are generated from the real
`guideline/iec-hs.yaml` (one string replacement each, written to tmp_path) so that they stay in
sync with it; `tests/fixtures/bad/` keeps the few inputs that read better as literal files.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any

import pytest

import iechs
from iechs.timeline import ObservationEvent

ROOT = Path(__file__).resolve().parents[1]
GUIDELINE = ROOT / "guideline" / "iec-hs.yaml"
EXAMPLE = ROOT / "examples" / "day14-steroid-response.json"
BAD = "tests/fixtures/bad"  # literal bad inputs, relative to ROOT (the CLI's working directory)

EXIT_OK, EXIT_BAD_INPUT = 0, 2


# --- helpers -------------------------------------------------------------------------------------


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run `python -m iechs ARGS` from the project root, as a user would."""
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    return subprocess.run(
        [sys.executable, "-m", "iechs", *(str(a) for a in args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        timeout=120,
        check=False,
    )


def _show(result: subprocess.CompletedProcess[str]) -> str:
    return (
        f"exit code {result.returncode}\n--- stdout (tail) ---\n{result.stdout[-1500:]}"
        f"\n--- stderr ---\n{result.stderr}"
    )


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == EXIT_OK, _show(result)
    assert "Traceback" not in result.stderr, _show(result)


def assert_bad_input(
    result: subprocess.CompletedProcess[str],
    *,
    file: str | Path,
    place: str | Sequence[str] | None,
    words: Sequence[str] = (),
) -> str:
    """Exit 2, no traceback, and one stderr line that names the file, the place and the problem.

    `place` is one string, or several of which one must appear (the line checked is the first
    that names the file and one of them); `words` must appear, case-insensitively, in what that
    line says *after* the place. Returns the line.
    """
    err = result.stderr
    assert result.returncode == EXIT_BAD_INPUT, _show(result)
    assert "Traceback" not in err, _show(result)
    assert err.strip(), _show(result)
    shown = str(file)
    assert shown in err, f"stderr does not name the file {shown!r}\n{_show(result)}"
    places = [place] if isinstance(place, str) else list(place or [""])
    for line in err.splitlines():
        if shown not in line:
            continue
        for p in places:
            if p in line:
                said = (line.split(p, 1)[1] if p else line.split(shown, 1)[1]).lower()
                for word in words:
                    assert word.lower() in said, (
                        f"the message does not say {word!r} after the place {p!r}\n{_show(result)}"
                    )
                return line
    raise AssertionError(
        f"no stderr line names both {shown!r} and one of {places}\n{_show(result)}"
    )


def line_of(text: str, needle: str) -> int:
    """1-based line where `needle` (which must occur exactly once in `text`) starts."""
    assert text.count(needle) == 1, f"{needle!r} occurs {text.count(needle)} times"
    return text[: text.index(needle)].count("\n") + 1


# --- guideline variants (generated from the real guideline) --------------------------------------

GUIDELINE_TEXT = GUIDELINE.read_text(encoding="utf-8")


def _block(start: str, end: str) -> str:
    """The guideline's text from `start` (which occurs once) up to, not including, the first
    `end` after it: a block taken from the real guideline, so its quotes and flags stay in sync."""
    assert GUIDELINE_TEXT.count(start) == 1, f"{start!r} occurs {GUIDELINE_TEXT.count(start)} times"
    i = GUIDELINE_TEXT.index(start)
    return GUIDELINE_TEXT[i : GUIDELINE_TEXT.index(end, i + len(start))]


# the only transition into salvage (from refractory_ruxolitinib)
REMOVED_SALVAGE_TRANSITION = _block("      - event: give_salvage\n", "      - event: ")
RESOLVED_TRANSITIONS = _block("  resolved:\n", "\n  closed:\n")
assert "      - event: reassess\n        to: suspected\n" in RESOLVED_TRANSITIONS
RESOLVED_NO_TRANSITIONS = RESOLVED_TRANSITIONS.split("    transitions:\n", maxsplit=1)[0]
RESOLVED_SELF_LOOP = (
    RESOLVED_NO_TRANSITIONS
    + """\
    transitions:
      - event: reassess
        to: resolved
        when: [recurrence]
        label: stays resolved forever
        cite: [seed-summary]
"""
)
PROMPT_RECOGNITION = """\
      - id: prompt-recognition
        text: Do not delay; delayed recognition and treatment raise mortality.
        cite: [seed-summary]
"""


@dataclass(frozen=True)
class GuidelineCase:
    id: str
    old: str  # text of the real guideline (its first occurrence is replaced)
    new: str
    at: str  # text, once in the variant, on the line the message must name
    path: str  # JSON path the message must name
    words: tuple[str, ...]


GUIDELINE_CASES = [
    GuidelineCase(
        "malformed-yaml-indentation",
        "    name: Ferritin\n",
        "    name: Ferritin\n     loinc: oops\n",
        "     loinc: oops",
        "$",
        ("malformed YAML",),
    ),
    GuidelineCase(
        "malformed-yaml-tab",
        "    name: Ferritin\n",
        "    name: Ferritin\n\tunit: ng/mL\n",
        "\tunit: ng/mL",
        "$",
        ("malformed YAML",),
    ),
    GuidelineCase(
        "unknown-criterion-in-when",
        "when: [iec_hs_ruled_out]",
        "when: [iec_hs_ruledout]",
        "when: [iec_hs_ruledout]",
        "$.states.suspected.transitions[1].when[0]",
        ("unknown criterion", "'iec_hs_ruledout'", "did you mean", "'iec_hs_ruled_out'"),
    ),
    GuidelineCase(
        "recommendation-without-cite-key",
        PROMPT_RECOGNITION,
        PROMPT_RECOGNITION.replace("        cite: [seed-summary]\n", ""),
        "      - id: prompt-recognition",
        "$.states.suspected.recommendations[2].cite",
        ("missing citation",),
    ),
    GuidelineCase(
        "recommendation-with-empty-cite",
        PROMPT_RECOGNITION,
        PROMPT_RECOGNITION.replace("cite: [seed-summary]", "cite: []"),
        "cite: []",
        "$.states.suspected.recommendations[2].cite",
        ("missing citation",),
    ),
    GuidelineCase(
        "threshold-unit-does-not-fit-observation",
        'threshold: {observation: fibrinogen, op: "<", value: 150, unit: mg/dL}',
        'threshold: {observation: fibrinogen, op: "<", value: 150, unit: U/L}',
        "unit: U/L}",
        "$.criteria.fibrinogen_below_150.threshold.unit",
        ("'U/L'", "does not fit", "fibrinogen"),
    ),
    GuidelineCase(
        "unreachable-state",
        REMOVED_SALVAGE_TRANSITION,
        "",
        "  salvage:\n    name: Salvage",
        "$.states.salvage",
        ("unreachable",),
    ),
    GuidelineCase(
        "trap-state-without-transitions",
        RESOLVED_TRANSITIONS,
        RESOLVED_NO_TRANSITIONS,
        "  resolved:\n",
        "$.states.resolved",
        ("trap",),
    ),
    GuidelineCase(
        "trap-state-that-only-loops",
        RESOLVED_TRANSITIONS,
        RESOLVED_SELF_LOOP,
        "  resolved:\n",
        "$.states.resolved",
        ("trap", "final"),
    ),
    GuidelineCase(
        "unknown-source-in-cite",
        "    cite: [hayden-2017, seed-summary]\n",
        "    cite: [hayden-2071, seed-summary]\n",
        "cite: [hayden-2071, seed-summary]",
        "$.observations.scd25.cite[0]",
        ("unknown source", "'hayden-2071'", "did you mean", "'hayden-2017'"),
    ),
    GuidelineCase(
        "duplicate-key",
        "  ast_uln:\n    value: 40\n",
        "  ferritin_uln:\n    value: 40\n",
        "  ferritin_uln:\n    value: 40\n",
        "$.parameters.ferritin_uln",
        ("duplicate key", "'ferritin_uln'"),
    ),
    GuidelineCase(
        "parameter-value-not-a-number",
        "  ferritin_uln:\n    value: 300\n",
        "  ferritin_uln:\n    value: lots\n",
        "    value: lots",
        "$.parameters.ferritin_uln.value",
        ("expected a number", "'lots'"),
    ),
]


def write_variant(tmp_path: Path, case: GuidelineCase) -> tuple[Path, int]:
    """The real guideline with one replacement, and the line its message must name."""
    text = GUIDELINE_TEXT
    assert case.old in text, f"{case.id}: the guideline no longer contains {case.old!r}"
    variant = text.replace(case.old, case.new, 1)
    assert variant != text
    path = tmp_path / "iec-hs.yaml"
    path.write_text(variant, encoding="utf-8")
    return path, line_of(variant, case.at)


def test_the_real_guideline_validates() -> None:
    # The variants below differ from it by one replacement: their failures are the replacement's.
    assert_ok(cli("validate", GUIDELINE))


@pytest.mark.parametrize("case", GUIDELINE_CASES, ids=lambda c: c.id)
def test_bad_guideline_validate(tmp_path: Path, case: GuidelineCase) -> None:
    path, line = write_variant(tmp_path, case)
    result = cli("validate", path)
    found = assert_bad_input(result, file=f"{path}:{line}:", place=case.path, words=case.words)
    assert found.startswith("iechs validate: "), found


@pytest.mark.parametrize(
    "case",
    [c for c in GUIDELINE_CASES if c.id in {"unknown-criterion-in-when", "malformed-yaml-tab"}],
    ids=lambda c: c.id,
)
def test_bad_guideline_run(tmp_path: Path, case: GuidelineCase) -> None:
    path, line = write_variant(tmp_path, case)
    result = cli("run", EXAMPLE, "--guideline", path)
    assert_bad_input(result, file=f"{path}:{line}:", place=case.path, words=case.words)
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("name", "line", "words"),
    [
        ("guideline-malformed.yaml", 5, ("malformed YAML",)),
        ("guideline-empty.yaml", 1, ("empty",)),
        ("guideline-not-mapping.yaml", 1, ("mapping",)),
    ],
)
def test_bad_guideline_fixture(name: str, line: int, words: tuple[str, ...]) -> None:
    shown = f"{BAD}/{name}"
    assert (ROOT / shown).is_file()
    assert_bad_input(cli("validate", shown), file=f"{shown}:{line}:", place="$", words=words)


def test_missing_guideline_file(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-guideline.yaml"
    assert_bad_input(cli("validate", missing), file=missing, place=None, words=("cannot read",))
    result = cli("run", EXAMPLE, "--guideline", missing)
    assert_bad_input(result, file=missing, place=None, words=("cannot read",))


# --- timeline variants ---------------------------------------------------------------------------

#: A small valid timeline (checked by test_the_base_timeline_runs); the cases below edit it.
BASE: dict[str, Any] = {
    "patient": {
        "id": "P-bad-input",
        "age_years": 50,
        "weight_kg": 70,
        "infusion_at": "2026-01-01T10:00:00Z",
        "risk_factors": [],
        "baseline": {"ferritin": {"value": 400, "unit": "ng/mL"}},
    },
    "events": [
        {
            "at": "2026-01-12T08:00:00Z",
            "kind": "observation",
            "code": "ferritin",
            "value": 2500,
            "unit": "ng/mL",
        },
        {
            "at": "2026-01-12T08:00:00Z",
            "kind": "assessment",
            "crs_grade": 0,
            "icans_grade": 0,
            "infection": "none",
            "antimicrobials": False,
        },
        {
            "at": "2026-01-12T10:00:00Z",
            "kind": "treatment",
            "drug": "dexamethasone",
            "dose": 10,
            "unit": "mg",
            "route": "IV",
        },
        {"at": "2026-01-13T08:00:00Z", "kind": "response", "assessment": "improving"},
        {"at": "2026-02-12T08:00:00Z", "kind": "close", "reason": "follow_up_complete"},
    ],
}

DELETE = object()
Key = str | int


@dataclass(frozen=True)
class TimelineCase:
    id: str
    edits: tuple[tuple[tuple[Key, ...], Any], ...]  # (where, new value or DELETE)
    path: str
    words: tuple[str, ...]

    def document(self) -> dict[str, Any]:
        doc = copy.deepcopy(BASE)
        for where, value in self.edits:
            node: Any = doc
            for key in where[:-1]:
                node = node[key]
            if value is DELETE:
                del node[where[-1]]
            else:
                node[where[-1]] = value
        return doc


def case(id_: str, where: tuple[Key, ...], value: Any, path: str, *words: str) -> TimelineCase:
    return TimelineCase(id_, ((where, value),), path, words)


TIMELINE_CASES = [
    case(
        "unknown-event-kind",
        ("events", 1, "kind"),
        "infusion",
        "$.events[1]",
        "unknown event kind",
        "'infusion'",
    ),
    case(
        "unknown-observation-code",
        ("events", 0, "code"),
        "feritin",
        "$.events[0].code",
        "unknown observation code",
        "'feritin'",
        "did you mean",
        "'ferritin'",
    ),
    case(
        "unknown-unit",
        ("events", 0, "unit"),
        "mg/furlong",
        "$.events[0].unit",
        "unknown unit",
        "'mg/furlong'",
    ),
    case(
        "unit-of-another-observation",
        ("events", 0, "unit"),
        "U/L",
        "$.events[0].unit",
        "unknown unit",
        "'U/L'",
    ),
    case("negative-value", ("events", 0, "value"), -5, "$.events[0].value", "negative"),
    case("implausible-value", ("events", 0, "value"), 5e7, "$.events[0].value", "implausible"),
    case("nan-value", ("events", 0, "value"), float("nan"), "$.events[0].value", "finite"),
    case("huge-integer-value", ("events", 0, "value"), 10**400, "$.events[0].value"),
    case(
        "timestamp-without-time-zone",
        ("events", 1, "at"),
        "2026-01-12T08:00:00",
        "$.events[1].at",
        "time zone",
    ),
    case(
        "infusion-time-without-time-zone",
        ("patient", "infusion_at"),
        "2026-01-01T10:00:00",
        "$.patient.infusion_at",
        "time zone",
    ),
    case("timestamp-not-iso", ("events", 3, "at"), "yesterday", "$.events[3].at", "ISO 8601"),
    case(
        "treatment-drug-key-missing", ("events", 2, "drug"), DELETE, "$.events[2].drug", "missing"
    ),
    case("treatment-drug-empty", ("events", 2, "drug"), "", "$.events[2].drug", "drug"),
    case("treatment-drug-blank", ("events", 2, "drug"), "   ", "$.events[2].drug", "drug"),
    case("negative-dose", ("events", 2, "dose"), -10, "$.events[2].dose", "negative"),
    # a treatment that cannot have been given never moves the state
    case("zero-dose", ("events", 2, "dose"), 0, "$.events[2].dose", "a dose of 0"),
    case("banana-unit", ("events", 2, "unit"), "banana", "$.events[2].unit", "dose unit"),
    case("volume-per-kg", ("events", 2, "unit"), "mL/kg", "$.events[2].unit", "dose unit"),
    case("dose-without-unit", ("events", 2, "unit"), DELETE, "$.events[2].unit", "its unit"),
    case("nasal-route", ("events", 2, "route"), "up the nose", "$.events[2].route", "route"),
    case(
        "death-before-infusion",
        ("events", 4),
        {"at": "2025-12-31T08:00:00Z", "kind": "close", "reason": "death"},
        "$.events[4].at",
        "before the CAR-T infusion",
    ),
    case(
        "negative-baseline",
        ("patient", "baseline", "ferritin", "value"),
        -1,
        "$.patient.baseline.ferritin.value",
        "negative",
    ),
    case(
        "baseline-unknown-unit",
        ("patient", "baseline", "ferritin", "unit"),
        "kg",
        "$.patient.baseline.ferritin.unit",
        "unknown unit",
        "'kg'",
    ),
    case(
        "unknown-risk-factor",
        ("patient", "risk_factors"),
        ["high_tumour_burden"],
        "$.patient.risk_factors[0]",
        "unknown risk factor",
        "did you mean",
        "'high_tumor_burden'",
    ),
    case("implausible-age", ("patient", "age_years"), 300, "$.patient.age_years", "implausible"),
    case("empty-patient-id", ("patient", "id"), " ", "$.patient.id", "empty"),
    case("patient-missing", ("patient",), DELETE, "$.patient", "missing"),
    case("crs-grade-out-of-range", ("events", 1, "crs_grade"), 9, "$.events[1].crs_grade", "0-4"),
    case(
        "unknown-finding",
        ("events", 3),
        {"at": "2026-01-13T08:00:00Z", "kind": "finding", "code": "splenomegally", "present": True},
        "$.events[3].code",
        "unknown finding",
        "did you mean",
        "'splenomegaly'",
    ),
    case("extra-field", ("events", 0, "flavour"), "salty", "$.events[0]", "extra", "flavour"),
    case("event-not-an-object", ("events", 0), 5, "$.events[0]", "object"),
]


#: Words that mean a message speaks Python, not the timeline format.
PYTHON_INTERNALS = (
    "unknown error",
    "typing",
    "literal[",
    "has no attribute",
    "iechs.",
    "nonetype",
    "expected tuple",
    "expected patient",
    "expected product",
)

#: Bad values whose message must state the problem in the user's terms (the accepted values of
#: a closed vocabulary, "expected an object", "expected a list"), not in Python's.
PLAIN_WORDS_CASES = [
    case(
        "infection-not-in-vocabulary",
        ("events", 1, "infection"),
        "maybe",
        "$.events[1].infection",
        "maybe",
        "suspected",
    ),
    case(
        "response-not-in-vocabulary",
        ("events", 3, "assessment"),
        "better",
        "$.events[3].assessment",
        "better",
        "improving",
    ),
    case(
        "close-reason-not-in-vocabulary",
        ("events", 4, "reason"),
        "bored",
        "$.events[4].reason",
        "bored",
        "follow_up_complete",
    ),
    case(
        "indication-not-in-vocabulary",
        ("events", 2, "indication"),
        "hlh",
        "$.events[2].indication",
        "hlh",
        "iec_hs",
    ),
    case("patient-not-an-object", ("patient",), "P-1", "$.patient"),
    case("product-not-an-object", ("patient", "product"), "CD19", "$.patient.product"),
    case(
        "baseline-not-a-measurement",
        ("patient", "baseline", "ferritin"),
        400,
        "$.patient.baseline.ferritin",
    ),
    case(
        "risk-factors-not-a-list",
        ("patient", "risk_factors"),
        "high_tumor_burden",
        "$.patient.risk_factors",
    ),
    case("risk-factors-a-number", ("patient", "risk_factors"), 3, "$.patient.risk_factors"),
    case("huge-integer-value-plain", ("events", 0, "value"), 10**400, "$.events[0].value"),
    case(
        "timestamp-out-of-range",
        ("events", 0, "at"),
        "0001-01-01T00:00:00+01:00",
        "$.events[0].at",
    ),
]


def write_timeline(tmp_path: Path, doc: Any, name: str = "timeline.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return path


def test_the_base_timeline_runs(tmp_path: Path) -> None:
    # Every case below differs from BASE by one edit: its failure is the edit's.
    assert_ok(cli("run", write_timeline(tmp_path, BASE)))


@pytest.mark.parametrize("case", TIMELINE_CASES, ids=lambda c: c.id)
def test_bad_timeline_run(tmp_path: Path, case: TimelineCase) -> None:
    path = write_timeline(tmp_path, case.document())
    result = cli("run", path, "--format", "json")
    found = assert_bad_input(
        result, file=f"{path}: {case.path}:", place=case.path, words=case.words
    )
    assert found.startswith("iechs run: "), found
    assert result.stdout == ""


@pytest.mark.parametrize("case", PLAIN_WORDS_CASES, ids=lambda c: c.id)
def test_bad_timeline_message_in_plain_words(tmp_path: Path, case: TimelineCase) -> None:
    path = write_timeline(tmp_path, case.document())
    result = cli("run", path)
    found = assert_bad_input(
        result, file=f"{path}: {case.path}:", place=case.path, words=case.words
    )
    said = found.split(f"{case.path}:", 1)[1].lower()
    leaked = [w for w in PYTHON_INTERNALS if w in said]
    assert not leaked, f"the message speaks Python ({leaked}): {found}"
    # One problem, one line: e.g. text is not read as a list of one-letter risk factors.
    assert len(result.stderr.strip().splitlines()) == 1, _show(result)


@pytest.mark.parametrize(
    "problems",
    [
        # Vocabulary problems: all reported together.
        (
            (("events", 0, "unit"), "mg/furlong", "$.events[0].unit", "unknown unit"),
            (("events", 2, "drug"), "", "$.events[2].drug", "drug"),
            (("patient", "age_years"), -3, "$.patient.age_years", "implausible"),
        ),
        # Shape problems (found before the vocabulary is checked): all reported together.
        (
            (("patient", "infusion_at"), "2026-01-01T10:00:00", "$.patient.infusion_at", "zone"),
            (("events", 1, "at"), "2026-01-12T08:00:00", "$.events[1].at", "zone"),
            (("events", 4, "reason"), "bored", "$.events[4].reason", ""),
        ),
    ],
    ids=["vocabulary", "shape"],
)
def test_every_problem_is_reported(
    tmp_path: Path, problems: tuple[tuple[tuple[Key, ...], Any, str, str], ...]
) -> None:
    edits = tuple((where, value) for where, value, _, _ in problems)
    path = write_timeline(tmp_path, TimelineCase("several", edits, "", ()).document())
    result = cli("run", path)
    for _, _, place, word in problems:
        assert_bad_input(result, file=f"{path}: {place}:", place=place, words=(word,))


def test_timeline_not_json() -> None:
    shown = f"{BAD}/timeline-not-json.json"
    result = cli("run", shown)
    # The missing comma is at the start of line 5 of the file.
    assert_bad_input(result, file=f"{shown}:5:", place="$", words=("not valid JSON", "line 5"))


def test_timeline_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.json"
    path.write_text("", encoding="utf-8")
    assert_bad_input(cli("run", path), file=f"{path}:1:", place="$", words=("not valid JSON",))


def test_timeline_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes(json.dumps(BASE).replace("P-bad-input", "P-\xe9").encode("latin-1"))
    assert_bad_input(cli("run", path), file=path, place="$", words=("UTF-8",))


def test_timeline_not_an_object() -> None:
    shown = f"{BAD}/timeline-not-object.json"
    assert_bad_input(cli("run", shown), file=f"{shown}: $:", place="$", words=("object",))


@pytest.mark.parametrize(
    ("name", "literal"),
    [("timeline-nan-dose.json", "NaN"), ("timeline-infinite-dose.json", "Infinity")],
)
def test_timeline_non_finite_dose(name: str, literal: str) -> None:
    # `NaN` and `Infinity` are not JSON (RFC 8259), though Python's json module reads them; a dose
    # that is not a finite number is bad input, reported at the dose (or the file's line 5).
    shown = f"{BAD}/{name}"
    assert literal in (ROOT / shown).read_text(encoding="utf-8")
    result = cli("run", shown, "--format", "json")
    assert_bad_input(result, file=shown, place=["$.events[1].dose", f"{shown}:5:"])


def test_missing_timeline_file(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-timeline.json"
    assert_bad_input(cli("run", missing), file=missing, place=None, words=("cannot read",))


def test_event_after_close(tmp_path: Path) -> None:
    doc = copy.deepcopy(BASE)
    doc["events"].append(
        {
            "at": "2026-03-01T08:00:00Z",
            "kind": "observation",
            "code": "ferritin",
            "value": 900,
            "unit": "ng/mL",
        }
    )
    path = write_timeline(tmp_path, doc)
    result = cli("run", path)
    assert_bad_input(result, file=f"{path}: $.events[5]", place="$.events[5]", words=("closed",))


# --- inputs that look odd but are accepted -------------------------------------------------------


def run_json(path: Path) -> dict[str, Any]:
    result = cli("run", path, "--format", "json")
    assert_ok(result)
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def test_observations_before_infusion_are_baseline(tmp_path: Path) -> None:
    # The pre-infusion ferritin (400 ug/L = 400 ng/mL) is above the ULN (300), so "raised" is
    # judged against twice that baseline: 700 ng/mL is above 2 x ULN (600) but not above
    # 2 x baseline (800). Only a criterion that reads the pre-infusion value as the baseline
    # finds ferritin not raised.
    doc = {
        "patient": {"id": "P-pre-infusion", "infusion_at": "2026-01-01T10:00:00Z"},
        "events": [
            {
                "at": "2025-12-31T08:00:00Z",  # the day before infusion
                "kind": "observation",
                "code": "ferritin",
                "value": 400,
                "unit": "ug/L",
            },
            {
                "at": "2026-01-12T08:00:00Z",
                "kind": "assessment",
                "crs_grade": 0,
                "icans_grade": 0,
                "infection": "none",
            },
            {
                "at": "2026-01-12T08:00:00Z",
                "kind": "observation",
                "code": "ferritin",
                "value": 700,
                "unit": "ng/mL",
            },
        ],
    }
    out = run_json(write_timeline(tmp_path, doc))
    reads = [
        n
        for n in walk(out)
        if isinstance(n, dict)
        and n.get("what") == "baseline ferritin (abnormal at infusion)"
        and n.get("value") == 400
    ]
    assert reads, "the pre-infusion ferritin was not read as the baseline"
    assert all(r.get("at") == "2025-12-31T08:00:00Z" for r in reads), reads
    verdicts = [  # after the infusion step (at infusion no ferritin is measured yet: UNKNOWN)
        s["criteria"]["ferritin_raised"]
        for s in out["steps"]
        if s["step"] > 0 and "ferritin_raised" in s.get("criteria", {})
    ]
    assert verdicts, "ferritin_raised was never evaluated"
    assert {v["result"] for v in verdicts} == {"FALSE"}, verdicts
    assert out["final_state"] == "surveillance"


def test_events_out_of_order_are_sorted(tmp_path: Path) -> None:
    doc = json.loads(EXAMPLE.read_text(encoding="utf-8"))
    in_order = run_json(write_timeline(tmp_path, doc, "in-order.json"))
    # Reverse the order of the time groups.
    groups = [list(g) for _, g in groupby(doc["events"], key=lambda e: e["at"])]
    assert len(groups) > 2
    shuffled = [ev for group in reversed(groups) for ev in group]
    assert shuffled != doc["events"]
    doc["events"] = shuffled
    out_of_order = run_json(write_timeline(tmp_path, doc, "out-of-order.json"))
    # Reverse the events inside each time group too: an order set's file order does not count.
    doc["events"] = [ev for group in reversed(groups) for ev in reversed(group)]
    assert any(len(g) > 1 for g in groups)
    reversed_ties = run_json(write_timeline(tmp_path, doc, "reversed-ties.json"))
    assert reversed_ties["steps"] == in_order["steps"]
    times = [step["at"] for step in out_of_order["steps"]]
    assert times == sorted(times)
    assert out_of_order == in_order


# --- the library ---------------------------------------------------------------------------------


def test_error_types() -> None:
    assert issubclass(iechs.TimelineError, iechs.IechsError)
    assert issubclass(iechs.TimelineError, ValueError)
    assert issubclass(iechs.GuidelineError, iechs.IechsError)
    assert issubclass(iechs.GuidelineError, ValueError)


@pytest.mark.parametrize("case", TIMELINE_CASES, ids=lambda c: c.id)
def test_parse_timeline_names_the_path(guideline: iechs.Guideline, case: TimelineCase) -> None:
    with pytest.raises(iechs.TimelineError) as info:
        iechs.parse_timeline(case.document(), guideline)
    err = info.value
    assert isinstance(err, iechs.IechsError)
    assert isinstance(err, ValueError)
    assert [p.path for p in err.problems] == [case.path]
    message = err.problems[0].message.lower()
    for word in case.words:
        assert word.lower() in message, err.problems[0].message
    assert case.path in str(err)


def test_parse_timeline_reports_every_problem(guideline: iechs.Guideline) -> None:
    doc = copy.deepcopy(BASE)
    doc["events"][0]["unit"] = "mg/furlong"
    doc["events"][2]["drug"] = ""
    with pytest.raises(iechs.TimelineError) as info:
        iechs.parse_timeline(doc, guideline, "t.json")
    assert sorted(p.path for p in info.value.problems) == ["$.events[0].unit", "$.events[2].drug"]
    assert info.value.file == "t.json"
    assert "t.json: $.events[0].unit: " in str(info.value)


@pytest.mark.parametrize("data", [[], "timeline", None, 3])
def test_parse_timeline_not_a_mapping(guideline: iechs.Guideline, data: Any) -> None:
    with pytest.raises(iechs.TimelineError) as info:
        iechs.parse_timeline(data, guideline)
    assert [p.path for p in info.value.problems] == ["$"]


def test_parse_timeline_sorts_ties_canonically(guideline: iechs.Guideline) -> None:
    """Events are sorted by time; events at one time (an order set) in the canonical order,
    facts before treatments, whatever their order in the file."""
    doc = copy.deepcopy(BASE)
    in_file_order = iechs.parse_timeline(copy.deepcopy(doc), guideline)
    doc["events"].reverse()
    before_infusion = {
        "at": "2025-12-31T08:00:00+02:00",
        "kind": "observation",
        "code": "ldh",
        "value": 200,
        "unit": "IU/L",
    }
    doc["events"].append(before_infusion)
    timeline = iechs.parse_timeline(doc, guideline)
    times = [ev.at for ev in timeline.events]
    assert times == sorted(times)
    kinds = [ev.kind for ev in timeline.events]
    # The reversed file had the assessment before the observation at 2026-01-12T08:00Z: the
    # observation comes first all the same (facts: observation, finding, assessment, response).
    assert kinds == ["observation", "observation", "assessment", "treatment", "response", "close"]
    assert timeline.events[1:] == in_file_order.events
    # positions name each event's index in the (reversed) file, for messages
    assert timeline.positions == (5, 4, 3, 2, 1, 0)
    first = timeline.events[0]
    assert isinstance(first, ObservationEvent)
    assert (first.code, first.unit) == ("ldh", "U/L")  # canonical unit
