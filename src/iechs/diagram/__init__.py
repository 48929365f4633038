"""Pictures and machine exports of a guideline, for the people who write and review it.

extract (guideline -> plain data, `model`) -> renderers (`dot`, `mermaid`; `render` draws SVG
and PNG with the Graphviz bundled in pygraphviz); `exports` writes the compiled machine as
python-statemachine's native statechart (YAML/JSON) and W3C SCXML; `review` the HTML review
page; `diff` what changed between two versions; `artefacts` everything the checkout commits.

>>> from iechs import load_guideline
>>> from iechs.diagram import diagram_of
>>> d = diagram_of(load_guideline())
>>> len(d.nodes), d.node("first_line_steroids").name
(8, 'First line - corticosteroids')
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .diff import Change, diff_guidelines, diff_to_json, diff_to_text
    from .dot import to_dot
    from .exports import native_document, native_json, native_yaml, scxml_problems, to_scxml
    from .extract import diagram_of, with_path
    from .mermaid import to_mermaid
    from .model import Diagram, DiagramEdge, DiagramGroup, DiagramNode, Item, PathStep
    from .render import GraphvizError, render
    from .review import review_html

_EXPORTS = {
    "Change": "diff",
    "Diagram": "model",
    "DiagramEdge": "model",
    "DiagramGroup": "model",
    "DiagramNode": "model",
    "GraphvizError": "render",
    "Item": "model",
    "PathStep": "model",
    "diagram_of": "extract",
    "diff_guidelines": "diff",
    "diff_to_json": "diff",
    "diff_to_text": "diff",
    "native_document": "exports",
    "native_json": "exports",
    "native_yaml": "exports",
    "render": "render",
    "review_html": "review",
    "scxml_problems": "exports",
    "to_dot": "dot",
    "to_mermaid": "mermaid",
    "to_scxml": "exports",
    "with_path": "extract",
}

__all__ = [
    "Change",
    "Diagram",
    "DiagramEdge",
    "DiagramGroup",
    "DiagramNode",
    "GraphvizError",
    "Item",
    "PathStep",
    "diagram_of",
    "diff_guidelines",
    "diff_to_json",
    "diff_to_text",
    "native_document",
    "native_json",
    "native_yaml",
    "render",
    "review_html",
    "scxml_problems",
    "to_dot",
    "to_mermaid",
    "to_scxml",
    "with_path",
]


def __getattr__(name: str) -> Any:
    """Names are imported on first use, so that the CLI's command modules load fast."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'iechs.diagram' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
