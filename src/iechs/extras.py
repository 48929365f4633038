"""Optional parts of iechs and the extras that install them.

The plain CLI (validate, verify, run, demo, FHIR input, the audit log on SQLite) needs only the
core dependencies. Each door below needs its extra; without it the command stops with exit 2
and says what to install, never with an ImportError traceback.
"""

from __future__ import annotations

import importlib.util

from .errors import IechsError, Problem

__all__ = ["EXTRAS", "MissingExtraError", "require"]

#: extra -> (modules it installs, what it is for)
EXTRAS: dict[str, tuple[tuple[str, ...], str]] = {
    "service": (("fastapi", "uvicorn", "jwt"), "the CDS Hooks service (`iechs serve`)"),
    "postgres": (("psycopg",), "a PostgreSQL store (postgresql://...)"),
    "diagrams": (("pygraphviz",), "SVG and PNG diagrams (Graphviz)"),
    "report": (("plotly",), "the cohort report (`iechs report`)"),
    "cluster": (("dask", "distributed"), "replay on a Dask cluster (`--executor dask`)"),
    "parquet": (("pyarrow",), "Parquet results (`--out results.parquet`)"),
}


class MissingExtraError(IechsError):
    """A command needs an extra that is not installed."""

    def render(self) -> str:
        return "\n".join(p.message for p in self.problems)


def require(extra: str) -> None:
    """Raise `MissingExtraError` unless every module of `extra` can be imported."""
    modules, purpose = EXTRAS[extra]
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtraError(
            [
                Problem(
                    f"{purpose} needs {', '.join(missing)}, which is not installed: "
                    f"pip install 'iechs[{extra}]'"
                )
            ]
        )
