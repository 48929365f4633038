"""SCION, an independent W3C SCXML interpreter in JavaScript, runs the ECMAScript SCXML export
with python-statemachine's state sequences (the engine's statechart runtime).

The engine decides; its python-statemachine chart follows. Here every machine event the engine
sends or tries for a step goes to SCION too, with the criteria as the engine evaluated them for
it (`_event.data.criteria`, TRUE/FALSE/UNKNOWN) and whether the engine follows an UNKNOWN guard
there (`_event.data.follow_unknown`: a treatment, or a hop on its way to one). SCION picks the
transition itself from the exported structure (states, transitions, events, guards and their
order), so its configuration after each event must be python-statemachine's, and an export with
a wrong guard, target or three-valued reading gives a different sequence
(`test_a_wrong_export_is_caught`). Both guidelines have one transition per state and event, so
the order among several is checked in test_exports.py, exhaustively, on a crowded variant.
Courses: the bundled examples, courses through a state, a synthetic cohort and Hypothesis
timelines, each under the default guideline and the ASTCT profile.

Node.js runs tests/scion/run.mjs; SCION is pinned in tests/scion/package-lock.json and installed
with `npm ci` when tests/scion/node_modules is missing. Without `node` the tests skip with the
reason, except in CI (`CI` set), where they fail: .ci/run installs nodejs and npm.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iechs import Engine, Guideline, load_guideline, load_timeline, parse_timeline
from iechs.criteria import Evaluation, Therapy
from iechs.diagram.exports import criteria_in_guards, to_scxml
from iechs.engine import CLOSE, REASSESS, Episode, Hop
from iechs.synthetic import synthetic_cohort
from iechs.timeline import Patient, Timeline

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "tests" / "scion"
GUIDELINES = {
    "iec-hs": ROOT / "guideline" / "iec-hs.yaml",
    "astct-2023": ROOT / "guideline" / "profiles" / "astct-2023.yaml",
}
EXAMPLES = sorted((ROOT / "examples").glob("*.json"))
#: synthetic courses per guideline (mostly uneventful or CRS only; a quarter reach treatment).
SYNTHETIC = 60
NPM_TIMEOUT = 600


# --- what the engine sends ---------------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    """One machine event for SCION, and python-statemachine's state after it."""

    event: str
    criteria: dict[str, str]
    follow_unknown: bool
    state: str
    #: "stays" (tried, nothing fired), "direct" (one hop), "route" (a hop of two).
    kind: str

    def message(self) -> dict[str, Any]:
        data = {"criteria": self.criteria, "follow_unknown": self.follow_unknown}
        return {"event": self.event, "data": data}


class TracedEpisode(Episode):
    """An episode that records each machine event it sends or tries, with the criteria read.

    It hooks the engine's route seams: `_route` (the machine event of a step and the hops chosen
    for it), `_evaluation_from` (the criteria a route's second hop reads) and `_take` (a hop
    sent to python-statemachine). The decisions stay the engine's (a test compares them)."""

    def __init__(self, engine: Engine, patient: Patient, episode_id: str) -> None:
        self.sent: list[Sent] = []
        self._names = criteria_in_guards(engine.guideline)
        self._planned: list[tuple[Hop, dict[str, str], bool, str]] = []
        self._last_from: Evaluation | None = None
        super().__init__(engine, patient, episode_id)

    def _machine_state(self) -> str:
        assert self.machine is not None
        (state,) = self.machine.configuration  # a flat chart: one atomic state
        return str(state.id)

    def _criteria(self, evaluation: Evaluation) -> dict[str, str]:
        """Every criterion the chart reads, as `evaluation` has it (or would, unread)."""
        fresh = Evaluation(self.engine.plan, self.facts, evaluation.line_start)
        out = {}
        for name in self._names:
            verdict = evaluation.verdicts.get(name)
            out[name] = (verdict if verdict is not None else fresh(name)).value.value
        return out

    def _evaluation_from(self, line_start: datetime) -> Evaluation:
        self._last_from = super()._evaluation_from(line_start)
        return self._last_from

    def _route(
        self, machine_event: str, therapy: Therapy | None, evaluation: Evaluation, results: Any
    ) -> list[Hop]:
        self._last_from = None
        route = super()._route(machine_event, therapy, evaluation, results)
        read = self._criteria(evaluation)
        follow = machine_event not in (REASSESS, CLOSE)
        if len(route) == 1:
            self._planned = [(route[0], read, follow, "direct")]
            return route
        self.sent.append(Sent(machine_event, read, follow, self._machine_state(), "stays"))
        if route:  # through a state: each hop may follow an UNKNOWN guard
            first, then = route
            assert self._last_from is not None, "the second hop reads its own evaluation"
            self._planned = [
                (first, read, True, "route"),
                (then, self._criteria(self._last_from), True, "route"),
            ]
        return route

    def _take(self, hop: Hop, therapy: Therapy | None) -> None:
        planned, read, follow, kind = self._planned.pop(0)
        assert planned == hop
        super()._take(hop, therapy)
        self.sent.append(Sent(hop.ref.event, read, follow, self._machine_state(), kind))


