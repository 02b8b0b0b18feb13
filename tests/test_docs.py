"""The docs stay true: every test a reliability row names exists (a row without its test is a claim)."""

import ast
import re
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
