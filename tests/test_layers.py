"""The layering the owner asked for (issue 23): the ML core imports nothing of the HTTP, ledger, service or
queue layers, and nothing under app/ but the CLI imports the worker."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKER_IMPORT = re.compile(r"^\s*(from|import) worker\b", re.M)


def test_nothing_under_app_imports_the_worker_but_the_cli() -> None:
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "app").rglob("*.py")
                 if p.name not in ("cli.py", "service_cli.py") and WORKER_IMPORT.search(p.read_text())]
    assert not offenders, offenders


def test_the_ml_core_loads_no_service_layer() -> None:
    code = """
import importlib, pkgutil, sys
import app.ml
names = [m.name for m in pkgutil.walk_packages(app.ml.__path__, "app.ml.") if ".bench" not in m.name]
for name in names:
    importlib.import_module(name)
print(len(names), sorted(m for m in sys.modules if m.startswith(("app.api", "app.db", "app.service", "worker"))))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    n, loaded = out.stdout.split(" ", 1)
    assert int(n) > 30 and loaded.strip() == "[]", out.stdout


# issue 32: the ML core's folders, each importing only those before it
LAYERS = ("common", "data", "models", "training", "verify", "forgetting", "sharding", ("workflows", "bench"))


def _imports() -> dict[str, set[str]]:
    """Every module under app/ and worker/ → the app modules it imports anywhere in its file (a function's
    import too: hiding an import in a function does not remove the dependency)."""
    mods = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
            for base in ("app", "worker") for p in (ROOT / base).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative
                    base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
                deps |= {f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names}
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[:2] != ["app", "ml"] or len(parts) < 3:
        return None
    return next(i for i, x in enumerate(LAYERS) if parts[2] in ((x,) if isinstance(x, str) else x))


def test_every_ml_module_lives_in_a_layer_folder() -> None:
    strays = [m for m in _imports() if m.startswith("app.ml.") and m.count(".") == 2 and m.split(".")[2] not in
              {x for layer in LAYERS for x in ((layer,) if isinstance(layer, str) else layer)}]
    assert not strays, strays


def test_the_ml_layers_import_one_way() -> None:
    """common → data → models → training → verify → forgetting → workflows | bench: never back, and the two
    top folders not into each other."""
    wrong = []
    for mod, deps in _imports().items():
        mine = _layer(mod)
        for d in deps:
            theirs = _layer(d)
            if mine is not None and theirs is not None and (
                    theirs > mine or (theirs == mine and mod.split(".")[2] != d.split(".")[2])):
                wrong.append(f"{mod} → {d}")
    assert not wrong, wrong


def test_core_and_db_import_nothing_of_the_ml_core() -> None:
    wrong = [f"{m} → {d}" for m, deps in _imports().items() if m.startswith(("app.core", "app.db"))
             for d in deps if d.startswith("app.ml")]
    assert not wrong, wrong


def test_no_import_loop_anywhere_in_app() -> None:
    graph = _imports()
    loops, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for d in sorted(graph[node]):
            if state.get(d) == 1:
                loops.append(" → ".join([*path[path.index(d):], d]))
            elif d not in state:
                visit(d, [*path, d])
        state[node] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    assert not loops, loops
