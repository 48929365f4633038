"""The guideline's combinations of criteria (`all_of`, `any_of`, `not_`, `count_of`), compiled
to Python source once per guideline.

Each combination becomes a function `(evaluation) -> (value, kept)` that does what the
interpreted reader in `iechs.criteria` does, child by child, with the children's evaluations
written out in line: the memo lookup, the child's own reading, the store of its value and
payload, the Kleene short-circuit. Nothing is decided here that the guideline does not say:
the source is generated from the criteria's structure alone, and the readers of single
criteria (thresholds, ratios, findings, ...) are called as they are. The values are stored in
the same order as the interpreted readers store them (children before their combination), so
explanations built from them are the same, byte for byte (`tests/test_criteria_codegen.py`
holds the two to each other on random trees and facts).

Combinations nested more than `_MAX_INLINE` deep are called, not written out, and children
follow each other at one indentation: the source stays small and within the compiler's limits
for any guideline. The compiled code is kept in iechs's cache (`iechs.cache.code`), as Python
keeps bytecode, so an engine starts without compiling it again."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from .cache import code

__all__ = ["compile_combinations", "compile_guard"]

#: how many combinations deep the children are written out in line; deeper ones are called.
_MAX_INLINE = 4


class _NodeLike(Protocol):
    @property
    def kind(self) -> str: ...
    @property
    def children(self) -> tuple[str, ...]: ...
    @property
    def spec(self) -> Any: ...


Reader = Callable[[Any], tuple[Any, Any]]


def compile_combinations(
    nodes: Mapping[str, _NodeLike],
    readers: Mapping[str, Reader],
    values: tuple[Any, Any, Any],
) -> dict[str, Reader]:
    """Readers for every combination in `nodes`; `readers` holds those of single criteria,
    `values` the three values (TRUE, FALSE, UNKNOWN)."""
    combos = [name for name, n in nodes.items() if n.kind in _COMBINATIONS]
    if not combos:
        return {}
    gen = _Generator(nodes, {name: f"_c{i}" for i, name in enumerate(combos)})
    source = "\n".join(gen.function(name) for name in combos)
    t, f, u = values
    namespace: dict[str, Any] = {"T": t, "F": f, "U": u, "NEG": {t: f, f: t, u: u}}
    for name, fn in gen.leaves.items():
        namespace[fn] = readers[name]
    exec(code(source, "<iechs criteria>"), namespace)  # our own source, from names
    return {name: namespace[gen.functions[name]] for name in combos}


_COMBINATIONS = ("all_of", "any_of", "not_", "count_of")


def compile_guard(
    when: tuple[str, ...],
    unless: tuple[str, ...],
    nodes: Mapping[str, _NodeLike],
    readers: Mapping[str, Reader],
    values: tuple[Any, Any, Any],
) -> Callable[[Any], Any]:
    """`Evaluation.guard(when, unless)` as one function of the evaluation: the Kleene AND of
    `when` and of the negations of `unless`, every criterion named read (each at most once in
    the evaluation), in order. A combination named is written out in line, as within the
    combinations' own functions (the same reads and stores, one call fewer)."""
    t, f, u = values
    combos = [name for name, n in nodes.items() if n.kind in _COMBINATIONS]
    gen = _Generator(nodes, {name: f"_c{i}" for i, name in enumerate(combos)})
    lines = [
        "def guard(ev):",
        "    values = ev.values; get = values.get; payload = ev._payload",
        "    r = T",
    ]
    for i, name in enumerate((*when, *unless)):
        a = gen.child(name, 1, lines)
        if i < len(when):
            lines.append(f"    if {a} is not T and r is not F: r = {a}")
        else:
            lines.append(f"    if {a} is not F and r is not F: r = U if {a} is U else F")
    lines.append("    return r")
    namespace: dict[str, Any] = {"T": t, "F": f, "U": u, "NEG": {t: f, f: t, u: u}}
    for name, fn in (*gen.leaves.items(), *gen.functions.items()):
        namespace[fn] = readers[name]
    exec(code("\n".join(lines) + "\n", "<iechs guard>"), namespace)  # our source
    return namespace["guard"]  # type: ignore[no-any-return]


