"""Author guards: what `iechs validate` warns about in a guideline that loads and checks, but
says one thing and does another, or changed without saying so.

| code | the warning |
|---|---|
| `stated_number` | a criterion's name or description states a number its definition no longer has |
| `version_not_bumped` | the content changed since the baseline, `guideline.version` did not |
| `version_decreased` | the version is lower than the baseline's |
| `verified_changed` | a `verified: true` statement changed since the baseline: verify it again |

Warnings are values (`AuthorWarning`); only `print_warnings` writes. They never change what the
guideline means, and `iechs validate` exits 0 with them unless `--strict` is given.

Numbers a text states: `10,000`, `10 000`, `1.5`, `5x` (a multiple), `24-48` (a range), each
optionally followed by a unit; in a name, a part that is a number (`ferritin_above_10000`,
`count_2`), a multiple (`5x`) or a word ending in one (`grade3`). Numbers inside identifiers
(`IL-6`, `CD19`, `HLH-2004`) and numbers written as words (`two`) are not read. A stated number
agrees with the definition when it equals one of the numbers the definition uses: its own, the
values of the parameters it names (resolved, defaults included: a threshold without
`within_hours` reads `lab_validity_hours`), a multiple times its reference (`2 x $ferritin_uln`),
and those of the criteria it combines; a number with a unit is also compared in the
observation's canonical unit (`1.5 g/L` fibrinogen is 150 mg/dL); a range agrees when one of
those numbers lies within it.

A baseline's content is the loaded guideline (a profile merged over its base), so comments and
layout are not content. A statement is matched with its baseline by place: criteria, rules,
actions, parameters and the like by id, recommendations by id, transitions by state, event and
target, other list items by position (an item found unchanged elsewhere in its list counts as
unchanged). A statement whose id changed is paired with the one that left its section when they
share their quote or their words (or each is the only one): a rename alone is no change. Its
content is every field but `verified`, with the values of the parameters it names; a
criterion's also takes in the definitions (not the words) of the criteria it combines, so that
changing a cut-off flags every verified criterion built on it. A statement that was `verified:
false` in the baseline and is now `verified: true` was verified in this change, and is not
flagged. The warning points at the first changed field: a profile's line, when a profile made
the change.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
from rich.console import Console
from rich.text import Text

from . import model as m
from .checks import citables
from .errors import Problem
from .loader import _RENAMES, SourceMap, _read_layers
from .report import plain_console

__all__ = [
    "AuthorWarning",
    "Stated",
    "author_warnings",
    "baseline_warnings",
    "definition_numbers",
    "name_numbers",
    "number_warnings",
    "print_warnings",
    "source_map",
    "stated_numbers",
]


@attrs.frozen
class AuthorWarning:
    """Something an author should look at: what it is about (`subject`), what is wrong, and
    where (path, and file and YAML line when known)."""

    code: str
    subject: str
    message: str
    path: str = "$"
    line: int | None = None
    file: str | None = None

    def render(self, file: str | None = None) -> str:
        where = self.file or file or "<guideline>"
        if self.line is not None:
            where = f"{where}:{self.line}"
        return f"{where}: {self.path}: {self.subject} {self.message} [{self.code}]"


# --- numbers stated in names and descriptions -----------------------------------------------------


@attrs.frozen
class Stated:
    """A number as a text states it: `low` (and `high` for a range), the unit written after it,
    and the words it was read from."""

    text: str
    low: float
    high: float | None = None
    unit: str | None = None


_NUM = r"\d{1,3}(?:[,\u00a0\u202f ]\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
_STATED = re.compile(
    # not inside a word or a decimal, nor an identifier such as IL-6 or HLH-2004
    rf"(?<![\w.])(?<![A-Za-z]-)(?P<low>{_NUM})(?:\s*[-\u2013]\s*(?P<high>{_NUM}))?"
    r"(?:\s*[x\u00d7](?![A-Za-z]))?(?P<unit>\s*[^\s,;()]+)?"
)
_SEPARATORS = str.maketrans("", "", ",\u00a0\u202f ")
_NAME_PART = re.compile(r"(\d+)x?|[a-z]{4,}(\d+)")


def _number(text: str) -> float:
    return float(text.translate(_SEPARATORS))


def stated_numbers(text: str, units: Iterable[str] = ()) -> list[Stated]:
    """The numbers a description states (see the module's text). A word after a number is its
    unit when it is one of `units`; `units` that hold digits (`10^9/L`) are not read as numbers.

    >>> [(s.text, s.low, s.unit) for s in stated_numbers("Ferritin above 10,000 ng/mL.", ["ng/mL"])]
    [('10,000 ng/mL', 10000.0, 'ng/mL')]
    >>> [(s.low, s.high) for s in stated_numbers("IL-6 within the 24-48 h, 5x ULN, 1.5 g/L")]
    [(24.0, 48.0), (5.0, None), (1.5, None)]
    """
    for unit in sorted((u for u in units if any(c.isdigit() for c in u)), key=len, reverse=True):
        text = text.replace(unit, " " * len(unit))
    known = set(units)
    found = []
    for match in _STATED.finditer(text):
        unit = (match["unit"] or "").strip().rstrip(".:")
        said = match["low"] + (f"-{match['high']}" if match["high"] else "")
        found.append(
            Stated(
                f"{said} {unit}" if unit in known else said,
                _number(match["low"]),
                _number(match["high"]) if match["high"] else None,
                unit if unit in known else None,
            )
        )
    return found


def name_numbers(name: str) -> list[Stated]:
    """The numbers a criterion's name states: `ferritin_above_10000` -> 10000.

    >>> [s.low for s in name_numbers("ast_above_5x_uln")] + [s.low for s in name_numbers("grade3")]
    [5.0, 3.0]
    >>> name_numbers("il6_blockade_running") + name_numbers("cd22_target")
    []
    """
    found = []
    for part in name.split("_"):
        match = _NAME_PART.fullmatch(part)
        if match is not None:
            found.append(Stated(part, float(match[1] or match[2])))
    return found


@attrs.frozen
class _Used:
    """A number a definition uses, and where it comes from (for messages)."""

    value: float
    origin: str


def _param(g: m.Guideline, ref: Any, origin: str) -> Iterator[_Used]:
    """The number `ref` stands for: itself, or a `$parameter`'s value (named in `origin`)."""
    if isinstance(ref, bool):
        return
    if isinstance(ref, int | float):
        yield _Used(float(ref), origin)
    elif isinstance(ref, str) and ref.startswith("$"):
        p = g.parameters.get(ref[1:])
        if p is not None:
            yield _Used(p.value, f"{origin} {ref}")


def _default(g: m.Guideline, given: Any, parameter: str, origin: str) -> Iterator[_Used]:
    if given is not None:
        yield from _param(g, given, origin)
    elif parameter in g.parameters:
        yield _Used(g.parameters[parameter].value, f"{origin} (default ${parameter})")


def _own_numbers(g: m.Guideline, c: m.Criterion) -> Iterator[_Used]:
    """The numbers of one criterion's own definition (not of the criteria it combines)."""
    kind = c.kind
    spec = getattr(c, kind)
    if isinstance(spec, m.Threshold):
        for used in _param(g, spec.value, "threshold value"):
            yield used
            obs = g.observations.get(spec.observation)
            if spec.unit is not None and obs is not None and obs.units.get(spec.unit, 1) != 1:
                factor = obs.units[spec.unit]
                yield _Used(used.value * factor, f"{used.origin} in {obs.unit}")
        yield from _default(g, spec.within_hours, "lab_validity_hours", "within_hours")
    elif isinstance(spec, m.Ratio):
        factors = list(_param(g, spec.factor, "factor"))
        references = list(_param(g, spec.reference, "reference"))
        yield from factors
        yield from references
        for f in factors:
            for r in references:
                yield _Used(f.value * r.value, f"{f.value:g} x {spec.reference}")
        yield from _default(g, spec.within_hours, "lab_validity_hours", "within_hours")
    elif isinstance(spec, m.GradeTest):
        if spec.value is not None:
            yield _Used(float(spec.value), "grade value")
        yield from _default(g, spec.within_hours, "assessment_validity_hours", "within_hours")
    elif isinstance(spec, m.TherapyTest):
        yield from _default(g, spec.hours, "therapy_continuity_hours", "hours")
    elif isinstance(spec, m.FindingTest):
        if spec.min_grade is not None:
            yield _Used(float(spec.min_grade), "min_grade")
        finding = g.findings.get(spec.code)
        if finding is not None and finding.valid_hours is not None:
            yield from _param(g, finding.valid_hours, f"finding {spec.code} valid_hours")
    elif isinstance(spec, m.CountOf):
        yield _Used(float(spec.at_least), "count_of at_least")
    elif attrs.has(type(spec)):  # trend, risk, durations: every number field, resolved
        for field in attrs.fields(type(spec)):
            yield from _param(g, getattr(spec, field.name), field.name)


def _closure(g: m.Guideline, cid: str) -> list[str]:
    """`cid` and every criterion it combines, directly or not (each once)."""
    seen: dict[str, None] = {}
    todo = [cid]
    while todo:
        name = todo.pop()
        if name in seen or name not in g.criteria:
            continue
        seen[name] = None
        todo.extend(g.criteria[name].children)
    return list(seen)


def definition_numbers(g: m.Guideline, cid: str) -> list[_Used]:
    """Every number criterion `cid` uses, its combined criteria's included (see the module)."""
    used = []
    for name in _closure(g, cid):
        via = "" if name == cid else f"{name}: "
        used += [_Used(u.value, via + u.origin) for u in _own_numbers(g, g.criteria[name])]
    return used


def _observations(g: m.Guideline, cid: str) -> list[m.ObservationDef]:
    found = []
    for name in _closure(g, cid):
        spec = getattr(g.criteria[name], g.criteria[name].kind)
        obs = g.observations.get(getattr(spec, "observation", "") or "")
        if obs is not None and obs not in found:
            found.append(obs)
    return found


def _agrees(
    stated: Stated, used: Sequence[_Used], observations: Sequence[m.ObservationDef]
) -> bool:
    scales = [1.0]
    if stated.unit is not None:
        scales += [o.units[stated.unit] for o in observations if stated.unit in o.units]
    for scale in scales:
        low = stated.low * scale
        high = None if stated.high is None else stated.high * scale
        for u in used:
            if math.isclose(u.value, low, rel_tol=1e-6) or (
                high is not None
                and (low <= u.value <= high or math.isclose(u.value, high, rel_tol=1e-6))
            ):
                return True
    return False


def _uses(used: Sequence[_Used], near: float) -> str:
    """The numbers a definition uses, nearest to `near` first (each value once)."""
    if not used:
        return "it uses no number"
    first: dict[float, _Used] = {}
    for u in used:
        first.setdefault(u.value, u)

    def distance(u: _Used) -> float:
        if u.value > 0 and near > 0:
            return abs(math.log(u.value / near))
        return math.inf if u.value != near else 0.0

    ranked = sorted(first.values(), key=lambda u: (distance(u), u.value))
    shown = [f"{u.value:g} ({u.origin})" for u in ranked[:3]]
    more = f" and {len(ranked) - 3} other number(s)" if len(ranked) > 3 else ""
    return "it uses " + ", ".join(shown) + more


def number_warnings(g: m.Guideline) -> list[AuthorWarning]:
    """`stated_number` warnings: criteria whose name or description states a number their
    definition does not use (paths set, lines not: see `locate`)."""
    warnings = []
    units = {u for o in g.observations.values() for u in o.units}
    for cid, c in g.criteria.items():
        used = definition_numbers(g, cid)
        observations = _observations(g, cid)
        for where, stated, path in (
            ("name", name_numbers(cid), f"$.criteria.{cid}"),
            ("description", stated_numbers(c.description, units), f"$.criteria.{cid}.description"),
        ):
            wrong = [s for s in stated if not _agrees(s, used, observations)]
            if wrong:
                said = ", ".join(repr(s.text) for s in wrong)
                warnings.append(
                    AuthorWarning(
                        "stated_number",
                        f"criterion {cid}:",
                        f"its {where} states {said}, which its definition "
                        f"does not use ({_uses(used, wrong[0].low)}): correct the {where} or the "
                        "definition",
                        path,
                    )
                )
    return warnings


# --- against a baseline ---------------------------------------------------------------------------

_PARAM_REF = re.compile(r"\$([A-Za-z_]\w*)")
_INDEX = re.compile(r"\[(\d+)\]$")


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, tuple | list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif attrs.has(type(value)):
        for field in attrs.fields(type(value)):
            yield from _strings(getattr(value, field.name))


def _parameters_named(g: m.Guideline, item: Any) -> dict[str, float | None]:
    """The parameters an item names (`$name`, in numbers and in message texts), resolved."""
    names = {n for s in _strings(item) for n in _PARAM_REF.findall(s)}
    return {n: (g.parameters[n].value if n in g.parameters else None) for n in sorted(names)}


def _own_fields(item: m.Citable) -> dict[str, Any]:
    return {f.name: getattr(item, f.name) for f in attrs.fields(type(item)) if f.name != "verified"}


def _content(g: m.Guideline, item: m.Citable) -> tuple[dict[str, Any], dict[str, float | None]]:
    return _own_fields(item), _parameters_named(g, item)


@attrs.frozen
class _Place:
    path: str
    label: str
    item: m.Citable


_KIND = {
    "criteria": "criterion",
    "observations": "observation",
    "drug_classes": "drug class",
    "risk_factors": "risk factor",
    "parameters": "parameter",
    "properties": "property",
    "rules": "rule",
    "actions": "action",
}


def _places(g: m.Guideline) -> dict[str, _Place]:
    """Every citable statement by a key that survives reordering where it can (see module)."""
    places: dict[str, _Place] = {}
    seen_transitions: dict[str, int] = {}
    for path, item in citables(g):
        parts = path.split(".")
        section = parts[1].split("[")[0]
        key, label = path, path
        if section in _KIND:
            label = f"{_KIND[section]} {parts[2]}"
        elif isinstance(item, m.Recommendation):
            key = _INDEX.sub(f"[{item.id}]", path)
            label = f"recommendation {item.id} (state {parts[2]})"
        elif isinstance(item, m.TransitionDef):
            base = f"$.states.{parts[2]}.transitions[{item.event}->{item.to}]"
            n = seen_transitions.get(base, 0)
            seen_transitions[base] = n + 1
            key = base + (f"#{n}" if n else "")
            label = f"transition {parts[2]} -> {item.to} on {item.event}"
        elif section == "states":  # supportive_care, monitoring, cautions: by position
            label = f"{parts[3].replace('_', ' ')} of state {parts[2]}"
        elif section == "indications":
            label = f"indication rule {parts[1].removeprefix('indications')}"
        elif section == "order_sets":
            label = "order sets"
        places[key] = _Place(path, label, item)
    return places


def _yaml_key(cls: type, name: str) -> str:
    """The YAML key of an attribute (`all_of` is written `all`)."""
    return _RENAMES.get(cls, {}).get(name, name)


def _diff(new: Any, old: Any, path: str) -> list[str]:
    """Where two values differ, leaf by leaf: `threshold.value 10000 -> 5000`."""
    if new == old:
        return []
    if attrs.has(type(new)) and type(new) is type(old):
        out = []
        for field in attrs.fields(type(new)):
            key = _yaml_key(type(new), field.name)
            out += _diff(getattr(new, field.name), getattr(old, field.name), f"{path}.{key}")
        return out
    where = path.lstrip(".")
    if max(len(v) if isinstance(v, str) else 0 for v in (new, old)) > 24:
        verb = "added" if old is None else "removed" if new is None else "reworded"
        return [f"{where} {verb}"]
    return [f"{where} {_shown(old)} -> {_shown(new)}"]


def _changed_at(new: Any, old: Any, path: str) -> str | None:
    """The path of the first field (`verified` aside) where two values differ, in YAML keys:
    where the author made the change."""
    if new == old:
        return None
    if attrs.has(type(new)) and type(new) is type(old):
        for field in attrs.fields(type(new)):
            if field.name != "verified":
                key = _yaml_key(type(new), field.name)
                found = _changed_at(getattr(new, field.name), getattr(old, field.name), key)
                if found is not None:
                    return f"{path}.{found}"
        return None
    return path


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if value is None:
        return "(none)"
    if isinstance(value, tuple):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    return str(value)


def _why(
    g: m.Guideline,
    old_g: m.Guideline,
    new: m.Citable,
    old: m.Citable,
    only: Collection[str] | None = None,
) -> list[str]:
    """What differs between two versions of a statement: fields (`only` these, when given),
    then the parameters they name."""
    a, b = _own_fields(new), _own_fields(old)
    if only is not None:
        a = {k: v for k, v in a.items() if k in only}
        b = {k: v for k, v in b.items() if k in only}
    reasons = [r for name in a for r in _diff(a[name], b.get(name), _yaml_key(type(new), name))]
    pa, pb = _parameters_named(g, a), _parameters_named(old_g, b)
    for name in sorted(set(pa) | set(pb)):
        if name in pa and name in pb and pa[name] != pb[name]:
            reasons.append(f"${name} {_num(pb[name])} -> {_num(pa[name])}")
    return reasons


def _num(value: float | None) -> str:
    return "(none)" if value is None else f"{value:g}"


def _criterion_changes(
    new: m.Guideline, old: m.Guideline, cid: str, was: dict[str, str]
) -> list[str]:
    """Why criterion `cid`'s meaning changed: its own content, or the definition of a
    criterion it combines (named). `was`: renamed criteria, new name -> old name (a rename
    alone changes nothing)."""
    reasons: list[str] = []
    for name in _closure(new, cid):
        before = old.criteria.get(was.get(name, name))
        if before is None:
            if name != cid:
                reasons.append(f"combines criterion {name}, new")
            continue
        mine = _in_old_names(new.criteria[name], was)
        if name == cid:
            reasons += _why(new, old, mine, before)
            continue
        # of a combined criterion, its definition only: its own words are its own to verify
        why = _why(new, old, mine, before, only=m.ALL_CRITERION_KINDS)
        if why:
            reasons.append(f"combines criterion {name} ({', '.join(why)})")
    return reasons


def _in_old_names(c: m.Criterion, was: dict[str, str]) -> m.Criterion:
    """`c` with the criteria it combines called by their names in the baseline."""
    if not was or not c.children:
        return c

    def old(names: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(was.get(n, n) for n in names)

    if c.all_of is not None:
        return attrs.evolve(c, all_of=old(c.all_of))
    if c.any_of is not None:
        return attrs.evolve(c, any_of=old(c.any_of))
    if c.not_ is not None:
        return attrs.evolve(c, not_=was.get(c.not_, c.not_))
    assert c.count_of is not None
    return attrs.evolve(c, count_of=attrs.evolve(c.count_of, of=old(c.count_of.of)))


def _version_key(version: str) -> tuple[int, ...] | None:
    parts = re.split(r"[+-]", version, maxsplit=1)[0].split(".")
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else None


def _sections(new: m.Guideline, old: m.Guideline) -> list[str]:
    skip = {"sha256", "file"}
    return [
        f.name
        for f in attrs.fields(m.Guideline)
        if f.name not in skip and getattr(new, f.name) != getattr(old, f.name)
    ]


def baseline_warnings(new: m.Guideline, old: m.Guideline) -> list[AuthorWarning]:
    """`version_not_bumped`, `version_decreased` and `verified_changed` warnings of `new`
    against its baseline `old` (paths set, lines not: see `locate`)."""
    warnings: list[AuthorWarning] = []
    baseline = old.file or "the baseline"
    changed = _sections(new, old)
    meta_only = changed == ["guideline"] and attrs.evolve(
        new.guideline, version=old.guideline.version
    ) == attrs.evolve(old.guideline)
    version, before = new.guideline.version, old.guideline.version
    if changed and not meta_only and version == before:
        warnings.append(
            AuthorWarning(
                "version_not_bumped",
                "the guideline's",
                f"content changed since {baseline} (in {', '.join(changed)}) but its version "
                f"is still {version}: raise it",
                "$.guideline.version",
            )
        )
    key, key_before = _version_key(version), _version_key(before)
    if key is not None and key_before is not None and key < key_before:
        warnings.append(
            AuthorWarning(
                "version_decreased",
                "the guideline's",
                f"version {version} is lower than {baseline}'s {before}",
                "$.guideline.version",
            )
        )
    warnings += _verified_changes(new, old, baseline)
    return warnings


def _verified_changes(new: m.Guideline, old: m.Guideline, baseline: str) -> list[AuthorWarning]:
    warnings: list[AuthorWarning] = []
    old_places, new_places = _places(old), _places(new)
    was = _renamed(new_places, old_places)
    criteria_was = {
        k.rsplit(".", 1)[1]: v.rsplit(".", 1)[1]
        for k, v in was.items()
        if k.startswith("$.criteria.")
    }
    old_by_list: dict[str, list[m.Citable]] = {}
    for place in old_places.values():
        old_by_list.setdefault(_INDEX.sub("", place.path), []).append(place.item)
    for key, place in new_places.items():
        item = place.item
        before = old_places.get(was.get(key, key))
        if not item.verified or before is None or not before.item.verified:
            continue
        mine = _in_old_names(item, criteria_was) if isinstance(item, m.Criterion) else item
        # the place of the change itself (a profile's line, when a profile makes it)
        path = _changed_at(mine, before.item, "") or ""
        if isinstance(item, m.Criterion):
            reasons = _criterion_changes(new, old, key.rsplit(".", 1)[1], criteria_was)
        else:
            if _content(new, item) == _content(old, before.item):
                continue
            if _INDEX.search(place.path) and any(
                _content(new, item) == _content(old, other)
                for other in old_by_list.get(_INDEX.sub("", place.path), [])
            ):
                continue  # moved within its list, not changed
            reasons = _why(new, old, item, before.item)
        if reasons:
            label = place.label
            if key in was:
                label += f" (was {before.label.rsplit(' ', 1)[-1]})"
            warnings.append(
                AuthorWarning(
                    "verified_changed",
                    label,
                    f"is verified: true but changed since {baseline} "
                    f"({'; '.join(reasons)}): check it against its source again, or set "
                    "verified: false",
                    place.path + path,
                )
            )
    return warnings


_LAST_STEP = re.compile(r"(\.[^.\[]+|\[[^\]]*\](#\d+)?)$")


def _renamed(new: dict[str, _Place], old: dict[str, _Place]) -> dict[str, str]:
    """Statements whose key changed (a criterion renamed, a recommendation's id changed): the
    new key -> the old one. A statement that appeared is paired with one that vanished from the
    same section when they share their quote or their words, or when each is the only one."""
    appeared = [k for k in new if k not in old]
    vanished = [k for k in old if k not in new]
    pairs: dict[str, str] = {}
    for key in appeared:
        section = _LAST_STEP.sub("", key)
        candidates = [
            k for k in vanished if _LAST_STEP.sub("", k) == section and k not in pairs.values()
        ]
        item = new[key].item
        alike = [
            k
            for k in candidates
            if (item.quote is not None and old[k].item.quote == item.quote)
            or _words(old[k].item) == _words(item) != ""
        ]
        if len(alike) == 1:
            pairs[key] = alike[0]
        elif len(candidates) == 1 and len([k for k in appeared if k.startswith(section)]) == 1:
            pairs[key] = candidates[0]
    return pairs


def _words(item: m.Citable) -> str:
    for field in ("description", "text", "label", "message"):
        value = getattr(item, field, None)
        if isinstance(value, str):
            return value
    return ""


# --- together ----------------------------------------------------------------------------------


def source_map(path: Path, file: str) -> SourceMap:
    """Where each path of the guideline file at `path` (named `file` in messages) is written:
    the file that sets it (a profile, or its base) and the line."""
    layers = _read_layers(path.read_text(encoding="utf-8"), file, path.parent)[1]
    return SourceMap(tuple(layers))


def locate(warnings: Iterable[AuthorWarning], where: SourceMap) -> list[AuthorWarning]:
    """The warnings with the file and YAML line of their path. Warnings that say the same of
    the same line (a statement shared by several states with a YAML anchor) become one, naming
    every place."""
    merged: dict[tuple[str, str | None, int | None, str], AuthorWarning] = {}
    for w in warnings:
        p = where.problem(Problem(w.message, w.path))
        key = (w.code, p.file, p.line, w.message)
        first = merged.get(key)
        if first is None or p.line is None:
            merged[key] = attrs.evolve(w, line=p.line, file=p.file)
        else:
            merged[key] = attrs.evolve(first, subject=_both(first.subject, w.subject))
    return list(merged.values())


_OF_STATE = re.compile(r"(?P<what>.*) of states? (?P<states>.+)")


def _both(first: str, second: str) -> str:
    """`cautions[0] of state a` and `cautions[0] of state b`: `cautions[0] of states a, b`."""
    a, b = _OF_STATE.fullmatch(first), _OF_STATE.fullmatch(second)
    if a is not None and b is not None and a["what"] == b["what"]:
        return f"{a['what']} of states {a['states']}, {b['states']}"
    return f"{first}; {second}"


def author_warnings(
    g: m.Guideline, baseline: m.Guideline | None = None, where: SourceMap | None = None
) -> list[AuthorWarning]:
    """Every author warning of `g` (against `baseline` when given), located with `where`."""
    warnings = number_warnings(g)
    if baseline is not None:
        warnings += baseline_warnings(g, baseline)
    return locate(warnings, where) if where is not None else warnings


def print_warnings(
    warnings: Sequence[AuthorWarning], file: str, console: Console | None = None, *, strict: bool
) -> None:
    console = console or plain_console(soft_wrap=True)
    for w in warnings:
        line = Text("warning: ", style="bold yellow")
        line.append(w.render(file))
        console.print(line)
    if warnings:
        consequence = "validation fails (--strict)" if strict else "--strict makes them fail it"
        console.print(f"  {len(warnings)} author warning(s): {consequence}", markup=False)
