"""The safety contract: a document kept apart from any guideline, and its meaning on a run.

A contract (`src/iechs/contracts/*.yaml`, or a file a guideline names by path) says which
property kinds apply and with which states, drug classes, drugs, parameter bounds and alert
severities. The meaning of each kind is fixed here and in `iechs.verify`, in the timeline's own
terms (drug classes, infection status, antimicrobials recorded, response values, event times),
never in a guideline's criteria:

- the verifier (`iechs.verify`) proves each property over every path of the guideline's
  statechart, reading the guideline's criteria only to know when its transitions can fire;
- `check_run` checks a concrete run (a timeline and the engine's decisions) against the same
  meanings, without reading any criterion: the verifier replays its counterexamples through it,
  and the differential test holds the engine to it on random timelines.

A guideline names its contract in `guideline.contract` (default `iec-hs-safety`); a profile
inherits it and cannot change it (the loader refuses).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import attrs
import cattrs
import yaml
from cattrs.gen import make_dict_structure_fn

from . import model as m
from .errors import GuidelineError, Problem, structuring_problems, unknown_name

__all__ = [
    "DEFAULT_CONTRACT",
    "PROPERTY_KINDS",
    "Bound",
    "Contract",
    "ContractProperty",
    "PinnedClass",
    "RunViolation",
    "bundled_contracts",
    "check_run",
    "contract_for",
    "contract_problems",
    "load_contract",
]

DEFAULT_CONTRACT = "iec-hs-safety"

PropertyKind = Literal[
    "never_a_line",
    "only_with_companion",
    "infection_gate",
    "line_order",
    "escalation_after_min_time",
    "parameters_in_range",
    "drug_classes_pinned",
    "alert_severities_pinned",
    "first_line_offered",
    "ruled_out_returns",
    "response_reaches_resolved",
    "recurrence_reaches_suspected",
    "close_reaches_closed",
    "no_dead_transitions",
    "no_trap_states",
    "determinism",
    "citations",
]
#: Every property kind, in the order the verifier reports them.
PROPERTY_KINDS: tuple[str, ...] = PropertyKind.__args__  # type: ignore[attr-defined]
#: Kinds whose violation is a behaviour a concrete run can show (and `check_run` checks).
RUN_KINDS = (
    "never_a_line",
    "infection_gate",
    "line_order",
    "escalation_after_min_time",
    "close_reaches_closed",
    "recurrence_reaches_suspected",
)

Phase = Literal["surveillance", "diagnosis", "treatment", "outcome"]
Number = float | str


@attrs.frozen(kw_only=True)
class ContractMeta:
    id: str
    version: str
    title: str


@attrs.frozen(kw_only=True)
class ContractSource:
    citation: str
    kind: Literal["primary", "secondary", "local"] = "primary"


@attrs.frozen(kw_only=True)
class RequiredState:
    """A state every guideline under the contract declares, with the phase it must have."""

    phase: Phase | None = None
    initial: bool = False
    final: bool = False


@attrs.frozen(kw_only=True)
class Roles:
    """What the properties mean by surveillance, suspected, resolved and closed."""

    surveillance: str
    suspected: str
    resolved: str
    closed: str


@attrs.frozen(kw_only=True)
class Events:
    """The machine events for new data and for closing the episode."""

    data: str
    close: str


@attrs.frozen(kw_only=True)
class PinnedClass:
    """A drug class the contract relies on."""

    immunosuppressive: bool
    #: the machine event a treatment of this class sends (a line), if the class is one.
    event: str | None = None
    #: never a treatment line: no machine event, never moves the state.
    never_a_line: bool = False
    #: recommended only together with a drug of this class.
    companion: str | None = None
    #: its treatments are antimicrobials (they open the infection gate).
    antimicrobial: bool = False


@attrs.frozen(kw_only=True)
class Bound:
    """Bounds of a number; a bound may name a parameter (`$name`)."""

    required: bool = True
    above: Number | None = None
    at_least: Number | None = None
    at_most: Number | None = None
    below: Number | None = None
    why: str = ""
    cite: tuple[str, ...] = ()

    def describe(self) -> str:
        parts = []
        if self.above is not None:
            parts.append(f"> {_shown(self.above)}")
        if self.at_least is not None:
            parts.append(f">= {_shown(self.at_least)}")
        if self.at_most is not None:
            parts.append(f"<= {_shown(self.at_most)}")
        if self.below is not None:
            parts.append(f"< {_shown(self.below)}")
        return " and ".join(parts) or "any finite number"

    def holds(self, value: float, resolve: Callable[[Number], float | None]) -> bool:
        """Is `value` within the bounds? `resolve` gives the value of a `$parameter` bound
        (None: no such parameter)."""
        if not math.isfinite(value):
            return False
        checks = (
            (self.above, operator.gt),
            (self.at_least, operator.ge),
            (self.at_most, operator.le),
            (self.below, operator.lt),
        )
        for bound, op in checks:
            if bound is None:
                continue
            b = resolve(bound) if isinstance(bound, str) else float(bound)
            if b is None or not math.isfinite(b) or not op(value, b):
                return False
        return True


def _shown(n: Number) -> str:
    return n if isinstance(n, str) else f"{n:g}"


@attrs.frozen(kw_only=True)
class Windows:
    """Bounds of windows written in criteria rather than through parameters."""

    lab_hours: Bound | None = None
    trend_change_pct: Bound | None = None
    finding_hours: Bound | None = None
    therapy_hours: Bound | None = None


@attrs.frozen(kw_only=True)
class ContractProperty:
    kind: PropertyKind
    description: str
    cite: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class Contract:
    contract: ContractMeta
    sources: dict[str, ContractSource]
    states: dict[str, RequiredState]
    roles: Roles
    events: Events
    properties: dict[str, ContractProperty]
    never_first: tuple[str, ...] = ()
    drug_classes: dict[str, PinnedClass] = attrs.field(factory=dict)
    drugs: dict[str, str] = attrs.field(factory=dict)
    parameters: dict[str, Bound] = attrs.field(factory=dict)
    windows: Windows = Windows()
    alerts: dict[str, tuple[m.Severity, ...]] = attrs.field(factory=dict)
    #: class -> action code that offers a first line of that class.
    first_line_actions: dict[str, str] = attrs.field(factory=dict)
    #: where the document was read from (not part of the YAML).
    file: str = ""

    @property
    def id(self) -> str:
        return self.contract.id

    @property
    def identity(self) -> dict[str, str]:
        return {"id": self.contract.id, "version": self.contract.version}

    def by_kind(self, kind: str) -> tuple[str, ContractProperty] | None:
        for pid, p in self.properties.items():
            if p.kind == kind:
                return pid, p
        return None

    # --- what the contract's words mean in one guideline ------------------------------------

    def never_a_line_classes(self) -> tuple[str, ...]:
        return tuple(c for c, p in self.drug_classes.items() if p.never_a_line)

    def antimicrobial_classes(self) -> tuple[str, ...]:
        return tuple(c for c, p in self.drug_classes.items() if p.antimicrobial)

    def immunosuppressive_classes(self, g: m.Guideline) -> frozenset[str]:
        """Classes that suppress immunity: the contract's flag for its classes, else the
        guideline's."""
        out = {cid for cid, dc in g.drug_classes.items() if dc.immunosuppressive}
        for cid, pc in self.drug_classes.items():
            if pc.immunosuppressive:
                out.add(cid)
            else:
                out.discard(cid)
        return frozenset(out)

    def is_antimicrobial(
        self, cls: str | None, indication: str | None, suppressive: frozenset[str]
    ) -> bool:
        """Does a dose count as an antimicrobial recorded? A drug of an antimicrobial class, or
        one given for infection that does not suppress immunity (stress-dose hydrocortisone
        charted for septic shock does not treat the infection)."""
        if cls is not None and cls in self.antimicrobial_classes():
            return True
        return indication == "infection" and (cls is None or cls not in suppressive)

    def drug_class(self, g: m.Guideline, drug: str) -> str | None:
        """A drug's class: the contract's pin first (a misclassified pinned drug keeps its
        contract meaning), else the guideline's."""
        name = drug.strip().lower()
        return self.drugs.get(name) or g.drug_class_of(name)

    def treatment_states(self, g: m.Guideline) -> tuple[str, ...]:
        pinned = {s for s, r in self.states.items() if r.phase == "treatment"}
        return tuple(sid for sid, s in g.states.items() if s.phase == "treatment" or sid in pinned)

    def reset_states(self, g: m.Guideline) -> tuple[str, ...]:
        """Entering one of these starts a new episode of lines."""
        return tuple(sid for sid, s in g.states.items() if s.phase in ("surveillance", "diagnosis"))

    def first_lines(self, g: m.Guideline) -> tuple[str, ...]:
        """Declared first lines: treatment states with no line required before them."""
        return tuple(
            s for s in self.treatment_states(g) if not g.line_after(s) and s not in self.never_first
        )

    def escalation_targets(self, g: m.Guideline) -> tuple[str, ...]:
        """Lines that need an earlier line: entering one from a line is an escalation."""
        return tuple(s for s in self.treatment_states(g) if g.line_after(s))


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)

    def strict(kind: type, label: str) -> Any:
        def hook(value: Any, _: Any) -> Any:
            if isinstance(value, bool) and kind is not bool:
                raise ValueError(f"expected {label}, got {value!r}")
            if not isinstance(value, kind):
                raise ValueError(f"expected {label}, got {value!r}")
            return value

        return hook

    conv.register_structure_hook(str, strict(str, "text"))
    conv.register_structure_hook(bool, strict(bool, "true or false"))
    conv.register_structure_hook(Number, m.structure_number)
    conv.register_structure_hook(
        Number | None, lambda v, t: None if v is None else m.structure_number(v, t)
    )
    for cls in (
        Contract,
        ContractMeta,
        ContractSource,
        RequiredState,
        Roles,
        Events,
        PinnedClass,
        Bound,
        Windows,
        ContractProperty,
    ):
        conv.register_structure_hook(
            cls, make_dict_structure_fn(cls, conv, _cattrs_forbid_extra_keys=True)
        )
    return conv


