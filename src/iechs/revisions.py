"""Guidelines named by a git revision: `HEAD~1:guideline/iec-hs.yaml`.

`iechs compare --baseline` and `iechs validate --baseline` accept a file or a git revision of a
file, so that a pull request can show what it changes. A revision is written out with the
top-level folder that holds it (a profile `extends` its base, quotes read `sources/`), into a
temporary folder, and loaded from there under its `REV:PATH` name.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from .errors import IechsError, Problem

__all__ = ["guideline_at", "is_revision"]


def is_revision(spec: str) -> bool:
    """`REV:PATH` that is not an existing file (a path may itself contain a colon)."""
    rev, sep, path = spec.partition(":")
    return bool(sep and rev and path) and not Path(spec).exists()


def _git(args: list[str], cwd: Path, spec: str) -> bytes:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=False)
    except OSError as exc:  # no git on this machine
        raise IechsError([Problem(f"cannot run git: {exc.strerror}")], spec) from None
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise IechsError([Problem(message[-1] if message else "git failed")], spec)
    return done.stdout


@contextmanager
def guideline_at(spec: str, workdir: Path) -> Iterator[Path]:
    """The guideline file `spec` names, as a path to load: a plain path as it is, a git
    revision written out under `workdir` (the caller's temporary folder)."""
    if not is_revision(spec):
        yield Path(spec)
        return
    rev, _, inner = spec.partition(":")
    top = Path(_git(["rev-parse", "--show-toplevel"], Path.cwd(), spec).decode().strip())
    # git reads paths relative to the repository's root; `./x` relative to the working folder.
    rel = PurePosixPath(inner)
    if inner.startswith(("./", "../")):
        rel = PurePosixPath((Path.cwd() / inner).resolve().relative_to(top).as_posix())
    _git(["cat-file", "-e", f"{rev}:{rel}"], top, spec)  # a clear error when it is not there
    folder = rel.parts[0] if len(rel.parts) > 1 else str(rel)
    archive = _git(["archive", "--format=tar", rev, "--", folder], top, spec)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(workdir, filter="data")
    yield workdir / rel
