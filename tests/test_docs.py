"""The README and the pages behind it: every relative link (and its #anchor) leads somewhere, every config, script
and source file they name exists, and the README stays a README."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
# a path of the repository named in running text or a command: configs, benchmarks, sources, tests, CI scripts
NAMED_PATH = re.compile(r"(?<![\w/.-])((?:experiments|benchmarks|attacks|models|assets|advsweep|tests|docs|\.ci)"
                        r"/[\w./-]*[\w])")


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a Markdown page's headings: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for line in page.read_text().splitlines():
        heading = re.match(r"^#{1,6} (.+)$", line)
        if heading:
            text = re.sub(r"[`*_]", "", heading.group(1)).strip().lower()
            anchors.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", text)))
    return anchors


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """The page's relative links (and #anchors) that lead nowhere."""
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"^[a-z]+:", target):  # https:, mailto:: not checked offline
            continue
        path, _, anchor = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        if not destination.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and destination.suffix == ".md" and anchor not in _anchors(destination):
            broken.append(f"{target} (no heading #{anchor} in {destination.relative_to(root)})")
    return broken


def missing_paths(page: Path, root: Path = ROOT) -> list[str]:
    """Configs, benchmark scripts, modules and tests named in the page's text (e.g. `experiments/configs/madry.toml`,
    `python benchmarks/attack_speed.py`) that the repository at ``root`` lacks."""
    missing = []
    for name in set(NAMED_PATH.findall(page.read_text())):
        if any(part in name for part in ("<", "*", "…")) or name.startswith("docs/") and page.parent.name == "docs":
            continue
        if not (root / name).exists():
            missing.append(name)
    return sorted(missing)


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_every_relative_link_leads_to_a_file_and_heading(page):
    assert not broken_links(page), broken_links(page)


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_every_path_the_docs_name_exists(page):
    assert not missing_paths(page), missing_paths(page)


def test_the_docs_checks_catch_a_broken_link_and_a_missing_path(tmp_path):
    """The two checks above, run on a page with a dead link, a dead anchor, a good anchor and a config that does not
    exist, report exactly the three faults; on the repaired page, none."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "experiments" / "configs").mkdir(parents=True)
    page = tmp_path / "docs" / "page.md"
    page.write_text("# Title\n\nSee [this](other.md), [that](#no-such-heading), [ok](#title) and "
                    "`experiments/configs/nope.toml`.\n")
    assert broken_links(page, tmp_path) == ["other.md (no such file)",
                                            "#no-such-heading (no heading #no-such-heading in docs/page.md)"]
    assert missing_paths(page, tmp_path) == ["experiments/configs/nope.toml"]
    (tmp_path / "docs" / "other.md").write_text("# Other\n")
    (tmp_path / "experiments" / "configs" / "nope.toml").write_text("")
    page.write_text(page.read_text().replace("#no-such-heading", "#title"))
    assert broken_links(page, tmp_path) == [] and missing_paths(page, tmp_path) == []


def test_the_readme_is_short_and_names_no_issue_numbers():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for page in PAGES:
        assert not re.search(r"\bissues? \d+\b", page.read_text(), re.IGNORECASE), page.name


def test_the_readme_commands_are_the_ones_ci_runs():
    """Command 1 installs the runtime only and runs the quick sweep; command 2 installs the test extra and runs the
    default suite, which is what .ci/run calls."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, re.DOTALL)
    assert blocks[0] == ("python3 -m venv .venv && .venv/bin/pip install -e . && "
                         ".venv/bin/advsweep sweep experiments/configs/quick.toml")
    assert blocks[1] == '.venv/bin/pip install -e ".[test]" && .venv/bin/python -m pytest'
    ci = (ROOT / ".ci" / "run").read_text()
    assert "\n.venv/bin/python -m pytest\n" in ci and ".[test]" in ci