class TracingEngine(Engine):
    def start(self, patient: Patient, episode_id: str | None = None) -> Episode:
        return TracedEpisode(self, patient, episode_id or patient.id)


@dataclass(frozen=True)
class Course:
    name: str
    initial: str
    sent: tuple[Sent, ...]

    def messages(self) -> list[dict[str, Any]]:
        return [s.message() for s in self.sent]

    def configurations(self) -> list[list[str]]:
        """python-statemachine's configuration after start and after each event."""
        return [[self.initial], *([s.state] for s in self.sent)]


def trace(engine: TracingEngine, timeline: Timeline, name: str) -> Course:
    episode = engine.run(timeline)
    assert isinstance(episode, TracedEpisode)
    course = Course(name, engine.guideline.initial_state, tuple(episode.sent))
    # python-statemachine went through the engine's path, hop by hop
    path = [
        state
        for d in episode.decisions[1:]
        if d.transition_label is not None
        for state in (*d.via, d.target)
    ]
    assert [s.state for s in course.sent if s.kind != "stays"] == path, name
    return course


# --- SCION -------------------------------------------------------------------------------------


def node_or_skip() -> str:
    """`node`, with SCION installed; a skip (a failure in CI) without it."""
    node = shutil.which("node")
    if node is None:
        reason = "Node.js (`node`) is not installed: the SCION tests run the SCXML export in it"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI must run them: .ci/run installs nodejs and npm)")
        pytest.skip(reason)
    if not (RUNNER / "node_modules" / "@scion-scxml" / "scxml").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("npm is not installed: it installs SCION (npm ci --prefix tests/scion)")
        try:
            result = subprocess.run(
                [npm, "ci", "--prefix", str(RUNNER), "--no-audit", "--no-fund"],
                capture_output=True,
                text=True,
                timeout=NPM_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"npm ci --prefix tests/scion took more than {NPM_TIMEOUT} s")
        if result.returncode != 0:
            pytest.fail(f"npm ci --prefix tests/scion failed:\n{result.stdout}{result.stderr}")
    return node


