"""The safety contract: its documents, what it requires of a guideline, and a differential test.

The differential test runs random concrete timelines (Hypothesis) through the real engine, for
the bundled guideline, every profile and the guideline from another domain, and checks every
decision with the contract's own run checker (`iechs.contract.check_run`), which reads the
timeline's facts (drug classes, infection status, antimicrobials recorded, responses, times) and
the guideline's declared states and line order, never a criterion. The verifier proved these
properties over every path; the engine must never break one on a concrete run.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iechs import Engine, Guideline, GuidelineError, load_guideline
from iechs import model as m
from iechs.checks import FIXED_STATES
from iechs.cli import main
from iechs.contract import (
    PROPERTY_KINDS,
    RUN_KINDS,
    Contract,
    bundled_contracts,
    check_run,
    contract_for,
    load_contract,
    parse_contract,
)
from iechs.timeline import parse_timeline

ROOT = Path(__file__).resolve().parents[1]
OTHER_DIR = ROOT / "tests" / "fixtures" / "other-domain"
OTHER = OTHER_DIR / "agvhd.yaml"
PROFILES = sorted((ROOT / "guideline" / "profiles").glob("*.yaml"))
T0 = datetime(2026, 5, 1, 8, tzinfo=UTC)


# --- the contract documents ------------------------------------------------------------------


def test_the_iec_hs_contract_is_bundled_and_complete() -> None:
    assert "iec-hs-safety" in bundled_contracts()
    c = load_contract("iec-hs-safety")
    assert tuple(c.states) == FIXED_STATES
    assert {p.kind for p in c.properties.values()} == set(PROPERTY_KINDS)
    assert all(p.cite for p in c.properties.values())
    assert c.drugs["tocilizumab"] == c.drugs["siltuximab"] == "il6_blockade"
    assert c.drugs["dexamethasone"] == c.drugs["methylprednisolone"] == "corticosteroid"
    assert c.drugs["anakinra"] == "il1_blockade"
    assert c.drugs["ruxolitinib"] == "jak_inhibitor"
    assert c.never_first == ("refractory_ruxolitinib", "salvage")
    assert c.never_a_line_classes() == ("il6_blockade",)
    bounds = c.parameters
    assert bounds["reassessment_interval_hours"].describe() == "> 0 and <= 12"
    assert bounds["min_hours_before_escalation"].describe() == ">= 24 and <= 48"
    assert bounds["escalation_due_hours"].describe() == ">= $min_hours_before_escalation and <= 48"


def test_guidelines_name_their_contract(guideline: Guideline) -> None:
    assert contract_for(guideline).id == "iec-hs-safety"
    for profile in PROFILES:
        assert contract_for(load_guideline(profile)).id == "iec-hs-safety"
    assert contract_for(load_guideline(OTHER)).id == "agvhd-safety"


def test_bound_holds_refuses_non_finite_numbers() -> None:
    b = load_contract("iec-hs-safety").parameters["lab_validity_hours"]
    assert b.holds(48, lambda _: None)
    assert not b.holds(float("nan"), lambda _: None)
    assert not b.holds(float("inf"), lambda _: None)
    assert not b.holds(6, lambda _: None)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("kind: infection_gate", "kind: infection_gates"), "expected one of"),
        (
            ("    cite: [seed-summary]\n  line_order:", "    cite: [nowhere]\n  line_order:"),
            "nowhere",
        ),
        (("never_first: [refractory_ruxolitinib, salvage]", "never_first: [salvag]"), "salvag"),
        (("at_least: $min_hours_before_escalation", "at_least: $min_hours"), "$min_hours"),
    ],
)
def test_a_broken_contract_document_is_refused(edit: tuple[str, str], message: str) -> None:
    text = (ROOT / "src" / "iechs" / "contracts" / "iec-hs-safety.yaml").read_text("utf-8")
    assert edit[0] in text
    with pytest.raises(GuidelineError) as info:
        parse_contract(text.replace(edit[0], edit[1], 1), "broken.yaml")
    assert message in info.value.render()


def _write_profile(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "p.yaml"
    base = ROOT / "guideline" / "iec-hs.yaml"
    p.write_text(f"profile:\n  extends: {base}\n  rationale: x\n{body}", encoding="utf-8")
    return p


def test_an_unknown_contract_is_bad_input(tmp_path: Path) -> None:
    text = (ROOT / "guideline" / "iec-hs.yaml").read_text("utf-8")
    bad = tmp_path / "g.yaml"
    bad.write_text(text.replace("contract: iec-hs-safety", "contract: iec-hs-safty"), "utf-8")
    with pytest.raises(GuidelineError) as info:
        load_guideline(bad)
    assert any(
        p.path == "$.guideline.contract" and "did you mean 'iec-hs-safety'" in p.message
        for p in info.value.problems
    )
    assert main(["verify", str(bad)]) == 2


def test_a_guideline_cannot_use_a_contract_property_id(tmp_path: Path) -> None:
    text = (ROOT / "guideline" / "iec-hs.yaml").read_text("utf-8")
    text += (
        "\nproperties:\n  determinism:\n    description: mine\n    deterministic: true\n"
        "    cite: [local-protocol]\n"
    )
    bad = tmp_path / "g.yaml"
    bad.write_text(text, "utf-8")
    with pytest.raises(GuidelineError) as info:
        load_guideline(bad)
    assert "property 'determinism' is a property of contract 'iec-hs-safety'" in str(info.value)


def test_a_guideline_must_have_its_contracts_states(tmp_path: Path) -> None:
    p = _write_profile(tmp_path, "states:\n  salvage:\n    phase: outcome\n")
    with pytest.raises(GuidelineError) as info:
        load_guideline(p)
    (problem,) = info.value.problems
    assert "requires state 'salvage' to have phase 'treatment'" in problem.message
    assert problem.file == str(p)


def test_a_profile_may_add_a_property(tmp_path: Path) -> None:
    p = _write_profile(
        tmp_path,
        "properties:\n  steroids_first:\n    description: x\n"
        "    order_of_lines: {lines: [first_line_steroids, second_line_anakinra]}\n"
        "    cite: [seed-summary]\n",
    )
    assert "steroids_first" in load_guideline(p).properties


# --- the run checker on hand-made runs ---------------------------------------------------------


def _run(g: Guideline, events: list[dict[str, Any]]) -> tuple[Any, list[Any]]:
    data = {"patient": {"id": "C1", "infusion_at": "2026-05-01T08:00:00Z"}, "events": events}
    tl = parse_timeline(data, g)
    return tl, Engine(g).run(tl).decisions


def test_check_run_accepts_the_bundled_examples(guideline: Guideline) -> None:
    c = contract_for(guideline)
    engine = Engine(guideline)
    for path in sorted((ROOT / "examples").glob("*.json")):
        tl = parse_timeline(json.loads(path.read_text("utf-8")), guideline)
        assert check_run(c, guideline, tl.events, engine.run(tl).decisions) == [], path.name


class _D:
    """A decision as the run checker reads it."""

    def __init__(self, at: datetime, event: dict[str, Any], source: str | None, target: str):
        self.at, self.event, self.source, self.target = at, event, source, target
        self.via: tuple[str, ...] = ()


def test_check_run_names_each_violation(guideline: Guideline) -> None:
    c = contract_for(guideline)
    t = [T0 + timedelta(hours=h) for h in range(10)]
    ev = [
        {"at": t[1], "kind": "assessment", "infection": "suspected", "antimicrobials": False},
    ]
    from iechs.timeline import AssessmentEvent

    events = [AssessmentEvent(at=t[1], infection="suspected", antimicrobials=False)]
    decisions = [
        _D(T0, {"kind": "start"}, None, "surveillance"),
        _D(t[1], ev[0], "surveillance", "suspected"),
        _D(t[2], {"kind": "treatment", "drug": "tocilizumab"}, "suspected", "salvage"),
        _D(t[3], {"kind": "close"}, "salvage", "resolved"),
    ]
    found = {(v.property, v.step) for v in check_run(c, guideline, events, decisions)}
    assert found == {
        ("il6_never_a_line", 2),
        ("infection_gate", 2),
        ("line_order", 2),
        ("close_reaches_closed", 3),
    }


# --- the differential test ---------------------------------------------------------------------


def _load(name: str) -> Guideline:
    if name == "iec-hs":
        return load_guideline()
    if name == "agvhd":
        return load_guideline(OTHER)
    return load_guideline(ROOT / "guideline" / "profiles" / f"{name}.yaml")


NAMES = ["iec-hs", *(p.stem for p in PROFILES), "agvhd"]
_CACHE: dict[str, tuple[Guideline, Contract, Engine]] = {}


def _setup(name: str) -> tuple[Guideline, Contract, Engine]:
    if name not in _CACHE:
        g = _load(name)
        _CACHE[name] = (g, contract_for(g), Engine(g))
    return _CACHE[name]


def _limits(g: Guideline) -> dict[str, list[float]]:
    """Values around which each observation's criteria change (for the generator only)."""
    out: dict[str, list[float]] = {code: [] for code in g.observations}
    for c in g.criteria.values():
        spec = getattr(c, c.kind) if len(c.kinds) == 1 else None
        try:
            if isinstance(spec, m.Threshold):
                factor = g.observations[spec.observation].units[spec.unit] if spec.unit else 1.0
                out[spec.observation].append(g.param(spec.value) * factor)
            elif isinstance(spec, m.Ratio) and spec.reference != "baseline":
                out[spec.observation].append(g.param(spec.factor) * g.param(spec.reference))
        except KeyError:
            continue
    return out


