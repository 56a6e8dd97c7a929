"""The layout's rules, checked on the source: imports point downward only, each volatile
third-party library lives in one module, and no internal module takes a public name."""

import ast
from pathlib import Path

import pxd

SRC = Path(pxd.__file__).resolve().parent
# Lower layers first; a module may import its own package and those before it.
LAYERS = ["errors", "configs", "models", "core", "storage", "report", "engine", "api",
          "commands", "cli"]


def _modules():
    for f in sorted(SRC.rglob("*.py")):
        parts = f.relative_to(SRC).with_suffix("").parts
        if parts[0] in ("zoo",) or parts[0].startswith("__"):
            continue
        yield f, parts


def _imports(f: Path):
    for node in ast.walk(ast.parse(f.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "pxd":
                yield from (f"pxd.{a.name}" for a in node.names)
            else:
                yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names)


def test_imports_point_downward():
    bad = []
    for f, parts in _modules():
        me = LAYERS.index(parts[0])
        for mod in _imports(f):
            p = mod.split(".")
            if p[0] != "pxd" or len(p) < 2 or p[1] not in LAYERS:
                continue  # third-party, or the package's public list
            if LAYERS.index(p[1]) > me:
                bad.append(f"{'/'.join(parts)} imports {mod}")
    assert not bad, bad


def test_volatile_libraries_live_in_one_module_each():
    home = {"orbax": "storage/checkpoint", "rich": "report/terminal",
            "tensorflow_datasets": "storage/data", "matplotlib": "report/plots"}
    for f, parts in _modules():
        for mod in _imports(f):
            lib = mod.split(".")[0]
            if lib in home:
                assert "/".join(parts) == home[lib], f"{'/'.join(parts)} imports {lib}"


def test_no_module_takes_a_public_name():
    top = {p.stem for p in SRC.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    assert not top & set(pxd.__all__)


def _module_name(f: Path) -> str:
    parts = f.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the pxd modules it imports anywhere in its source (function bodies too:
    a lazy import still runs). `from pkg import name` points at pkg.name when that is a
    module, else at pkg; relative imports are resolved against the importing package."""
    files = {_module_name(f): f for f in SRC.rglob("*.py") if "zoo" not in f.parts}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for me, f in files.items():
        pkg = me if f.name == "__init__.py" else me.rpartition(".")[0]
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base
                           for a in node.names]
            else:
                continue
            graph[me] |= {t for t in targets if t in files and t != me}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    assert not _cycles(_import_graph())


def test_the_cycle_check_sees_a_cycle():
    # the checker itself: a two-module and a three-module cycle are found, a chain is not
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    # and the graph has the package's own edges (pxd/__init__.py imports pxd.errors) and
    # the lazy imports inside functions (the CLI's commands)
    graph = _import_graph()
    assert "pxd.errors" in graph["pxd"] and "pxd.commands.score" in graph["pxd.cli"]


def test_no_module_over_500_lines():
    long = {str(f.relative_to(SRC)): n for f in SRC.rglob("*.py") if "zoo" not in f.parts
            and (n := len(f.read_text().splitlines())) > 500}
    assert not long, long


def test_package_names_are_the_apis_and_submodules_load_no_jax():
    """`pxd.__all__` (JAX-free) is `pxd.api.__all__`; reaching a submodule or probing a
    missing name does not import JAX (a lazy `__getattr__` once loaded the API for both)."""
    import subprocess
    import sys

    import pxd.api

    assert pxd.__all__ == pxd.api.__all__
    code = ("import sys, pxd; from pxd import configs; hasattr(pxd, 'nothing'); "
            "print('jax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr
