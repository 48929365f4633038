"""A cache of loaded and checked guidelines, so that a command does not parse YAML every time.

`load_guideline` keeps each guideline it loaded and checked in a file named by a key: the
sha256 of the file's bytes, together with the name the file is shown by, its path, the checks
asked for (`structural`), the iechs version, the code that builds a guideline (the loader,
the checks, the contract, the model and the errors modules, and the bundled contracts), the
Python version and the installed attrs, cattrs and PyYAML. The files a build read beside
the guideline (the base of a profile, and its base) are kept in the entry with their sha256
and read again on every hit: a changed base misses the cache. A guideline whose contract is
not a bundled one (a contract named by path) is never cached.

Only a guideline that loaded without error is cached: a bad file is checked afresh every
time, and reported exactly as without the cache. A hit is equal to a fresh load.

The cache also keeps compiled code (`code`): generated Python source is compiled once, not at
every start: the guideline's criteria, written out by `iechs.criteria_codegen`, and the methods
attrs writes for each of iechs's classes (`iechs._attrs_code`). Such an entry is named by the
sha256 of the source, its file name and the Python version, holds the code object (marshal),
and is read under the rules below, as a guideline's entry is.

Where: `$IECHS_CACHE_DIR`, else `$XDG_CACHE_HOME/iechs`, else `~/.cache/iechs`.
`IECHS_CACHE=off` (or `0`, `false`, `no`) turns it off: nothing is read or written.

Safety. An entry is a pickle, and loading a pickle runs code: whoever can write an entry can
run code in iechs. So an entry is read only

- from a directory that belongs to the current user and that neither its group nor others may
  write (else the cache is skipped, neither read nor written), and
- from a regular file (not a symlink) that belongs to the current user, that neither its group
  nor others may write, and whose checksum matches (a corrupt or truncated entry is never
  unpickled).

Where the platform has no user ids (Windows) the cache is off. Writes go to a temporary file in
the same directory, then `os.replace`: a reader never sees half an entry. Any failure to read,
write or check an entry (a missing, unwritable or insecure directory, a corrupt entry) is
silent: the guideline is loaded afresh, as without the cache.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import marshal
import os
import pickle
import stat
import sys
import types
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ._version import __version__

if TYPE_CHECKING:
    from .model import Guideline

__all__ = ["cache_dir", "code", "entry_key", "file_digest", "read", "write"]

ENV_DIR = "IECHS_CACHE_DIR"
ENV_SWITCH = "IECHS_CACHE"
_OFF = frozenset({"off", "0", "false", "no"})

#: The first bytes of an entry; raised when the entry's layout changes.
_MAGIC = b"iechs-guideline-cache 1\n"
#: The first bytes of a compiled-code entry (`code`).
_CODE_MAGIC = b"iechs-code-cache 1\n"
#: The file suffix of each kind of entry.
_GUIDELINE, _CODE = ".pickle", ".code"
_DIGEST = hashlib.sha256().digest_size
#: Entries kept; the oldest are removed beyond this.
MAX_ENTRIES = 64
#: Compiled-code entries kept (a guideline's criteria make one large entry and a small one per
#: guard: some 16 for the bundled guideline; iechs's attrs classes one each: some 140, a few kB
#: each); the oldest are removed beyond this.
MAX_CODE_ENTRIES = 1024
#: An entry larger than this is not read (the bundled guideline's is about 60 kB).
MAX_ENTRY_BYTES = 64 * 1024 * 1024

#: The modules whose code builds a `Guideline` from a file (a test holds this list to what
#: `parse_guideline` imports): a change in any of them misses the cache.
BUILD_MODULES = (
    "_attrs_code",
    "_version",
    "cache",
    "checks",
    "contract",
    "errors",
    "loader",
    "model",
)
#: The libraries whose behaviour the result depends on (their files' size and time are keyed).
_LIBRARIES = ("attr", "attrs", "cattrs", "yaml")

#: A file read by a build: its path as the loader opened it, and the sha256 of its bytes
#: (None: it could not be read).
Dependency = tuple[str, str | None]


def cache_dir() -> Path | None:
    """The cache's directory, or None when the cache is off."""
    env = os.environ
    return _cache_dir(
        env.get(ENV_SWITCH, ""), env.get(ENV_DIR), env.get("XDG_CACHE_HOME"), env.get("HOME")
    )