_CONVERTER = _make_converter()
_CACHE: dict[str, Contract] = {}


def bundled_contracts() -> dict[str, Path]:
    """The contracts shipped with iechs: id (file stem) -> path."""
    folder = resources.files("iechs") / "contracts"
    out: dict[str, Path] = {}
    for entry in folder.iterdir():
        if entry.name.endswith(".yaml"):
            out[entry.name.removesuffix(".yaml")] = Path(str(entry))
    return dict(sorted(out.items()))


def load_contract(ref: str, relative_to: Path | None = None) -> Contract:
    """A contract by bundled id, or by path (relative to `relative_to`)."""
    bundled = bundled_contracts()
    if ref in bundled:
        path, shown = bundled[ref], f"iechs/contracts/{ref}.yaml"
    else:
        path = (relative_to or Path.cwd()) / ref
        shown = str(path)
        if not ref.endswith((".yaml", ".yml")) or not path.is_file():
            raise GuidelineError(
                [
                    Problem(
                        unknown_name("contract", ref, bundled)
                        + " (a bundled contract id, or a .yaml path relative to the guideline)",
                        "$.guideline.contract",
                    )
                ]
            )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise GuidelineError([Problem(f"cannot read the contract: {exc}")], shown) from None
    key = hashlib.sha256(f"{path}\n{text}".encode()).hexdigest()
    cached = _CACHE.get(key)
    if cached is not None:
        return cached
    contract = parse_contract(text, shown)
    _CACHE[key] = contract
    return contract