class _Generator:
    def __init__(self, nodes: Mapping[str, _NodeLike], functions: dict[str, str]) -> None:
        self.nodes = nodes
        self.functions = functions
        #: single criteria called from the source -> their name in its namespace.
        self.leaves: dict[str, str] = {}
        self._n = 0

    def function(self, name: str) -> str:
        lines = [f"def {self.functions[name]}(ev):"]
        lines.append("    values = ev.values; get = values.get; payload = ev._payload")
        v, k = self._combination(name, 1, 0, lines)
        lines.append(f"    return {v}, {k}")
        return "\n".join(lines) + "\n"

    def _var(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def _combination(self, name: str, depth: int, nested: int, out: list[str]) -> tuple[str, str]:
        """Write out the reading of combination `name` at indentation `depth`, `nested`
        combinations deep; the names of its value and kept."""
        node = self.nodes[name]
        pad = "    " * depth
        v, k = self._var("v"), self._var("k")
        kids = node.children
        if node.kind in ("all_of", "any_of"):
            # Each child is read while no earlier one decided (`v` still None).
            decisive, other = ("F", "T") if node.kind == "all_of" else ("T", "F")
            out.append(f"{pad}{v} = None")
            seen: list[str] = []
            for i, child in enumerate(kids, start=1):
                inner = depth if i == 1 else depth + 1
                if i > 1:
                    out.append(f"{pad}if {v} is None:")
                a = self._child(child, inner, nested, out)
                seen.append(a)
                p = "    " * inner
                out.append(f"{p}if {a} is {decisive}:")
                out.append(f"{p}    {v} = {decisive}; {k} = {i}")
            unknown = " or ".join(f"{a} is U" for a in seen) or "False"
            out.append(f"{pad}if {v} is None:")
            out.append(f"{pad}    {v} = U if ({unknown}) else {other}; {k} = {len(kids)}")
            return v, k
        seen = [self._child(child, depth, nested, out) for child in kids]
        if node.kind == "not_":
            out.append(f"{pad}{v} = NEG[{seen[0]}]; {k} = {len(kids)}")
            return v, k
        # count_of: every child is read, then counted.
        need = repr(node.spec.at_least)
        t = " + ".join(f"({a} is T)" for a in seen) or "0"
        u = " + ".join(f"({a} is U)" for a in seen) or "0"
        out.append(f"{pad}_t = {t}; _u = {u}")
        out.append(f"{pad}{v} = T if _t >= {need} else F if _t + _u < {need} else U")
        out.append(f"{pad}{k} = {len(kids)}")
        return v, k

    def child(self, name: str, depth: int, out: list[str]) -> str:
        """Write out the memoised reading of criterion `name` at indentation `depth` (a
        combination in line); the name of its value."""
        return self._child(name, depth, 0, out)

    def _child(self, child: str, depth: int, nested: int, out: list[str]) -> str:
        """Write out a child's memoised reading; the name of its value."""
        pad = "    " * depth
        a = self._var("a")
        key = repr(child)
        out.append(f"{pad}{a} = get({key})")
        out.append(f"{pad}if {a} is None:")
        if self.nodes[child].kind in _COMBINATIONS and nested < _MAX_INLINE:
            v, k = self._combination(child, depth + 1, nested + 1, out)
            out.append(f"{pad}    {a} = {v}; payload[{key}] = {k}; values[{key}] = {a}")
            return a
        fn = self.functions.get(child)
        if fn is None:
            fn = self.leaves.setdefault(child, f"_l{len(self.leaves)}")
        out.append(f"{pad}    {a}, payload[{key}] = {fn}(ev)")
        out.append(f"{pad}    values[{key}] = {a}")
        return a
