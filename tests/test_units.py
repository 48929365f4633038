"""Units as laboratories and papers write them: UCUM's case and glyph variants, and conversions.

Expected values are computed by hand here: 1 mg/L = 1000 ng/mL; 1 g/dL = 1000 mg/dL;
1 /uL = 10^6 /L = 0.001 x 10^9/L; 1 mm3 = 1 uL; 1 ukat/L = 60 U/L (kat = mol/s, U = umol/min,
so 1 ukat = 1 umol/s = 60 umol/min); molar factors come from the guideline's own table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from iechs import Guideline
from iechs.cli import main
from iechs.errors import TimelineError
from iechs.timeline import ObservationEvent, parse_timeline
from iechs.units import normalise_unit, to_canonical, unit_factor

EXIT_OK, EXIT_BAD_INPUT = 0, 2

# the guideline's molar factors (guideline/iec-hs.yaml, observations.*.units)
BILIRUBIN_UMOL = 0.0584795
CREATININE_UMOL = 0.0113122
TRIGLYCERIDES_MMOL = 88.57


def timeline(code: str, value: float, unit: str) -> dict[str, Any]:
    return {
        "patient": {"id": "P1", "infusion_at": "2026-01-01T10:00:00Z"},
        "events": [
            {
                "at": "2026-01-12T08:00:00Z",
                "kind": "observation",
                "code": code,
                "value": value,
                "unit": unit,
            }
        ],
    }


def canonical(guideline: Guideline, code: str, value: float, unit: str) -> ObservationEvent:
    ev = parse_timeline(timeline(code, value, unit), guideline).events[0]
    assert isinstance(ev, ObservationEvent)
    assert ev.unit == guideline.observations[code].unit
    return ev


# --- normalise_unit ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\u03bcg/L", "ug/L"),  # Greek mu, as papers print it
        ("\u00b5g/L", "ug/L"),  # micro sign
        ("ng/ml", "ng/mL"),
        ("mg/dl", "mg/dL"),
        ("10*9/l", "10*9/L"),
        ("10^9/L", "10*9/L"),
        ("10\u2079/L", "10*9/L"),  # superscript nine: a power of ten, not the number 109
        ("umol/l", "umol/L"),
        ("g / l", "g/L"),
        ("U/l", "U/L"),
        ("u/l", "u/L"),  # `u` keeps its case: it is not the enzyme unit U
        ("mmol/L", "mmol/L"),  # the l of mol is not a litre
        ("kcal", "kcal"),
        ("/mm\u00b3", "/mm3"),
        ("\u2103", "°C"),
    ],
)
def test_normalise_unit(text: str, expected: str) -> None:
    assert normalise_unit(text) == expected
    assert normalise_unit(expected) == expected


# --- unit_factor ---------------------------------------------------------------------------------


def test_unit_factor_steps() -> None:
    table = {"ng/mL": 1.0, "ug/L": 1.0, "µg/L": 1.0}
    assert unit_factor("ng/mL", table) == 1.0  # exact
    assert unit_factor("\u03bcg/L", table) == 1.0  # normalised
    assert unit_factor("mg/L", table) == 1000.0  # UCUM
    assert unit_factor("mg/L", table, canonical="ng/mL") == 1000.0
    assert unit_factor("g", table) is None  # a mass is no concentration
    assert unit_factor("furlong", table) is None  # not UCUM


def test_unit_factor_never_crosses_mass_and_substance() -> None:
    assert unit_factor("mmol/L", {"mg/dL": 1.0}) is None
    # with the guideline's molar entry, UCUM scales the prefix and the guideline gives the mass
    assert unit_factor("mmol/L", {"mg/dL": 1.0, "umol/L": BILIRUBIN_UMOL}) == pytest.approx(
        1000 * BILIRUBIN_UMOL
    )


def test_unit_factor_ignores_table_spellings_ucum_reads_otherwise() -> None:
    # `C` means Celsius in the guideline, the coulomb in UCUM: mC is no temperature
    table = {"Cel": 1.0, "C": 1.0, "°C": 1.0}
    assert unit_factor("mC", table, canonical="Cel") is None
    assert unit_factor("K", table, canonical="Cel") is None  # an offset, not a factor
    assert unit_factor("[degF]", table, canonical="Cel") is None
    assert unit_factor("\u2103", table, canonical="Cel") == 1.0


def test_unit_factor_disagreeing_spellings_decide_nothing() -> None:
    assert unit_factor("ug/L", {"ng/mL": 1.0, "\u00b5g/L": 1.0, "\u03bcg/L": 2.0}) is None


def test_ucum_international_unit_is_the_tables_iu() -> None:
    """UCUM writes the international unit `[IU]` (or `[iU]`); the guideline's table writes the
    laboratory's `IU/L`. They are one unit: no conversion, a spelling."""
    table = {"U/L": 1.0, "IU/L": 1.0}
    assert unit_factor("[IU]/L", table) == 1.0
    assert unit_factor("[iU]/l", table) == 1.0
    assert unit_factor("[IU]/mL", table) is None  # not a spelling of a table unit; no factor


def test_to_canonical_converts_temperatures_by_ucum() -> None:
    """A factor cannot say Fahrenheit (its zero is offset): `to_canonical` converts the value,
    by UCUM, for temperatures only; any other unit goes through `unit_factor`."""
    table = {"Cel": 1.0, "C": 1.0, "°C": 1.0}
    assert to_canonical(101.3, "[degF]", table, canonical="Cel") == pytest.approx(38.5)
    assert to_canonical(311.15, "K", table, canonical="Cel") == pytest.approx(38.0)
    assert to_canonical(38.5, "\u2103", table, canonical="Cel") == 38.5
    assert to_canonical(38.5, "mC", table, canonical="Cel") is None  # millicoulomb
    assert to_canonical(0.9, "mg/L", {"ng/mL": 1.0}) == pytest.approx(900.0)
    assert to_canonical(1.0, "[degF]", {"ng/mL": 1.0}) is None


