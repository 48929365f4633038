"""Load a guideline document: YAML -> `Guideline`, with errors that name file, line and path.

Structuring is done by cattrs (its messages, `expected ... @ $.path`, are kept); semantic checks
live in `iechs.checks`. Both report every problem found, not just the first.

`load_guideline` keeps what it loaded and checked in a cache (`iechs.cache`): YAML, cattrs and
the checks are imported only when a guideline is built, not on a cache hit.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from . import model as m
from .errors import GuidelineError, Problem, structuring_problems

if TYPE_CHECKING:
    import cattrs
    import yaml

    from .cache import Dependency

__all__ = ["DEFAULT_GUIDELINE", "default_guideline_path", "load_guideline", "parse_guideline"]

DEFAULT_GUIDELINE = "iec-hs.yaml"

#: YAML keys that are Python keywords or builtins, renamed on the attrs classes.
_RENAMES: dict[type, dict[str, str]] = {
    m.Criterion: {"all_of": "all", "any_of": "any", "not_": "not"},
    m.DrugDef: {"drug_class": "class"},
    m.ResponseTest: {"among": "in"},
    m.InfectionTest: {"status": "in"},
    m.RiskTest: {"among": "in"},
    m.TherapyTest: {"classes": "class", "drugs": "drug"},
    m.TreatmentMatch: {"classes": "class", "drugs": "drug", "indications": "indication"},
    m.Concurrent: {"classes": "class"},
    m.Rule: {"states": "in", "with_": "with"},
    m.IndicationRule: {"classes": "class", "states": "in"},
    m.ActionDef: {"states": "in"},
}
#: Renames for error paths. An attribute that is also a key elsewhere in the document (e.g.
#: `states`, a top-level section and a rule's `in`) is left as it is: paths carry no class.
_DOCUMENT_KEYS = {f.name for f in attrs.fields(m.Guideline)}
_PATH_RENAMES = {
    f".{attr}": f".{key}"
    for renames in _RENAMES.values()
    for attr, key in renames.items()
    if attr not in _DOCUMENT_KEYS
}


def default_guideline_path() -> Path:
    """The bundled guideline: the checkout's `guideline/` when running from source (so edits
    take effect at once), else the copy shipped inside the installed wheel."""
    checkout = Path(__file__).resolve().parents[2] / "guideline" / DEFAULT_GUIDELINE
    if checkout.is_file() and (checkout.parents[1] / "pyproject.toml").is_file():
        return checkout
    from importlib import resources  # noqa: PLC0415 - an installed wheel only

    return Path(str(resources.files("iechs") / "guideline" / DEFAULT_GUIDELINE))


@functools.cache
def _converter() -> cattrs.Converter:
    """The guideline's converter, made on first use (cattrs generates code: a cache hit never
    needs it)."""
    import cattrs  # noqa: PLC0415 - see above
    from cattrs.gen import make_dict_structure_fn, override  # noqa: PLC0415

    conv = cattrs.Converter(forbid_extra_keys=True)

    def strict_str(value: Any, _: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"expected text, got {value!r}")
        return value

    def strict_bool(value: Any, _: Any) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value

    def strict_float(value: Any, _: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {value!r}")
        return m.finite(value)

    def strict_int(value: Any, _: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {value!r}")
        return value

    number = m.structure_number
    conv.register_structure_hook(m.Number, number)
    conv.register_structure_hook(m.Number | None, lambda v, t: None if v is None else number(v, t))
    conv.register_structure_hook(str, strict_str)
    conv.register_structure_hook(bool, strict_bool)
    conv.register_structure_hook(float, strict_float)
    conv.register_structure_hook(int, strict_int)
    for cls, renames in _RENAMES.items():
        conv.register_structure_hook(
            cls,
            make_dict_structure_fn(
                cls,
                conv,
                _cattrs_forbid_extra_keys=True,
                **{attr: override(rename=key) for attr, key in renames.items()},  # type: ignore[arg-type]
            ),
        )
    return conv


def _rename_path(path: str) -> str:
    for attr, key in _PATH_RENAMES.items():
        path = re.sub(re.escape(attr) + r"(?=[.\[]|$)", key, path)
    return path


class LineMap:
    """Maps a JSON-style path (`$.states.suspected.transitions[0]`) to its YAML line."""

    def __init__(self) -> None:
        self.lines: dict[str, int] = {}
        self.mappings: set[str] = set()
        self.problems: list[Problem] = []

    @classmethod
    def of(cls, node: yaml.Node) -> LineMap:
        lm = cls()
        lm._walk(node, "$")
        return lm

    def _walk(self, node: yaml.Node, path: str) -> None:
        import yaml  # noqa: PLC0415 - YAML is read only when a guideline is built

        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            self.mappings.add(path)
            seen: set[str] = set()
            for key_node, value_node in node.value:
                key = str(key_node.value)
                child = f"{path}.{key}"
                if key_node.tag != "tag:yaml.org,2002:str":
                    self.problems.append(
                        Problem(
                            f"the key {key!r} is not text (YAML reads on/off/yes/no/true/false and "
                            "numbers as values): quote it",
                            child,
                            key_node.start_mark.line + 1,
                        )
                    )
                if key in seen:
                    self.problems.append(
                        Problem(f"duplicate key {key!r}", child, key_node.start_mark.line + 1)
                    )
                seen.add(key)
                self._walk(value_node, child)
                self.lines[child] = key_node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._walk(item, f"{path}[{i}]")

    def line(self, path: str) -> int | None:
        """The line of `path`, or of its nearest ancestor that the document has."""
        p = path
        while p:
            if p in self.lines:
                return self.lines[p]
            p = _parent(p)
        return self.lines.get("$")

    def owns(self, path: str) -> bool:
        """Does this document set the value at `path` (itself, or by replacing an ancestor)?"""
        p = path
        while p:
            if p in self.lines and (p == path or p not in self.mappings):
                return True
            p = _parent(p)
        return False


def _parent(path: str) -> str:
    cut = max(path.rfind("."), path.rfind("["))
    return path[:cut] if cut > 0 else ""


@attrs.frozen
class SourceMap:
    """Where each path of a (possibly layered) document comes from: profile first, base last."""

    layers: tuple[tuple[str, LineMap], ...]

    def problem(self, p: Problem) -> Problem:
        for file, lines in self.layers[:-1]:
            if lines.owns(p.path):
                return Problem(p.message, p.path, lines.line(p.path), file)
        file, lines = self.layers[-1]
        return Problem(p.message, p.path, lines.line(p.path), file)


def _safe_loader() -> type[yaml.SafeLoader]:
    """libyaml's loader where PyYAML was built with it (10x faster), else the pure-Python one;
    both give the same nodes, marks and errors."""
    import yaml  # noqa: PLC0415 - YAML is read only when a guideline is built

    loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return loader


#: Bounds on a guideline document, far above any real one (the bundled guideline has about
#: 6,000 nodes and a depth of 9): a hostile file (billion laughs, recursive anchors, deep
#: nesting) is refused before anything walks it.
MAX_YAML_NODES = 250_000
MAX_YAML_DEPTH = 64


def _check_bounds(root: yaml.Node, file: str) -> None:
    """Count the nodes as the aliases expand them, and the depth; stop at the first bound.
    A recursive anchor never ends, so it meets the depth bound."""
    import yaml  # noqa: PLC0415 - YAML is read only when a guideline is built

    count = 0
    stack: list[tuple[yaml.Node, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        line = node.start_mark.line + 1
        if count > MAX_YAML_NODES:
            raise GuidelineError(
                [Problem(f"more than {MAX_YAML_NODES:,} values once aliases are expanded", "$")],
                file,
            )
        if depth > MAX_YAML_DEPTH:
            raise GuidelineError(
                [Problem(f"nested more than {MAX_YAML_DEPTH} levels deep", "$", line)], file
            )
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack.append((key, depth + 1))
                stack.append((value, depth + 1))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, depth + 1) for item in node.value)


def _read_yaml(text: str, file: str) -> tuple[Any, LineMap]:
    import yaml  # noqa: PLC0415 - YAML is read only when a guideline is built

    try:
        loader = _safe_loader()(text)
        try:
            node = loader.get_single_node()
            if node is None:
                raise GuidelineError([Problem("the document is empty", "$", 1)], file)
            _check_bounds(node, file)
            data = loader.construct_document(node)
        finally:
            loader.dispose()
    except GuidelineError:
        raise
    except RecursionError:  # the pure-Python loader composes nested nodes recursively
        raise GuidelineError([Problem("nested too deeply", "$")], file) from None
    except ValueError as exc:  # an integer of more digits than Python converts
        reason = str(exc).split(";", 1)[0]
        raise GuidelineError(
            [Problem(f"a value that cannot be read: {reason}", "$")], file
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc)
        raise GuidelineError([Problem(f"malformed YAML: {reason}", "$", line)], file) from None
    lines = LineMap.of(node)
    if lines.problems:
        raise GuidelineError(lines.problems, file)
    if not isinstance(data, Mapping):
        raise GuidelineError([Problem("expected a mapping at the top level", "$", 1)], file)
    return data, lines


def _merge(base: Any, over: Any) -> Any:
    """A profile's value replaces the base's; mappings merge key by key; null removes a key."""
    if isinstance(base, Mapping) and isinstance(over, Mapping):
        out = dict(base)
        for key, value in over.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = _merge(base[key], value) if key in base else value
        return out
    return over


_MAX_PROFILE_DEPTH = 4


def _read_layers(
    text: str, file: str, base_dir: Path, depth: int = 0
) -> tuple[Any, list[tuple[str, LineMap]], str]:
    """The document's data (a profile merged over its base), its layers and its content hash."""
    data, lines = _read_yaml(text, file)
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    profile = data.get("profile")
    if profile is None:
        return data, [(file, lines)], sha
    extends = profile.get("extends") if isinstance(profile, Mapping) else None
    if not isinstance(extends, str):
        problem = Problem(
            "a profile names the guideline it changes in `extends`",
            "$.profile",
            lines.line("$.profile"),
        )
        raise GuidelineError([problem], file)
    if depth >= _MAX_PROFILE_DEPTH:
        problem = Problem(
            f"profiles nest deeper than {_MAX_PROFILE_DEPTH} (a cycle?)",
            "$.profile.extends",
            lines.line("$.profile.extends"),
        )
        raise GuidelineError([problem], file)
    base_path = base_dir / extends
    shown = os.path.normpath(Path(file).parent / extends)
    base_data, base_layers, base_sha = _read_layers(
        _read_text(base_path, shown), shown, base_path.parent, depth + 1
    )
    _refuse_weakening(data, lines, file, base_data, base_path.parent)
    combined = hashlib.sha256(f"{sha}\n{base_sha}".encode()).hexdigest()
    return _merge(base_data, data), [(file, lines), *base_layers], combined


