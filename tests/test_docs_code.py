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
``<!-- docs-code: output (TOLERANCES) -->`` on the line before a ```text fence
    The text block is what the last code block before it (python, or a run-marked shell block) prints to
    stdout; prose may stand between them. The runner captures that block's stdout and compares it with the
    text line by line (blank lines and spacing ignored) and token by token: a word (any run of non-space
    characters that is not a number: ``R-hat``, ``(``, ``NaN``) must match exactly, a number ``e`` printed as
    ``g`` must satisfy ``|g - e| <= atol + rtol * |e|``. TOLERANCES is a list of clauses separated by ``;``:

    - ``rtol R, atol A`` (either or both): the default for every number of the block (without it: exact);
    - ``line N: rtol R, atol A``: the numbers on the block's N-th line (1-based, counting non-blank lines);
    - ``number K: ...``: the K-th number (1-based) on every line (a table's column);
    - ``line N number K: ...``: the K-th number on line N; ``any`` instead of tolerances (here and for
      ``number K``): that number is not compared (a figure that is not reproducible, such as an unconverged
      chain's R-hat), its words are;
    - ``line N: optional``: the N-th line may be missing from what the code prints (a warning or a note
      that appears in some runs and not in others, such as ``compare``'s note on an unconverged chain). When
      the printed line at its place has its words, it is that line and its numbers are compared; otherwise
      it is taken as absent and the next expected line is compared with that printed line;
    - ``measured ...``, last: free text to the end of the marker, where the tolerances come from (which
      runs, which machine).

    The most specific clause wins (line and number, then number, then line, then the default). A ``-`` just
    before a digit is a sign: ``13.5-13.8`` is the numbers 13.5 and -13.8.

    e.g. ``<!-- docs-code: output (rtol 0.05, atol 0.01; line 1 number 2: any; measured: 3 runs, 2-core CPU) -->``.
    A mismatch fails the page's test, after all its blocks have run, with the page, the text's line, the
    expected and the printed line. A text block without the marker is never compared.
"""

from __future__ import annotations

import contextlib
import io
import linecache
import os
import re
import subprocess
import sys
import textwrap
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)\s*$")
# the reason runs to the last ")" before "-->", so it may hold parentheses itself ("1 (Gpc/h)^3")
_MARKER = re.compile(r"<!--\s*docs-code:\s*(?P<what>[\w-]+)\s*(?:\((?P<reason>.*)\))?\s*-->")
_SHELL = ("bash", "sh", "console", "shell")
# a number as Python, NumPy and pandas print it: 3, -0.060, 1.2e-05, 13.5 (a "-" before a digit is its sign)
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_TOKEN = re.compile(rf"(?P<num>{_NUMBER.pattern})|(?P<word>(?:(?!{_NUMBER.pattern})\S)+)")
_FLOAT = r"(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_TOL_CLAUSE = re.compile(rf"^(?:(?:line\s+(?P<line>\d+)\s*)?(?:number\s+(?P<number>\d+))?\s*:\s*)?"
                         rf"(?P<tols>any|optional|(?:(?:rtol|atol)\s+{_FLOAT}\s*,?\s*)+)$")


@dataclass(frozen=True)
class Tolerance:
    rtol: float = 0.0
    atol: float = 0.0
    any: bool = False  # the number is not compared

    def accepts(self, expected: float, got: float) -> bool:
        # the slack keeps a decimal bound (1.01 against 1.00, rtol 0.01) from failing on binary rounding
        return self.any or abs(got - expected) <= self.atol + self.rtol * abs(expected) + 1e-9 * (1 + abs(expected))


@dataclass
class OutputSpec:
    """The tolerances of an output marker: a default, per line, per column (K-th number), per number on a line."""

    default: Tolerance = Tolerance()
    lines: dict = field(default_factory=dict)  # {line: Tolerance}
    columns: dict = field(default_factory=dict)  # {number: Tolerance}, the K-th number of every line
    numbers: dict = field(default_factory=dict)  # {(line, number): Tolerance}
    optional: set = field(default_factory=set)  # lines that may be missing from the printed output
    measured: str = ""

    def tolerance(self, line: int, number: int) -> Tolerance:
        return (self.numbers.get((line, number)) or self.columns.get(number) or self.lines.get(line)
                or self.default)


def parse_output_spec(text: str) -> OutputSpec:
    """The clauses of ``<!-- docs-code: output (TEXT) -->``; a clause it cannot read raises ValueError."""
    spec = OutputSpec()
    default_set = False
    head, sep, measured = text.partition("measured")  # the note runs to the end and may hold ";" itself
    if sep:
        if head.strip() and not head.rstrip().endswith(";"):
            raise ValueError(f"the 'measured' note comes last, after a ';': {text!r}")
        spec.measured = (sep + measured).strip()
    for clause in (c.strip() for c in head.split(";")):
        if not clause:
            continue
        m = _TOL_CLAUSE.match(clause)
        if not m:
            raise ValueError(f"cannot read the output tolerance clause {clause!r} (write 'rtol R, atol A', "
                             "'line N: rtol R', 'number K: atol A', 'line N number K: any', 'line N: optional' "
                             "or 'measured ...', separated by ';')")
        if m.group("tols") == "optional":
            if m.group("number") or not m.group("line"):
                raise ValueError(f"'optional' is for a whole line ('line N: optional'), not {clause!r}")
            if int(m.group("line")) == 0 or int(m.group("line")) in spec.optional:
                raise ValueError(f"line {m.group('line')} made optional twice or zero in {text!r} (1-based)")
            spec.optional.add(int(m.group("line")))
            continue
        if m.group("tols") == "any":
            if not m.group("number"):
                raise ValueError(f"'any' is for numbers ('line N number K: any', 'number K: any'), not {clause!r}")
            tol = Tolerance(any=True)
        else:
            vals = dict(re.findall(rf"(rtol|atol)\s+({_FLOAT})", m.group("tols")))
            tol = Tolerance(rtol=float(vals.get("rtol", 0.0)), atol=float(vals.get("atol", 0.0)))
        if m.group("number") and m.group("line"):
            key = (int(m.group("line")), int(m.group("number")))
            target = spec.numbers
        elif m.group("number"):
            key, target = int(m.group("number")), spec.columns
        elif m.group("line"):
            key, target = int(m.group("line")), spec.lines
        else:
            if default_set:
                raise ValueError(f"two default tolerance clauses in {text!r}")
            spec.default, default_set = tol, True
            continue
        if key in target or key == 0 or (isinstance(key, tuple) and 0 in key):
            raise ValueError(f"line/number {key} given twice or zero in {text!r} (1-based)")
        target[key] = tol
    return spec


def _tokens(line: str) -> list[tuple[str, str]]:
    return [("num", m.group("num")) if m.group("num") is not None else ("word", m.group("word"))
            for m in _TOKEN.finditer(line)]


def _line_mismatch(e: str, g: str, spec: OutputSpec, n: int) -> str | None:
    """Why printed line ``g`` differs from the page's ``e`` (the text's line ``n``), or None when it agrees."""
    et, gt = _tokens(e), _tokens(g)
    if [k for k, _ in et] != [k for k, _ in gt]:
        return "different words or numbers"
    k = 0
    for (kind, ev), (_, gv) in zip(et, gt):
        if kind == "word":
            if ev != gv:
                return f"word {ev!r} printed as {gv!r}"
            continue
        k += 1
        tol = spec.tolerance(n, k)
        if not tol.accepts(float(ev), float(gv)):
            return (f"number {k} {ev} printed as {gv}: off by {abs(float(gv) - float(ev)):.3g}, "
                    f"beyond atol {tol.atol:g} + rtol {tol.rtol:g} * |{ev}|")
    return None


_ANY_NUMBER = OutputSpec(default=Tolerance(any=True))


def compare_output(expected: str, got: str, spec: OutputSpec, first_line: int | None = None) -> list[str]:
    """The mismatches of printed ``got`` against the page's ``expected`` text: [] when they agree.

    Each mismatch names the expected text's line (1-based among its non-blank lines; with ``first_line``, the
    page's line number of the text's first line, also the page's line), and shows the expected and the printed
    line.
    """
    page_lines = [k for k, ln in enumerate(expected.splitlines()) if ln.strip()]
    exp_lines = [ln for ln in expected.splitlines() if ln.strip()]
    got_lines = [ln for ln in got.splitlines() if ln.strip()]
    problems, j, missing = [], 0, []
    for n, e in enumerate(exp_lines, start=1):
        if n in spec.optional and (j >= len(got_lines) or _line_mismatch(e, got_lines[j], _ANY_NUMBER, n)):
            continue  # an optional line that was not printed this time (its words are not at this place)
        if j >= len(got_lines):
            missing.append(e)
            continue
        g = got_lines[j]
        j += 1
        why = _line_mismatch(e, g, spec, n)
        if why:
            at = "" if first_line is None else f" (page line {first_line + page_lines[n - 1]})"
            problems.append(f"line {n}{at}: {why}\n    expected: {e.strip()}\n    printed:  {g.strip()}")
    extra = got_lines[j:]
    if missing or extra:
        optional = f" ({len(spec.optional)} of them optional)" if spec.optional else ""
        problems.append(f"{len(exp_lines)} line(s) expected{optional}, {len(got_lines)} printed; "
                        f"{'printed' if extra else 'missing'} beyond:\n    "
                        + "\n    ".join(x.strip() for x in (extra or missing)))
    for number in sorted(spec.columns):
        if not any(sum(k == "num" for k, _ in _tokens(ln)) >= number for ln in exp_lines):
            problems.append(f"the marker names number {number} of every line; no line has that many numbers")
    for (line, number) in sorted(spec.numbers):
        if line <= len(exp_lines) and number > sum(k == "num" for k, _ in _tokens(exp_lines[line - 1])):
            problems.append(f"the marker names number {number} of line {line}, which has fewer numbers")
    for line in sorted(set(spec.lines) | {ln for ln, _ in spec.numbers} | spec.optional):
        if line > len(exp_lines):
            problems.append(f"the marker names line {line}; the text has {len(exp_lines)} line(s)")
    return problems


def _where_name(path: Path) -> str:
    """The page's path from the repository root (a page elsewhere, such as a test's, by its full path)."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


@dataclass
class Block:
    page: Path
    number: int  # 1-based among the page's python and run-marked shell blocks
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    skip: str | None = None  # the reason, for a block marked skip
    run: bool = False  # a shell block marked run
    outputs: list = None  # [Output] that the block prints, in the order of the page

    @property
    def where(self) -> str:
        return f"{_where_name(self.page)}, block {self.number} (line {self.line})"


@dataclass
class Output:
    """A text block marked as the output of the code block before it."""

    line: int  # 1-based line of the text block's opening fence
    text: str
    spec: OutputSpec


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
            elif what in ("skip", "run", "output"):
                if what == "skip" and not reason:
                    problems.append(f"line {i + 1}: a skip marker needs its reason: <!-- docs-code: skip (why) -->")
                if what == "output":
                    try:
                        reason = parse_output_spec(reason)
                    except ValueError as e:
                        problems.append(f"line {i + 1}: {e}")
                        reason = None
                pending = (what, reason, i + 1)
            else:
                problems.append(f"line {i + 1}: unknown docs-code marker {what!r} (skip, run, output, slow)")
            i += 1
            continue
        if "docs-code" in line:  # a marker the pattern does not read would be ignored silently
            problems.append(f"line {i + 1}: malformed docs-code marker: {line.strip()!r} "
                            "(write <!-- docs-code: skip (why) -->, run, output (tolerances) or slow)")
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
            if marker and marker[0] == "output":
                if lang != "text":
                    problems.append(f"line {marker[2]}: an output marker before a {lang} block (it marks ```text)")
                elif not blocks:
                    problems.append(f"line {marker[2]}: an output marker with no code block before it")
                elif blocks[-1].skip is not None or (blocks[-1].lang != "python" and not blocks[-1].run):
                    problems.append(f"line {marker[2]}: an output marker after {blocks[-1].where}, which does not "
                                    "run, so its output cannot be compared")
                elif marker[1] is not None:
                    blocks[-1].outputs = (blocks[-1].outputs or []) + [Output(i + 1, "\n".join(body), marker[1])]
                    if len(blocks[-1].outputs) > 1:
                        problems.append(f"line {marker[2]}: a second output block for {blocks[-1].where} (mark one "
                                        "text block per code block)")
                i = j + 1
                continue
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
    return _where_name(page.path)


