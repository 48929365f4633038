"""Load a sibling test module by name: the tests run with `--import-mode=importlib` and are not a
package, so a module that holds shared helpers (a server fixture, request builders) is loaded
from its file. `pythonpath = ["tests"]` (pyproject) makes this module importable."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

__all__ = ["load"]


def load(name: str) -> Any:
    """The module `tests/NAME.py`, loaded once more under the name `_NAME`."""
    spec = importlib.util.spec_from_file_location(
        f"_{name}", Path(__file__).with_name(f"{name}.py")
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
