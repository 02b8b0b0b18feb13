"""The docs stay true: every test a reliability row names exists (a row without its test is a claim)."""

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


def test_every_reliability_row_names_tests_that_exist():
    page = (ROOT / "docs" / "reliability.md").read_text()
    rows = [line for line in page.splitlines() if line.startswith("| ") and not line.startswith("| entry point")
            and not line.startswith("|---")]
    assert len(rows) >= 74, len(rows)  # the page has 76 rows: a lost row fails here
    missing = []
    for row in rows:
        refs = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", row)
        if not refs:
            missing.append(f"row names no test: {row[:80]}")
        for file, name in refs:
            path = ROOT / file
            if not path.exists() or name not in _test_names(path):
                missing.append(f"{file}::{name}")
    assert not missing, missing


@pytest.mark.parametrize("page", ["README.md"])
def test_readme_links_stay_inside_the_repository(page):
    text = (ROOT / page).read_text()
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if target.startswith(("http://", "https://")):
            continue
        assert (ROOT / target).exists(), f"{page} links to {target}, which is not in the repository"


def _table_rows(text: str, header: str) -> list[list[str]]:
    """The cells of the markdown table under ``header`` (its first row), separator excluded."""
    lines = text.splitlines()
    start = lines.index(header)
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def test_readme_and_the_benchmarks_page_show_the_committed_benchmark_run():
    """README's table of targets and docs/benchmarks.md's full table are the committed run's
    (benchmarks/results/cpu.md), from the same commit: a new run committed without them fails here."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.suite import TABLE_HEADER as header

    run = (ROOT / "benchmarks" / "results" / "cpu.md").read_text()
    rows = _table_rows(run, header)
    assert len(rows) >= 20, len(rows)
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    assert _table_rows(page, header) == rows
    commit = re.search(r"commit ([0-9a-f]{7})[0-9a-f]*", run).group(1)
    assert f"at commit {commit}" in page
    readme = (ROOT / "README.md").read_text()
    targets = [[r[0], r[4], r[5], r[6], r[7]] for r in rows if r[6] != "–"]
    assert len(targets) >= 8, targets
    assert _table_rows(readme, "| benchmark | ratio | ratio means | target | met |") == targets
    assert f"commit {commit};" in readme
