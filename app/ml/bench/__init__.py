"""Benchmark suites, registered by name; `unlearnd bench --list` shows them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.ml.bench.suites import SUITES, Suite, bind


def run_suite(name: str, *, out: Path, seeds: int | None, data_dir: Path | None,
              data_path: Path | None, device: str = "cpu") -> dict[str, Any]:
    suite = SUITES.get(name)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return suite.run(out=out, seeds=seeds, data_dir=data_dir, data_path=data_path, device=device)
    except BaseException:
        if created and not any(out.iterdir()):  # a refused run leaves nothing behind
            out.rmdir()
        raise


def _register_builtin() -> None:
    from app.ml.bench import (  # noqa: F401  (each registers its suites)
        ablation,
        alpha_rho,
        epochs,
        finetune,
        forgetting,
        grad_norms,
        shards,
        shards_lira,
        small_deletions,
        speed,
        sweep,
        table,
        verifier,
    )


_register_builtin()

__all__ = ["SUITES", "Suite", "bind", "run_suite"]