def parse_contract(text: str, file: str = "<contract>") -> Contract:
    try:
        # libyaml's loader where PyYAML has it (10x faster); a malformed document is read again
        # by the pure-Python one, whose message quotes the place (libyaml's has no snippet).
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise GuidelineError([Problem(f"malformed YAML: {exc}")], file) from None
    if not isinstance(data, Mapping):
        raise GuidelineError([Problem("expected a mapping at the top level")], file)
    try:
        contract = _CONVERTER.structure(data, Contract)
    except Exception as exc:  # cattrs groups every structuring error
        raise GuidelineError(structuring_problems(exc), file) from None
    contract = attrs.evolve(contract, file=file)
    problems = _self_check(contract)
    if problems:
        raise GuidelineError(problems, file)
    return contract


def _self_check(c: Contract) -> list[Problem]:
    problems: list[Problem] = []
    for role, sid in attrs.asdict(c.roles).items():
        if sid not in c.states:
            problems.append(Problem(unknown_name("state", sid, c.states), f"$.roles.{role}"))
    for i, sid in enumerate(c.never_first):
        if sid not in c.states:
            problems.append(Problem(unknown_name("state", sid, c.states), f"$.never_first[{i}]"))
    for cid, pc in c.drug_classes.items():
        if pc.companion is not None and pc.companion not in c.drug_classes:
            problems.append(
                Problem(
                    unknown_name("drug class", pc.companion, c.drug_classes),
                    f"$.drug_classes.{cid}.companion",
                )
            )
        if pc.never_a_line and pc.event is not None:
            problems.append(
                Problem("a class that is never a line has no event", f"$.drug_classes.{cid}")
            )
    for drug, cls in c.drugs.items():
        if cls not in c.drug_classes:
            problems.append(
                Problem(unknown_name("drug class", cls, c.drug_classes), f"$.drugs.{drug}")
            )
    for cls in c.first_line_actions:
        if cls not in c.drug_classes:
            problems.append(
                Problem(
                    unknown_name("drug class", cls, c.drug_classes), f"$.first_line_actions.{cls}"
                )
            )
    kinds: dict[str, str] = {}
    for pid, p in c.properties.items():
        if p.kind in kinds:
            problems.append(
                Problem(
                    f"kind {p.kind!r} is already property {kinds[p.kind]!r}",
                    f"$.properties.{pid}.kind",
                )
            )
        kinds[p.kind] = pid
    cited: list[tuple[str, tuple[str, ...]]] = [
        (f"$.properties.{pid}.cite", p.cite) for pid, p in c.properties.items()
    ]
    cited += [(f"$.parameters.{n}.cite", b.cite) for n, b in c.parameters.items()]
    for path, keys in cited:
        if not keys:
            problems.append(Problem("every property and bound of a contract cites a source", path))
        for i, key in enumerate(keys):
            if key not in c.sources:
                problems.append(Problem(unknown_name("source", key, c.sources), f"{path}[{i}]"))
    for name, b in c.parameters.items():
        for field in ("above", "at_least", "at_most", "below"):
            ref = getattr(b, field)
            if isinstance(ref, str) and ref.removeprefix("$") not in c.parameters:
                problems.append(
                    Problem(
                        f"bound {ref!r} names no parameter of the contract",
                        f"$.parameters.{name}.{field}",
                    )
                )
    return problems


