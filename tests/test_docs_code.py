"""The documentation's code runs: every ```python block of README.md and docs/**/*.md, page by page.

Each page's python blocks run in order in one namespace (a reader's session), in a fresh temporary working
directory, so that files a page writes do not leak into the repository or into another page. A block that
raises fails the page's test with the page, the block's number and line, and the traceback.

Markers, HTML comments that the rendered page does not show:

``<!-- docs-code: skip (REASON) -->`` on the line before a fence
    The block cannot run here by design (it needs the real catalogue file, or a GPU). It is still compiled,
    so a syntax error fails; the reason is printed in pytest's summary of skipped tests (``-ra``).
``<!-- docs-code: run -->`` on the line before a ```bash fence
    Run the shell block with ``bash -e`` in the page's directory (the command-line how-to). Other shell blocks
    (install commands, hour-long benchmarks) are shown, not run.
``<!-- docs-code: slow (REASON) -->`` anywhere on a page
    The page's code runs under ``@pytest.mark.slow`` (``python3 -m pytest -m slow``), not in the default suite.
"""

from __future__ import annotations

import linecache
import os
import re
import subprocess
import sys
import textwrap
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)\s*$")
# the reason runs to the last ")" before "-->", so it may hold parentheses itself ("1 (Gpc/h)^3")
_MARKER = re.compile(r"<!--\s*docs-code:\s*(?P<what>[\w-]+)\s*(?:\((?P<reason>.*)\))?\s*-->")
_SHELL = ("bash", "sh", "console", "shell")


@dataclass
class Block:
    page: Path
    number: int  # 1-based among the page's python and run-marked shell blocks
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    skip: str | None = None  # the reason, for a block marked skip
    run: bool = False  # a shell block marked run

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}, block {self.number} (line {self.line})"


@dataclass
class Page:
    path: Path
    blocks: list[Block]
    slow: str | None  # the reason, for a page marked slow
    problems: list[str]  # malformed or misplaced markers


def parse_page(path: Path) -> Page:
    """The page's python blocks, run-marked shell blocks and markers (a misplaced marker is a problem)."""
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    problems: list[str] = []
    slow = None
    pending = None  # (what, reason, line) of a marker waiting for its fence
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _MARKER.search(line)
        if m:
            what, reason = m.group("what"), (m.group("reason") or "").strip()
            if what == "slow":
                slow = reason or "marked slow"
            elif what in ("skip", "run"):
                if what == "skip" and not reason:
                    problems.append(f"line {i + 1}: a skip marker needs its reason: <!-- docs-code: skip (why) -->")
                pending = (what, reason, i + 1)
            else:
                problems.append(f"line {i + 1}: unknown docs-code marker {what!r} (skip, run, slow)")
            i += 1
            continue
        if "docs-code" in line:  # a marker the pattern does not read would be ignored silently
            problems.append(f"line {i + 1}: malformed docs-code marker: {line.strip()!r} "
                            "(write <!-- docs-code: skip (why) -->, run or slow)")
        f = _FENCE.match(line)
        if f and f.group("lang"):
            indent, lang = f.group("indent"), f.group("lang").lower()
            body = []
            j = i + 1
            while j < len(lines) and not re.match(rf"^{re.escape(indent)}```\s*$", lines[j]):
                body.append(lines[j])
                j += 1
            code = textwrap.dedent("\n".join(body)) + "\n"
            marker = pending if pending and pending[2] == i else None
            if pending and not marker:
                problems.append(f"line {pending[2]}: a {pending[0]} marker not on the line before a fence")
            pending = None
            if lang == "python":
                blocks.append(Block(path, len(blocks) + 1, i + 1, lang, code,
                                    skip=marker[1] if marker and marker[0] == "skip" else None))
                if marker and marker[0] == "run":
                    problems.append(f"line {marker[2]}: python blocks run anyway; 'run' is for shell blocks")
            elif lang in _SHELL and marker:
                blocks.append(Block(path, len(blocks) + 1, i + 1, lang, code, run=marker[0] == "run",
                                    skip=marker[1] if marker[0] == "skip" else None))
            elif marker:
                problems.append(f"line {marker[2]}: a {marker[0]} marker before a {lang} block, which is never run")
            i = j + 1
            continue
        if pending and line.strip():
            problems.append(f"line {pending[2]}: a {pending[0]} marker not on the line before a fence")
            pending = None
        i += 1
    if pending:
        problems.append(f"line {pending[2]}: a {pending[0]} marker at the end of the page")
    return Page(path, blocks, slow, problems)


PARSED = [parse_page(p) for p in PAGES]


def _page_id(page: Page) -> str:
    return str(page.path.relative_to(ROOT))


def _runnable(page: Page) -> list[Block]:
    return [b for b in page.blocks if b.skip is None and (b.lang == "python" or b.run)]


