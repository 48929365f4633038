"""The guideline model: frozen attrs classes, the intermediate representation of the guideline.

Everything downstream (compiler, engine, verifier, renderers) reads these values, never the YAML.
Field names follow the YAML document (`guideline/iec-hs.yaml`); where a YAML key is a Python
keyword or builtin (`class`, `all`, `any`, `not`, `in`) the loader renames it.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import attrs

from ._attrs_code import install

install()  # the classes below take their methods' code from the cache (`iechs._attrs_code`)

__all__ = [
    "ALL_CRITERION_KINDS",
    "PROPERTY_KINDS",
    "ActionDef",
    "Assessed",
    "CanReach",
    "Citable",
    "Cites",
    "Concurrent",
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
    "IndicationRule",
    "InfectionTest",
    "NeverTogether",
    "NeverWithout",
    "ObservationDef",
    "Op",
    "OrderOfLines",
    "OrderSets",
    "Parameter",
    "ProductMatch",
    "Profile",
    "Ratio",
    "Recommendation",
    "ResponseTest",
    "RiskFactor",
    "RiskTest",
    "Rule",
    "SafetyProperty",
    "Source",
    "StateDef",
    "Statement",
    "TherapyTest",
    "Threshold",
    "TransitionDef",
    "TreatmentMatch",
    "Trend",
    "structure_number",
]

Op = Literal[">", ">=", "<", "<=", "==", "!="]
#: A number, or `$name` naming a parameter of the guideline.
Number = float | str


def structure_number(value: Any, _: Any = None) -> float | str:
    """A YAML value as a `Number` (a cattrs structure hook): a number, or a `$parameter`."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number or a $parameter, got {value!r}")
    if isinstance(value, int | float):
        return finite(value)
    if isinstance(value, str) and value.startswith("$"):
        return value
    raise ValueError(f"expected a number or a $parameter, got {value!r}")


def finite(value: float) -> float:
    """`value` as a float, refused unless finite (no NaN, no infinity, no 1e400)."""
    try:
        out = float(value)
    except OverflowError:
        raise ValueError("a number too large to use") from None
    if not math.isfinite(out):
        raise ValueError(f"expected a finite number, got {value!r}")
    return out


@attrs.frozen(kw_only=True)
class Citable:
    """Anything clinical: it names its sources and whether it was checked against them."""

    cite: tuple[str, ...] = ()
    verified: bool = False
    #: words of a source text that support the statement, verbatim (`verified: true` needs
    #: one, and `iechs validate` finds it in the source's text).
    quote: str | None = None


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
    #: the source's text kept beside the guideline (relative path), where quotes are found.
    text: str | None = None


@attrs.frozen(kw_only=True)
class GuidelineMeta:
    id: str
    title: str
    version: str
    status: Literal["draft", "active", "retired"]
    effective: str
    authors: tuple[str, ...] = ()
    #: the safety contract this guideline satisfies (an id of `iechs.contracts`, or a path
    #: relative to the document); a profile cannot change it.
    contract: str | None = None
    #: the indication (timeline vocabulary) of the condition this guideline treats: treatments
    #: given for it send their drug class's machine event.
    condition: str = "iec_hs"


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
    #: a finding older than this (hours, or a `$parameter`) counts as unrecorded, unless it is
    #: recorded again; None: it never expires.
    valid_hours: Number | None = None


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
    #: RxNorm ingredient codes (RxCUI of term type IN) of the drug: a FHIR medication coded with
    #: one of them is this drug. Clinical and branded drug codes (SCD, SBD) are not listed; a
    #: medication coded with one is read by its name.
    rxnorm: tuple[str, ...] = ()
    #: other names that identify this drug alone (brand names such as Kineret), matched in a
    #: medication's text as whole words, like the drug's id.
    synonyms: tuple[str, ...] = ()


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
    #: with a `$parameter` reference (a limit of normal): compare with the patient's value at
    #: infusion instead when that value is itself abnormal (beyond the limit, on the side `op`
    #: looks at), as hines-2023 states its criteria.
    baseline_if_abnormal: bool = False


@attrs.frozen(kw_only=True)
class Trend:
    """The latest value, fresh (at most `window_hours` old), against the value before it,
    however old; a change smaller than `min_change_pct` of the earlier value is flat."""

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
    """The latest CRS or ICANS grade compared with a value, or with its peak so far. A grade
    older than `within_hours` (default: parameter `assessment_validity_hours`) is stale."""

    of: Literal["crs", "icans"]
    op: Op
    value: int | None = None
    peak: bool = False
    within_hours: Number | None = None


@attrs.frozen(kw_only=True)
class InfectionTest:
    status: tuple[Literal["none", "suspected", "confirmed"], ...]


@attrs.frozen(kw_only=True)
class Assessed:
    """Antimicrobials started (by an assessment flag or an antimicrobial treatment)."""

    antimicrobials: bool = True


@attrs.frozen(kw_only=True)
class ResponseTest:
    """The latest clinician response assessment since the current line started. With no
    assessment on the line the test is UNKNOWN, or FALSE with `unrecorded: false` (e.g.
    "worsening" must be documented to count)."""

    among: tuple[Literal["improving", "stable", "worsening", "resolved"], ...]
    unrecorded: Literal["unknown", "false"] = "unknown"


