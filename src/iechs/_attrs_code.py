"""The code of iechs's attrs classes, compiled once and kept in iechs's cache.

attrs writes each class's methods (`__init__`, `__eq__`, `__hash__`, `__repr__`, ...) as
Python source and compiles it when the class is made. For iechs's classes that compiling is
about a seventh of a command's start (117 of `iechs run`'s 791 million instructions, some 30 ms).
`install()` has attrs take the compiled code from `iechs.cache.code` instead, the cache that
keeps the criteria's generated code: the same source and file name give the very code object
`compile` would.

One thing in attrs's source differs from one process to the next: `__hash__` mixes in a number
(the hash of a name, which Python salts per process). That number is given to the code as a
global variable instead of a literal, so one cached entry serves every process; the hashes it
computes are the ones attrs's own code computes.

Only classes of iechs's modules are served this way (attrs names their source after the module);
every other class is compiled by attrs as before. Where attrs's internals are not as expected,
`install()` does nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .cache import code

__all__ = ["install"]

#: The file name attrs gives the code of an iechs class: "<attrs generated methods
#: iechs.model.Guideline>" (and "getattr", for a class with a cached property).
_OURS = re.compile(r"<attrs generated (?:methods|getattr) (iechs\.[\w.]+)>")
#: The name the per-process number of `__hash__` is given by.
_SALT = "__iechs_attrs_hash_salt__"

_installed = False


def install() -> None:
    """Serve the compiled code of iechs's attrs classes from the cache (once per process)."""
    global _installed  # noqa: PLW0603 - once per process
    if _installed:
        return
    _installed = True
    from attr import _make  # noqa: PLC0415 - attrs's internals, read only to be replaced

    original = getattr(_make, "_compile_and_eval", None)
    if original is None or _parameters(original) != ("script", "globs", "locs", "filename"):
        return  # another attrs than the one this was written for: it compiles as it will

    def compile_and_eval(
        script: str,
        globs: dict[str, Any] | None,
        locs: Mapping[str, object] | None = None,
        filename: str = "",
    ) -> None:
        ours = _OURS.fullmatch(filename)
        if ours is None or globs is None:
            original(script, globs, locs, filename)
            return
        source = script
        if "def __hash__(" in script:
            salt = hash(f"<attrs generated hash {ours.group(1)}>")
            literal = f" {salt},\n"
            if script.count(literal) != 1:  # not the source known here: attrs compiles it
                original(script, globs, locs, filename)
                return
            source = script.replace(literal, f" {_SALT},\n")
            globs[_SALT] = salt
        eval(code(source, filename), globs, locs)  # attrs's own source, compiled as attrs would

    _make._compile_and_eval = compile_and_eval


def _parameters(function: Any) -> tuple[str, ...]:
    import inspect  # noqa: PLC0415 - attrs has imported it

    try:
        return tuple(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return ()
