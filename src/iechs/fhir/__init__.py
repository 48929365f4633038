"""FHIR R4 input: `bundle_to_timeline` reads a Bundle as a patient timeline (what `iechs run`
does with a file whose `resourceType` is `Bundle`), `timeline_to_bundle` writes one.

The mapping, and what is an error and what is only reported as ignored, are documented in
`iechs.fhir.input`; the codes in `iechs.fhir.codes`; how a medication names its drug (for `run`
and for the order-sign hook alike) in `iechs.fhir.medications`. Importing this package loads the
fhir.resources models, so the CLI imports it only when a Bundle is read.
"""

from __future__ import annotations

from .codes import SYSTEM, code_system
from .input import FHIR_PACKAGE, bundle_to_timeline, timeline_to_bundle
from .medications import RXNORM, Formulary, MedicationRead, read_medication

__all__ = [
    "FHIR_PACKAGE",
    "RXNORM",
    "SYSTEM",
    "Formulary",
    "MedicationRead",
    "bundle_to_timeline",
    "code_system",
    "read_medication",
    "timeline_to_bundle",
]
