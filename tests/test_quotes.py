"""`verified: true` needs a quote that `iechs.quotes.check_quotes` finds in a source text."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml

from iechs.checks import citables
from iechs.cli import main
from iechs.errors import Problem
from iechs.loader import load_guideline, parse_guideline
from iechs.model import Guideline
from iechs.quotes import (
    NEEDS_QUOTE,
    SEED_FILES,
    SourceTexts,
    check_quotes,
    collapse,
    quote_in,
    quoted_statements,
)

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "guideline" / "sources"
SEED_DIRS = [Path("/work/shared/clinical/seeds"), ROOT.parent / "shared" / "clinical" / "seeds"]

SUMMARY = """\
Special Considerations
- Tocilizumab should be used cautiously when concurrent ICANS (Immune Effector
  Cell-Associated Neurotoxicity Syndrome) is present, as it may worsen neurologic symptoms 1
- Frequent reassessment (at least every 12 hours) of clinical status and laboratory parameters
  is essential 1
"""
NEWS = (
    "Notably, IL\u20116 blockade, a mainstay for CRS, is discouraged as monotherapy for"
    " IEC\u2011HS.\n"
)

#: the sources of the test guideline: two with a kept text, one without.
SOURCE_DEFS: dict[str, dict[str, str]] = {
    "summary": {"citation": "a summary", "kind": "secondary", "text": "sources/summary.txt"},
    "news": {"citation": "a news item", "kind": "secondary", "text": "sources/news.txt"},
    "paper": {"citation": "a paper without a kept text"},
}


def _doc(statements: Mapping[str, object], sources: Mapping[str, object] | None = None) -> str:
    """A guideline reduced to what the check reads: sources, and statements (risk factors)."""
    doc = {
        "guideline": {
            "id": "t",
            "title": "quotes test",
            "version": "0",
            "status": "draft",
            "effective": "2026-01-01",
        },
        "sources": SOURCE_DEFS if sources is None else sources,
        "risk_factors": statements,
    }
    doc |= {k: {} for k in ("parameters", "observations", "findings", "drug_classes")}
    doc |= {k: {} for k in ("drugs", "events", "criteria", "states")}
    return yaml.safe_dump(doc, allow_unicode=True)


def _guideline(tmp_path: Path, **statements: Mapping[str, object]) -> Guideline:
    """A guideline in `tmp_path/guideline/` whose risk factors are `statements`, with the
    texts above kept under `sources/`."""
    folder = tmp_path / "guideline"
    (folder / "sources").mkdir(parents=True, exist_ok=True)
    (folder / "sources" / "summary.txt").write_text(SUMMARY, encoding="utf-8")
    (folder / "sources" / "news.txt").write_text(NEWS, encoding="utf-8")
    return parse_guideline(_doc(statements), str(folder / "test.yaml"), check=False)


def _check(tmp_path: Path, **statements: Mapping[str, object]) -> list[Problem]:
    return check_quotes(_guideline(tmp_path, **statements), tmp_path / "guideline")


def test_verified_without_a_quote_is_refused(tmp_path: Path) -> None:
    problems = _check(tmp_path, r={"text": "t", "cite": ["summary"], "verified": True})
    assert problems == [Problem(NEEDS_QUOTE, "$.risk_factors.r.verified")]


def test_unverified_without_a_quote_is_accepted(tmp_path: Path) -> None:
    assert _check(tmp_path, r={"text": "t", "cite": ["summary"]}) == []


def test_a_quote_found_in_a_cited_source_is_accepted(tmp_path: Path) -> None:
    quote = "Tocilizumab should be used cautiously when concurrent ICANS"
    statement = {"text": "t", "cite": ["paper", "summary"], "verified": True, "quote": quote}
    g = _guideline(tmp_path, r=statement)
    assert check_quotes(g, tmp_path / "guideline") == []
    assert [path for path, _ in quoted_statements(g)] == ["$.risk_factors.r"]


def test_a_quote_not_in_the_source_is_refused(tmp_path: Path) -> None:
    quote = "Tocilizumab should never be used when ICANS is present"
    (problem,) = _check(
        tmp_path, r={"text": "t", "cite": ["summary"], "verified": True, "quote": quote}
    )
    assert problem.path == "$.risk_factors.r.quote"
    assert problem.message == "quote not found in the text of summary"


def test_a_quote_on_an_unverified_statement_is_checked_too(tmp_path: Path) -> None:
    good = {"text": "t", "cite": ["summary"], "quote": "at least every 12 hours"}
    bad = {"text": "t", "cite": ["summary"], "quote": "at least every 6 hours"}
    problems = _check(tmp_path, good=good, bad=bad)
    assert [p.path for p in problems] == ["$.risk_factors.bad.quote"]


def test_a_quote_from_a_source_the_statement_does_not_cite_is_refused(tmp_path: Path) -> None:
    quote = "discouraged as monotherapy"
    (problem,) = _check(
        tmp_path, r={"text": "t", "cite": ["summary"], "verified": True, "quote": quote}
    )
    assert problem.path == "$.risk_factors.r.quote"
    assert "it is in news, which the statement does not cite" in problem.message


def test_a_quote_needs_a_cited_source_with_a_text(tmp_path: Path) -> None:
    (problem,) = _check(
        tmp_path, r={"text": "t", "cite": ["paper"], "verified": True, "quote": "anything"}
    )
    assert problem.path == "$.risk_factors.r.quote"
    assert "none of the cited sources (paper) has a text" in problem.message


def test_an_empty_quote_is_refused(tmp_path: Path) -> None:
    (problem,) = _check(
        tmp_path, r={"text": "t", "cite": ["summary"], "verified": True, "quote": " \n "}
    )
    assert problem == Problem("a quote cannot be empty", "$.risk_factors.r.quote")


def test_whitespace_runs_collapse_on_both_sides(tmp_path: Path) -> None:
    # The source breaks the sentence over two lines; the quote breaks it elsewhere, with
    # extra spaces and a tab: both collapse to single spaces.
    quote = (
        "concurrent ICANS (Immune Effector Cell-Associated\n   Neurotoxicity\tSyndrome)  is present"
    )
    assert (
        _check(tmp_path, r={"text": "t", "cite": ["summary"], "verified": True, "quote": quote})
        == []
    )
    assert collapse("  a \n\t b  ") == "a b"
    assert quote_in("a  b", "x a\nb y")
    assert not quote_in("ab", "a b")


def test_nothing_but_whitespace_is_normalised(tmp_path: Path) -> None:
    # The news text writes IEC‑HS with U+2011 non-breaking hyphens: an ASCII hyphen, or
    # another case, does not match.
    for quote in ("monotherapy for IEC-HS", "Discouraged as monotherapy"):
        statement = {"text": "t", "cite": ["news"], "verified": True, "quote": quote}
        assert [p.path for p in _check(tmp_path, r=statement)] == ["$.risk_factors.r.quote"]
    statement = {"text": "t", "cite": ["news"], "verified": True, "quote": "for IEC\u2011HS"}
    assert _check(tmp_path, r=statement) == []


def test_a_declared_text_that_is_missing_is_reported_at_the_source(tmp_path: Path) -> None:
    g = _guideline(tmp_path, r={"text": "t", "cite": ["news"]})
    (tmp_path / "guideline" / "sources" / "news.txt").unlink()
    (problem,) = check_quotes(g, tmp_path / "guideline")
    assert problem.path == "$.sources.news.text"
    assert "'sources/news.txt' is not there" in problem.message


def test_a_seed_text_is_found_in_shared_when_the_copy_is_missing(tmp_path: Path) -> None:
    # Layout of the workplace: <root>/main/guideline (the checkout) beside <root>/shared.
    seeds = tmp_path / "shared" / "clinical" / "seeds"
    seeds.mkdir(parents=True)
    (seeds / SEED_FILES["seed-summary"]).write_text(SUMMARY, encoding="utf-8")
    folder = tmp_path / "main" / "guideline"
    folder.mkdir(parents=True)
    seed = {"citation": "s", "text": "sources/seed-summary.txt"}
    statement = {"text": "t", "cite": ["seed-summary"], "verified": True, "quote": "every 12 hours"}
    g = parse_guideline(_doc({"r": statement}, {"seed-summary": seed}), "x", check=False)
    assert check_quotes(g, folder) == []
    # Not so for another source: its own copy must be there.
    other = {"citation": "o", "text": "sources/summary.txt"}
    statement["cite"] = ["summary"]
    g = parse_guideline(_doc({"r": statement}, {"summary": other}), "x", check=False)
    assert [p.path for p in check_quotes(g, folder)] == [
        "$.risk_factors.r.quote",
        "$.sources.summary.text",
    ]


def test_a_profile_reads_the_texts_beside_the_guideline_it_extends(tmp_path: Path) -> None:
    statement = {"text": "t", "cite": ["summary"], "verified": True, "quote": "every 12 hours"}
    _guideline(tmp_path)  # writes the texts under guideline/sources/
    (tmp_path / "guideline" / "base.yaml").write_text(_doc({"r": statement}), encoding="utf-8")
    profiles = tmp_path / "guideline" / "profiles"
    profiles.mkdir()
    profile = "profile: {extends: ../base.yaml, rationale: test}\n"
    g = parse_guideline(profile, str(profiles / "p.yaml"), check=False, base_dir=profiles)
    assert [path for path, _ in quoted_statements(g)] == ["$.risk_factors.r"]
    assert check_quotes(g, profiles) == []


@pytest.mark.parametrize(("key", "seed"), sorted(SEED_FILES.items()))
def test_the_repository_copies_equal_the_seeds(key: str, seed: str) -> None:
    seeds = next((d for d in SEED_DIRS if d.is_dir()), None)
    if seeds is None:
        pytest.skip("no shared/clinical/seeds beside the checkout: nothing to compare with")
    assert (SOURCES / f"{key}.txt").read_bytes() == (seeds / seed).read_bytes()


@pytest.mark.parametrize("name", ["iec-hs.yaml", "profiles/astct-2023.yaml"])
def test_every_verified_statement_of_the_bundled_guideline_has_a_quote_found(name: str) -> None:
    """The invariant: in the bundled guideline and its profile, every `verified: true`
    statement has a quote, and every quote is in the text of a source it cites, read from the
    copies under guideline/sources/ (the ones the wheel ships)."""
    path = ROOT / "guideline" / name
    g = load_guideline(path)
    statements = list(citables(g))
    assert any(item.verified for _, item in statements)
    assert [p for p, item in statements if item.verified and not item.quote] == []
    assert check_quotes(g, path.parent) == []
    texts = SourceTexts(g, path.parent)
    kept = {key: s.text for key, s in g.sources.items() if s.text is not None}
    assert set(kept) >= set(SEED_FILES)
    found = {key: texts.path(key) for key in kept}
    assert {key: p.resolve() if p else None for key, p in found.items()} == {
        key: (SOURCES.parent / text).resolve() for key, text in kept.items()
    }


def _copy_guideline(tmp_path: Path) -> Path:
    """The bundled guideline, its profile and its source texts, copied under `tmp_path`."""
    folder = tmp_path / "guideline"
    shutil.copytree(SOURCES.parent, folder)
    return folder


def test_validate_refuses_a_quote_not_in_its_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _copy_guideline(tmp_path)
    path = folder / "iec-hs.yaml"
    good = "    quote: enzymes such as LDH and AST rise sharply\n"
    text = path.read_text(encoding="utf-8")
    assert good in text
    line = text[: text.index(good)].count("\n") + 1
    path.write_text(text.replace(good, good.replace("AST", "ALT"), 1), encoding="utf-8")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"iechs validate: {path}:{line}: $.observations.ast.quote: "), err
    assert "quote not found in the text of seed-news-2026" in err


def test_validate_names_the_base_file_for_a_quote_a_profile_inherits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The profile's anakinra-now merges over the base's: without `quote: null` it inherits a
    # quote from a source it does not cite, and the problem is at the base's line.
    folder = _copy_guideline(tmp_path)
    profile = folder / "profiles" / "astct-2023.yaml"
    text = profile.read_text(encoding="utf-8")
    lines = [x for x in text.splitlines(keepends=True) if x.startswith("    quote: null")]
    assert len(lines) == 1
    profile.write_text(text.replace(lines[0], ""), encoding="utf-8")
    assert main(["validate", str(profile)]) == 2
    err = capsys.readouterr().err
    base = os.path.normpath(profile.parent / "../iec-hs.yaml")
    assert f"{base}:" in err
    assert "$.actions.anakinra-now.quote: none of the cited sources (hines-2023)" in err


def test_a_guideline_that_shares_texts_with_another_is_checked_per_call(tmp_path: Path) -> None:
    # Texts are read once per call: a second call sees a changed text.
    statement = {"text": "t", "cite": ["news"], "verified": True, "quote": "a mainstay for CRS"}
    g = _guideline(tmp_path, r=statement)
    assert check_quotes(g, tmp_path / "guideline") == []
    shutil.copy(
        tmp_path / "guideline" / "sources" / "summary.txt",
        tmp_path / "guideline" / "sources" / "news.txt",
    )
    assert [p.path for p in check_quotes(g, tmp_path / "guideline")] == ["$.risk_factors.r.quote"]