@functools.lru_cache(maxsize=8)
def _cache_dir(switch: str, explicit: str | None, xdg: str | None, home: str | None) -> Path | None:
    """`cache_dir` for these environment variables (asked once per class made at start)."""
    if switch.strip().lower() in _OFF:
        return None
    if not hasattr(os, "getuid"):  # no owner to check an entry against: never unpickle
        return None
    if explicit:
        return Path(explicit)
    if xdg and os.path.isabs(xdg):  # the XDG spec: a relative path is ignored
        return Path(xdg) / "iechs"
    try:
        return Path.home() / ".cache" / "iechs"
    except RuntimeError:  # no home directory
        return None


def file_digest(path: str | Path) -> str | None:
    """The sha256 of a file's bytes, or None when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


@functools.cache
def _fingerprint() -> str | None:
    """What every entry depends on besides its own files; None (no cache) when it cannot be
    known."""
    here = Path(__file__).resolve().parent
    parts: list[str] = [
        __version__,
        sys.version,
        sys.implementation.cache_tag or "",
        str(pickle.HIGHEST_PROTOCOL),
    ]
    try:
        for name in BUILD_MODULES:
            parts.append(f"{name}:{hashlib.sha256((here / f'{name}.py').read_bytes()).hexdigest()}")
        for contract in sorted((here / "contracts").glob("*.yaml")):
            parts.append(f"{contract.name}:{hashlib.sha256(contract.read_bytes()).hexdigest()}")
        for library in _LIBRARIES:
            parts.append(f"{library}:{_library_stamp(library)}")
    except (OSError, ValueError, ImportError):
        return None
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _library_stamp(name: str) -> str:
    """The installed library, without importing it: where its package is, its size and time
    (a reinstall or an upgrade changes them)."""
    import importlib.util  # noqa: PLC0415 - only when the cache is used

    spec = importlib.util.find_spec(name)
    origin = spec.origin if spec is not None else None
    if origin is None:
        return "absent"
    st = os.stat(origin)
    return f"{origin}:{st.st_size}:{st.st_mtime_ns}"


def entry_key(path: Path, shown: str, raw: bytes, *, structural: bool) -> str | None:
    """The key of a guideline file's entry (hex), or None when the cache is off."""
    if cache_dir() is None:
        return None
    fingerprint = _fingerprint()
    if fingerprint is None:
        return None
    fields = [fingerprint, str(path), shown, f"structural={structural}"]
    fields.append(hashlib.sha256(raw).hexdigest())
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()


def _secure_dir(folder: Path) -> bool:
    """Does the directory belong to this user, and may no one else write to it?"""
    try:
        st = os.stat(folder)
    except OSError:
        return False
    return _secure(st) and stat.S_ISDIR(st.st_mode)


def _secure(st: os.stat_result) -> bool:
    return st.st_uid == os.getuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def read(key: str) -> Guideline | None:
    """The guideline of an entry, or None (a miss) when there is none, or it cannot be trusted,
    or it is corrupt, or a file it was built from changed."""
    folder = cache_dir()
    if folder is None or not _secure_dir(folder):
        return None
    try:
        entry = _read_entry(folder / f"{key}{_GUIDELINE}")
        if entry is None:
            return None
        payload = pickle.loads(entry)
        from .model import Guideline  # noqa: PLC0415 - the loader has imported it already

        stored_key, deps, guideline = payload
        if stored_key != key or not isinstance(guideline, Guideline):
            return None
        if not _unchanged(deps):
            return None
    except Exception:  # whatever is wrong with an entry, it is a miss
        return None
    return guideline


#: How an entry is opened: no symlink followed, nothing waited for (a FIFO).
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


