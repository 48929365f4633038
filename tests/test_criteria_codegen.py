"""Combinations of criteria compiled to source (`iechs.criteria_codegen`) decide as Kleene
logic says, in the order the explanations rely on.

Two oracles, neither of them the code under test:

- a small recursive Kleene evaluator written here, over random trees of `all_of`, `any_of`,
  `not_` and `count_of` with leaves of fixed values. It also says which criteria are read, in
  which order (children before the combination that reads them; `all_of` stops at the first
  FALSE child, `any_of` at the first TRUE one; a criterion read once is not read again), and
  how many children each combination read. Trees deeper than the in-line limit, and
  combinations of many children, are included, so the fallback (calling the nested
  combination) and the flat layout of children are tested too.
- the interpreted readers of `iechs.criteria` (`CriteriaPlan(compiled=False)`) and
  `Evaluation.guard`, on the bundled guideline and its profile, over a synthetic cohort: every
  evaluation's values (in order), payloads and explanations, and every compiled guard's value,
  must match; and what an UNKNOWN criterion lacks (`Evaluation.missing`, found without its
  explanation) must be what its explanation says.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from iechs import Engine, load_guideline
from iechs.criteria import CriteriaPlan, Evaluation, Tri
from iechs.criteria_codegen import _MAX_INLINE, compile_combinations, compile_guard
from iechs.synthetic import synthetic_cohort
from iechs.timeline import parse_timeline

T, F, U = Tri.TRUE, Tri.FALSE, Tri.UNKNOWN


@dataclass(frozen=True)
class Count:
    at_least: int


@dataclass
class Node:
    name: str
    kind: str
    children: tuple[str, ...] = ()
    spec: Any = None


@dataclass
class FakeEvaluation:
    values: dict[str, Tri] = field(default_factory=dict)
    _payload: dict[str, Any] = field(default_factory=dict)


def oracle(
    nodes: dict[str, Node],
    leaves: dict[str, Tri],
    root: str,
    known: dict[str, Tri] | None = None,
) -> tuple[list[tuple[str, Tri]], dict[str, int]]:
    """Kleene evaluation of `root`: (the (name, value) pairs in the order they are stored,
    how many children each combination read). `known`: what an evaluation already read (not
    read, nor stored, again; updated)."""
    order: list[tuple[str, Tri]] = []
    known = {} if known is None else known
    kept: dict[str, int] = {}

    def read(name: str) -> Tri:
        if name in known:
            return known[name]
        node = nodes[name]
        if node.kind == "leaf":
            v = leaves[name]
        elif node.kind in ("all_of", "any_of"):
            stop = F if node.kind == "all_of" else T
            v, n = (T if node.kind == "all_of" else F), 0
            for c in node.children:
                cv = read(c)
                n += 1
                if cv is stop:
                    v = stop
                    break
                if cv is U:
                    v = U
            kept[name] = n
        elif node.kind == "not_":
            cv = read(node.children[0])
            v = {T: F, F: T, U: U}[cv]
            kept[name] = 1
        else:
            got = [read(c) for c in node.children]
            t, u = got.count(T), got.count(U)
            need = node.spec.at_least
            v = T if t >= need else F if t + u < need else U
            kept[name] = len(got)
        known[name] = v
        order.append((name, v))
        return v

    read(root)
    return order, kept


@st.composite
def trees(draw: st.DrawFn) -> tuple[dict[str, Node], dict[str, Tri]]:
    """A random DAG: leaves first, then combinations over earlier criteria (shared children
    included), sometimes a long chain that passes the in-line limit."""
    n_leaves = draw(st.integers(1, 6))
    nodes: dict[str, Node] = {}
    leaves: dict[str, Tri] = {}
    for i in range(n_leaves):
        name = f"leaf_{i}"
        nodes[name] = Node(name, "leaf")
        leaves[name] = draw(st.sampled_from([T, F, U]))
    names = list(nodes)
    for i in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["all_of", "any_of", "not_", "count_of"]))
        kids: tuple[str, ...]
        if kind == "not_":
            kids = (draw(st.sampled_from(names)),)
        else:
            wide = draw(st.sampled_from([4, 4, 4, 150]))  # wider than Python's indent limit
            kids = tuple(draw(st.lists(st.sampled_from(names), min_size=1, max_size=wide)))
        spec = Count(draw(st.integers(0, len(kids) + 1))) if kind == "count_of" else None
        name = f"c_{i}"
        nodes[name] = Node(name, kind, kids, spec)
        names.append(name)
    if draw(st.booleans()):  # deeper than the in-line limit
        prev = names[-1]
        for i in range(_MAX_INLINE + 3):
            kind = draw(st.sampled_from(["all_of", "any_of", "not_"]))
            name = f"deep_{i}"
            kids = (prev,) if kind == "not_" else (prev, draw(st.sampled_from(names)))
            nodes[name] = Node(name, kind, kids)
            names.append(name)
            prev = name
    return nodes, leaves


def leaf_reader(name: str, value: Tri) -> Any:
    def read(ev: Any) -> tuple[Tri, Any]:
        return value, f"kept by {name}"

    return read


@settings(max_examples=300, deadline=None)
@given(trees(), st.data())
def test_compiled_combinations_follow_kleene_logic_in_order(tree: Any, data: st.DataObject) -> None:
    nodes, leaves = tree
    readers = {name: leaf_reader(name, v) for name, v in leaves.items()}
    compiled = compile_combinations(nodes, readers, (T, F, U))
    assert set(compiled) == {n for n, node in nodes.items() if node.kind != "leaf"}
    root = data.draw(st.sampled_from(sorted(compiled)))
    expected_order, expected_kept = oracle(nodes, leaves, root)

    ev = FakeEvaluation()
    value, kept = compiled[root](ev)
    # The caller (Evaluation.value) stores the root itself, after its children.
    ev.values[root], ev._payload[root] = value, kept
    assert list(ev.values.items()) == expected_order
    for name in ev.values:
        if name in leaves:
            assert ev._payload[name] == f"kept by {name}"
        else:
            assert ev._payload[name] == expected_kept[name], name


@settings(max_examples=300, deadline=None)
@given(trees(), st.data())
def test_a_compiled_guard_is_the_kleene_and_of_its_criteria_read_in_order(
    tree: Any, data: st.DataObject
) -> None:
    """A guard (`when` all TRUE, no `unless` TRUE) reads every criterion it names, in order,
    each once, storing what a combination's own reading stores (its combinations written out
    in line, deep ones called); its value is the Kleene AND of the `when` values and of the
    negated `unless` values."""
    nodes, leaves = tree
    readers: dict[str, Any] = {name: leaf_reader(name, v) for name, v in leaves.items()}
    readers.update(compile_combinations(nodes, readers, (T, F, U)))
    names = sorted(nodes)
    when = tuple(data.draw(st.lists(st.sampled_from(names), max_size=3)))
    unless = tuple(data.draw(st.lists(st.sampled_from(names), max_size=3)))
    guard = compile_guard(when, unless, nodes, readers, (T, F, U))
    ev = FakeEvaluation()
    value = guard(ev)

    known: dict[str, Tri] = {}
    order: list[tuple[str, Tri]] = []
    kept: dict[str, int] = {}
    for name in (*when, *unless):
        o, k = oracle(nodes, leaves, name, known)
        order += o
        kept.update(k)
    expected = T
    for v in [known[n] for n in when] + [{T: F, F: T, U: U}[known[n]] for n in unless]:
        if v is F:
            expected = F
        elif v is U and expected is T:
            expected = U
    assert value is expected
    assert list(ev.values.items()) == order
    for name in ev.values:
        assert ev._payload[name] == (f"kept by {name}" if name in leaves else kept[name]), name


def test_a_criterion_already_read_is_not_read_again() -> None:
    """A shared child read by an earlier combination keeps its first reading (memoised)."""
    calls: list[str] = []

    def counted(name: str, value: Tri) -> Any:
        def read(ev: Any) -> tuple[Tri, Any]:
            calls.append(name)
            return value, None

        return read

    nodes = {
        "a": Node("a", "leaf"),
        "b": Node("b", "leaf"),
        "x": Node("x", "any_of", ("a", "b")),
        "y": Node("y", "all_of", ("a", "x", "b")),
    }
    compiled = compile_combinations(nodes, {"a": counted("a", F), "b": counted("b", T)}, (T, F, U))
    ev = FakeEvaluation()
    assert compiled["y"](ev) == (F, 1)  # a is FALSE: all_of stops there
    assert calls == ["a"]
    assert compiled["x"](ev) == (T, 2)  # a is known; only b is read
    assert calls == ["a", "b"]


def _evaluations(guideline_path: str | None, patients: int) -> None:
    """Run a synthetic cohort with the compiled criteria and, at every step, evaluate every
    criterion with both plans over the same facts: values in order, payloads, explanations."""
    g = load_guideline(guideline_path) if guideline_path else load_guideline()
    engine = Engine(g, runtime="table")
    interpreted = CriteriaPlan(g, compiled=False)
    compiled = engine.plan
    names = list(g.criteria)
    guards = list(compiled._guards)  # every guard the engine compiled: transitions, actions, rules
    assert len(guards) > 5
    checked = lacking = 0
    for doc in synthetic_cohort(patients, 11):
        doc.pop("course", None)
        timeline = parse_timeline(doc, g)
        ep = engine.start(timeline.patient)
        for i, event in enumerate(timeline.events):
            ep.step(event, later=engine.later(timeline.events, i))
            one, two = Evaluation(compiled, ep.facts), Evaluation(interpreted, ep.facts)
            for name in names:
                one.value(name)
                two.value(name)
            assert list(one.values.items()) == list(two.values.items())
            assert one._payload == two._payload
            explained = [json.dumps(v.to_json(), sort_keys=True) for v in one.explained()]
            assert explained == [json.dumps(v.to_json(), sort_keys=True) for v in two.explained()]
            for name in names:  # what a criterion lacks, with and without its explanation
                if one.values[name] is U:
                    assert one.missing(name) == one.verdict(name).missing, name
                    lacking += 1
            for when, unless in guards:  # each compiled guard, on fresh evaluations
                one, two = Evaluation(compiled, ep.facts), Evaluation(interpreted, ep.facts)
                assert compiled.guard(when, unless)(one) is two.guard(when, unless)
                assert list(one.values.items()) == list(two.values.items())
                assert one._payload == two._payload
            checked += 1
            if ep.closed:
                break
    assert checked > patients * 10
    assert lacking > patients


def test_compiled_and_interpreted_criteria_agree_on_the_bundled_guideline() -> None:
    _evaluations(None, 25)


def test_compiled_and_interpreted_criteria_agree_on_the_astct_profile() -> None:
    _evaluations("guideline/profiles/astct-2023.yaml", 10)


def test_wide_and_deep_guidelines_compile() -> None:
    """200 children in one combination and combinations nested 60 deep: beyond Python's 100
    indentation levels if written naively; they compile and decide."""
    nodes = {f"l{i}": Node(f"l{i}", "leaf") for i in range(200)}
    nodes["wide"] = Node("wide", "all_of", tuple(nodes))
    prev = "wide"
    for i in range(60):
        nodes[f"d{i}"] = Node(f"d{i}", "not_" if i % 2 else "any_of", (prev,))
        prev = f"d{i}"
    readers = {f"l{i}": leaf_reader(f"l{i}", U if i == 150 else T) for i in range(200)}
    compiled = compile_combinations(nodes, readers, (T, F, U))
    assert compiled["wide"](FakeEvaluation()) == (U, 200)
    assert compiled[prev](FakeEvaluation())[0] is U
    readers["l150"] = leaf_reader("l150", F)
    compiled = compile_combinations(nodes, readers, (T, F, U))
    assert compiled["d58"](FakeEvaluation())[0] is T  # 29 negations of FALSE
    assert compiled["d59"](FakeEvaluation())[0] is F  # 30
