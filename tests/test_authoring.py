"""Author guards of `iechs validate`: numbers a criterion's name or description states that its
definition no longer has, and (with `--baseline`, a file or a git revision) content changed
without a new version and `verified: true` statements that changed. Warnings print; exit 0,
or 1 with `--strict`."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import attrs
import pytest

from iechs import Guideline, load_guideline
from iechs import model as m
from iechs.authoring import (
    AuthorWarning,
    baseline_warnings,
    name_numbers,
    number_warnings,
    stated_numbers,
)
from iechs.cli import main

ROOT = Path(__file__).resolve().parents[1]
GUIDELINE = ROOT / "guideline" / "iec-hs.yaml"
PROFILE = ROOT / "guideline" / "profiles" / "astct-2023.yaml"
#: the bundled guideline's version, as its file states it (the tests bump it past this)
VERSION = re.search(r"^  version: (\S+)$", GUIDELINE.read_text(encoding="utf-8"), re.M)[1]  # type: ignore[index]
CUT_OFF = 'threshold: {observation: ferritin, op: ">", value: 10000, unit: ng/mL}'


@pytest.fixture
def capture(capsys: pytest.CaptureFixture[str]) -> Any:
    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def warnings_in(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("warning: ")]


def line_of(path: Path, text: str) -> int:
    """The 1-based line of the first line of `path` that contains `text`."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if text in line:
            return number
    raise AssertionError(text)


def edited(tmp_path: Path, *changes: tuple[str, str]) -> Path:
    """A copy of guideline/ (sources and profiles too) with `changes` made to iec-hs.yaml."""
    folder = tmp_path / "guideline"
    shutil.copytree(ROOT / "guideline", folder)
    path = folder / "iec-hs.yaml"
    text = path.read_text(encoding="utf-8")
    for old, new in changes:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path.write_text(text, encoding="utf-8")
    return path


# --- the bundled guideline: no false warnings ---------------------------------------------------


@pytest.mark.parametrize("path", [GUIDELINE, PROFILE], ids=["guideline", "astct-profile"])
def test_bundled_guidelines_have_no_author_warnings(path: Path, capture: Any) -> None:
    assert number_warnings(load_guideline(path)) == []
    code, out, _ = capture("validate", str(path), "--strict")
    assert code == 0
    assert warnings_in(out) == []
    code, out, _ = capture("validate", str(path), "--baseline", str(path), "--strict")
    assert code == 0
    assert warnings_in(out) == []


def test_the_checker_reads_the_bundled_numbers(guideline: Guideline) -> None:
    """Not vacuous: the bundled criteria do state numbers, and each agrees with its definition."""
    units = {u for o in guideline.observations.values() for u in o.units}
    stated = {
        cid: [s.text for s in name_numbers(cid) + stated_numbers(c.description, units)]
        for cid, c in guideline.criteria.items()
    }
    assert stated["ferritin_above_10000"] == ["10000", "10,000 ng/mL"]
    assert stated["fibrinogen_below_150"] == ["150", "150 mg/dL", "1.5 g/L"]  # 1.5 g/L = 150
    assert stated["escalation_overdue"] == ["24-48"]  # a range holding $escalation_due_hours
    assert stated["ast_above_5x_uln"] == ["5x"]
    assert stated["cartox_hlh"] == ["10,000 ng/mL"]  # a combined criterion's cut-off
    assert sum(len(v) for v in stated.values()) >= 30


# --- the author scenario ------------------------------------------------------------------------