def _line_drugs(g: Guideline) -> list[str]:
    """Drugs whose class is a line, in the order of the lines their events lead to."""
    line_of: dict[str, int] = {}
    for s in g.states.values():
        for t in s.transitions:
            line = g.states[t.to].line
            if line is not None:
                line_of[t.event] = min(line_of.get(t.event, line), line)
    drugs = [d for d, dd in g.drugs.items() if g.drug_classes[dd.drug_class].event in line_of]
    return sorted(drugs, key=lambda d: line_of[g.drug_classes[g.drugs[d].drug_class].event or ""])


class _Story:
    """Builds a random timeline in a guideline's vocabulary (see `story`)."""

    def __init__(self, g: Guideline, rng: random.Random) -> None:
        self.g, self.rng = g, rng
        self.limits = _limits(g)
        self.line_drugs = _line_drugs(g)
        self.other_drugs = [d for d in g.drugs if d not in self.line_drugs] + ["filgrastim"]
        self.last: dict[str, float] = {}
        self.now = T0 + timedelta(hours=rng.choice([24, 120, 240, 300]))
        self.events: list[dict[str, Any]] = []
        self.closed = False

    def emit(self, group: list[dict[str, Any]], gap: float) -> None:
        if self.closed:
            return
        self.now += timedelta(hours=gap)
        stamp = self.now.strftime("%Y-%m-%dT%H:%M:%SZ")
        self.events += [{"at": stamp, **e} for e in group]

    def observation(self, code: str, scale: float | None = None) -> dict[str, Any]:
        rng, o = self.rng, self.g.observations[code]
        lo, hi = o.plausible
        if scale is not None and self.limits[code]:
            value = rng.choice(self.limits[code]) * scale
        elif code in self.last and rng.random() < 0.6:
            value = self.last[code] * rng.choice([0.5, 0.85, 0.95, 1.0, 1.05, 1.2, 2.0])
        elif self.limits[code] and rng.random() < 0.8:
            value = rng.choice(self.limits[code]) * rng.choice([0.5, 0.98, 1.02, 1.5, 3.0])
        else:
            value = rng.uniform(lo, min(hi, lo + (hi - lo) / 10))
        value = round(min(max(value, lo), hi), 2)
        self.last[code] = value
        return {"kind": "observation", "code": code, "value": value, "unit": o.unit}

    def finding(self, severe: bool = False) -> dict[str, Any]:
        rng = self.rng
        code = rng.choice(list(self.g.findings))
        f: dict[str, Any] = {
            "kind": "finding",
            "code": code,
            "present": severe or rng.random() < 0.7,
        }
        if self.g.findings[code].graded and f["present"] and rng.random() < 0.8:
            f["grade"] = rng.randint(3, 5) if severe else rng.randint(1, 5)
        return f

    def assessment(self, calm: bool = False) -> dict[str, Any]:
        rng = self.rng
        a: dict[str, Any] = {"kind": "assessment", "crs_grade": rng.choice([0, 0, 1, 2, 3])}
        if calm:
            a["crs_grade"] = 0
        if rng.random() < 0.3:
            a["icans_grade"] = rng.choice([0, 0, 1, 2])
        if rng.random() < 0.8:
            a["infection"] = rng.choice(["none", "none", "none", "suspected", "confirmed"])
        if rng.random() < 0.5:
            a["antimicrobials"] = rng.random() < 0.5
        return a

    def treatment(self, drug: str | None = None) -> dict[str, Any]:
        rng = self.rng
        if drug is None:
            pool = self.line_drugs if rng.random() < 0.75 else self.other_drugs
            drug = rng.choice(pool)
        t: dict[str, Any] = {"kind": "treatment", "drug": drug}
        indication = rng.choice([None, "iec_hs", "iec_hs", "iec_hs", "crs", "infection", "other"])
        if indication is not None:
            t["indication"] = indication
        return t

    def noise(self) -> list[dict[str, Any]]:
        rng, codes = self.rng, list(self.g.observations)
        group = [self.observation(c) for c in rng.sample(codes, rng.randint(0, min(4, len(codes))))]
        if self.g.findings and rng.random() < 0.4:
            group.append(self.finding())
        if rng.random() < 0.6:
            group.append(self.assessment())
        if rng.random() < 0.3:
            kind = rng.choice(["improving", "stable", "worsening", "resolved"])
            group.append({"kind": "response", "assessment": kind})
        if rng.random() < 0.45:
            group.append(self.treatment())
        return group

    def course(self) -> None:
        """Onset with the criteria met, then the lines in order with responses between."""
        rng, codes = self.rng, list(self.g.observations)
        for _ in range(rng.randint(1, 2)):  # onset: values beyond the limits, organ findings
            group = [self.observation(c, rng.choice([1.5, 3.0, 0.3])) for c in codes]
            group += [self.finding(severe=True) for _ in range(rng.randint(1, 3))]
            group.append(self.assessment(calm=True))
            self.emit(group, rng.choice([2, 6, 12]))
        for drug in self.line_drugs[: rng.randint(1, len(self.line_drugs))]:
            self.emit([self.treatment(drug)], rng.choice([0.5, 2, 6]))
            for _ in range(rng.randint(1, 3)):
                kind = rng.choice(["stable", "worsening", "worsening", "improving"])
                group = [{"kind": "response", "assessment": kind}]
                group += [self.observation(c) for c in rng.sample(codes, min(2, len(codes)))]
                if rng.random() < 0.3:
                    group += self.noise()
                self.emit(group, rng.choice([6, 12, 24, 30]))
        if rng.random() < 0.4:  # response: improving, values falling
            group = [{"kind": "response", "assessment": "improving"}]
            group += [self.observation(c, 0.3) for c in codes]
            self.emit(group, 12)

    def document(self) -> dict[str, Any]:
        g, rng = self.g, self.rng
        patient: dict[str, Any] = {"id": "D1", "infusion_at": T0.strftime("%Y-%m-%dT%H:%M:%SZ")}
        baseline = {}
        for code, o in g.observations.items():
            if rng.random() < 0.5 and self.limits[code]:
                value = rng.choice(self.limits[code]) * rng.choice([0.2, 0.5, 1.5])
                lo, hi = o.plausible
                baseline[code] = {"value": round(min(max(value, lo), hi), 2), "unit": o.unit}
        if baseline:
            patient["baseline"] = baseline
        if g.risk_factors and rng.random() < 0.3:
            patient["risk_factors"] = rng.sample(list(g.risk_factors), 1)
        return {"patient": patient, "events": self.events}