def _runnable(page: Page) -> list[Block]:
    return [b for b in page.blocks if b.skip is None and (b.lang == "python" or b.run)]


class _Tee(io.TextIOBase):
    """Writes to the real stdout (pytest's capture, or the terminal under ``-s``) and keeps a copy."""

    def __init__(self, stream):
        self.stream, self.copy = stream, io.StringIO()

    def write(self, text):
        self.copy.write(text)
        return self.stream.write(text)

    def flush(self):
        self.stream.flush()


def _run_python(block: Block, namespace: dict) -> str:
    """Run the block in ``namespace``; its stdout."""
    filename = f"<{_where_name(block.page)} block {block.number}>"
    # the traceback shows the block's lines
    linecache.cache[filename] = (len(block.code), None, block.code.splitlines(True), filename)
    code = compile(block.code, filename, "exec")
    tee = _Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        exec(code, namespace)
    return tee.copy.getvalue()


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
    sys.stdout.write(res.stdout)
    return res.stdout


def output_mismatches(block: Block, printed: str) -> list[str]:
    """Each marked output block of ``block`` compared with what it printed: a message per mismatch."""
    msgs = []
    for out in block.outputs or []:
        problems = compare_output(out.text, printed, out.spec, first_line=out.line + 1)
        if problems:
            msgs.append(f"{_where_name(block.page)}, output of block {block.number} (text at line {out.line}):\n  "
                        + "\n  ".join(problems))
    return msgs