def test_ferritin_cut_off_changed_without_its_name_description_version_or_verification(
    tmp_path: Path, capture: Any
) -> None:
    new = edited(tmp_path, (CUT_OFF, CUT_OFF.replace("10000", "5000")))
    code, out, err = capture("validate", str(new), "--baseline", str(GUIDELINE))
    assert code == 0, err  # warnings do not fail validation
    assert f"ok — iec-hs {VERSION}" in out
    found = warnings_in(out)
    shown = str(new)
    criterion = line_of(new, "  ferritin_above_10000:")
    cut_off = line_of(new, CUT_OFF.replace("10000", "5000"))
    description = line_of(new, "description: Ferritin above 10,000 ng/mL.")
    cartox = line_of(new, "  cartox_hlh:")
    cartox_description = line_of(new, "description: CARTOX rule, ferritin above 10,000")
    version = line_of(new, f"  version: {VERSION}")
    expected = [
        (
            f"{shown}:{criterion}: $.criteria.ferritin_above_10000: criterion "
            "ferritin_above_10000: its name states '10000', which its definition does not use "
            "(it uses 5000 (threshold value)",
            "[stated_number]",
        ),
        (
            f"{shown}:{description}: $.criteria.ferritin_above_10000.description: criterion "
            "ferritin_above_10000: its description states '10,000 ng/mL', which its definition "
            "does not use (it uses 5000 (threshold value)",
            "[stated_number]",
        ),
        (
            f"{shown}:{cartox_description}: $.criteria.cartox_hlh.description: criterion "
            "cartox_hlh: its description states '10,000 ng/mL', which its definition does not "
            "use (it uses 5000 (ferritin_above_10000: threshold value)",
            "[stated_number]",
        ),
        (
            f"{shown}:{version}: $.guideline.version: the guideline's content changed since "
            f"{GUIDELINE} (in criteria) but its version is still {VERSION}: raise it",
            "[version_not_bumped]",
        ),
        (
            f"{shown}:{cut_off}: $.criteria.ferritin_above_10000.threshold.value: criterion "
            f"ferritin_above_10000 is verified: true but changed since {GUIDELINE} "
            "(threshold.value 10000 -> 5000): check it against its source again",
            "[verified_changed]",
        ),
        (
            f"{shown}:{cartox}: $.criteria.cartox_hlh: criterion cartox_hlh is verified: true "
            f"but changed since {GUIDELINE} (combines criterion ferritin_above_10000 "
            "(threshold.value 10000 -> 5000))",
            "[verified_changed]",
        ),
    ]
    assert len(found) == len(expected), "\n".join(found)
    for line, (start, code_) in zip(found, expected, strict=True):
        assert line.startswith(f"warning: {start}"), line
        assert line.endswith(code_), line
    assert "6 author warning(s): --strict makes them fail it" in out
    # --strict: the same warnings fail validation (exit 1)
    code, out, _ = capture("validate", str(new), "--baseline", str(GUIDELINE), "--strict")
    assert code == 1
    assert len(warnings_in(out)) == 6
    assert "validation fails (--strict)" in out
    # without a baseline, the number warnings alone
    code, out, _ = capture("validate", str(new))
    assert code == 0
    assert [w.rsplit(" ", 1)[1] for w in warnings_in(out)] == ["[stated_number]"] * 3


def test_a_consistent_edit_leaves_only_the_verification_warnings(
    tmp_path: Path, capture: Any
) -> None:
    """The author renames and rewords, and raises the version: what is left is to verify the
    changed statements again (the quote still says 10,000). The renamed criterion is paired
    with its old self (the same quote), and the rename alone changes nothing in cartox_hlh."""
    new = edited(
        tmp_path,
        (CUT_OFF, CUT_OFF.replace("10000", "5000")),
        (f"  version: {VERSION}", "  version: 99.0.0"),
        ("description: Ferritin above 10,000 ng/mL.", "description: Ferritin above 5 000 ng/mL."),
        (
            "description: CARTOX rule, ferritin above 10,000 ng/mL",
            "description: CARTOX rule, ferritin above 5000 ng/mL",
        ),
    )
    text = new.read_text(encoding="utf-8").replace("ferritin_above_10000", "ferritin_above_5000")
    new.write_text(text, encoding="utf-8")
    code, out, _ = capture("validate", str(new), "--baseline", str(GUIDELINE))
    assert code == 0
    found = [" ".join(w.split()) for w in warnings_in(out)]
    assert [w.rsplit(" ", 1)[1] for w in found] == ["[verified_changed]"] * 2, found
    renamed, cartox = found
    assert (
        "$.criteria.ferritin_above_5000.description: criterion ferritin_above_5000 (was "
        "ferritin_above_10000) is verified: true but changed since"
    ) in renamed
    assert "(description reworded; threshold.value 10000 -> 5000)" in renamed
    assert "criterion cartox_hlh is verified: true but changed" in cartox
    assert "(description reworded; combines criterion ferritin_above_5000 " in cartox
    assert "all [" not in cartox  # the rename of what it combines is no change


def test_unchanged_guideline_against_itself_has_no_warnings(tmp_path: Path, capture: Any) -> None:
    new = edited(tmp_path, ("# IEC-HS management", "# A comment is not content. IEC-HS management"))
    code, out, _ = capture("validate", str(new), "--baseline", str(GUIDELINE), "--strict")
    assert code == 0
    assert warnings_in(out) == []