def _refuse_weakening(
    data: Mapping[str, Any], lines: LineMap, file: str, base: Any, base_dir: Path
) -> None:
    """A profile may add properties, never remove or change one, nor change the contract its
    base names: the safety contract is the verifier's (DESIGN.md). Refused with the place."""
    from .contract import DEFAULT_CONTRACT, load_contract  # noqa: PLC0415 - profiles only

    problems: list[Problem] = []

    def refuse(message: str, path: str) -> None:
        problems.append(Problem(message, path, lines.line(path)))

    base = base if isinstance(base, Mapping) else {}
    base_meta = base.get("guideline")
    ref = base_meta.get("contract") if isinstance(base_meta, Mapping) else None
    ref = ref if isinstance(ref, str) else DEFAULT_CONTRACT
    meta = data.get("guideline")
    if isinstance(meta, Mapping) and "contract" in meta and meta["contract"] != ref:
        refuse(
            f"a profile cannot change the contract: its base satisfies {ref!r} "
            f"(this profile says {meta['contract']!r})",
            "$.guideline.contract",
        )
    if "properties" in data:
        props = data["properties"]
        base_props = base.get("properties")
        base_props = base_props if isinstance(base_props, Mapping) else {}
        if props is None:
            refuse(
                "properties: null would remove every property of the base: a profile may add "
                "properties, never remove one",
                "$.properties",
            )
        elif isinstance(props, Mapping):
            try:
                contract_ids = set(load_contract(ref, base_dir).properties)
            except GuidelineError:
                contract_ids = set()  # reported when the base itself is checked
            for pid, value in props.items():
                path = f"$.properties.{pid}"
                if pid in contract_ids:
                    refuse(
                        f"property {pid!r} is a property of contract {ref!r}: its meaning is "
                        "fixed by the contract; a profile cannot define, narrow or remove it",
                        path,
                    )
                elif value is None:
                    refuse(
                        f"property {pid!r} is set to null: a profile may add properties, never "
                        "remove one of its base",
                        path,
                    )
                elif pid in base_props:
                    refuse(
                        f"property {pid!r} of the base is redefined: a profile may add "
                        "properties, never change (narrow) one of its base",
                        path,
                    )
    if problems:
        raise GuidelineError(problems, file)


