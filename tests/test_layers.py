"""The layering the owner asked for (issue 23): the ML core imports nothing of the HTTP, ledger, service or
queue layers, and nothing under app/ but the CLI imports the worker."""

from __future__ import annotations

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