def contract_ref(g: m.Guideline) -> str:
    return g.guideline.contract or DEFAULT_CONTRACT


def contract_for(g: m.Guideline) -> Contract:
    """The contract a guideline names, found beside the guideline (or its base, for a profile)
    when it is a path."""
    ref = contract_ref(g)
    here = Path(g.file).parent if g.file and not g.file.startswith("<") else Path.cwd()
    dirs = [here]
    if g.profile is not None:
        dirs.append((here / g.profile.extends).parent)
    for d in dirs:
        if (d / ref).is_file():
            return load_contract(ref, d)
    return load_contract(ref, here)


def contract_problems(g: m.Guideline, c: Contract) -> list[Problem]:
    """What a guideline must have for its contract to apply at all (reported as bad input):
    the contract's states (with their phase, initial and final), events and drug classes."""
    problems: list[Problem] = []
    where = f"contract {c.id!r}"
    for sid, req in c.states.items():
        s = g.states.get(sid)
        if s is None:
            problems.append(Problem(f"the state {sid!r} is required by {where}", "$.states"))
            continue
        if req.phase is not None and s.phase != req.phase:
            problems.append(
                Problem(
                    f"{where} requires state {sid!r} to have phase {req.phase!r}",
                    f"$.states.{sid}.phase",
                )
            )
        if req.initial and not s.initial:
            problems.append(
                Problem(f"{where} requires {sid!r} to be initial", f"$.states.{sid}.initial")
            )
        if req.final and not s.final:
            problems.append(
                Problem(f"{where} requires {sid!r} to be final", f"$.states.{sid}.final")
            )
    for role, ev in attrs.asdict(c.events).items():
        if ev not in g.events:
            problems.append(
                Problem(f"the event {ev!r} ({role}) is required by {where}", "$.events")
            )
    for cls in c.drug_classes:
        if cls not in g.drug_classes:
            problems.append(
                Problem(f"the drug class {cls!r} is required by {where}", "$.drug_classes")
            )
    return problems


