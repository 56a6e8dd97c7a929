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