def test_a_shared_statement_is_one_warning_naming_every_state(tmp_path: Path, capture: Any) -> None:
    new = edited(
        tmp_path,
        ("- text: Transfusion support for cytopenias.", "- text: Transfuse for cytopenias."),
        (f"  version: {VERSION}", "  version: 99.0.0"),
    )
    code, out, _ = capture("validate", str(new), "--baseline", str(GUIDELINE))
    assert code == 0
    (found,) = warnings_in(out)
    line = line_of(new, "- text: Transfuse for cytopenias.")
    assert found.startswith(
        f"warning: {new}:{line}: $.states.first_line_steroids.supportive_care[0].text: supportive "
        "care[0] of states first_line_steroids, second_line_anakinra, refractory_ruxolitinib, "
        "salvage is verified: true but changed"
    )
    assert "(text reworded)" in found


def test_a_profile_change_is_placed_in_the_profile(tmp_path: Path, capture: Any) -> None:
    edited(tmp_path)
    profile = tmp_path / "guideline" / "profiles" / "astct-2023.yaml"
    text = profile.read_text(encoding="utf-8")
    text = text.replace(
        "states:\n",
        "parameters:\n  reassessment_interval_hours:\n    value: 8\n"
        "  lab_validity_hours:\n    value: 36\n\nstates:\n",
        1,
    ).replace(f"  version: {VERSION}", "  version: 99.0.0")
    profile.write_text(text, encoding="utf-8")
    code, out, _ = capture("validate", str(profile), "--baseline", str(PROFILE))
    assert code == 0
    found = [" ".join(w.split()) for w in warnings_in(out)]
    line = line_of(profile, "    value: 8")
    assert (
        f"warning: {profile}:{line}: $.parameters.reassessment_interval_hours.value: parameter "
        f"reassessment_interval_hours is verified: true but changed since {PROFILE} (value 12 -> 8)"
    ) in "\n".join(found)
    # verified statements of the base that name a changed parameter are flagged too, at their
    # place in the base's file, and so are those combining them
    assert all("[verified_changed]" in w for w in found)
    base = tmp_path / "guideline" / "iec-hs.yaml"
    named = {
        w.split(": ")[2]: w.split(": ")[1].startswith(f"{base}:")
        for w in found
        if "$lab_validity_hours 48 -> 36)" in w
    }
    direct = ("ast_rising", "ferritin_falling", "ferritin_not_falling", "ldh_rising")
    combining = ("no_response", "response_achieved")  # all: [..., ferritin_falling]
    assert named == {f"$.criteria.{c}": True for c in direct + combining}


# --- a git revision as the baseline -------------------------------------------------------------


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


