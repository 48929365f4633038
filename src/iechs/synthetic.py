"""Synthetic patient courses for benchmarks and tests: reproducible from a seed.

Not clinical data. The mix follows the shapes the guideline must tell apart: uneventful courses,
CRS only (early ferritin rise during CRS, then falling), and IEC-HS around day 14 (responding to
corticosteroids, needing anakinra, or refractory). About 60 events over 30 days each.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

__all__ = ["COURSES", "HELP", "configure", "run", "synthetic_cohort", "synthetic_timeline"]

#: course kind -> share of the cohort
COURSES = {
    "uneventful": 0.40,
    "crs_only": 0.40,
    "iec_hs_responds": 0.10,
    "iec_hs_anakinra": 0.06,
    "iec_hs_refractory": 0.04,
}
_START = datetime(2026, 1, 5, 9, tzinfo=UTC)
_UNITS = {"ferritin": "ng/mL", "ldh": "U/L", "ast": "U/L", "alt": "U/L", "fibrinogen": "mg/dL"}


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


class _Course:
    def __init__(self, rng: random.Random, infusion: datetime) -> None:
        self.rng = rng
        self.infusion = infusion
        self.events: list[dict[str, Any]] = []

    def at(self, day: float, hour: float = 8) -> datetime:
        return self.infusion + timedelta(days=day, hours=hour - 9)

    def add(self, t: datetime, kind: str, **fields: Any) -> None:
        self.events.append({"at": _iso(t), "kind": kind, **fields})

    def labs(self, t: datetime, **values: float) -> None:
        for code, value in values.items():
            jitter = value * self.rng.uniform(-0.04, 0.04)
            self.add(t, "observation", code=code, value=round(value + jitter, 1), unit=_UNITS[code])

    def assess(self, t: datetime, crs: int, icans: int = 0, infection: str = "none") -> None:
        self.add(
            t,
            "assessment",
            crs_grade=crs,
            icans_grade=icans,
            infection=infection,
            antimicrobials=False,
        )


def _baseline_phase(c: _Course, crs_peak: int, days: range) -> None:
    """Days with labs every other day; CRS from day 2 to 6 when crs_peak > 0."""
    for d in days:
        crs = crs_peak if 2 <= d <= 4 else (1 if crs_peak and d in (5, 6) else 0)
        if d % 2 == 0 or crs:
            c.assess(c.at(d, 7), crs)
        if d % 2 == 0:
            ferritin = 380 + (2500 * crs_peak if 2 <= d <= 6 else 0)
            c.labs(c.at(d), ferritin=ferritin, ldh=220 + 40 * crs, ast=30 + 5 * crs)
        if crs >= 2 and d == 3:
            c.add(c.at(d, 10), "treatment", drug="tocilizumab", dose=8, unit="mg/kg", route="IV")


def _iec_hs_phase(c: _Course, kind: str) -> None:
    onset = 13 + c.rng.randint(0, 3)
    c.labs(c.at(onset - 1), ferritin=5200, ldh=380, ast=90)
    c.assess(c.at(onset - 1, 20), 0)
    c.assess(c.at(onset, 7), 0)
    c.labs(c.at(onset), ferritin=16000, ldh=720, ast=320, alt=260, fibrinogen=130)
    started = c.at(onset, 10)
    c.add(
        started,
        "treatment",
        drug="dexamethasone",
        dose=10,
        unit="mg",
        route="IV",
        indication="iec_hs",
    )
    lines = {"iec_hs_responds": 1, "iec_hs_anakinra": 2, "iec_hs_refractory": 3}[kind]
    drugs = ["anakinra", "ruxolitinib"]
    ferritin = 16000.0
    for line in range(1, lines + 1):
        responding = line == lines
        for k in range(1, 5):  # reassessed every 12 h for 48 h on the line
            t = started + timedelta(hours=12 * k - 1)
            c.assess(t, 0)
            ferritin *= 0.8 if responding else 1.08
            c.labs(t, ferritin=ferritin, ldh=400 if responding else 700)
            c.add(
                t + timedelta(minutes=30),
                "response",
                assessment="improving" if responding else "stable",
            )
        if line < lines:
            started += timedelta(hours=49)
            c.add(started, "treatment", drug=drugs[line - 1], indication="iec_hs")
    for d in range((started - c.infusion).days + 3, 30, 2):
        c.assess(c.at(d, 7), 0)
        ferritin *= 0.7
        c.labs(c.at(d), ferritin=max(ferritin, 500), ldh=260)


def synthetic_timeline(index: int, seed: int = 0) -> dict[str, Any]:
    """Patient `index` of the cohort made from `seed` (same inputs, same timeline)."""
    rng = random.Random(f"{seed}:{index}")
    kind = rng.choices(list(COURSES), weights=list(COURSES.values()))[0]
    infusion = _START + timedelta(days=index % 365, hours=rng.randint(0, 8))
    c = _Course(rng, infusion)
    factors = rng.sample(
        ["high_tumor_burden", "tet2_mutation", "high_baseline_inflammation"],
        k=rng.choice([0, 0, 0, 1, 2]),
    )
    if kind.startswith("iec_hs"):
        _baseline_phase(c, crs_peak=rng.choice([1, 2]), days=range(12))
        _iec_hs_phase(c, kind)
    else:
        _baseline_phase(c, crs_peak=2 if kind == "crs_only" else 0, days=range(30))
    c.events.sort(key=lambda e: e["at"])
    c.add(c.at(30, 12), "close", reason="follow_up_complete")
    return {
        "patient": {
            "id": f"S{seed}-{index:06d}",
            "infusion_at": _iso(infusion),
            "product": {
                "target": "CD19",
                "costimulatory_domain": rng.choice(["CD28", "4-1BB", "4-1BB"]),
            },
            "risk_factors": factors,
            "baseline": {"ferritin": {"value": 380, "unit": "ng/mL"}},
        },
        "events": c.events,
        "course": kind,
    }


def synthetic_cohort(n: int, seed: int = 0) -> Iterator[dict[str, Any]]:
    for i in range(n):
        yield synthetic_timeline(i, seed)


# --- `iechs synth` ----------------------------------------------------------------------------

HELP = "write a reproducible synthetic cohort (JSON Lines) for benchmarks and tests"


def configure(parser: Any) -> None:
    parser.add_argument("--patients", type=int, default=1000, help="how many (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="the same seed, the same cohort")
    parser.add_argument("--out", required=True, help="output .jsonl file")


def run(args: Any) -> int:
    with Path(args.out).open("w", encoding="utf-8") as fh:
        for doc in synthetic_cohort(args.patients, args.seed):
            doc.pop("course")
            fh.write(json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n")
    return 0