def _run_page(page: Page, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    blocks = _runnable(page)
    assert blocks, f"{_page_id(page)} has no code to run"
    mismatches = []
    try:
        for block in blocks:
            try:
                printed = _run_python(block, namespace) if block.lang == "python" else _run_shell(block)
            except Exception:
                pytest.fail(f"{block.where} raised:\n{traceback.format_exc()}", pytrace=False)
            mismatches += output_mismatches(block, printed)
    finally:
        import matplotlib.pyplot as plt

        plt.close("all")
    skipped = [b for b in page.blocks if b.skip]
    compared = sum(len(b.outputs or []) for b in blocks)
    print(f"{_page_id(page)}: ran {len(blocks)} block(s), skipped {len(skipped)}, compared {compared} output(s)"
          + "".join(f"\n  skipped {b.where}: {b.skip}" for b in skipped))
    if mismatches:
        pytest.fail("the page shows another output than its code printed:\n" + "\n".join(mismatches),
                    pytrace=False)


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


def _output_page(tmp_path, shown: str, marker: str = "rtol 0.01, atol 0.001") -> Path:
    page = tmp_path / "out.md"
    page.write_text(
        "```python\nx = 2.0\nprint(f'R-hat {x / 3:.3f}, ESS {100 * x:.0f}, divergences 0')\nprint('done')\n```\n\n"
        "It printed:\n\n"
        f"<!-- docs-code: output ({marker}) -->\n"
        f"```text\n{shown}\n```\n\n"
        "```text\nan unmarked text block is not compared\n```\n")
    return page


def test_output_block_that_matches_passes(tmp_path, monkeypatch):
    # printed: "R-hat 0.667, ESS 200, divergences 0" and "done"; 201 is within rtol 0.01 of 200
    for shown in ("R-hat 0.667, ESS 200, divergences 0\ndone", "R-hat   0.667,  ESS 201, divergences 0\n\ndone"):
        parsed = parse_page(_output_page(tmp_path, shown))
        assert not parsed.problems
        assert parsed.blocks[0].outputs[0].line == 10
        _run_page(parsed, tmp_path, monkeypatch)


@pytest.mark.parametrize("shown, why", [
    ("R-hat 0.667, ESS 200, divergences 0\nfinished", "line 2: word 'finished' printed as 'done'"),
    ("R-hat 0.667, ESS 200, divergence 0\ndone", "line 1: word 'divergence' printed as 'divergences'"),
    ("R-hat 0.667, ESS 210, divergences 0\ndone", "line 1: number 2 210 printed as 200"),
    ("R-hat 0.690, ESS 200, divergences 0\ndone", "line 1: number 1 0.690 printed as 0.667"),
    ("R-hat 0.667, ESS 200 divergences 0\ndone", "line 1: different words or numbers"),
    ("R-hat 0.667, ESS 200, divergences 0", "1 line(s) expected, 2 printed; printed beyond:\n    done"),
])
def test_output_block_that_differs_fails_with_page_line_and_both_texts(tmp_path, monkeypatch, shown, why):
    page = _output_page(tmp_path, shown)
    with pytest.raises(pytest.fail.Exception) as err:
        _run_page(parse_page(page), tmp_path, monkeypatch)
    msg = str(err.value)
    if why.startswith("line "):  # the text's line and the page's: the text starts on the page's line 11
        n = int(why.split(":")[0].split()[1])
        why = why.replace(":", f" (page line {10 + n}):", 1)
    assert f"{page}, output of block 1 (text at line 10)" in msg and why in msg, msg
    if why.startswith("line "):
        printed = ["R-hat 0.667, ESS 200, divergences 0", "done"][n - 1]
        assert f"expected: {shown.splitlines()[n - 1]}\n    printed:  {printed}" in msg, msg


def test_output_tolerances_per_line_and_per_number():
    spec = parse_output_spec("rtol 0.01; line 2: atol 0.5; line 1 number 2: any; measured: three runs; 2-core CPU")
    assert spec.measured == "measured: three runs; 2-core CPU"
    with pytest.raises(ValueError, match="comes last, after a ';'"):
        parse_output_spec("rtol 0.01 measured in one run")
    expected = "a 1.00 b 5 c 7\n\n13.5-13.8 0.054"
    assert compare_output(expected, "a 1.01 b 99 c 7\n13.5-13.8 0.5", spec) == []
    assert "number 1 1.00 printed as 1.02" in compare_output(expected, "a 1.02 b 5 c 7\n13.5-13.8 0.0", spec)[0]
    assert "number 3 7 printed as 8" in compare_output(expected, "a 1.00 b 5 c 8\n13.5-13.8 0.0", spec)[0]
    # "13.5-13.8" is two numbers (13.5 and -13.8), both compared
    assert "number 2 -13.8 printed as -14.5" in compare_output(expected, "a 1 b 5 c 7\n13.5-14.5 0.0", spec)[0]
    assert compare_output("NaN 0.000", "NaN -0.000", OutputSpec()) == []  # exact without a default clause
    assert "line 3" in compare_output("a 1", "a 1", parse_output_spec("line 3: atol 1"))[0]
    assert "fewer numbers" in compare_output("a 1", "a 1", parse_output_spec("line 1 number 2: any"))[0]
    # a column: the 2nd number of every line, unless a line-and-number clause says otherwise
    table = parse_output_spec("number 2: atol 0.1; line 2 number 2: any")
    assert compare_output("x 1 0.5\ny 2 0.5", "x 1 0.59\ny 2 9", table) == []
    assert "number 2 0.5 printed as 0.61" in compare_output("x 1 0.5\ny 2 0.5", "x 1 0.61\ny 2 9", table)[0]
    assert "number 1 1 printed as 1.05" in compare_output("x 1 0.5", "x 1.05 0.5", table)[0]
    assert "no line has that many" in compare_output("x 1", "x 1", parse_output_spec("number 3: any"))[0]


def test_optional_output_line_may_be_missing_but_is_compared_when_printed():
    spec = parse_output_spec("atol 0.01; line 2: optional; measured: a note printed in some runs only")
    expected = "table 1.00\n- nuts: R-hat 1.104 is above 1.05\n- bbb: ratio 0.055"
    # absent: the next printed line is compared with the line after it
    assert compare_output(expected, "table 1.00\n- bbb: ratio 0.055", spec) == []
    # present: compared as usual, its numbers too
    assert compare_output(expected, "table 1.00\n- nuts: R-hat 1.104 is above 1.05\n- bbb: ratio 0.06", spec) == []
    bad = compare_output(expected, "table 1.00\n- nuts: R-hat 1.2 is above 1.05\n- bbb: ratio 0.055", spec)
    assert len(bad) == 1 and "line 2: number 1 1.104 printed as 1.2" in bad[0], bad
    # a required line is still required, and a line printed in another place is still a mismatch
    missing = compare_output(expected, "table 1.00\n- nuts: R-hat 1.104 is above 1.05", spec)
    assert "3 line(s) expected (1 of them optional), 2 printed; missing beyond:\n    - bbb: ratio 0.055" in missing[-1]
    assert "line 1: different words or numbers" in compare_output(expected, "- bbb: ratio 0.055\ntable 1.00", spec)[0]
    with pytest.raises(ValueError, match="'optional' is for a whole line"):
        parse_output_spec("line 2 number 1: optional")
    with pytest.raises(ValueError, match="'optional' is for a whole line"):
        parse_output_spec("optional")
    assert "the text has 3 line(s)" in compare_output(expected, expected, parse_output_spec("line 4: optional"))[0]


def test_malformed_output_markers_are_reported(tmp_path):
    page = tmp_path / "bad.md"
    page.write_text(
        "<!-- docs-code: output (rtol 0.1) -->\n```text\nno code before\n```\n"
        "```python\nprint(1)\n```\n"
        "<!-- docs-code: output (rtol five) -->\n```text\n1\n```\n"
        "<!-- docs-code: output (line 1: any) -->\n```text\n1\n```\n"
        "<!-- docs-code: output (rtol 0.1) -->\n```python\nprint(2)\n```\n"
        "<!-- docs-code: skip (needs the real file) -->\n```python\nprint(3)\n```\n"
        "<!-- docs-code: output (atol 1) -->\n```text\n3\n```\n"
        "```python\nprint(4)\n```\n"
        "<!-- docs-code: output (atol 1) -->\n```text\n4\n```\n"
        "<!-- docs-code: output (atol 1) -->\n```text\n4\n```\n")
    problems = parse_page(page).problems
    assert len(problems) == 6, problems
    for p, what in zip(problems, ["no code block before it", "cannot read the output tolerance clause 'rtol five'",
                                  "'any' is for numbers", "output marker before a python block",
                                  "which does not run", "a second output block"]):
        assert what in p, (what, p)