class Scion:
    """One node process running one chart: a JSON list of courses in, configurations out."""

    def __init__(self, node: str, chart: Path) -> None:
        # a file, not a pipe: a full pipe would block the runner; closed in close()
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115
        self.process = subprocess.Popen(
            [node, str(RUNNER / "run.mjs"), str(chart), "--lines"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )

    def run(self, courses: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
        stdin, stdout = self._pipes()
        stdin.write(json.dumps(courses) + "\n")
        stdin.flush()
        line = stdout.readline()
        if not line:
            self.process.communicate(timeout=30)
            self.stderr.seek(0)
            err = self.stderr.read().decode("utf-8", "replace")
            raise AssertionError(f"run.mjs stopped (exit {self.process.returncode}): {err}")
        answer: list[dict[str, Any]] = json.loads(line)
        return answer

    def _pipes(self) -> tuple[IO[str], IO[str]]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        return self.process.stdin, self.process.stdout

    def close(self) -> None:
        self.process.communicate(timeout=30)
        self.stderr.close()


@pytest.fixture(scope="module")
def node() -> str:
    return node_or_skip()


@pytest.fixture(scope="module")
def charts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("charts")
    out = {}
    for name, path in GUIDELINES.items():
        out[name] = folder / f"{name}.ecmascript.scxml"
        out[name].write_bytes(to_scxml(load_guideline(path), "ecmascript"))
    return out


@pytest.fixture(scope="module")
def scion(node: str, charts: dict[str, Path]) -> Iterator[dict[str, Scion]]:
    running = {name: Scion(node, chart) for name, chart in charts.items()}
    yield running
    for process in running.values():
        process.close()


def divergences(courses: Sequence[Course], answers: Sequence[dict[str, Any]]) -> list[str]:
    """Where SCION's configurations differ from python-statemachine's, one line per course."""
    assert len(answers) == len(courses)
    out = []
    for course, answer in zip(courses, answers, strict=True):
        if answer["errors"]:
            out.append(f"{course.name}: SCION reported {answer['errors'][:3]}")
            continue
        want, got = course.configurations(), answer["configurations"]
        assert len(got) == len(want)
        for i, (w, g) in enumerate(zip(want, got, strict=True)):
            if w != g:
                s = course.sent[i - 1]
                out.append(
                    f"{course.name}, event {i} {s.event} {json.dumps(s.message()['data'])}: "
                    f"python-statemachine {w}, SCION {g}"
                )
                break
    return out


# --- courses ----------------------------------------------------------------------------------

T0 = datetime(2026, 2, 1, 9, tzinfo=UTC)
LAB_UNITS = {"ferritin": "ng/mL", "ldh": "U/L", "ast": "U/L", "alt": "U/L", "fibrinogen": "mg/dL"}
LAB_VALUES = {
    "ferritin": [250, 900, 4000, 6000, 12000, 40000],
    "ldh": [200, 450, 1200],
    "ast": [30, 150, 400],
    "alt": [25, 120, 350],
    "fibrinogen": [350, 160, 120],
}
DRUGS = [
    "dexamethasone",
    "methylprednisolone",
    "anakinra",
    "ruxolitinib",
    "emapalumab",
    "etoposide",
    "tocilizumab",
    "meropenem",
]


@st.composite
def event_doc(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(
        st.sampled_from(
            ["observation"] * 4 + ["assessment", "finding"] + ["treatment"] * 3 + ["response"]
        )
    )
    if kind == "observation":
        code = draw(st.sampled_from(sorted(LAB_UNITS)))
        value = draw(st.sampled_from(LAB_VALUES[code]))
        return {"kind": kind, "code": code, "value": value, "unit": LAB_UNITS[code]}
    if kind == "assessment":
        return {
            "kind": kind,
            "crs_grade": draw(st.integers(0, 3)),
            "icans_grade": draw(st.integers(0, 2)),
            "infection": draw(st.sampled_from(["none", "none", "suspected", "confirmed"])),
            "antimicrobials": draw(st.booleans()),
        }
    if kind == "finding":
        return {
            "kind": kind,
            "code": draw(st.sampled_from(["hemophagocytosis", "pulmonary_edema", "oliguria"])),
            "present": draw(st.booleans()),
            "grade": draw(st.integers(1, 4)),
        }
    if kind == "treatment":
        doc = {"kind": kind, "drug": draw(st.sampled_from(DRUGS))}
        indication = draw(st.sampled_from([None, None, "iec_hs", "iec_hs", "crs", "infection"]))
        if indication is not None:
            doc["indication"] = indication
        return doc
    response = draw(st.sampled_from(["improving", "stable", "worsening", "resolved"]))
    return {"kind": kind, "assessment": response}


def _lab(code: str, value: float) -> dict[str, Any]:
    return {"kind": "observation", "code": code, "value": value, "unit": LAB_UNITS[code]}


def _treat(drug: str) -> dict[str, Any]:
    return {"kind": "treatment", "drug": drug, "indication": "iec_hs"}


CALM = {"kind": "assessment", "crs_grade": 0, "icans_grade": 0, "infection": "none"}
#: CRS resolved, ferritin and LDH rising, AST above 5x ULN: IEC-HS suspected, then identified.
ONSET: list[dict[str, Any]] = [
    {**CALM, "antimicrobials": False},
    _lab("ferritin", 4000),
    _lab("ldh", 450),
    _lab("ferritin", 12000),
    _lab("ldh", 1200),
    _lab("ast", 400),
]
WORSE: dict[str, Any] = {"kind": "response", "assessment": "worsening"}
#: after the onset, each rung starts the next line (worsening allows escalation at once).
LADDER: list[list[dict[str, Any]]] = [
    [_treat("dexamethasone")],
    [WORSE, _treat("anakinra")],
    [WORSE, _treat("ruxolitinib")],
    [WORSE, _treat("etoposide")],
]
#: after a line: response, then the picture returns (resolved, then recurrence).
RESPONSE: list[dict[str, Any]] = [
    {"kind": "response", "assessment": "improving"},
    _lab("ferritin", 6000),
    _lab("ferritin", 900),
]
RECURRENCE: list[dict[str, Any]] = [_lab("ferritin", 4000), _lab("ferritin", 40000)]


def course_doc(items: Sequence[dict[str, Any] | int], day: int = 12) -> dict[str, Any]:
    """A timeline from `day` after infusion: the events one hour apart; a number among them is
    the wait in hours before the next event (0: the same order set)."""
    at, events, gap = T0 + timedelta(days=day), [], 1
    for item in items:
        if isinstance(item, int):
            gap = item
            continue
        at += timedelta(hours=gap)
        events.append({"at": at.strftime("%Y-%m-%dT%H:%M:%SZ"), **item})
        gap = 1
    return {
        "patient": {
            "id": "H1",
            "infusion_at": T0.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "baseline": {"ferritin": {"value": 300, "unit": "ng/mL"}},
        },
        "events": events,
    }


@st.composite
def timelines(draw: st.DrawFn) -> dict[str, Any]:
    """A random course; a share starts with a coherent prefix deep into the lines, through a
    response, or into a recurrence, so that every state is visited."""
    depth = draw(st.integers(0, len(LADDER) + 1))
    prefix = ONSET + [doc for rung in LADDER[: max(depth - 1, 0)] for doc in rung] if depth else []
    if depth > 1 and draw(st.booleans()):
        prefix += RESPONSE + (RECURRENCE if draw(st.booleans()) else [])
    items: list[dict[str, Any] | int] = list(prefix)
    for doc in draw(st.lists(event_doc(), min_size=1, max_size=30)):
        items += [draw(st.integers(0, 30)), doc]
    if draw(st.booleans()):
        items.append({"kind": "close", "reason": "follow_up_complete"})
    return course_doc(items, day=draw(st.integers(0, 16)))


#: Courses whose treatment passes through a state (two hops for one event).
THROUGH: dict[str, list[dict[str, Any] | int]] = {
    # resolved, then a corticosteroid three days later: recurrence UNKNOWN (stale labs), so the
    # engine goes through `suspected` to the first line on UNKNOWN guards
    "recurrence-through-suspected": [
        *ONSET,
        _treat("dexamethasone"),
        *RESPONSE,
        72,
        _treat("dexamethasone"),
    ],
    # a corticosteroid running for CRS counts as the first line when anakinra follows
    "steroid-for-crs-counted": [
        *ONSET,
        {"kind": "treatment", "drug": "dexamethasone", "indication": "crs"},
        WORSE,
        _treat("anakinra"),
    ],
    # the same with anakinra for CRS before ruxolitinib (the ASTCT order)
    "anakinra-for-crs-counted": [
        *ONSET,
        {"kind": "treatment", "drug": "anakinra", "indication": "crs"},
        WORSE,
        _treat("ruxolitinib"),
    ],
}


# --- SCION follows the engine -----------------------------------------------------------------


@pytest.fixture(scope="module", params=sorted(GUIDELINES))
def name(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture(scope="module")
def g(name: str) -> Guideline:
    return load_guideline(GUIDELINES[name])


@pytest.fixture(scope="module")
def chart(name: str, charts: dict[str, Path]) -> Path:
    return charts[name]


@pytest.fixture(scope="module")
def fixed_courses(g: Guideline) -> list[Course]:
    """The bundled examples, courses through a state and a synthetic cohort, traced."""
    engine = TracingEngine(g)
    courses = [trace(engine, load_timeline(path, g), path.stem) for path in EXAMPLES]
    for label, steps in THROUGH.items():
        courses.append(trace(engine, parse_timeline(course_doc(steps), g), label))
    for labelled in synthetic_cohort(SYNTHETIC, seed=7):
        doc = {k: v for k, v in labelled.items() if k != "course"}  # a label, not input
        courses.append(trace(engine, parse_timeline(doc, g), doc["patient"]["id"]))
    return courses


def test_tracing_keeps_the_engines_decisions(g: Guideline) -> None:
    plain, traced = Engine(g), TracingEngine(g)
    for path in EXAMPLES:
        timeline = load_timeline(path, g)
        a = [d.to_json() for d in plain.run(timeline).decisions]
        b = [d.to_json() for d in traced.run(timeline).decisions]
        assert a == b, path.name


def test_scion_follows_the_examples_and_a_synthetic_cohort(
    name: str, scion: dict[str, Scion], fixed_courses: list[Course]
) -> None:
    answers = scion[name].run([c.messages() for c in fixed_courses])
    assert divergences(fixed_courses, answers) == []
    # the courses reach every kind of choice the chart encodes
    kinds = Counter(s.kind for c in fixed_courses for s in c.sent)
    assert kinds["direct"] > 20
    assert kinds["stays"] > 100
    assert kinds["route"] >= 4
    reached = {s.state for c in fixed_courses for s in c.sent}
    assert {"suspected", "first_line_steroids", "resolved", "closed"} <= reached


def test_scion_follows_random_courses(name: str, g: Guideline, scion: dict[str, Scion]) -> None:
    engine = TracingEngine(g)

    @given(timelines())
    def check(doc: dict[str, Any]) -> None:
        course = trace(engine, parse_timeline(doc, g), "random")
        assert divergences([course], scion[name].run([course.messages()])) == []

    check()


# --- the test can fail -------------------------------------------------------------------------

#: wrong exports, each a small edit of the right one: the courses must tell each apart.
MUTANTS = {
    "UNKNOWN fires like TRUE": ("=== 'TRUE'", "!== 'FALSE'"),
    "UNKNOWN never followed": ("follow_unknown === true", "follow_unknown === 'never'"),
    "response read negated": (
        "['response_achieved'] === 'TRUE'",
        "['response_achieved'] === 'FALSE'",
    ),
    "wrong target": ('target="resolved"', 'target="closed"'),
}


def mutated(chart: Path, old: str, new: str, folder: Path) -> Path:
    document = chart.read_text(encoding="utf-8")
    assert old in document
    out = folder / f"mutant-{chart.name}"
    out.write_text(document.replace(old, new), encoding="utf-8")
    return out


def run_once(node: str, chart: Path, courses: Sequence[Course]) -> list[dict[str, Any]]:
    result = subprocess.run(
        [node, str(RUNNER / "run.mjs"), str(chart)],
        input=json.dumps([c.messages() for c in courses]),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    answer: list[dict[str, Any]] = json.loads(result.stdout)
    return answer


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_a_wrong_export_is_caught(
    mutant: str, node: str, chart: Path, fixed_courses: list[Course], tmp_path: Path
) -> None:
    old, new = MUTANTS[mutant]
    wrong = mutated(chart, old, new, tmp_path)
    assert divergences(fixed_courses, run_once(node, wrong, fixed_courses)) != []


def test_scion_rejects_the_python_datamodel(
    node: str, g: Guideline, fixed_courses: list[Course], tmp_path: Path
) -> None:
    """Why the ECMAScript export exists: SCION cannot evaluate the Python one's expressions."""
    chart = tmp_path / "python.scxml"
    chart.write_bytes(to_scxml(g))
    answers = run_once(node, chart, fixed_courses[:3])
    assert all(a["errors"] for a in answers)
