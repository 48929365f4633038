"""Hypothesis drives the real engine with random timelines; a small reference model checks it.

The reference model is written from DESIGN.md, not from the engine: it tracks only what the
safety properties need (latest infection status and antimicrobials, last corticosteroid, latest
ICANS grade, lines entered, time on the line, last reassessment) and checks, at every step,
that the engine's alerts and state changes agree with it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from iechs import Decision, Engine, EpisodeError, load_guideline, parse_event
from iechs.timeline import parse_patient

GUIDELINE = load_guideline()
ENGINE = Engine(GUIDELINE)
T0 = datetime(2026, 5, 1, 8, tzinfo=UTC)
LINES = ("first_line_steroids", "second_line_anakinra", "refractory_ruxolitinib", "salvage")
ACTIVE = ("suspected", *LINES)
IL6 = {"tocilizumab", "siltuximab"}
STEROIDS = {"dexamethasone", "methylprednisolone", "prednisone", "hydrocortisone"}
IMMUNOSUPPRESSIVE = STEROIDS | IL6 | {"anakinra", "ruxolitinib", "emapalumab", "etoposide"}
DECLARED = {(sid, t.event, t.to) for sid, s in GUIDELINE.states.items() for t in s.transitions}

drugs = st.sampled_from(sorted(IMMUNOSUPPRESSIVE | {"meropenem", "filgrastim"}))
indications = st.sampled_from([None, "iec_hs", "iec_hs", "crs", "icans", "infection", "other"])
hours = st.integers(min_value=0, max_value=30)


class EngineVsModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        patient = parse_patient(
            {
                "id": "H1",
                "infusion_at": T0.isoformat(),
                "baseline": {"ferritin": {"value": 400, "unit": "ng/mL"}},
            },
            GUIDELINE,
        )
        self.episode = ENGINE.start(patient)
        self.now = T0
        # the reference model
        self.state = "surveillance"
        self.infection = "none"
        self.antimicrobials = False
        self.last_steroid: datetime | None = None
        self.icans = 0
        self.visited: set[str] = set()
        self.entered_at = T0
        self.response_on_line: str | None = None
        self.last_reassessment: datetime | None = None
        self.flagged_deadline: datetime | None = None

    # --- driving the engine ------------------------------------------------------------------

    def send(self, dt: int, doc: dict[str, Any]) -> Decision:
        self.now += timedelta(hours=dt)
        event = parse_event({"at": self.now.strftime("%Y-%m-%dT%H:%M:%SZ"), **doc}, GUIDELINE)
        # Closing ends the duties: the close itself is never "overdue".
        expected_overdue = False if doc["kind"] == "close" else self.overdue_due()
        before = self.state
        decision = self.episode.step(event)
        codes = [a.code for a in decision.alerts]
        assert ("reassessment_overdue" in codes) == expected_overdue, (expected_overdue, codes)
        assert decision.source == before
        self.check_transition(decision, doc)
        return decision

    def overdue_due(self) -> bool:
        if self.last_reassessment is None:
            return False
        deadline = self.last_reassessment + timedelta(hours=12)
        if self.now > deadline and self.flagged_deadline != deadline:
            self.flagged_deadline = deadline
            return True
        return False

    def check_transition(self, d: Decision, doc: dict[str, Any]) -> None:
        kind = doc["kind"]
        if kind in ("assessment", "response") and self.last_reassessment is not None:
            self.last_reassessment = self.now
        if d.target == d.source:
            return
        assert (d.source, d.machine_event, d.target) in DECLARED
        if kind == "close":
            assert d.target == "closed"
        elif kind != "treatment":
            assert d.machine_event == "reassess"
            assert d.target not in LINES  # new data alone never starts a treatment line
        if d.target in LINES:
            # gate: no immunosuppressive line while infection is untreated
            assert not (self.infection in ("suspected", "confirmed") and not self.antimicrobials)
            k = LINES.index(d.target)
            # order: the previous line was entered since the last reset
            assert k == 0 or LINES[k - 1] in self.visited, (d.target, self.visited)
            # escalation: minimum time on the line, unless worsening
            if d.source in LINES:
                on_line = (self.now - self.entered_at).total_seconds() / 3600
                assert on_line >= 48 or self.response_on_line == "worsening"
            self.visited.add(d.target)
        if d.target in ("surveillance", "suspected"):
            self.visited.clear()
        self.state = d.target
        self.entered_at = self.now
        self.response_on_line = None
        self.last_reassessment = self.now if d.target in ACTIVE else None
        self.flagged_deadline = None

    # --- rules -------------------------------------------------------------------------------

    @precondition(lambda self: self.state != "closed")
    @rule(
        dt=hours,
        code=st.sampled_from(["ferritin", "ldh", "ast", "alt", "fibrinogen"]),
        level=st.integers(min_value=0, max_value=3),
    )
    def observe(self, dt: int, code: str, level: int) -> None:
        values = {
            "ferritin": [200, 2500, 15000, 60000],
            "ldh": [180, 400, 900, 1500],
            "ast": [25, 120, 260, 900],
            "alt": [20, 90, 240, 800],
            "fibrinogen": [400, 200, 140, 80],
        }
        unit = {"ferritin": "ng/mL", "fibrinogen": "mg/dL"}.get(code, "U/L")
        self.send(
            dt, {"kind": "observation", "code": code, "value": values[code][level], "unit": unit}
        )

    @precondition(lambda self: self.state != "closed")
    @rule(
        dt=hours,
        crs=st.integers(0, 3),
        icans=st.integers(0, 3),
        infection=st.sampled_from(["none", "none", "suspected", "confirmed"]),
        antimicrobials=st.booleans(),
    )
    def assess(self, dt: int, crs: int, icans: int, infection: str, antimicrobials: bool) -> None:
        self.send(
            dt,
            {
                "kind": "assessment",
                "crs_grade": crs,
                "icans_grade": icans,
                "infection": infection,
                "antimicrobials": antimicrobials,
            },
        )
        self.icans, self.infection, self.antimicrobials = icans, infection, antimicrobials

    @precondition(lambda self: self.state != "closed")
    @rule(dt=hours, present=st.booleans())
    def find_hemophagocytosis(self, dt: int, present: bool) -> None:
        self.send(dt, {"kind": "finding", "code": "hemophagocytosis", "present": present})

    @precondition(lambda self: self.state != "closed")
    @rule(dt=hours, kind=st.sampled_from(["improving", "stable", "worsening", "resolved"]))
    def respond(self, dt: int, kind: str) -> None:
        self.send(dt, {"kind": "response", "assessment": kind})
        self.response_on_line = kind

    @precondition(lambda self: self.state != "closed")
    @rule(dt=hours, drug=drugs, indication=indications)
    def treat(self, dt: int, drug: str, indication: str | None) -> None:
        doc: dict[str, Any] = {"kind": "treatment", "drug": drug}
        if indication is not None:
            doc["indication"] = indication
        untreated_infection = (
            self.infection in ("suspected", "confirmed") and not self.antimicrobials
        )
        steroid_window = self.last_steroid is not None and self.now + timedelta(
            hours=dt
        ) - self.last_steroid <= timedelta(hours=24)
        d = self.send(dt, doc)
        given = indication if indication is not None else (d.inferred or {}).get("indication")
        codes = [a.code for a in d.alerts]
        for_iec_hs = given == "iec_hs"
        assert ("il6_monotherapy" in codes) == (drug in IL6 and for_iec_hs and not steroid_window)
        assert ("immunosuppression_before_antimicrobials" in codes) == (
            drug in IMMUNOSUPPRESSIVE and for_iec_hs and untreated_infection
        )
        assert ("tocilizumab_with_icans" in codes) == (drug == "tocilizumab" and self.icans >= 1)
        if drug in IL6:
            assert d.target == d.source  # IL-6 blockade is never a transition
        if drug in STEROIDS:
            self.last_steroid = self.now
        if drug == "meropenem" or (given == "infection" and drug not in IMMUNOSUPPRESSIVE):
            self.antimicrobials = True

    @precondition(lambda self: self.state != "closed")
    @rule(dt=hours)
    def time_passes(self, dt: int) -> None:
        self.now += timedelta(hours=dt)
        expected = self.overdue_due()
        d = self.episode.advance(self.now)
        assert ("reassessment_overdue" in [a.code for a in d.alerts]) == expected
        assert d.target == d.source == self.state

    @precondition(lambda self: self.state != "closed")
    @rule(dt=hours, reason=st.sampled_from(["follow_up_complete", "death", "transfer"]))
    def close(self, dt: int, reason: str) -> None:
        d = self.send(dt, {"kind": "close", "reason": reason})
        assert d.target == "closed"

    @precondition(lambda self: self.state == "closed")
    @rule(dt=hours)
    def closed_episode_refuses_events(self, dt: int) -> None:
        at = (self.now + timedelta(hours=dt)).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = parse_event({"at": at, "kind": "assessment", "crs_grade": 0}, GUIDELINE)
        with pytest.raises(EpisodeError, match="closed"):
            self.episode.step(event)

    @invariant()
    def same_state(self) -> None:
        assert self.episode.state == self.state

    @invariant()
    def known_alert_codes_only(self) -> None:
        for a in self.episode.decisions[-1].alerts:
            assert a.severity in ("critical", "warning", "info")


TestEngineVsModel = EngineVsModel.TestCase
