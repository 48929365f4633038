"""The vocabularies a recorded treatment is read against: its dose unit and its route.

These are input formats, not clinical rules (nothing here decides care): a dose is a mass, a
mass per kilogram of body weight or a mass per square metre of body surface, optionally per
day, hour or minute, in UCUM's symbols (`mg`, `ug`, `mg/kg`, `mg/m2`, `mg/kg/d`) or the ways
people and the guideline write them (`MG`, `mcg`, `µg`, `milligram`, `mg/kg/day`). A route is
one of HL7's route-of-administration codes, its English name (with or without "route", as
SNOMED CT displays it) or its SNOMED CT code. Anything else is refused with the field's JSON
path, so "banana" or "up the nose" never moves the state. A volume (`mL`) or a count of the
product's units (`TAB`, `{tbl}`) is accepted as the dose of a product whose strength its name
gives, as FHIR MedicationAdministrations record it.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["ROUTES", "dose_unit_problem", "route_code"]

_MASS = {
    "g": "g",
    "gram": "g",
    "grams": "g",
    "mg": "mg",
    "milligram": "mg",
    "milligrams": "mg",
    "ug": "ug",
    "mcg": "ug",
    "microgram": "ug",
    "micrograms": "ug",
    "ng": "ng",
    "nanogram": "ng",
    "nanograms": "ng",
}
#: a volume of a solution whose strength the product names (FHIR's `dosage.dose` in mL)
_VOLUME = {"ml": "mL", "l": "L", "ul": "uL", "millilitre": "mL", "milliliter": "mL"}
#: a count of the product's units (RxNorm's `TAB`; UCUM's annotations such as `{tbl}`)
_COUNT = {
    "tab",
    "tabs",
    "tablet",
    "tablets",
    "cap",
    "caps",
    "capsule",
    "capsules",
    "vial",
    "vials",
    "syringe",
    "syringes",
    "ampoule",
    "ampoules",
    "ampule",
    "1",
}
_ANNOTATION = re.compile(r"^\{[^{}]+\}$")
_PER_BODY = {"kg": "kg", "m2": "m2", "m^2": "m2", "m²": "m2"}
_PER_TIME = {
    "d": "d",
    "day": "d",
    "24h": "d",
    "h": "h",
    "hr": "h",
    "hour": "h",
    "min": "min",
    "minute": "min",
}

#: route code -> (English name, SNOMED CT code of the route)
ROUTES: dict[str, tuple[str, str]] = {
    "IV": ("intravenous", "47625008"),
    "SC": ("subcutaneous", "34206005"),
    "PO": ("oral", "26643006"),
    "IM": ("intramuscular", "78421000"),
    "IT": ("intrathecal", "72607000"),
    "SL": ("sublingual", "37839007"),
    "PR": ("rectal", "37161004"),
    "NG": ("nasogastric", "127492001"),
    "TOP": ("topical", "6064005"),
    "INH": ("inhalation", "447694001"),
    "IO": ("intraosseous", "60213007"),
}
_ROUTE_NAMES: dict[str, str] = {}
for _code, (_name, _snomed) in ROUTES.items():
    for _spelling in (_code, _name, f"{_name} route", _snomed):
        _ROUTE_NAMES[_spelling.lower()] = _code
_ROUTE_NAMES.update({"sq": "SC", "subcut": "SC", "by mouth": "PO", "per os": "PO", "iv push": "IV"})

_SPACES = re.compile(r"\s+")


#: SNOMED CT's semantic tag at the end of a fully specified name: "(qualifier value)".
_SEMANTIC_TAG = re.compile(r"\s*\([a-z ]+\)$")


def route_code(text: str) -> str | None:
    """The HL7 code of a route as written (`IV`, `Intravenous route`, `Intravenous route
    (qualifier value)`, `47625008`), or None."""
    key = _SPACES.sub(" ", unicodedata.normalize("NFKC", text).strip().lower())
    return _ROUTE_NAMES.get(_SEMANTIC_TAG.sub("", key))


def dose_unit_problem(unit: str) -> str | None:
    """Why `unit` is not a dose unit, or None when it is one (see the module docstring)."""
    text = unicodedata.normalize("NFKC", unit).replace("\u03bc", "u").strip()
    parts = [p.strip() for p in text.split("/")]
    if not text or not parts[0]:
        return "a dose unit is empty"
    if len(parts) == 1 and (
        parts[0].lower() in _VOLUME or parts[0].lower() in _COUNT or _ANNOTATION.match(parts[0])
    ):
        return None
    if parts[0].lower() not in _MASS:
        return (
            f"unknown dose unit {unit!r}: a dose is a mass (g, mg, ug, ng), per kg or per m2, "
            "optionally per day or hour (e.g. mg, mg/kg, mg/m2, mg/kg/d), a volume (mL) or a "
            "count of the product's units (TAB, {tbl})"
        )
    rest = [p.lower() for p in parts[1:]]
    if rest and rest[0] in _PER_BODY:
        rest = rest[1:]
    if rest and rest[0] in _PER_TIME:
        rest = rest[1:]
    if rest:
        return (
            f"unknown dose unit {unit!r}: after the mass, only /kg or /m2, then /d, /h or "
            "/min (e.g. mg/kg/d)"
        )
    return None