def test_git_revision_baseline(
    tmp_path: Path, capture: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(ROOT / "guideline", repo / "guideline")
    git(repo, "init", "-q")
    git(repo, "add", "guideline")
    git(repo, "commit", "-q", "-m", "guideline as reviewed")
    path = repo / "guideline" / "iec-hs.yaml"
    path.write_text(
        path.read_text(encoding="utf-8").replace(CUT_OFF, CUT_OFF.replace("10000", "5000")),
        encoding="utf-8",
    )
    monkeypatch.chdir(repo)
    spec = "HEAD:guideline/iec-hs.yaml"
    code, out, err = capture("validate", "guideline/iec-hs.yaml", "--baseline", spec, "--strict")
    assert code == 1, err
    found = warnings_in(out)
    assert sorted(re.findall(r"\[(\w+)\]$", w)[0] for w in found) == [
        "stated_number",
        "stated_number",
        "stated_number",
        "verified_changed",
        "verified_changed",
        "version_not_bumped",
    ]
    assert f"changed since {spec} (in criteria)" in out
    # the working copy against itself as committed after the edit: nothing changed
    git(repo, "commit", "-q", "-am", "cut-off 5000")
    code, out, _ = capture("validate", "guideline/iec-hs.yaml", "--baseline", spec)
    assert code == 0
    assert all("[stated_number]" in w for w in warnings_in(out))
    # a revision that does not exist: bad input
    code, _, err = capture("validate", "guideline/iec-hs.yaml", "--baseline", "nope:x.yaml")
    assert code == 2
    assert "nope:x.yaml" in err
    assert "Traceback" not in err


# --- matching numbers, on hand-made criteria ---------------------------------------------------


def with_criterion(g: Guideline, cid: str, criterion: m.Criterion) -> Guideline:
    return attrs.evolve(g, criteria={**g.criteria, cid: criterion})


def codes(warnings: list[AuthorWarning]) -> list[tuple[str, str]]:
    return [(w.code, w.path) for w in warnings]


@pytest.mark.parametrize(
    ("cid", "description", "definition", "ok"),
    [
        # thousands separators, decimals, and the definition's number in another unit
        ("ferritin_over_10000", "above 10 000 ng/mL", {"threshold": 10000.0}, True),
        ("ferritin_over_10000", "above 10\u202f000 ng/mL", {"threshold": 10000.0}, True),
        ("ferritin_high", "above 10,000.5 ng/mL", {"threshold": 10000.5}, True),
        ("ferritin_high", "above 10,000 ng/mL", {"threshold": 5000.0}, False),
        ("fibrinogen_low", "below 1.5 g/L", {"fibrinogen": 150.0}, True),
        ("fibrinogen_low", "below 1.2 g/L", {"fibrinogen": 150.0}, False),
        # a multiple of a parameter: the factor, the parameter's value, or their product
        ("ferritin_above_2x_uln", "above 2x ULN (600 ng/mL)", {"ratio": 2.0}, True),
        ("ferritin_above_3x_uln", "above 3× ULN", {"ratio": 2.0}, False),
        ("ferritin_above_uln", "above 300 ng/mL, the ULN", {"ratio": 2.0}, True),
        # identifiers and words are not numbers
        ("il6_running", "IL-6 blockade (HLH-2004, CD19) in two doses", {"threshold": 1.0}, True),
    ],
)
def test_stated_numbers_against_the_definition(
    guideline: Guideline, cid: str, description: str, definition: dict[str, float], ok: bool
) -> None:
    kind, value = next(iter(definition.items()))
    if kind == "threshold":
        spec: dict[str, Any] = {
            "threshold": m.Threshold(observation="ferritin", op=">", value=value, unit="ng/mL")
        }
    elif kind == "fibrinogen":
        spec = {"threshold": m.Threshold(observation="fibrinogen", op="<", value=value)}
    else:
        spec = {
            "ratio": m.Ratio(
                observation="ferritin", op=">", factor=value, reference="$ferritin_uln"
            )
        }
    g = with_criterion(
        guideline, cid, m.Criterion(description=description, cite=("hines-2023",), **spec)
    )
    found = [w for w in number_warnings(g) if w.subject == f"criterion {cid}:"]
    assert (found == []) is ok, found


def test_a_renamed_number_in_the_name(guideline: Guideline) -> None:
    c = guideline.criteria["fibrinogen_below_150"]
    g = with_criterion(guideline, "fibrinogen_below_100", c)
    (found,) = [w for w in number_warnings(g) if "fibrinogen_below_100" in w.subject]
    assert found.path == "$.criteria.fibrinogen_below_100"
    assert "its name states '100'" in found.message
    assert "it uses 150 (threshold value)" in found.message


# --- against a baseline, on hand-made changes ----------------------------------------------------


def test_a_changed_parameter_flags_verified_statements_that_name_it(guideline: Guideline) -> None:
    params = dict(guideline.parameters)
    params["reassessment_interval_hours"] = attrs.evolve(
        params["reassessment_interval_hours"], value=8.0
    )
    new = attrs.evolve(
        guideline, parameters=params, guideline=attrs.evolve(guideline.guideline, version="99.0.0")
    )
    found = baseline_warnings(new, guideline)
    where = "$.parameters.reassessment_interval_hours.value"
    assert codes(found) == [("verified_changed", where)]
    (param,) = found
    assert "(value 12 -> 8)" in param.message
    assert not any(w.code.startswith("version") for w in found)


def test_statements_moved_within_a_list_or_newly_verified_are_not_flagged(
    guideline: Guideline,
) -> None:
    state = guideline.states["first_line_steroids"]
    care = state.supportive_care
    moved = attrs.evolve(state, supportive_care=(*care[1:], care[0]))
    new = attrs.evolve(guideline, states={**guideline.states, "first_line_steroids": moved})
    found = baseline_warnings(new, guideline)
    assert [w.code for w in found] == ["version_not_bumped"]
    # false -> true together with a change: verified in this very edit
    hemophagocytosis = guideline.criteria["hemophagocytosis"]
    assert not hemophagocytosis.verified
    now = attrs.evolve(hemophagocytosis, verified=True, description="Haemophagocytosis seen.")
    found = baseline_warnings(with_criterion(guideline, "hemophagocytosis", now), guideline)
    assert [w.code for w in found] == ["version_not_bumped"]


def test_version_lowered(guideline: Guideline) -> None:
    older = attrs.evolve(guideline, guideline=attrs.evolve(guideline.guideline, version="0.1.9"))
    assert codes(baseline_warnings(older, guideline)) == [
        ("version_decreased", "$.guideline.version")
    ]
    assert baseline_warnings(guideline, guideline) == []
