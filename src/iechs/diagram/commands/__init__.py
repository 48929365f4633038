"""The `iechs` commands of this package, one module each (`HELP`, `configure`, `run`): `diagram`,
`review`, `export` and `diff`. They are listed in `iechs.cli.EXTERNAL_COMMANDS`."""

from __future__ import annotations

from pathlib import Path

from ...errors import IechsError, Problem

__all__ = ["write_file"]


def write_file(path: Path, data: bytes) -> None:
    """Write an output file (creating its folder); a failure is bad input, not a traceback."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except OSError as exc:
        raise IechsError([Problem(f"cannot write the file: {exc.strerror}")], str(path)) from None
