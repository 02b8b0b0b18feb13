"""The package's import graph: no cycles, and no module reaching into another module's private names.

Both are read from the source (``ast``), so function-level imports count too: an import tucked inside a
function to dodge a cycle is still a cycle in the design.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "numpyro_clustermass"
PACKAGE = "numpyro_clustermass"


def _modules() -> dict[str, pathlib.Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _scan():
    """Edges module -> imported package module, and (module, line, what) for each private-name use."""
    mods = _modules()
    edges = {m: set() for m in mods}
    private = []
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        aliases = {}  # local name -> package module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == PACKAGE:
                for a in node.names:
                    target = f"{node.module}.{a.name}"
                    if target in mods:  # "from package import submodule"
                        edges[mod].add(target)
                        aliases[a.asname or a.name] = target
                    else:
                        edges[mod].add(node.module)
                        if a.name.startswith("_") and node.module != mod:
                            private.append((mod, node.lineno, f"from {node.module} import {a.name}"))
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in mods:
                        edges[mod].add(a.name)
                        if a.asname:
                            aliases[a.asname] = a.name
        for node in ast.walk(tree):  # module._private through an alias of another package module
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__") and aliases[node.value.id] != mod):
                private.append((mod, node.lineno, f"{aliases[node.value.id]}.{node.attr}"))
    for mod in edges:
        edges[mod].discard(mod)
    return edges, private


def _cycles(edges) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in edges:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def _package_edges(edges):
    """Drop the edges between a package and its own submodules: importing ``a.b`` runs ``a/__init__`` first,
    and ``a/__init__`` importing its submodules to register them is the package's structure, not a cycle."""
    out = {}
    for mod, targets in edges.items():
        out[mod] = {t for t in targets if not (t.startswith(mod + ".") or mod.startswith(t + "."))}
    return out


def test_no_import_cycles():
    cycles = _cycles(_package_edges(_scan()[0]))
    assert not cycles, f"import cycles: {cycles}"


def test_no_module_uses_another_modules_private_names():
    _, private = _scan()
    assert not private, "private names used across modules: " + "; ".join(f"{m}:{line} {what}"
                                                                         for m, line, what in private)


@pytest.mark.parametrize("source, expect", [
    ("from numpyro_clustermass.posterior import _spacing\n", "posterior import _spacing"),
    ("from numpyro_clustermass.inference import epochs as e\ne._COMPILED\n", "inference.epochs._COMPILED"),
])
def test_the_scan_finds_what_it_looks_for(tmp_path, monkeypatch, source, expect):
    """The checks above can fail: a planted private import is found."""
    planted = ROOT / "_planted_for_test.py"
    planted.write_text(source)
    try:
        _, private = _scan()
    finally:
        planted.unlink()
    assert any(expect in what for _, _, what in private)


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_importing_the_package_leaves_the_heavy_optional_imports_for_first_use():
    """``import numpyro_clustermass`` loads neither TFP (the Flow's) nor Matplotlib, pandas or scipy.stats (1.0 s of
    a 2.7 s import): ``ncm.plots`` and the functions that build tables or run a test import them when used."""
    import json
    import subprocess
    import sys

    code = """if True:
        import json, sys
        heavy = ("tensorflow_probability", "matplotlib", "pandas", "scipy.stats")
        import numpyro_clustermass as ncm
        at_import = [m for m in heavy if m in sys.modules]
        listed = "plots" in dir(ncm)  # before its first use, for tab completion
        assert callable(ncm.plots.binned_predictions)  # the attribute imports the module
        try:
            ncm.no_such_name
            missing = "no error"
        except AttributeError as e:
            missing = str(e)
        print(json.dumps({"at_import": at_import, "listed": listed, "plots": "matplotlib" in sys.modules,
                          "missing": missing}))
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    res = json.loads(out.strip().splitlines()[-1])
    assert res["at_import"] == []
    assert res["listed"] and res["plots"]
    assert res["missing"] == "module 'numpyro_clustermass' has no attribute 'no_such_name'"