def parse_guideline(
    text: str,
    file: str = "<guideline>",
    *,
    check: bool = True,
    structural: bool = True,
    base_dir: Path | None = None,
) -> m.Guideline:
    """Parse and (by default) semantically check a guideline document given as text.

    A profile (`profile: {extends: ...}`) is merged over the guideline it extends, found
    relative to `base_dir`. `structural=False` leaves the graph's shape and missing citations
    to the verifier."""
    data, layers, sha = _read_layers(text, file, base_dir or Path.cwd())
    source = SourceMap(tuple(layers))
    try:
        guideline = _converter().structure(data, m.Guideline)
    except Exception as exc:  # cattrs raises ExceptionGroups; transform_error reads them all
        problems = [source.problem(p) for p in structuring_problems(exc, "$", _rename_path)]
        raise GuidelineError(problems, file) from None
    guideline = attrs.evolve(guideline, sha256=sha, file=file)
    if check:
        from .checks import check_guideline  # noqa: PLC0415 - imports the contract's YAML

        problems = check_guideline(guideline, structural=structural)
        if problems:
            raise GuidelineError([source.problem(p) for p in problems], file)
    return guideline


#: The files a build reads beside the guideline (a profile's bases), while `load_guideline`
#: records them for its cache entry.
_READS: ContextVar[list[Dependency] | None] = ContextVar("iechs_loader_reads", default=None)