# --- the contract on a concrete run ------------------------------------------------------------


@attrs.frozen
class RunViolation:
    """A contract property a concrete run breaks, at one decision."""

    property: str
    kind: str
    step: int
    at: datetime
    message: str

    def to_json(self) -> dict[str, Any]:
        return {
            "property": self.property,
            "kind": self.kind,
            "step": self.step,
            "at": self.at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "message": self.message,
        }


def decision_path(d: Any) -> list[str]:
    """The states a decision passed through: source, any intermediate states, target."""
    if d.source is None:
        return [d.target]
    via = getattr(d, "via", None)
    if via is None:
        middle: list[str] = []
    elif isinstance(via, str):
        middle = [via]
    else:
        middle = [str(x) for x in via]
    path: list[str] = []
    for s in [d.source, *middle, d.target]:
        if not path or path[-1] != s:
            path.append(s)
    return path


class _Record:
    """The timeline facts the contract reads, up to a moment (events at that moment included:
    one order set; treatments after the other facts of the set)."""

    def __init__(self, c: Contract, g: m.Guideline, events: Sequence[Any]) -> None:
        self.c, self.g = c, g
        self.events = sorted(events, key=lambda e: (e.at, e.kind == "treatment"))
        self.i = 0
        self.infection: str | None = None
        self.antimicrobials = False
        self.responses: list[tuple[datetime, str]] = []
        #: class -> times of doses (any indication)
        self.doses: dict[str, list[datetime]] = {}
        self.amx_classes = set(c.antimicrobial_classes())
        self.suppressive = c.immunosuppressive_classes(g)

    def until(self, t: datetime) -> None:
        while self.i < len(self.events) and self.events[self.i].at <= t:
            self._add(self.events[self.i])
            self.i += 1

    def _add(self, e: Any) -> None:
        kind = e.kind
        if kind == "assessment":
            if e.infection is not None:
                self.infection = e.infection
            if e.antimicrobials:  # recorded once, an antimicrobial stays recorded
                self.antimicrobials = True
        elif kind == "response":
            self.responses.append((e.at, e.assessment))
        elif kind == "treatment":
            cls = self.c.drug_class(self.g, e.drug)
            if self.c.is_antimicrobial(cls, e.indication, self.suppressive):
                self.antimicrobials = True
            if cls is not None:
                self.doses.setdefault(cls, []).append(e.at)

    @property
    def infection_untreated(self) -> bool:
        return self.infection in ("suspected", "confirmed") and not self.antimicrobials

    def therapy_start(self, classes: Iterable[str], at: datetime, gap_hours: float) -> datetime:
        """The start of the therapy of these classes running at `at` (doses no more than
        `gap_hours` apart, the last no more than that before `at`), else `at`."""
        times = sorted(t for c in classes for t in self.doses.get(c, []) if t <= at)
        if not times or _hours(times[-1], at) > gap_hours:
            return at
        start = times[-1]
        for t in reversed(times[:-1]):
            if _hours(t, start) > gap_hours:
                break
            start = t
        return start

    def latest_response_since(self, since: datetime, at: datetime) -> str | None:
        latest = None
        for t, kind in self.responses:
            if since <= t <= at:
                latest = kind
        return latest


def _hours(a: datetime, b: datetime) -> float:
    return (b - a).total_seconds() / 3600


def check_run(
    c: Contract, g: m.Guideline, events: Sequence[Any], decisions: Sequence[Any]
) -> list[RunViolation]:
    """Every violation of the contract's run-checkable properties in a concrete run.

    `events` are the timeline's (parsed) events; `decisions` the engine's, in order, each with
    `at`, `event` (its JSON), `source`, `target` and optionally `via`. Reads the guideline's
    states, declared line order, drug table and parameters; never a criterion."""
    return _RunChecker(c, g, events).check(decisions)