# --- through the timeline parser -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "value", "unit", "expected"),
    [
        # Greek mu (the guideline lists the micro sign and ug/L)
        ("ferritin", 50000, "\u03bcg/L", 50000),
        ("bilirubin", 34.2, "\u03bcmol/L", 34.2 * BILIRUBIN_UMOL),
        # UCUM's lower-case litre
        ("ferritin", 50000, "ng/ml", 50000),
        ("ferritin", 50000, "ug/l", 50000),
        ("fibrinogen", 150, "mg/dl", 150),
        ("fibrinogen", 1.5, "g/l", 1.5 * 100),
        ("platelets", 20, "10*9/l", 20),
        ("platelets", 20, "10\u2079/L", 20),
        ("bilirubin", 34.2, "umol/l", 34.2 * BILIRUBIN_UMOL),
        ("creatinine", 88.4, "umol/l", 88.4 * CREATININE_UMOL),
        ("hemoglobin", 90, "g/l", 90 * 0.1),
        ("triglycerides", 3, "mmol/l", 3 * TRIGLYCERIDES_MMOL),
        ("ast", 40, "U/l", 40),
        ("crp", 120, "mg/l", 120),
        # converted by UCUM to a unit of the table
        ("ferritin", 1.2, "mg/L", 1200),  # 1 mg/L = 1000 ng/mL
        ("fibrinogen", 0.15, "g/dL", 150),  # 1 g/dL = 1000 mg/dL
        ("platelets", 20000, "/uL", 20),  # 20000 /uL = 2 x 10^10 /L = 20 x 10^9/L
        ("platelets", 20000, "/mm3", 20),  # mm3 = uL
        ("platelets", 20, "10*3/uL", 20),
        ("anc", 0.5, "/nL", 0.5),  # 1 /nL = 10^9 /L
        ("ast", 1.5, "ukat/L", 90),  # 1 ukat/L = 60 U/L
        ("ldh", 5, "ukat/l", 300),
        ("bilirubin", 0.0342, "mmol/L", 0.0342 * 1000 * BILIRUBIN_UMOL),  # prefix by UCUM
        ("triglycerides", 0.3, "mmol/dL", 0.3 * 10 * TRIGLYCERIDES_MMOL),
        ("crp", 1.2, "mg/dL", 12),
        ("temperature", 38.5, "\u2103", 38.5),
    ],
)
def test_variants_accepted(
    guideline: Guideline, code: str, value: float, unit: str, expected: float
) -> None:
    assert canonical(guideline, code, value, unit).value == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("code", "unit"),
    [
        ("ast", "u/l"),  # u is UCUM's atomic mass unit, not the enzyme unit U
        ("ferritin", "u/L"),  # ... refused even where a mass would convert
        ("ferritin", "mg"),  # a mass, not a concentration
        ("ferritin", "furlong/L"),
        ("bilirubin", "mmol/g"),
        ("triglycerides", "mg/mmol"),
        ("ast", "[IU]/mL"),  # an arbitrary unit: UCUM converts it to no enzyme unit
        ("temperature", "K"),  # an offset, not a factor
        ("temperature", "mC"),  # millicoulomb
        ("platelets", "109/L"),  # 109 per litre in UCUM: nearly always 10⁹/L mis-copied
        ("platelets", "103/uL"),
        ("creatinine", "mmol/kg"),
    ],
)
def test_unknown_units_refused(guideline: Guideline, code: str, unit: str) -> None:
    with pytest.raises(TimelineError) as info:
        parse_timeline(timeline(code, 1, unit), guideline)
    [problem] = info.value.problems
    assert problem.path == "$.events[0].unit"
    assert problem.message.startswith(f"unknown unit {unit!r} for {code} (accepted: ")


def test_baseline_variant_accepted(guideline: Guideline) -> None:
    data = timeline("ferritin", 50000, "ng/mL")
    data["patient"]["baseline"] = {"ferritin": {"value": 0.8, "unit": "mg/l"}}
    assert parse_timeline(data, guideline).patient.baseline["ferritin"].value == 800


# --- through the CLI -----------------------------------------------------------------------------


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "timeline.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def test_cli_runs_a_greek_mu_timeline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, timeline("ferritin", 50000, "\u03bcg/L"))
    assert main(["run", str(path), "--format", "json"]) == EXIT_OK
    out = json.loads(capsys.readouterr().out)
    assert out["final_state"]
    assert "\u03bcg/L" not in json.dumps(out["steps"], ensure_ascii=False)
    observed = [s["event"] for s in out["steps"] if s["event"].get("code") == "ferritin"]
    assert observed == [
        {
            "at": "2026-01-12T08:00:00Z",
            "kind": "observation",
            "code": "ferritin",
            "value": 50000,
            "unit": "ng/mL",
        }
    ]


@pytest.mark.parametrize("unit", ["u/l", "ng", "mmol/L"])
def test_cli_refuses_unknown_unit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], unit: str
) -> None:
    path = write(tmp_path, timeline("ferritin", 50000, unit))
    assert main(["run", str(path), "--format", "json"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "$.events[0].unit" in err
    assert f"unknown unit {unit!r} for ferritin" in err
    assert "accepted: " in err
    assert "Traceback" not in err