def _read_bytes(path: Path, shown: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise GuidelineError([Problem(f"cannot read the file: {exc.strerror}")], shown) from None


def _decode(raw: bytes, shown: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GuidelineError([Problem(f"not UTF-8 text ({exc.reason})")], shown) from None


def _read_text(path: Path, shown: str) -> str:
    raw = _read_bytes(path, shown)
    reads = _READS.get()
    if reads is not None:
        reads.append((str(path), hashlib.sha256(raw).hexdigest()))
    return _decode(raw, shown)


def load_guideline(
    path: str | Path | None = None,
    *,
    check: bool = True,
    structural: bool = True,
    shown: str | None = None,
) -> m.Guideline:
    """Load a guideline or profile file (default: the bundled IEC-HS guideline). `shown` is
    the name messages give the file (e.g. `HEAD~1:guideline/iec-hs.yaml` for a revision).

    A checked guideline comes from the cache (`iechs.cache`) when its file, the files it was
    built from and the code that builds it are unchanged; it equals a fresh load. A file with
    errors is never cached: its errors are found and reported afresh every time."""
    p = Path(path) if path is not None else default_guideline_path()
    if shown is None:
        shown = str(path) if path is not None else f"guideline/{DEFAULT_GUIDELINE}"
    if not check:  # an unchecked load (a baseline to compare with) is not cached
        return parse_guideline(
            _read_text(p, shown), shown, check=False, structural=structural, base_dir=p.parent
        )
    from . import cache  # noqa: PLC0415 - light; keeps `iechs --help` from it

    raw = _read_bytes(p, shown)
    key = cache.entry_key(p, shown, raw, structural=structural)
    if key is not None and (hit := cache.read(key)) is not None:
        return hit
    reads: list[Dependency] = []
    token = _READS.set(reads)
    try:
        guideline = parse_guideline(
            _decode(raw, shown), shown, check=True, structural=structural, base_dir=p.parent
        )
    finally:
        _READS.reset(token)
    if key is not None:
        cache.write(key, guideline, reads)
    return guideline
