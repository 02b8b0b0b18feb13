"""Every figure in the docs is made by code the docs show: docs/make_figures.py's registry, the images the pages
show, and the files under docs/figures/ agree, and each figure function's body is its page's code.

The registry is read from the script's source with ``ast`` (its ``@figure(...)`` arguments are literals), so the
fast tests import neither the script nor JAX; the slow test runs ``make_figures.py --small`` into a temporary
folder.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from test_docs_code import PAGES, ROOT, parse_page

SCRIPT = ROOT / "docs" / "make_figures.py"
FIGURES_DIR = ROOT / "docs" / "figures"
_IMAGE = re.compile(r"!\[[^\]]*\]\(\s*([^)\s]+)")


def _registry(source: str | None = None) -> dict[str, dict]:
    """{function name: {"page", "blocks", "files", "small", "body"}} of the script's @figure functions."""
    source = SCRIPT.read_text() if source is None else source
    lines = source.splitlines(keepends=True)
    out = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.FunctionDef):
            continue
        for dec in node.decorator_list:
            if isinstance(dec, ast.Call) and getattr(dec.func, "id", None) == "figure":
                spec = {kw.arg: ast.literal_eval(kw.value) for kw in dec.keywords}
                body = textwrap.dedent("".join(lines[node.lineno:node.end_lineno]))  # after the def line
                out[node.name] = {**spec, "body": body}
    return out


def _shown_images() -> dict[Path, list[str]]:
    """{resolved image path: [pages that show it]} over README.md and docs/**/*.md."""
    shown: dict[Path, list[str]] = {}
    for page in PAGES:
        for target in _IMAGE.findall(page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            shown.setdefault((page.parent / target).resolve(), []).append(str(page.relative_to(ROOT)))
    return shown


REGISTRY = _registry()


def test_registry_is_read():
    assert {"mock_catalog", "quickstart", "shift_coverage", "tutorial_binned"} <= set(REGISTRY), sorted(REGISTRY)
    for name, spec in REGISTRY.items():
        assert spec["files"] and all(f.endswith(".png") for f in spec["files"]), (name, spec["files"])


def test_every_image_a_page_shows_exists_and_is_made_by_the_script():
    produced = {(FIGURES_DIR / f).resolve(): name for name, spec in REGISTRY.items() for f in spec["files"]}
    problems = []
    for image, pages in _shown_images().items():
        if not image.is_file():
            problems.append(f"{pages} show {image.relative_to(ROOT)}, which does not exist")
        elif image not in produced:
            problems.append(f"{pages} show {image.relative_to(ROOT)}, which docs/make_figures.py does not make")
    assert not problems, "\n".join(problems)


def test_every_file_under_docs_figures_is_registered_and_shown():
    registered = {f: name for name, spec in REGISTRY.items() for f in spec["files"]}
    on_disk = sorted(str(p.relative_to(FIGURES_DIR)) for p in FIGURES_DIR.rglob("*") if p.is_file())
    stray = [f for f in on_disk if f not in registered]
    assert not stray, f"docs/figures/ holds files docs/make_figures.py does not make: {stray}"
    missing = sorted(set(registered) - set(on_disk))
    assert not missing, f"registered but not committed (run python3 docs/make_figures.py --only ...): {missing}"
    shown = _shown_images()
    for f, name in registered.items():
        pages = shown.get((FIGURES_DIR / f).resolve(), [])
        page = str((ROOT / "docs" / REGISTRY[name]["page"]).relative_to(ROOT))
        assert page in pages, f"{f} ({name}) is registered for {page}, which does not show it (shown on {pages})"


def test_figures_stay_small():
    sizes = {p.name: p.stat().st_size for p in FIGURES_DIR.glob("*.png")}
    big = {n: s for n, s in sizes.items() if s > 200 * 1024}
    assert not big, f"figures over 200 kB (lower the dpi or the figure size): {big}"
    assert sum(sizes.values()) < 2 * 1024 * 1024, sum(sizes.values())


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_figure_body_is_the_code_its_page_shows(name):
    spec = REGISTRY[name]
    page = parse_page(ROOT / "docs" / spec["page"])
    numbers = {b.number: b for b in page.blocks}
    assert all(n in numbers for n in spec["blocks"]), (spec["page"], spec["blocks"], sorted(numbers))
    blocks = [numbers[n] for n in spec["blocks"]]
    assert all(b.lang == "python" for b in blocks), [b.where for b in blocks]
    shown = "\n\n".join(b.code.strip("\n") for b in blocks) + "\n"
    assert spec["body"] == shown, (
        f"{name}'s body in docs/make_figures.py differs from {', '.join(b.where for b in blocks)}; "
        "make them the same text (blocks joined by one blank line)")
    for old in spec.get("small", {}):
        assert old in spec["body"], f"{name}: --small replacement {old!r} is not in the body"


def test_registry_parser_on_a_made_up_script():
    src = ('@figure(page="p.md", blocks=(1, 2), files={"a.png": "out/a.png"}, small={"n=9": "n=1"})\n'
           "def one():\n    n=9\n    make(n)\n\n\ndef not_a_figure():\n    pass\n")
    assert _registry(src) == {"one": {"page": "p.md", "blocks": (1, 2), "files": {"a.png": "out/a.png"},
                                      "small": {"n=9": "n=1"}, "body": "n=9\nmake(n)\n"}}


@pytest.mark.slow
def test_make_figures_small_writes_every_registered_file(tmp_path):
    env = dict(os.environ, MPLBACKEND="Agg")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    res = subprocess.run([sys.executable, str(SCRIPT), "--small", "--out", str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    expected = sorted(f for spec in REGISTRY.values() for f in spec["files"])
    written = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    assert written == expected, (written, expected)
    for f in expected:
        data = (tmp_path / f).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, (f, len(data))
    for name in REGISTRY:
        assert re.search(rf"^{name} \(small\): [0-9.]+ s: ", res.stdout, re.M), (name, res.stdout[-2000:])