def story(g: Guideline, rng: random.Random) -> dict[str, Any]:
    """A random timeline in `g`'s vocabulary: order sets of facts hours apart, with
    treatments (line drugs often, for the guideline's condition or for something else),
    responses and, rarely, a close. Most runs tell a course (onset with the criteria met, the
    line drugs in order, responses between), interleaved with random order sets; the others
    are random order sets only. Values sit near the criteria's limits and move up or down."""
    s = _Story(g, rng)
    if rng.random() < 0.75:
        s.course()
    for _ in range(rng.randint(0, 12)):
        s.emit(s.noise(), rng.choice([0.5, 2, 6, 12, 12, 24, 30, 50]))
    if rng.random() < 0.05:
        s.emit([{"kind": "close", "reason": "follow_up_complete"}], 6)
        s.closed = True
    return s.document()


def run_story(name: str, seed: int) -> tuple[list[Any], list[Any]]:
    g, c, engine = _setup(name)
    data = story(g, random.Random(seed))
    tl = parse_timeline(data, g)
    decisions = engine.run(tl).decisions
    return decisions, check_run(c, g, tl.events, decisions)


@pytest.mark.parametrize("name", NAMES)
@settings(deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_the_engine_never_breaks_a_proved_property(name: str, seed: int) -> None:
    decisions, violations = run_story(name, seed)
    assert decisions
    assert violations == [], (seed, [v.to_json() for v in violations])


@pytest.mark.parametrize("name", NAMES)
def test_random_runs_reach_the_lines(name: str, record_property: Any) -> None:
    """The generator reaches the treatment lines in most runs (and the checker keeps every
    run clean): the share of runs that reach each state is recorded and reported."""
    g, c, _ = _setup(name)
    runs = 200
    reached: Counter[str] = Counter()
    for seed in range(runs):
        decisions, violations = run_story(name, seed)
        assert violations == [], (seed, [v.to_json() for v in violations])
        seen = {s for d in decisions for s in (d.source, *getattr(d, "via", ()), d.target) if s}
        reached.update(seen)
    lines = c.treatment_states(g)
    share = {s: reached[s] / runs for s in lines}
    record_property("share_of_runs_reaching_each_line", json.dumps(share))
    print(f"{name}: share of {runs} random runs reaching each line: {share}")  # noqa: T201
    first = c.first_lines(g)
    assert max(share[s] for s in first) >= 0.3
    assert any(share[s] > 0 for s in lines if s not in first)
    assert set(RUN_KINDS) <= {p.kind for p in c.properties.values()}


# --- a guideline from another domain -----------------------------------------------------------


def test_other_domain_loads_verifies_runs_and_renders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Acute GVHD: its own states, drugs, rules and contract, through the same engine, verifier
    and renderers, with no change to any of them."""
    assert main(["validate", str(OTHER)]) == 0
    assert main(["verify", str(OTHER)]) == 0
    assert "against contract agvhd-safety" in capsys.readouterr().out
    course = OTHER_DIR / "course.json"
    assert main(["run", str(course), "--guideline", str(OTHER), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["path"] == [
        "monitoring",
        "gvhd_suspected",
        "systemic_steroids",
        "ruxolitinib_line",
        "responding",
        "follow_up_ended",
    ]
    g, c, engine = _setup("agvhd")
    tl = parse_timeline(json.loads(course.read_text("utf-8")), g)
    assert check_run(c, g, tl.events, engine.run(tl).decisions) == []
    out = tmp_path / "diagrams"
    assert main(["diagram", str(OTHER), "--out", str(out), "--format", "svg"]) == 0
    assert "gvhd_suspected" in (out / "agvhd.svg").read_text("utf-8")


def test_other_domain_topical_steroid_alone_is_a_deviation_not_a_line() -> None:
    g, c, engine = _setup("agvhd")
    course = json.loads((OTHER_DIR / "course.json").read_text("utf-8"))
    events = [e for e in course["events"] if e.get("drug") != "methylprednisolone"]
    tl = parse_timeline({**course, "events": events}, g)
    decisions = engine.run(tl).decisions
    budesonide = next(d for d in decisions if d.event.get("drug") == "budesonide")
    assert budesonide.source == budesonide.target == "gvhd_suspected"
    assert [a.code for a in budesonide.alerts] == ["topical_steroid_alone"]
    assert check_run(c, g, tl.events, decisions) == []
