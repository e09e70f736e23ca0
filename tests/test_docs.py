"""The README and the pages behind it: every relative link (and its #anchor) leads somewhere, every config, script
and source file they name exists, and the README stays a README."""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path
from types import ModuleType

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
    assert blocks[1] == '.venv/bin/pip install -e ".[test]" && .venv/bin/python -m pytest -n 2'
    ci = (ROOT / ".ci" / "run").read_text()
    assert "\n.venv/bin/python -m pytest -n 2\n" in ci and ".[test]" in ci


def _architecture() -> ModuleType:
    spec = importlib.util.spec_from_file_location("architecture", ROOT / ".ci" / "architecture.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_architecture_page_matches_the_imports():
    """docs/development.md's rooms and arrows are what `.ci/architecture.py` reads from the code now."""
    assert not _architecture().stale(), "docs/development.md's architecture is stale: run `python .ci/architecture.py`"


def test_the_architecture_page_goes_stale_with_a_new_import(tmp_path):
    """A copy of the repository's code in which the engine imports the registry: an arrow the page lacks, so the
    check says the page is stale; the page regenerated from that code is current again and shows the arrow."""
    architecture = _architecture()
    for name in ("pyproject.toml", "docs/development.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    for folder in ("advsweep", "assets", "models", "attacks", "experiments"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__", "configs"))
    page = tmp_path / "docs" / "development.md"
    assert not architecture.stale(page, tmp_path)
    plan = tmp_path / "attacks" / "engine" / "plan.py"
    plan.write_text(plan.read_text() + "\nfrom advsweep.attacks.registry import run_attack  # noqa\n")
    assert architecture.stale(page, tmp_path)
    architecture.write(page, tmp_path)
    assert not architecture.stale(page, tmp_path)
    assert "attacks_engine --> attacks\n" in page.read_text()


def test_the_benchmark_scripts_share_their_presets_and_leave_the_path_alone():
    """The reduced budgets and the machine line are defined once (benchmarks/presets.py); no script edits sys.path
    (a script's own folder is first on its path already, and the tests' `pythonpath` setting does the same)."""
    scripts = {p.name: p.read_text() for p in sorted((ROOT / "benchmarks").glob("*.py"))}
    assert not [name for name, text in scripts.items() if "sys.path" in text]
    assert [name for name, text in scripts.items() if re.search(r"^REDUCED\b", text, re.MULTILINE)] == ["presets.py"]
    assert not [name for name, text in scripts.items() if "def cpu_name" in text]
