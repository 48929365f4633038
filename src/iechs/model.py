"""The guideline model: frozen attrs classes, the intermediate representation of the guideline.

Everything downstream (compiler, engine, verifier, renderers) reads these values, never the YAML.
Field names follow the YAML document (`guideline/iec-hs.yaml`); where a YAML key is a Python
keyword or builtin (`class`, `all`, `any`, `not`, `in`) the loader renames it.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import attrs

__all__ = [
    "ALL_CRITERION_KINDS",
    "PROPERTY_KINDS",
    "Assessed",
    "CanReach",
    "Citable",
    "Cites",
    "CountOf",
    "Criterion",
    "Dose",
    "DrugClassDef",
    "DrugDef",
    "Duration",
    "EscalationAfter",
    "EventDef",
    "FindingDef",
    "FindingTest",
    "GateBefore",
    "GradeTest",
    "Guideline",
    "GuidelineMeta",
    "InfectionTest",
    "NeverTogether",
    "NeverWithout",
    "ObservationDef",
    "Op",
    "OrderOfLines",
    "Parameter",
    "Profile",
    "Ratio",
    "Recommendation",
    "ResponseTest",
    "RiskTest",
    "SafetyProperty",
    "Source",
    "StateDef",
    "Statement",
    "Threshold",
    "TransitionDef",
    "Trend",
]

Op = Literal[">", ">=", "<", "<=", "==", "!="]
#: A number, or `$name` naming a parameter of the guideline.
Number = float | str


@attrs.frozen(kw_only=True)
class Citable:
    """Anything clinical: it names its sources and whether it was checked against them."""

    cite: tuple[str, ...] = ()
    verified: bool = False


class OneKind:
    """A definition that is exactly one of several kinds, each an optional field (the loader
    checks that exactly one is set)."""

    KINDS: ClassVar[tuple[str, ...]] = ()

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(k for k in self.KINDS if getattr(self, k) is not None)

    @property
    def kind(self) -> str:
        return self.kinds[0]


@attrs.frozen(kw_only=True)
class Source:
    citation: str
    kind: Literal["primary", "secondary", "local"] = "primary"
    pmid: str | None = None


@attrs.frozen(kw_only=True)
class GuidelineMeta:
    id: str
    title: str
    version: str
    status: Literal["draft", "active", "retired"]
    effective: str
    authors: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class Parameter(Citable):
    """A number no source fixes (or a local choice within a sourced range): overridable."""

    value: float
    description: str
    unit: str | None = None
    local: bool = True


@attrs.frozen(kw_only=True)
class ObservationDef(Citable):
    name: str
    unit: str
    #: accepted unit -> factor that converts a value in that unit to `unit`.
    units: dict[str, float]
    #: plausible range in the canonical unit; values outside are rejected as implausible.
    plausible: tuple[float, float]
    loinc: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class FindingDef:
    name: str
    graded: bool = False
    #: a finding never recorded counts as absent (findings are documented when present), or
    #: as unknown (it must be looked for, e.g. by a marrow examination).
    unrecorded: Literal["absent", "unknown"] = "absent"


@attrs.frozen(kw_only=True)
class DrugClassDef(Citable):
    name: str
    immunosuppressive: bool
    #: the machine event that a treatment of this class sends, if any.
    event: str | None = None


@attrs.frozen(kw_only=True)
class DrugDef:
    drug_class: str
    name: str


@attrs.frozen(kw_only=True)
class EventDef:
    name: str
    description: str


# --- criteria ---------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Threshold:
    observation: str
    op: Op
    value: Number
    unit: str | None = None
    #: how old the latest value may be, in hours; default: parameter `lab_validity_hours`.
    within_hours: Number | None = None


@attrs.frozen(kw_only=True)
class Ratio:
    """observation OP factor x reference, where reference is `baseline` or a `$parameter`."""

    observation: str
    op: Op
    factor: Number
    reference: str
    within_hours: Number | None = None


@attrs.frozen(kw_only=True)
class Trend:
    """The latest value against the one before it (both within `window_hours`); a change
    smaller than `min_change_pct` of the earlier value is flat."""

    observation: str
    direction: Literal["rising", "falling", "not_falling"]
    window_hours: Number
    min_change_pct: Number = 0.0


@attrs.frozen(kw_only=True)
class FindingTest:
    code: str
    min_grade: int | None = None


@attrs.frozen(kw_only=True)
class GradeTest:
    """The latest CRS or ICANS grade compared with a value, or with its peak so far."""

    of: Literal["crs", "icans"]
    op: Op
    value: int | None = None
    peak: bool = False


@attrs.frozen(kw_only=True)
class InfectionTest:
    status: tuple[Literal["none", "suspected", "confirmed"], ...]


@attrs.frozen(kw_only=True)
class Assessed:
    """Antimicrobials started (by an assessment flag or an antimicrobial treatment)."""

    antimicrobials: bool = True


@attrs.frozen(kw_only=True)
class ResponseTest:
    """The latest clinician response assessment since the current line started."""

    among: tuple[Literal["improving", "stable", "worsening", "resolved"], ...]


@attrs.frozen(kw_only=True)
class RiskTest:
    at_least: Number
    among: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class Duration:
    op: Op
    hours: Number


@attrs.frozen(kw_only=True)
class CountOf:
    at_least: int
    of: tuple[str, ...]


ALL_CRITERION_KINDS = (
    "threshold",
    "ratio",
    "trend",
    "finding",
    "grade",
    "infection",
    "assessed",
    "response",
    "risk",
    "time_on_line",
    "time_since_infusion",
    "all_of",
    "any_of",
    "not_",
    "count_of",
)


@attrs.frozen(kw_only=True)
class Criterion(Citable, OneKind):
    """A named predicate. Exactly one of the kind fields is set (checked by the loader)."""

    description: str
    local: bool = False
    threshold: Threshold | None = None
    ratio: Ratio | None = None
    trend: Trend | None = None
    finding: FindingTest | None = None
    grade: GradeTest | None = None
    infection: InfectionTest | None = None
    assessed: Assessed | None = None
    response: ResponseTest | None = None
    risk: RiskTest | None = None
    time_on_line: Duration | None = None
    time_since_infusion: Duration | None = None
    all_of: tuple[str, ...] | None = None
    any_of: tuple[str, ...] | None = None
    not_: str | None = None
    count_of: CountOf | None = None

    KINDS: ClassVar[tuple[str, ...]] = ALL_CRITERION_KINDS

    @property
    def children(self) -> tuple[str, ...]:
        """Names of the criteria this one combines (empty for a leaf)."""
        if self.all_of is not None:
            return self.all_of
        if self.any_of is not None:
            return self.any_of
        if self.not_ is not None:
            return (self.not_,)
        if self.count_of is not None:
            return self.count_of.of
        return ()


# --- states ----------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Statement(Citable):
    text: str


@attrs.frozen(kw_only=True)
class Dose:
    min: float
    max: float
    unit: str


@attrs.frozen(kw_only=True)
class Recommendation(Citable):
    id: str
    text: str
    drug: str | None = None
    dose: Dose | None = None
    route: tuple[str, ...] = ()
    frequency: str | None = None
    population: Literal["adult", "paediatric", "all"] = "all"


@attrs.frozen(kw_only=True)
class TransitionDef(Citable):
    event: str
    to: str
    label: str
    when: tuple[str, ...] = ()
    unless: tuple[str, ...] = ()
    note: str | None = None


@attrs.frozen(kw_only=True)
class StateDef:
    name: str
    phase: Literal["surveillance", "diagnosis", "treatment", "outcome"]
    description: str
    initial: bool = False
    final: bool = False
    #: treatment line number (1, 2, ...) for treatment states.
    line: int | None = None
    recommendations: tuple[Recommendation, ...] = ()
    supportive_care: tuple[Statement, ...] = ()
    monitoring: tuple[Statement, ...] = ()
    cautions: tuple[Statement, ...] = ()
    transitions: tuple[TransitionDef, ...] = ()


# --- safety properties (read by the verifier) -------------------------------------------------


@attrs.frozen(kw_only=True)
class NeverWithout:
    """No state recommends a drug of class `drug_class` unless it also recommends `requires`."""

    drug_class: str
    requires: str


@attrs.frozen(kw_only=True)
class NeverTogether:
    """No state recommends drugs of two of these classes at once."""

    classes: tuple[str, ...]


@attrs.frozen(kw_only=True)
class OrderOfLines:
    """Each state of `lines` is entered only after the one before it, since the last entry
    into a `reset_at` state (the episode's start counts)."""

    lines: tuple[str, ...]
    reset_at: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class GateBefore:
    """No transition into `into` is enabled while all of `blocked_when` hold."""

    into: tuple[str, ...]
    blocked_when: tuple[str, ...]


@attrs.frozen(kw_only=True)
class EscalationAfter:
    """A transition from one line to a later line needs one of `requires_any`."""

    lines: tuple[str, ...]
    requires_any: tuple[str, ...]


@attrs.frozen(kw_only=True)
class CanReach:
    """Every state is reachable, and every non-final one can reach one of `targets`."""

    targets: tuple[str, ...]


@attrs.frozen(kw_only=True)
class Cites:
    """Every recommendation and every transition cites at least `at_least` sources."""

    at_least: int = 1


PROPERTY_KINDS = (
    "never_recommend_without",
    "never_recommend_together",
    "order_of_lines",
    "gate_before",
    "escalation_after",
    "reachable",
    "can_reach",
    "cites",
    "deterministic",
)


@attrs.frozen(kw_only=True)
class SafetyProperty(Citable, OneKind):
    """A property the verifier proves over every path. Exactly one kind field is set."""

    description: str
    never_recommend_without: NeverWithout | None = None
    never_recommend_together: NeverTogether | None = None
    order_of_lines: OrderOfLines | None = None
    gate_before: GateBefore | None = None
    escalation_after: EscalationAfter | None = None
    reachable: bool | None = None
    can_reach: CanReach | None = None
    cites: Cites | None = None
    deterministic: bool | None = None

    KINDS: ClassVar[tuple[str, ...]] = PROPERTY_KINDS


@attrs.frozen(kw_only=True)
class Profile:
    """This document changes another guideline: `extends` names it (relative path)."""

    extends: str
    rationale: str


@attrs.frozen(kw_only=True)
class Guideline:
    guideline: GuidelineMeta
    sources: dict[str, Source]
    parameters: dict[str, Parameter]
    observations: dict[str, ObservationDef]
    findings: dict[str, FindingDef]
    drug_classes: dict[str, DrugClassDef]
    drugs: dict[str, DrugDef]
    events: dict[str, EventDef]
    risk_factors: dict[str, Statement]
    criteria: dict[str, Criterion]
    states: dict[str, StateDef]
    properties: dict[str, SafetyProperty] = attrs.field(factory=dict)
    profile: Profile | None = None
    #: SHA-256 of the document's bytes (set by the loader; not part of the YAML).
    sha256: str = ""
    #: where the document was read from (for messages; not part of the YAML).
    file: str = ""

    @property
    def initial_state(self) -> str:
        return next(sid for sid, s in self.states.items() if s.initial)

    def param(self, ref: Number) -> float:
        """Resolve a number or a `$parameter` reference."""
        if isinstance(ref, str):
            return self.parameters[ref.removeprefix("$")].value
        return float(ref)

    def drug_class_of(self, drug: str) -> str | None:
        d = self.drugs.get(drug.strip().lower())
        return d.drug_class if d else None
