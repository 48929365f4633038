"""Prove the guideline's safety properties over every path, or give the shortest counterexample.

The abstraction. Criteria are free inputs: at every step any values may be observed. A guard is
a formula over the *leaf* criteria it reaches (thresholds, trends, findings, grades, ...). Leaves
that read the same quantity are grouped (`Domain`): the latest ferritin value, the CRS grade and
its peak, the latest response on the line, the infection status, ... Each domain has a finite set
of representative values that covers every combination of its leaves' truth values (breakpoints
and the points between them), so searching those values is exhaustive. Leaves the abstraction
cannot relate (e.g. a ratio to the patient's baseline) are free booleans. A transition is enabled
in some step iff its guard is satisfiable over the domains; because a Kleene-TRUE guard is TRUE in
every two-valued completion, this is exact for the engine's three-valued guards.

The explored space is (machine state, treatment lines entered since the last reset), built
breadth-first from the initial state, so the first violation found on an edge is one of the
shortest. Properties are data (`properties:` in the guideline): see `model.SafetyProperty`.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import attrs

from . import model as m
from .criteria import _OPS

__all__ = ["Counterexample", "Edge", "Report", "Step", "verify"]

# --- formulas --------------------------------------------------------------------------------

# ("var", leaf) | ("not", f) | ("and", (f, ...)) | ("or", (f, ...)) | ("atleast", k, (f, ...))
# | ("const", bool)
Formula = tuple[Any, ...]
TRUE: Formula = ("const", True)
FALSE: Formula = ("const", False)


def _formula(g: m.Guideline, name: str, memo: dict[str, Formula]) -> Formula:
    f = memo.get(name)
    if f is not None:
        return f
    c = g.criteria[name]
    if c.all_of is not None:
        f = ("and", tuple(_formula(g, n, memo) for n in c.all_of))
    elif c.any_of is not None:
        f = ("or", tuple(_formula(g, n, memo) for n in c.any_of))
    elif c.not_ is not None:
        f = ("not", _formula(g, c.not_, memo))
    elif c.count_of is not None:
        f = ("atleast", c.count_of.at_least, tuple(_formula(g, n, memo) for n in c.count_of.of))
    else:
        f = ("var", name)
    memo[name] = f
    return f


def _leaves(f: Formula, out: dict[str, None]) -> dict[str, None]:
    op = f[0]
    if op == "var":
        out[f[1]] = None
    elif op == "not":
        _leaves(f[1], out)
    elif op in ("and", "or"):
        for x in f[1]:
            _leaves(x, out)
    elif op == "atleast":
        for x in f[2]:
            _leaves(x, out)
    return out


def _simplify(f: Formula, env: dict[str, bool]) -> Formula:
    op = f[0]
    if op == "const":
        return f
    if op == "var":
        v = env.get(f[1])
        return f if v is None else (TRUE if v else FALSE)
    if op == "not":
        x = _simplify(f[1], env)
        return (FALSE if x[1] else TRUE) if x[0] == "const" else ("not", x)
    if op in ("and", "or"):
        absorbing = op == "or"  # TRUE absorbs an `or`, FALSE an `and`
        rest = []
        for part in f[1]:
            x = _simplify(part, env)
            if x[0] == "const":
                if x[1] is absorbing:
                    return x
                continue
            rest.append(x)
        if not rest:
            return ("const", not absorbing)
        return rest[0] if len(rest) == 1 else (op, tuple(rest))
    k, parts = f[1], [_simplify(x, env) for x in f[2]]
    trues = sum(1 for x in parts if x == TRUE)
    open_ = [x for x in parts if x[0] != "const"]
    if trues >= k:
        return TRUE
    if trues + len(open_) < k:
        return FALSE
    return ("atleast", k - trues, tuple(open_))


# --- domains ---------------------------------------------------------------------------------


@attrs.frozen
class Domain:
    """One quantity the guideline reads, with representative values covering its leaves."""

    key: str
    leaves: tuple[str, ...]
    #: (label, truth value of each leaf) per representative value; distinct vectors only.
    points: tuple[tuple[str, tuple[bool, ...]], ...]


def _points(
    values: list[Any], label: Callable[[Any], str], truth: Callable[[Any], tuple[bool, ...]]
) -> tuple[tuple[str, tuple[bool, ...]], ...]:
    seen: dict[tuple[bool, ...], str] = {}
    for v in values:
        vec = truth(v)
        seen.setdefault(vec, label(v))
    return tuple((lab, vec) for vec, lab in seen.items())


def _cut_points(limits: list[float]) -> list[float]:
    """Representative values around and between limits (covers every side of every limit)."""
    ls = sorted(set(limits))
    if not ls:
        return [0.0]
    delta = max(abs(ls[-1]) * 0.01, 0.01)
    pts = [0.0, ls[0] - delta, ls[-1] + delta, *ls]
    pts += [(a + b) / 2 for a, b in itertools.pairwise(ls)]
    # Highest first: witnesses then read like the illness (ferritin 10,100, 96 h on a line).
    return sorted({round(p, 6) for p in pts if p >= 0}, reverse=True)


def build_domains(g: m.Guideline, leaves: list[str]) -> list[Domain]:
    groups: dict[str, list[str]] = {}
    for name in leaves:
        c = g.criteria[name]
        spec = getattr(c, c.kind)
        if isinstance(spec, m.Threshold):
            key = f"value:{spec.observation}"
        elif isinstance(spec, m.Ratio):
            key = f"value:{spec.observation}" if spec.reference != "baseline" else f"free:{name}"
        elif isinstance(spec, m.Trend):
            key = f"trend:{spec.observation}"
        elif isinstance(spec, m.FindingTest):
            key = f"finding:{spec.code}"
        elif isinstance(spec, m.GradeTest):
            key = f"grade:{spec.of}"
        elif isinstance(spec, m.InfectionTest):
            key = "infection"
        elif isinstance(spec, m.ResponseTest):
            key = "response"
        elif isinstance(spec, m.Duration):
            key = c.kind
        elif isinstance(spec, m.RiskTest) and not spec.among:
            key = "risk"
        else:
            key = f"free:{name}"
        groups.setdefault(key, []).append(name)
    return [_domain(g, key, tuple(names)) for key, names in groups.items()]


def _domain(g: m.Guideline, key: str, names: tuple[str, ...]) -> Domain:
    specs = [getattr(g.criteria[n], g.criteria[n].kind) for n in names]
    kind, _, arg = key.partition(":")
    if kind == "value":
        obs = g.observations[arg]

        def limit(s: Any) -> float:
            if isinstance(s, m.Threshold):
                return g.param(s.value) * (obs.units[s.unit] if s.unit else 1.0)
            return float(g.param(s.factor) * g.param(s.reference))

        limits = [limit(s) for s in specs]
        pts = _points(
            _cut_points(limits),
            lambda v: f"{arg} = {v:g} {obs.unit}",
            lambda v: tuple(_OPS[s.op](v, lim) for s, lim in zip(specs, limits, strict=True)),
        )
    elif kind == "trend":
        directions = {"rising": (1, 2), "falling": (2, 1), "flat": (1, 1)}

        def trend(pair: tuple[int, int]) -> tuple[bool, ...]:
            first, last = pair
            return tuple(
                {"rising": last > first, "falling": last < first, "not_falling": last >= first}[
                    s.direction
                ]
                for s in specs
            )

        labels = {v: f"{arg} {d}" for d, v in directions.items()}
        pts = _points(list(directions.values()), lambda v: labels[v], trend)
    elif kind == "finding":
        states: list[tuple[bool, int | None]] = [(False, None), (True, None)]
        states += [(True, grade) for grade in range(1, 6)]

        def finding(v: tuple[bool, int | None]) -> tuple[bool, ...]:
            present, grade = v
            return tuple(
                present and (s.min_grade is None or (grade or 0) >= s.min_grade) for s in specs
            )

        pts = _points(
            states,
            lambda v: (
                f"{arg} "
                + ("absent" if not v[0] else "present" + (f", grade {v[1]}" if v[1] else ""))
            ),
            finding,
        )
    elif kind == "grade":
        pairs = [(latest, peak) for peak in range(5) for latest in range(peak + 1)]

        def grade(v: tuple[int, int]) -> tuple[bool, ...]:
            latest, peak = v
            return tuple(_OPS[s.op](latest, peak if s.peak else s.value) for s in specs)

        pts = _points(pairs, lambda v: f"{arg.upper()} grade {v[0]} (peak {v[1]})", grade)
    elif kind == "infection":
        pts = _points(
            ["none", "suspected", "confirmed"],
            lambda v: f"infection {v}",
            lambda v: tuple(v in s.status for s in specs),
        )
    elif kind == "response":
        pts = _points(
            ["improving", "stable", "worsening", "resolved"],
            lambda v: f"response on this line: {v}",
            lambda v: tuple(v in s.among for s in specs),
        )
    elif kind in ("time_on_line", "time_since_infusion"):
        limits = [g.param(s.hours) for s in specs]
        what = "on the current line" if kind == "time_on_line" else "since infusion"
        pts = _points(
            _cut_points(limits),
            lambda v: f"{v:g} h {what}",
            lambda v: tuple(_OPS[s.op](v, lim) for s, lim in zip(specs, limits, strict=True)),
        )
    elif kind == "risk":
        need = [g.param(s.at_least) for s in specs]
        top = len(g.risk_factors)
        pts = _points(
            list(range(top + 1)),
            lambda v: f"{v} risk factor(s)",
            lambda v: tuple(v >= n for n in need),
        )
    else:
        pts = ((f"{names[0]} TRUE", (True,)), (f"{names[0]} FALSE", (False,)))
    return Domain(key, names, pts)


# --- satisfiability --------------------------------------------------------------------------


class Solver:
    """Finds representative values of the domains that make a formula TRUE (or proves none)."""

    def __init__(self, g: m.Guideline) -> None:
        self.g = g
        self.memo: dict[str, Formula] = {}
        self.queries = 0
        self.valuations = 0

    def formula(self, names: tuple[str, ...], negated: tuple[str, ...] = ()) -> Formula:
        parts = [_formula(self.g, n, self.memo) for n in names]
        parts += [("not", _formula(self.g, n, self.memo)) for n in negated]
        if not parts:
            return TRUE
        return parts[0] if len(parts) == 1 else ("and", tuple(parts))

    def solve(self, f: Formula) -> dict[str, str] | None:
        """A witness {domain key: value label}, or None when unsatisfiable."""
        self.queries += 1
        leaves = list(_leaves(f, {}))
        domains = build_domains(self.g, leaves)
        chosen: dict[str, str] = {}
        if self._search(f, domains, 0, {}, chosen):
            return chosen
        return None

    def _search(
        self,
        f: Formula,
        domains: list[Domain],
        i: int,
        env: dict[str, bool],
        chosen: dict[str, str],
    ) -> bool:
        f = _simplify(f, env)
        if f[0] == "const":
            self.valuations += 1
            return bool(f[1])
        live = _leaves(f, {})
        while i < len(domains) and not any(leaf in live for leaf in domains[i].leaves):
            i += 1
        if i == len(domains):  # pragma: no cover - every open leaf belongs to a domain
            return False
        d = domains[i]
        for label, vector in d.points:
            env2 = dict(env)
            env2.update(zip(d.leaves, vector, strict=True))
            if self._search(f, domains, i + 1, env2, chosen):
                chosen[d.key] = label
                return True
        return False


# --- exploration and properties --------------------------------------------------------------


@attrs.frozen
class Edge:
    source: str
    index: int
    transition: m.TransitionDef

    @property
    def target(self) -> str:
        return self.transition.to


@attrs.frozen
class Step:
    source: str
    event: str
    target: str
    label: str
    values: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "from": self.source,
            "event": self.event,
            "to": self.target,
            "label": self.label,
            "values": list(self.values),
        }


@attrs.frozen
class Counterexample:
    property: str
    kind: str
    description: str
    problem: str
    steps: tuple[Step, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "property": self.property,
            "kind": self.kind,
            "description": self.description,
            "problem": self.problem,
            "steps": [s.to_json() for s in self.steps],
        }

    def render(self) -> str:
        lines = [f"FAILED {self.property} ({self.kind}): {self.description}", f"  {self.problem}"]
        if self.steps:
            lines.append(f"  shortest counterexample ({len(self.steps)} step(s)):")
            for i, s in enumerate(self.steps, 1):
                lines.append(f"    {i}. {s.source} --{s.event}--> {s.target}   [{s.label}]")
                if s.values:
                    lines.append("         with " + "; ".join(s.values))
        return "\n".join(lines)


@attrs.frozen
class Report:
    guideline: dict[str, str]
    proved: tuple[str, ...]
    counterexamples: tuple[Counterexample, ...]
    abstract_states: int
    edges: int
    queries: int
    valuations: int

    @property
    def ok(self) -> bool:
        return not self.counterexamples

    def to_json(self) -> dict[str, Any]:
        return {
            "guideline": self.guideline,
            "ok": self.ok,
            "proved": list(self.proved),
            "violated": [c.to_json() for c in self.counterexamples],
            "explored": {
                "abstract_states": self.abstract_states,
                "edges": self.edges,
                "sat_queries": self.queries,
                "valuations_decided": self.valuations,
            },
        }


History = tuple[frozenset[str], ...]
Node = tuple[str, History]


class _Explorer:
    def __init__(self, g: m.Guideline) -> None:
        self.g = g
        self.solver = Solver(g)
        self.enabled: dict[tuple[str, int], dict[str, str] | None] = {}
        #: one history per order-of-lines property: the lines entered since its last reset.
        self.orders = [p.order_of_lines for p in g.properties.values() if p.order_of_lines]
        self.parent: dict[Node, tuple[Node, Edge] | None] = {}
        self.edges_seen = 0

    def witness(self, edge: Edge) -> dict[str, str] | None:
        key = (edge.source, edge.index)
        if key not in self.enabled:
            t = edge.transition
            self.enabled[key] = self.solver.solve(self.solver.formula(t.when, t.unless))
        return self.enabled[key]

    def out_edges(self, state: str) -> Iterator[Edge]:
        for i, t in enumerate(self.g.states[state].transitions):
            if t.to in self.g.states:
                yield Edge(state, i, t)

    def explore(self) -> list[Node]:
        start: Node = (self.g.initial_state, tuple(frozenset() for _ in self.orders))
        self.parent = {start: None}
        queue = deque([start])
        order = []
        while queue:
            node = queue.popleft()
            order.append(node)
            for edge in self.out_edges(node[0]):
                if self.witness(edge) is None:
                    continue
                self.edges_seen += 1
                nxt = (edge.target, self.advance(node[1], edge.target))
                if nxt not in self.parent:
                    self.parent[nxt] = (node, edge)
                    queue.append(nxt)
        return order

    def advance(self, history: History, target: str) -> History:
        out: list[frozenset[str]] = []
        for order, visited in zip(self.orders, history, strict=True):
            if target in order.reset_at:
                out.append(frozenset())
            elif target in order.lines:
                out.append(visited | {target})
            else:
                out.append(visited)
        return tuple(out)

    def visited(self, node: Node, order: m.OrderOfLines) -> frozenset[str]:
        return node[1][self.orders.index(order)]

    def path_to(self, node: Node) -> list[Step]:
        steps: list[Step] = []
        cur: Node | None = node
        while cur is not None and self.parent.get(cur) is not None:
            prev, edge = self.parent[cur]  # type: ignore[misc]
            steps.append(self.step(edge, self.witness(edge) or {}))
            cur = prev
        return steps[::-1]

    def step(self, edge: Edge, values: dict[str, str]) -> Step:
        t = edge.transition
        return Step(edge.source, t.event, t.to, t.label, tuple(sorted(values.values())))


def verify(g: m.Guideline) -> Report:
    """Check every property of `g`; see the module docstring for the abstraction."""
    ex = _Explorer(g)
    nodes = ex.explore()
    reachable = {n[0] for n in nodes}
    first_node: dict[str, Node] = {}
    for n in nodes:
        first_node.setdefault(n[0], n)
    proved: list[str] = []
    failures: list[Counterexample] = []
    for pid, prop in g.properties.items():
        found = _check(g, ex, pid, prop, nodes=nodes, reachable=reachable, first=first_node)
        if found is None:
            proved.append(pid)
        else:
            failures.append(found)
    meta = g.guideline
    return Report(
        {"id": meta.id, "version": meta.version, "sha256": g.sha256},
        tuple(proved),
        tuple(failures),
        len(nodes),
        ex.edges_seen,
        ex.solver.queries,
        ex.solver.valuations,
    )


def _check(
    g: m.Guideline,
    ex: _Explorer,
    pid: str,
    prop: m.SafetyProperty,
    *,
    nodes: list[Node],
    reachable: set[str],
    first: dict[str, Node],
) -> Counterexample | None:
    def fail(problem: str, steps: list[Step]) -> Counterexample:
        return Counterexample(
            pid, prop.kind, " ".join(prop.description.split()), problem, tuple(steps)
        )

    spec = getattr(prop, prop.kind)
    if isinstance(spec, m.NeverWithout | m.NeverTogether):
        for n in nodes:
            if n != first[n[0]]:
                continue
            classes = {g.drug_class_of(r.drug) for r in g.states[n[0]].recommendations if r.drug}
            if isinstance(spec, m.NeverWithout):
                bad = spec.drug_class in classes and spec.requires not in classes
                why = f"state {n[0]!r} recommends {spec.drug_class} without {spec.requires}"
            else:
                present = sorted(c for c in spec.classes if c in classes)
                bad = len(present) > 1
                why = f"state {n[0]!r} recommends {' and '.join(present)}"
            if bad:
                return fail(why, ex.path_to(n))
        return None
    if isinstance(spec, m.OrderOfLines | m.GateBefore | m.EscalationAfter):
        return _check_edges(g, ex, spec, nodes, fail)
    if prop.kind in ("reachable", "can_reach"):
        unreachable = [s for s in g.states if s not in reachable]
        if unreachable:
            return fail(
                f"no path reaches {', '.join(map(repr, unreachable))} (every transition "
                "into it has an unsatisfiable guard or an unreachable source)",
                [],
            )
        if isinstance(spec, m.CanReach):
            return _check_can_reach(g, ex, spec, first, fail)
        return None
    if isinstance(spec, m.Cites):
        for n in nodes:
            if n != first[n[0]]:
                continue
            s = g.states[n[0]]
            for r in s.recommendations:
                if len(r.cite) < spec.at_least:
                    return fail(
                        f"recommendation {r.id!r} in {n[0]!r} cites {len(r.cite)} source(s)",
                        ex.path_to(n),
                    )
            for edge in ex.out_edges(n[0]):
                if len(edge.transition.cite) < spec.at_least:
                    return fail(
                        f"transition {n[0]} -> {edge.target} cites "
                        f"{len(edge.transition.cite)} source(s)",
                        [*ex.path_to(n), ex.step(edge, ex.witness(edge) or {})],
                    )
        return None
    if prop.kind == "deterministic":
        for n in nodes:
            if n != first[n[0]]:
                continue
            edges = list(ex.out_edges(n[0]))
            for a, b in itertools.combinations(edges, 2):
                if a.transition.event != b.transition.event:
                    continue
                both = ex.solver.solve(
                    ex.solver.formula(
                        (*a.transition.when, *b.transition.when),
                        (*a.transition.unless, *b.transition.unless),
                    )
                )
                if both is not None:
                    values = "; ".join(sorted(both.values())) or "always"
                    return fail(
                        f"in {n[0]!r}, event {a.transition.event!r} enables both "
                        f"-> {a.target} [{a.transition.label}] and -> {b.target} "
                        f"[{b.transition.label}] with {values}",
                        ex.path_to(n),
                    )
        return None
    raise AssertionError(prop.kind)  # pragma: no cover - kinds are checked at load


def _check_edges(
    g: m.Guideline,
    ex: _Explorer,
    spec: Any,
    nodes: list[Node],
    fail: Callable[[str, list[Step]], Counterexample],
) -> Counterexample | None:
    for n in nodes:  # breadth-first order: the first violation is a shortest one
        for edge in ex.out_edges(n[0]):
            w = ex.witness(edge)
            if w is None:
                continue
            t = edge.transition
            if isinstance(spec, m.OrderOfLines) and edge.target in spec.lines:
                k = spec.lines.index(edge.target)
                visited = ex.visited(n, spec)
                if k > 0 and spec.lines[k - 1] not in visited:
                    return fail(
                        f"{edge.target!r} entered without {spec.lines[k - 1]!r} before it",
                        [*ex.path_to(n), ex.step(edge, w)],
                    )
            elif isinstance(spec, m.GateBefore) and edge.target in spec.into:
                bad = ex.solver.solve(ex.solver.formula((*t.when, *spec.blocked_when), t.unless))
                if bad is not None:
                    return fail(
                        f"{n[0]} -> {edge.target} is enabled while "
                        f"{' and '.join(spec.blocked_when)}",
                        [*ex.path_to(n), ex.step(edge, bad)],
                    )
            elif (
                isinstance(spec, m.EscalationAfter)
                and n[0] in spec.lines
                and edge.target in spec.lines
                and spec.lines.index(edge.target) > spec.lines.index(n[0])
            ):
                bad = ex.solver.solve(ex.solver.formula(t.when, (*t.unless, *spec.requires_any)))
                if bad is not None:
                    return fail(
                        f"{n[0]} -> {edge.target} is enabled without any of "
                        f"{', '.join(spec.requires_any)}",
                        [*ex.path_to(n), ex.step(edge, bad)],
                    )
    return None


def _check_can_reach(
    g: m.Guideline,
    ex: _Explorer,
    spec: m.CanReach,
    first: dict[str, Node],
    fail: Callable[[str, list[Step]], Counterexample],
) -> Counterexample | None:
    succ: dict[str, set[str]] = {s: set() for s in g.states}
    for s in g.states:
        for edge in ex.out_edges(s):
            if ex.witness(edge) is not None:
                succ[s].add(edge.target)
    good = set(spec.targets)
    changed = True
    while changed:
        changed = False
        for s, nxt in succ.items():
            if s not in good and nxt & good:
                good.add(s)
                changed = True
    for s in g.states:  # document order, so the report is stable
        st = g.states[s]
        if st.final:
            continue
        if not succ[s]:
            return fail(
                f"trap state {s!r}: not final and no transition can leave it", ex.path_to(first[s])
            )
        if s not in good:
            return fail(
                f"from {s!r} no path reaches {' or '.join(spec.targets)}", ex.path_to(first[s])
            )
    return None