@attrs.frozen(kw_only=True)
class TherapyTest:
    """A therapy of one of these drug classes (or drugs) is running: a dose was given within
    `hours` (default: parameter `therapy_continuity_hours`), for any indication unless
    `indication` narrows it. Never UNKNOWN: treatments are recorded when given."""

    classes: tuple[str, ...] = ()
    drugs: tuple[str, ...] = ()
    hours: Number | None = None
    indication: tuple[str, ...] = ()
    #: only drugs in the formulary (true) or outside it (false, e.g. an antimicrobial the
    #: guideline does not name, given for infection).
    formulary: bool | None = None


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
    "therapy",
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
    therapy: TherapyTest | None = None
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
class ProductMatch:
    """What of the CAR-T product implies a risk factor: its target contains `target`, or its
    costimulatory domain is `costimulatory_domain` (both case-insensitive)."""

    target: str | None = None
    costimulatory_domain: str | None = None


@attrs.frozen(kw_only=True)
class RiskFactor(Statement):
    """A risk factor; `product` says when the product itself implies it."""

    product: ProductMatch | None = None


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
    #: the lines one of which must have been entered (since the episode last entered a
    #: surveillance or diagnosis state) before this line; default: the line numbered one less.
    after: tuple[str, ...] | None = None
    recommendations: tuple[Recommendation, ...] = ()
    supportive_care: tuple[Statement, ...] = ()
    monitoring: tuple[Statement, ...] = ()
    cautions: tuple[Statement, ...] = ()
    transitions: tuple[TransitionDef, ...] = ()


# --- rules: alerts, deviations, indications, order sets, actions -----------------------------


@attrs.frozen(kw_only=True)
class TreatmentMatch:
    """Which recorded treatments a rule looks at (every field given must match)."""

    classes: tuple[str, ...] = ()
    drugs: tuple[str, ...] = ()
    immunosuppressive: bool | None = None
    indications: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class Concurrent:
    """A dose of one of these drug classes within `hours` of the treatment: before it, in the
    same order set, or (in a retrospective run, where later events are known) after it."""

    classes: tuple[str, ...]
    hours: Number


Severity = Literal["critical", "warning", "info"]


@attrs.frozen(kw_only=True)
class Rule(Citable):
    """An alert (and optionally a deviation) the guideline raises.

    `upon: treatment` rules look at each recorded treatment that `treatment` matches and fire
    once per therapy (repeated doses of a drug already started are one therapy); `upon: start`
    rules fire once when the episode starts; `upon: step` rules fire once per entry into one of
    the states `in`. Criteria in `when`/`unless` must be TRUE/FALSE (UNKNOWN never fires a
    rule); `with`/`without` ask for a concurrent therapy or for none. The message may name
    `{drug}`, `{class}`, `{indication}`, `{infection}`, `{state}` and `{$parameter}`."""

    alert: str
    severity: Severity
    message: str
    upon: Literal["start", "treatment", "step"] = "treatment"
    treatment: TreatmentMatch | None = None
    states: tuple[str, ...] = ()
    when: tuple[str, ...] = ()
    unless: tuple[str, ...] = ()
    with_: Concurrent | None = None
    without: Concurrent | None = None
    #: the reason of the deviation this rule records (None: an alert only).
    deviation: str | None = None


@attrs.frozen(kw_only=True)
class IndicationRule(Citable):
    """How a treatment recorded without an indication is read: the first rule that matches
    gives it. Every field given must match: the drug's class, whether the drug is in the
    formulary, the state, and criteria that must be TRUE."""

    indication: str
    reason: str
    classes: tuple[str, ...] = ()
    formulary: bool | None = None
    states: tuple[str, ...] = ()
    when: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class OrderSets(Citable):
    """Treatments recorded at the same time are one order set, decided together: facts first,
    then treatments by their class in `sequence` (e.g. antimicrobials before the
    immunosuppression they go alongside), so the order in a file never changes a decision."""

    description: str
    sequence: tuple[str, ...]


@attrs.frozen(kw_only=True)
class ActionDef(Citable):
    """What to do next: in force in the states `in` while `when` holds (and `unless` does not).
    When its criteria are UNKNOWN the action becomes a `measure` action naming what to measure.
    `recommendation` names a recommendation (by id) whose drug and dose the action carries;
    `due: reassessment` gives the time the reassessment clock sets."""

    code: str
    text: str
    states: tuple[str, ...]
    when: tuple[str, ...] = ()
    unless: tuple[str, ...] = ()
    recommendation: str | None = None
    #: recommendations for particular populations (e.g. adult and paediatric doses): the first
    #: that fits the patient is carried; with none that fits, the action names no dose.
    recommendations: tuple[str, ...] = ()
    due: Literal["reassessment"] | None = None
    #: what a `measure` action asks to measure.
    measure: tuple[str, ...] = ()


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
    risk_factors: dict[str, RiskFactor]
    criteria: dict[str, Criterion]
    states: dict[str, StateDef]
    properties: dict[str, SafetyProperty] = attrs.field(factory=dict)
    rules: dict[str, Rule] = attrs.field(factory=dict)
    indications: tuple[IndicationRule, ...] = ()
    order_sets: OrderSets | None = None
    actions: dict[str, ActionDef] = attrs.field(factory=dict)
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

    def recommendation(self, rec_id: str) -> Recommendation | None:
        """The recommendation with this id, in whichever state declares it first."""
        for s in self.states.values():
            for r in s.recommendations:
                if r.id == rec_id:
                    return r
        return None

    def line_after(self, state: str) -> tuple[str, ...]:
        """The lines one of which must come before line `state` (see `StateDef.after`)."""
        s = self.states[state]
        if s.after is not None or s.line is None:
            return s.after or ()
        return tuple(sid for sid, o in self.states.items() if o.line == s.line - 1)
