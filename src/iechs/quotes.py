"""Quotes: `verified: true` is something a check can confirm.

A clinical statement may be `verified: true` only with a `quote:`, words of one of its cited
sources, that this check finds verbatim in the text of that source kept beside the guideline
(`Source.text`, a path relative to the guideline file, e.g. `sources/seed-summary.txt`).

Matching is verbatim after collapsing each run of whitespace to one space, on both sides, and
nothing else: no case folding and no folding of look-alike characters (the news seed writes
`IEC‑HS` with U+2011 non-breaking hyphens, and a quote from it must do the same).

The two seed sources (`SEED_FILES`) are also looked for in `shared/clinical/seeds/` beside the
checkout when their copy under `guideline/sources/` is missing (or not named by `text:`).
Texts are read once per call of `check_quotes`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from . import model as m
from .checks import citables
from .errors import Problem

__all__ = [
    "SEED_FILES",
    "SourceTexts",
    "check_quotes",
    "collapse",
    "quote_in",
    "quoted_statements",
    "texts_with_quote",
]

#: the seed sources and their file names in `shared/clinical/seeds/`.
SEED_FILES = {
    "seed-news-2026": "news-2026-high-risk-iec-hs.txt",
    "seed-summary": "summary-iec-hs-management.txt",
}
#: how far up from the guideline's folder `shared/clinical/seeds/` is looked for (the checkout's
#: `guideline/` is two levels below the folder that holds both the checkout and `shared/`).
_SEED_SEARCH_LEVELS = 4

_WHITESPACE = re.compile(r"\s+")

NEEDS_QUOTE = "verified: true needs a quote found in a source text"


def collapse(text: str) -> str:
    """`text` with every run of whitespace collapsed to one space, ends stripped."""
    return _WHITESPACE.sub(" ", text).strip()


def quote_in(quote: str, text: str) -> bool:
    """Whether `quote` occurs in `text`, verbatim once whitespace runs are collapsed."""
    q = collapse(quote)
    return bool(q) and q in collapse(text)


def quoted_statements(g: m.Guideline) -> list[tuple[str, m.Citable]]:
    """Every statement that carries a quote, with its JSON path (for reports)."""
    return [(path, item) for path, item in citables(g) if item.quote is not None]


class SourceTexts:
    """The texts of a guideline's sources, read once (relative to the guideline's folder) and
    kept collapsed. A source without a readable text gives None; why is in `problems`."""

    def __init__(self, g: m.Guideline, base_dir: Path) -> None:
        self.sources = g.sources
        self._dirs = _text_dirs(g, base_dir)
        self._seed_dirs = _seed_dirs(base_dir)
        self._texts: dict[str, str | None] = {}
        #: source key -> why its text could not be read (only for sources that declare one).
        self.problems: dict[str, Problem] = {}

    def get(self, key: str) -> str | None:
        if key not in self._texts:
            self._texts[key] = self._load(key)
        return self._texts[key]

    def path(self, key: str) -> Path | None:
        """The file the text of source `key` is read from, if there is one."""
        for candidate in self._candidates(key):
            if candidate.is_file():
                return candidate
        return None

    def _candidates(self, key: str) -> Iterator[Path]:
        source = self.sources.get(key)
        if source is not None and source.text:
            for d in self._dirs:
                yield d / source.text
        if key in SEED_FILES:
            for d in self._seed_dirs:
                yield d / SEED_FILES[key]

    def _load(self, key: str) -> str | None:
        path = self.path(key)
        if path is None:
            source = self.sources.get(key)
            if source is not None and source.text is not None:
                self.problems[key] = Problem(
                    f"the source text {source.text!r} is not there (relative to the guideline)",
                    f"$.sources.{key}.text",
                )
            return None
        try:
            return collapse(path.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else f"not UTF-8 text ({exc.reason})"
            self.problems[key] = Problem(
                f"cannot read the source text {str(path)!r}: {why}", f"$.sources.{key}.text"
            )
            return None


def _text_dirs(g: m.Guideline, base_dir: Path) -> list[Path]:
    # A profile inherits its sources from the guideline it extends, whose `text:` paths are
    # relative to that guideline's folder.
    dirs = [base_dir]
    if g.profile is not None:
        dirs.append(base_dir / Path(g.profile.extends).parent)
    return dirs


def _seed_dirs(base_dir: Path) -> list[Path]:
    start = base_dir.resolve()
    ups = [start, *start.parents][:_SEED_SEARCH_LEVELS]
    return [d / "shared" / "clinical" / "seeds" for d in ups]


def check_quotes(g: m.Guideline, base_dir: Path) -> list[Problem]:
    """Problems with the guideline's quotes, each at `$...quote` or `$...verified`.

    Every `verified: true` statement needs a quote; every quote (also on a `verified: false`
    statement) must be found in the text of at least one of the statement's cited sources.
    `base_dir` is the folder of the guideline file (source texts are relative to it)."""
    texts = SourceTexts(g, base_dir)
    problems: list[Problem] = []
    for path, item in citables(g):
        if item.quote is None:
            if item.verified:
                problems.append(Problem(NEEDS_QUOTE, f"{path}.verified"))
            continue
        problem = _check_one(item, texts)
        if problem is not None:
            problems.append(Problem(problem, f"{path}.quote"))
    # A declared text that cannot be read is a problem of its own (reported once, at the source).
    for key in g.sources:
        texts.get(key)
    problems.extend(texts.problems[k] for k in sorted(texts.problems))
    return problems


def _check_one(item: m.Citable, texts: SourceTexts) -> str | None:
    quote = collapse(item.quote or "")
    if not quote:
        return "a quote cannot be empty"
    with_text = [key for key in item.cite if texts.get(key) is not None]
    if not with_text:
        cited = ", ".join(item.cite) or "none"
        return (
            f"none of the cited sources ({cited}) has a text to find the quote in "
            "(give the source a `text:`)"
        )
    if any(quote in (texts.get(key) or "") for key in with_text):
        return None
    elsewhere = list(texts_with_quote(texts, quote, exclude=item.cite))
    hint = (
        f"; it is in {', '.join(elsewhere)}, which the statement does not cite" if elsewhere else ""
    )
    return f"quote not found in the text of {', '.join(with_text)}{hint}"


def texts_with_quote(
    texts: SourceTexts, quote: str, exclude: tuple[str, ...] = ()
) -> Iterator[str]:
    """Keys of the sources (other than `exclude`) whose text contains `quote` (collapsed)."""
    for key in texts.sources:
        if key not in exclude and (text := texts.get(key)) is not None and quote in text:
            yield key