def _read_entry(path: str | Path, magic: bytes = _MAGIC) -> bytes | None:
    """The payload of an entry file (after `magic` and its checksum) when it is trusted and
    whole."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not (stat.S_ISREG(st.st_mode) and _secure(st)) or st.st_size > MAX_ENTRY_BYTES:
            return None
        # its size and one byte more (a file that grew since fails the checksum), not the
        # limit: a read of n bytes allocates n bytes first, 64 MB for an entry of a few kB
        data = os.read(fd, st.st_size + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    head = len(magic) + _DIGEST
    if len(data) < head or not data.startswith(magic):
        return None
    digest, payload = data[len(magic) : head], data[head:]
    if hashlib.sha256(payload).digest() != digest:
        return None
    return payload


def _unchanged(deps: Iterable[Dependency]) -> bool:
    return all(file_digest(path) == digest for path, digest in deps)


def cacheable(guideline: Guideline) -> bool:
    """May this guideline be cached? Only when its contract is a bundled one: the bundled
    contracts are part of every key, a contract named by path is not."""
    from .contract import bundled_contracts, contract_ref  # noqa: PLC0415 - a build did

    return contract_ref(guideline) in bundled_contracts()


def write(key: str, guideline: Guideline, deps: Sequence[Dependency]) -> None:
    """Keep a freshly loaded guideline; silently nothing when the cache cannot be written."""
    folder = cache_dir()
    if folder is None:
        return
    try:
        if not cacheable(guideline) or any(digest is None for _, digest in deps):
            return
        payload = pickle.dumps((key, tuple(deps), guideline), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # a guideline that cannot be kept is simply not cached
        return
    _keep(folder, key, _GUIDELINE, _MAGIC, payload)


def code(source: str, filename: str) -> types.CodeType:
    """`compile(source, filename, "exec")`, kept in the cache (for iechs's own generated source;
    a miss, or the cache off, compiles)."""
    folder = cache_dir()
    if folder is None:
        return compile(source, filename, "exec")
    # the Python that compiles, then the name and the source (the name's length keeps the two
    # apart)
    stamp = f"{sys.version}\0{sys.implementation.cache_tag}\0{marshal.version}\0{len(filename)}"
    key = hashlib.sha256(
        f"{stamp}\0{filename}{source}".encode("utf-8", "surrogatepass")
    ).hexdigest()
    if _secure_dir(folder):
        payload = _read_entry(os.path.join(folder, key + _CODE), _CODE_MAGIC)
        if payload is not None:
            try:
                found = marshal.loads(payload)
            except Exception:  # whatever is wrong with an entry, it is a miss
                found = None
            if isinstance(found, types.CodeType) and found.co_filename == filename:
                return found
    compiled = compile(source, filename, "exec")
    _keep(folder, key, _CODE, _CODE_MAGIC, marshal.dumps(compiled))
    return compiled


def _keep(folder: Path, key: str, suffix: str, magic: bytes, payload: bytes) -> None:
    """Write an entry (its magic, the payload's checksum, the payload); silently nothing when
    the cache cannot be written."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not _secure_dir(folder):
            return
        data = magic + hashlib.sha256(payload).digest() + payload
        _write_atomically(folder, f"{key}{suffix}", data, suffix)
        _prune(folder, suffix)
    except OSError:
        return


def _write_atomically(folder: Path, name: str, data: bytes, suffix: str = _GUIDELINE) -> None:
    import tempfile  # noqa: PLC0415 - only on a miss

    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, folder / name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _prune(folder: Path, suffix: str = _GUIDELINE) -> None:
    """Keep the newest entries of a kind (`suffix`): `MAX_ENTRIES` guidelines,
    `MAX_CODE_ENTRIES` compiled codes; remove what a killed writer left behind (a temporary
    file older than an hour). Names are listed first, and files are stat'ed only when there is
    something to remove: a start that fills an empty cache writes some 150 entries."""
    import time  # noqa: PLC0415 - only on a miss

    keep = MAX_CODE_ENTRIES if suffix == _CODE else MAX_ENTRIES
    with os.scandir(folder) as listing:
        names = [e.name for e in listing if e.name.endswith(suffix)]
    temporary = [n for n in names if n.startswith(".")]
    kept = [n for n in names if not n.startswith(".")]
    if len(kept) <= keep and not temporary:
        return
    stale = time.time_ns() - 3600 * 10**9
    doomed: list[str] = []
    for name in temporary:
        with contextlib.suppress(OSError):
            if os.stat(folder / name).st_mtime_ns < stale:
                doomed.append(name)
    if len(kept) > keep:
        entries: list[tuple[int, str]] = []
        for name in kept:
            with contextlib.suppress(OSError):
                entries.append((os.stat(folder / name).st_mtime_ns, name))
        entries.sort(reverse=True)
        doomed += [name for _, name in entries[keep:]]
    for name in doomed:
        with contextlib.suppress(OSError):
            (folder / name).unlink()