class _RunChecker:
    def __init__(self, c: Contract, g: m.Guideline, events: Sequence[Any]) -> None:
        self.c, self.g = c, g
        self.kinds = {p.kind: pid for pid, p in c.properties.items()}
        self.record = _Record(c, g, events)
        self.treatment = set(c.treatment_states(g))
        self.resets = set(c.reset_states(g))
        self.never_a_line = set(c.never_a_line_classes())
        p = g.parameters.get("min_hours_before_escalation")
        self.min_hours = p.value if p is not None and math.isfinite(p.value) else None
        gap = g.parameters.get("therapy_continuity_hours")
        self.gap = gap.value if gap is not None and math.isfinite(gap.value) else 24.0
        #: the classes whose treatments enter each state (its line's therapy)
        self.entering: dict[str, set[str]] = {}
        for cid, dc in g.drug_classes.items():
            for s in g.states.values():
                for t in s.transitions:
                    if dc.event is not None and t.event == dc.event:
                        self.entering.setdefault(t.to, set()).add(cid)
        self.out: list[RunViolation] = []
        self.entered: set[str] = set()
        self.line_start: dict[str, datetime] = {}

    def flag(self, kind: str, i: int, at: datetime, message: str) -> None:
        if kind in self.kinds:
            self.out.append(RunViolation(self.kinds[kind], kind, i, at, message))

    def check(self, decisions: Sequence[Any]) -> list[RunViolation]:
        for i, d in enumerate(decisions):
            at: datetime = d.at
            self.record.until(at)
            ev = d.event if isinstance(d.event, Mapping) else {}
            path = decision_path(d)
            if d.source is None:  # the episode's start
                self.entered = set()
                continue
            if ev.get("kind") == "treatment" and len(path) > 1:
                cls = self.c.drug_class(self.g, str(ev.get("drug", "")))
                if cls in self.never_a_line:
                    moved = " -> ".join(path)
                    self.flag(
                        "never_a_line", i, at, f"{ev.get('drug')} ({cls}) moved the state {moved}"
                    )
            if ev.get("kind") == "close" and d.target != self.c.roles.closed:
                self.flag("close_reaches_closed", i, at, f"close left the episode in {d.target!r}")
            for a, b in itertools.pairwise(path):
                self.enter(i, at, a, b)
        return self.out

    def enter(self, i: int, at: datetime, a: str, b: str) -> None:
        """The step a -> b of decision i, at time `at`."""
        if b in self.resets:
            self.entered = set()
        if b not in self.treatment:
            return
        record = self.record
        if record.infection_untreated:
            self.flag(
                "infection_gate",
                i,
                at,
                f"{a} -> {b} entered while infection is {record.infection} and no antimicrobial "
                "is recorded",
            )
        after = self.g.line_after(b)
        if after and not self.entered & set(after):
            lines = ", ".join(sorted(self.entered)) or "none"
            self.flag(
                "line_order",
                i,
                at,
                f"{b!r} entered without one of {', '.join(after)} before it "
                f"(lines entered: {lines})",
            )
        if b in self.c.never_first and not self.entered:
            self.flag("line_order", i, at, f"{b!r} entered as the first line")
        if a == self.c.roles.resolved:
            self.flag(
                "recurrence_reaches_suspected",
                i,
                at,
                f"line {b!r} entered directly from {a!r}, not through a recurrence",
            )
        if a in self.treatment and a != b and after and self.min_hours is not None:
            start = self.line_start.get(a, at)
            hours = _hours(start, at)
            response = record.latest_response_since(start, at)
            if hours < self.min_hours and response != "worsening":
                self.flag(
                    "escalation_after_min_time",
                    i,
                    at,
                    f"{a} -> {b} after {hours:g} h on the line (minimum {self.min_hours:g} h) "
                    f"with latest response on the line {response or 'none recorded'}",
                )
        self.entered.add(b)
        self.line_start[b] = record.therapy_start(self.entering.get(b, ()), at, self.gap)