def _run_python(block: Block, namespace: dict) -> None:
    filename = f"<{block.page.relative_to(ROOT)} block {block.number}>"
    # the traceback shows the block's lines
    linecache.cache[filename] = (len(block.code), None, block.code.splitlines(True), filename)
    code = compile(block.code, filename, "exec")
    exec(code, namespace)


def _run_shell(block: Block) -> None:
    env = dict(os.environ)
    # the environment's console scripts (numpyro-clustermass) and interpreter come first
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    script = "set -euo pipefail\n" + block.code
    res = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"exit status {res.returncode}\n--- stdout\n{res.stdout[-4000:]}\n--- stderr\n"
                           f"{res.stderr[-4000:]}")


def _run_page(page: Page, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    blocks = _runnable(page)
    assert blocks, f"{_page_id(page)} has no code to run"
    try:
        for block in blocks:
            try:
                if block.lang == "python":
                    _run_python(block, namespace)
                else:
                    _run_shell(block)
            except Exception:
                pytest.fail(f"{block.where} raised:\n{traceback.format_exc()}", pytrace=False)
    finally:
        import matplotlib.pyplot as plt

        plt.close("all")
    skipped = [b for b in page.blocks if b.skip]
    print(f"{_page_id(page)}: ran {len(blocks)} block(s), skipped {len(skipped)}"
          + "".join(f"\n  skipped {b.where}: {b.skip}" for b in skipped))


def _page_params(slow: bool):
    return [pytest.param(p, id=_page_id(p), marks=[pytest.mark.slow] if p.slow else [])
            for p in PARSED if _runnable(p) and bool(p.slow) == slow]


@pytest.mark.parametrize("page", _page_params(slow=False))
def test_page_code_runs(page, tmp_path, monkeypatch):
    _run_page(page, tmp_path, monkeypatch)


@pytest.mark.parametrize("page", _page_params(slow=True))
def test_slow_page_code_runs(page, tmp_path, monkeypatch):
    _run_page(page, tmp_path, monkeypatch)


_SKIPPED = [b for p in PARSED for b in p.blocks if b.skip]


@pytest.mark.parametrize("block", _SKIPPED, ids=[b.where for b in _SKIPPED])
def test_skipped_block_compiles(block):
    """A block that cannot run here still has to be valid code; pytest's summary (-ra) shows why it is skipped."""
    if block.lang == "python":
        compile(block.code, block.where, "exec")
    else:
        res = subprocess.run(["bash", "-n", "-c", block.code], capture_output=True, text=True)
        assert res.returncode == 0, f"{block.where}: {res.stderr}"
    pytest.skip(f"{block.where}: {block.skip}")


def test_markers_are_well_formed():
    problems = [f"{_page_id(p)}: {msg}" for p in PARSED for msg in p.problems]
    assert not problems, "\n".join(problems)


def test_every_page_with_python_runs_or_says_why_not():
    """Nothing escapes the runner silently: each python block runs (default or slow) or carries a skip reason."""
    counts = {"run": 0, "run_slow": 0, "skipped": 0}
    for p in PARSED:
        for b in p.blocks:
            if b.skip:
                counts["skipped"] += 1
            elif b.lang == "python" or b.run:
                counts["run_slow" if p.slow else "run"] += 1
    print(f"docs code blocks: {counts['run']} run in the default suite, {counts['run_slow']} under -m slow, "
          f"{counts['skipped']} skipped")
    assert counts["run"] > 0


def test_parser_finds_blocks_and_markers(tmp_path):
    page = tmp_path / "p.md"
    page.write_text(
        "<!-- docs-code: slow (heavy) -->\n"
        "```python\nx = 1\n```\n\n"
        "<!-- docs-code: skip (needs the real catalogue file) -->\n"
        "```python\nread('real.fits')\n```\n\n"
        "```bash\npip install this\n```\n\n"
        "<!-- docs-code: run -->\n"
        "```bash\necho hi\n```\n\n"
        "1. a list item\n\n   ```python\n   y = x + 1\n   ```\n"
        "<!-- docs-code: skip -->\n\ntext\n"
        "<!-- docs-code: skip (trains on 1 (Gpc/h)^3, slow) -->\n"
        "```python\nbig()\n```\n"
        "<!-- docs-code skip (no colon) -->\n"
    )
    parsed = parse_page(page)
    assert parsed.slow == "heavy"
    assert [(b.lang, b.skip, b.run) for b in parsed.blocks] == [
        ("python", None, False), ("python", "needs the real catalogue file", False), ("bash", None, True),
        ("python", None, False), ("python", "trains on 1 (Gpc/h)^3, slow", False)]
    assert parsed.blocks[3].code == "y = x + 1\n"
    # the skip without a reason, and not before a fence; the marker without its colon is malformed
    assert len(parsed.problems) == 3, parsed.problems
    assert "malformed" in parsed.problems[2]
