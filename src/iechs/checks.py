"""Semantic checks of a structured guideline: references, units, citations, graph shape.

Each check returns `Problem`s with a JSON-style path; the loader adds the YAML line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from . import model as m
from .contract import contract_for, contract_problems
from .errors import GuidelineError, Problem, unknown_name

__all__ = [
    "FIXED_STATES",
    "check_guideline",
    "reachable_states",
]

#: The state ids of the iec-hs-safety contract (DESIGN.md: tests and embedders rely on them).
#: The contract document (`iechs/contracts/iec-hs-safety.yaml`) is the authority: a guideline
#: must have the states, events and drug classes of the contract it names.
FIXED_STATES = (
    "surveillance",
    "suspected",
    "first_line_steroids",
    "second_line_anakinra",
    "refractory_ruxolitinib",
    "salvage",
    "resolved",
    "closed",
)


def check_guideline(g: m.Guideline, *, structural: bool = True) -> list[Problem]:
    """Every problem of the guideline. With `structural=False`, the graph's shape (reachable,
    trap and final states) and missing citations are left to the verifier, which reports them
    as broken properties with counterexamples."""
    problems: list[Problem] = []
    problems += _check_citations(g, missing=structural)
    problems += _check_vocabulary(g)
    problems += _check_criteria(g)
    problems += _check_states(g, graph=structural)
    problems += _check_properties(g)
    problems += _check_rules(g)
    return problems


def citables(g: m.Guideline) -> Iterator[tuple[str, m.Citable]]:
    for cid, c in g.criteria.items():
        yield f"$.criteria.{cid}", c
    for oid, o in g.observations.items():
        yield f"$.observations.{oid}", o
    for did, d in g.drug_classes.items():
        yield f"$.drug_classes.{did}", d
    for rid, r in g.risk_factors.items():
        yield f"$.risk_factors.{rid}", r
    for pid, par in g.parameters.items():
        yield f"$.parameters.{pid}", par
    for sid, s in g.states.items():
        base = f"$.states.{sid}"
        for field in ("recommendations", "supportive_care", "monitoring", "cautions"):
            for i, item in enumerate(getattr(s, field)):
                yield f"{base}.{field}[{i}]", item
        for i, t in enumerate(s.transitions):
            yield f"{base}.transitions[{i}]", t
    for pid, prop in g.properties.items():
        yield f"$.properties.{pid}", prop
    for rid, rule in g.rules.items():
        yield f"$.rules.{rid}", rule
    for i, ind in enumerate(g.indications):
        yield f"$.indications[{i}]", ind
    if g.order_sets is not None:
        yield "$.order_sets", g.order_sets
    for aid, action in g.actions.items():
        yield f"$.actions.{aid}", action


def _check_citations(g: m.Guideline, *, missing: bool) -> list[Problem]:
    problems = []
    for path, item in citables(g):
        if missing and not item.cite:
            problems.append(
                Problem("missing citation: every clinical statement cites a source", f"{path}.cite")
            )
        for i, key in enumerate(item.cite):
            if key not in g.sources:
                problems.append(
                    Problem(unknown_name("source", key, g.sources), f"{path}.cite[{i}]")
                )
    return problems


def _check_vocabulary(g: m.Guideline) -> list[Problem]:
    problems = []
    for oid, o in g.observations.items():
        if o.units.get(o.unit) != 1:
            problems.append(
                Problem(
                    f"the canonical unit {o.unit!r} must be listed with factor 1",
                    f"$.observations.{oid}.units",
                )
            )
        if any(f <= 0 for f in o.units.values()):
            problems.append(Problem("unit factors must be positive", f"$.observations.{oid}.units"))
        lo, hi = o.plausible
        if not lo < hi:
            problems.append(
                Problem(
                    "plausible range must be [low, high] with low < high",
                    f"$.observations.{oid}.plausible",
                )
            )
    for cid, c in g.drug_classes.items():
        if c.event is not None and c.event not in g.events:
            problems.append(
                Problem(unknown_name("event", c.event, g.events), f"$.drug_classes.{cid}.event")
            )
    for did, d in g.drugs.items():
        if d.drug_class not in g.drug_classes:
            problems.append(
                Problem(
                    unknown_name("drug class", d.drug_class, g.drug_classes), f"$.drugs.{did}.class"
                )
            )
        if did != did.lower():
            problems.append(Problem("drug ids are lower case", f"$.drugs.{did}"))
    problems += _check_drug_names(g)
    for pid, par in g.parameters.items():
        if par.value < 0:
            problems.append(Problem("parameters are not negative", f"$.parameters.{pid}.value"))
    return problems


def _check_drug_names(g: m.Guideline) -> list[Problem]:
    """Each RxNorm code and each name (id or synonym) identifies one drug: FHIR medications are
    matched by them (`iechs.fhir.medications`)."""
    problems = []
    codes: dict[str, str] = {}
    names = {did.lower(): did for did in g.drugs}
    for did, d in g.drugs.items():
        for k, code in enumerate(d.rxnorm):
            path = f"$.drugs.{did}.rxnorm[{k}]"
            if not code.isascii() or not code.isdigit():
                problems.append(Problem(f"an RxNorm code (RxCUI) is digits, not {code!r}", path))
            elif codes.setdefault(code, did) != did:
                problems.append(Problem(f"RxNorm {code} is also {codes[code]}'s", path))
        for k, name in enumerate(d.synonyms):
            path = f"$.drugs.{did}.synonyms[{k}]"
            key = " ".join(name.lower().split())
            if not key:
                problems.append(Problem("a synonym is not empty", path))
            elif names.setdefault(key, did) != did:
                problems.append(Problem(f"{name!r} already names {names[key]}", path))
    return problems


def _check_number(g: m.Guideline, value: m.Number | None, path: str) -> list[Problem]:
    if isinstance(value, str) and value.removeprefix("$") not in g.parameters:
        return [Problem(unknown_name("parameter", value.removeprefix("$"), g.parameters), path)]
    return []


def _check_criteria(g: m.Guideline) -> list[Problem]:
    problems: list[Problem] = []
    for cid, c in g.criteria.items():
        path = f"$.criteria.{cid}"
        kinds = c.kinds
        if len(kinds) != 1:
            names = [
                k.rstrip("_").replace("all_of", "all").replace("any_of", "any")
                for k in m.ALL_CRITERION_KINDS
            ]
            problems.append(
                Problem(
                    f"a criterion has exactly one kind ({', '.join(names)}); found {len(kinds)}",
                    path,
                )
            )
            continue
        problems += _check_leaf(g, c, path)
        for i, child in enumerate(c.children):
            if child not in g.criteria:
                sub = {"all_of": "all", "any_of": "any", "not_": "not", "count_of": "count_of.of"}
                where = f"{path}.{sub[c.kind]}" + ("" if c.kind == "not_" else f"[{i}]")
                problems.append(Problem(unknown_name("criterion", child, g.criteria), where))
        if c.count_of is not None and not 1 <= c.count_of.at_least <= len(c.count_of.of):
            problems.append(
                Problem(
                    "at_least must be between 1 and the number of criteria",
                    f"{path}.count_of.at_least",
                )
            )
    problems += _check_cycles(g)
    return problems


def _check_leaf(g: m.Guideline, c: m.Criterion, path: str) -> list[Problem]:
    problems: list[Problem] = []
    spec = getattr(c, c.kind)
    obs = getattr(spec, "observation", None)
    if obs is not None:
        p = f"{path}.{c.kind}.observation"
        if obs not in g.observations:
            problems.append(Problem(unknown_name("observation", obs, g.observations), p))
        elif isinstance(spec, m.Threshold) and spec.unit is not None:
            o = g.observations[obs]
            if spec.unit not in o.units:
                problems.append(
                    Problem(
                        f"unit {spec.unit!r} does not fit observation {obs!r} "
                        f"(accepted: {', '.join(sorted(o.units))})",
                        f"{path}.threshold.unit",
                    )
                )
    for field in (
        "value",
        "factor",
        "within_hours",
        "window_hours",
        "min_change_pct",
        "hours",
        "at_least",
    ):
        value = getattr(spec, field, None)
        if isinstance(value, float | str) and not isinstance(spec, m.GradeTest):
            problems += _check_number(g, value, f"{path}.{c.kind}.{field}")
    if isinstance(spec, m.Ratio) and spec.reference != "baseline":
        if not spec.reference.startswith("$"):
            problems.append(
                Problem("reference is 'baseline' or a $parameter", f"{path}.ratio.reference")
            )
        else:
            problems += _check_number(g, spec.reference, f"{path}.ratio.reference")
    if isinstance(spec, m.FindingTest):
        if spec.code not in g.findings:
            problems.append(
                Problem(unknown_name("finding", spec.code, g.findings), f"{path}.finding.code")
            )
        elif spec.min_grade is not None and not g.findings[spec.code].graded:
            problems.append(
                Problem(f"finding {spec.code!r} is not graded", f"{path}.finding.min_grade")
            )
    if isinstance(spec, m.GradeTest) and (spec.value is None) == (not spec.peak):
        problems.append(
            Problem("a grade test compares with either a value or the peak", f"{path}.grade")
        )
    if isinstance(spec, m.RiskTest):
        for i, rf in enumerate(spec.among):
            if rf not in g.risk_factors:
                problems.append(
                    Problem(unknown_name("risk factor", rf, g.risk_factors), f"{path}.risk.in[{i}]")
                )
    return problems


def _check_cycles(g: m.Guideline) -> list[Problem]:
    problems: list[Problem] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(cid: str, trail: list[str]) -> None:
        if state.get(cid) == 2 or cid not in g.criteria:
            return
        if state.get(cid) == 1:
            loop = " -> ".join([*trail[trail.index(cid) :], cid])
            problems.append(
                Problem(f"criteria refer to each other in a cycle: {loop}", f"$.criteria.{cid}")
            )
            return
        state[cid] = 1
        for child in g.criteria[cid].children:
            visit(child, [*trail, cid])
        state[cid] = 2

    for cid in g.criteria:
        visit(cid, [])
    return problems


def reachable_states(g: m.Guideline, start: str) -> set[str]:
    seen = {start}
    todo = [start]
    while todo:
        s = todo.pop()
        for t in g.states[s].transitions:
            if t.to in g.states and t.to not in seen:
                seen.add(t.to)
                todo.append(t.to)
    return seen


def _check_states(g: m.Guideline, *, graph: bool = True) -> list[Problem]:
    problems: list[Problem] = []
    initials = [sid for sid, s in g.states.items() if s.initial]
    if len(initials) != 1:
        problems.append(Problem(f"exactly one state is initial; found {initials}", "$.states"))
    for sid, s in g.states.items():
        base = f"$.states.{sid}"
        if s.final and s.transitions:
            problems.append(Problem("a final state has no transitions", f"{base}.transitions"))
        if graph and not s.final and not s.transitions:
            problems.append(Problem("trap state: not final and no transition leaves it", base))
        for i, r in enumerate(s.recommendations):
            rp = f"{base}.recommendations[{i}]"
            if r.drug is not None and r.drug not in g.drugs:
                problems.append(Problem(unknown_name("drug", r.drug, g.drugs), f"{rp}.drug"))
            if r.dose is not None and r.dose.min > r.dose.max:
                problems.append(Problem("dose min is above max", f"{rp}.dose"))
        for i, t in enumerate(s.transitions):
            tp = f"{base}.transitions[{i}]"
            if t.event not in g.events:
                problems.append(Problem(unknown_name("event", t.event, g.events), f"{tp}.event"))
            if t.to not in g.states:
                problems.append(Problem(unknown_name("state", t.to, g.states), f"{tp}.to"))
            for field in ("when", "unless"):
                for j, name in enumerate(getattr(t, field)):
                    if name not in g.criteria:
                        problems.append(
                            Problem(
                                unknown_name("criterion", name, g.criteria), f"{tp}.{field}[{j}]"
                            )
                        )
    if graph and len(initials) == 1:
        reach = reachable_states(g, initials[0])
        for sid in g.states:
            if sid not in reach:
                problems.append(
                    Problem(
                        f"unreachable state: no path leads here from {initials[0]!r}",
                        f"$.states.{sid}",
                    )
                )
        finals = {sid for sid, s in g.states.items() if s.final}
        for sid in sorted(reach - finals):
            if not reachable_states(g, sid) & finals and g.states[sid].transitions:
                problems.append(
                    Problem("trap: no path from here reaches a final state", f"$.states.{sid}")
                )
    return problems


def _check_properties(g: m.Guideline) -> list[Problem]:
    """The guideline's own properties, and what its contract requires of it: the contract's
    states (with their phases), events and drug classes; no property id of the contract."""
    problems: list[Problem] = []
    try:
        contract = contract_for(g)
    except GuidelineError as exc:
        return [Problem(p.message, "$.guideline.contract") for p in exc.problems]
    problems += contract_problems(g, contract)
    for pid in g.properties:
        if pid in contract.properties:
            problems.append(
                Problem(
                    f"property {pid!r} is a property of contract {contract.id!r}: its meaning is "
                    "fixed by the contract and cannot be redefined (choose another id)",
                    f"$.properties.{pid}",
                )
            )

    def refs(kind: str, names: tuple[str, ...], known: Iterable[str], path: str) -> None:
        known = list(known)
        for i, name in enumerate(names):
            if name not in known:
                problems.append(Problem(unknown_name(kind, name, known), f"{path}[{i}]"))

    for pid, prop in g.properties.items():
        path = f"$.properties.{pid}"
        if len(prop.kinds) != 1:
            problems.append(
                Problem(
                    f"a property has exactly one kind ({', '.join(m.PROPERTY_KINDS)}); found "
                    f"{len(prop.kinds)}",
                    path,
                )
            )
            continue
        spec = getattr(prop, prop.kind)
        base = f"{path}.{prop.kind}"
        if isinstance(spec, m.NeverWithout):
            refs("drug class", (spec.drug_class, spec.requires), g.drug_classes, base)
        elif isinstance(spec, m.NeverTogether):
            refs("drug class", spec.classes, g.drug_classes, f"{base}.classes")
        elif isinstance(spec, m.OrderOfLines):
            refs("state", spec.lines, g.states, f"{base}.lines")
            refs("state", spec.reset_at, g.states, f"{base}.reset_at")
        elif isinstance(spec, m.GateBefore):
            refs("state", spec.into, g.states, f"{base}.into")
            refs("criterion", spec.blocked_when, g.criteria, f"{base}.blocked_when")
        elif isinstance(spec, m.EscalationAfter):
            refs("state", spec.lines, g.states, f"{base}.lines")
            refs("criterion", spec.requires_any, g.criteria, f"{base}.requires_any")
        elif isinstance(spec, m.CanReach):
            refs("state", spec.targets, g.states, f"{base}.targets")
    return problems


#: the indications a timeline can give a treatment (DESIGN.md).
INDICATIONS = ("iec_hs", "crs", "icans", "infection", "other")
#: what a rule's message may name (see `model.Rule`).
MESSAGE_FIELDS = ("drug", "class", "indication", "infection", "state", "risk_factors")


def _refs(
    kind: str, names: Iterable[str], known: Iterable[str], path: str, problems: list[Problem]
) -> None:
    known = list(known)
    for i, name in enumerate(names):
        if name not in known:
            problems.append(Problem(unknown_name(kind, name, known), f"{path}[{i}]"))


def _check_rules(g: m.Guideline) -> list[Problem]:
    """References of the rules, indication rules, order sets and actions."""
    problems: list[Problem] = []
    if g.guideline.condition not in INDICATIONS:
        problems.append(
            Problem(
                unknown_name("indication", g.guideline.condition, INDICATIONS),
                "$.guideline.condition",
            )
        )
    for rid, rule in g.rules.items():
        path = f"$.rules.{rid}"
        if rule.upon == "treatment" and rule.treatment is None:
            problems.append(Problem("a treatment rule says which treatments it looks at", path))
        if rule.upon != "treatment" and (rule.with_ or rule.without or rule.treatment):
            problems.append(Problem("treatment, with and without belong to treatment rules", path))
        if rule.treatment is not None:
            t = rule.treatment
            _refs("drug class", t.classes, g.drug_classes, f"{path}.treatment.class", problems)
            _refs("drug", t.drugs, g.drugs, f"{path}.treatment.drug", problems)
            _refs(
                "indication", t.indications, INDICATIONS, f"{path}.treatment.indication", problems
            )
        _refs("state", rule.states, g.states, f"{path}.in", problems)
        _refs("criterion", rule.when, g.criteria, f"{path}.when", problems)
        _refs("criterion", rule.unless, g.criteria, f"{path}.unless", problems)
        for field, conc in (("with", rule.with_), ("without", rule.without)):
            if conc is not None:
                _refs("drug class", conc.classes, g.drug_classes, f"{path}.{field}.class", problems)
                problems += _check_number(g, conc.hours, f"{path}.{field}.hours")
        for name in re.findall(r"\{(\$?[a-z_]+)\}", rule.message):
            if name.startswith("$"):
                problems += _check_number(g, name, f"{path}.message")
            elif name not in MESSAGE_FIELDS:
                problems.append(
                    Problem(
                        f"the message names {{{name}}}; it may name "
                        + ", ".join(f"{{{f}}}" for f in MESSAGE_FIELDS)
                        + " and {$parameter}",
                        f"{path}.message",
                    )
                )
    for i, ind in enumerate(g.indications):
        path = f"$.indications[{i}]"
        if ind.indication not in INDICATIONS:
            problems.append(
                Problem(
                    unknown_name("indication", ind.indication, INDICATIONS), f"{path}.indication"
                )
            )
        _refs("drug class", ind.classes, g.drug_classes, f"{path}.class", problems)
        _refs("state", ind.states, g.states, f"{path}.in", problems)
        _refs("criterion", ind.when, g.criteria, f"{path}.when", problems)
    if g.order_sets is not None:
        _refs(
            "drug class", g.order_sets.sequence, g.drug_classes, "$.order_sets.sequence", problems
        )
    for aid, a in g.actions.items():
        path = f"$.actions.{aid}"
        _refs("state", a.states, g.states, f"{path}.in", problems)
        _refs("criterion", a.when, g.criteria, f"{path}.when", problems)
        _refs("criterion", a.unless, g.criteria, f"{path}.unless", problems)
        if a.recommendation is not None and g.recommendation(a.recommendation) is None:
            ids = [r.id for st in g.states.values() for r in st.recommendations]
            problems.append(
                Problem(
                    unknown_name("recommendation", a.recommendation, ids), f"{path}.recommendation"
                )
            )
    for cid, c in g.criteria.items():
        if c.therapy is not None:
            base = f"$.criteria.{cid}.therapy"
            _refs("drug class", c.therapy.classes, g.drug_classes, f"{base}.class", problems)
            _refs("drug", c.therapy.drugs, g.drugs, f"{base}.drug", problems)
            _refs("indication", c.therapy.indication, INDICATIONS, f"{base}.indication", problems)
            if c.therapy.hours is not None:
                problems += _check_number(g, c.therapy.hours, f"{base}.hours")
    for fid, fd in g.findings.items():
        if fd.valid_hours is not None:
            problems += _check_number(g, fd.valid_hours, f"$.findings.{fid}.valid_hours")
    return problems
