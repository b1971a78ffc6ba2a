"""Calibration before and after the skip of settings that do at least the work of one stopped at 2× the time
budget, side by side on forgetting-cifar10-rows' seed-0 model (the same θ*, verifier and simulated deletions).

    .venv/bin/python scripts/calibration_side_by_side.py OUT.json   # ~20 min on 2 cores; docs/performance.md

"Before" is the earlier calibration: every setting run, stopped at 1.05× the budget, the peer grid in its old
order (each step size at both lengths).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import app.ml.forgetting.calibrate as cal_mod
from app.core.config import Settings
from app.ml.bench.context import prepare
from app.ml.bench.forgetting import CONFIGS
from app.ml.data.formats import load_dataset
from app.ml.forgetting.policy import Setting


def old_grid(method: str, lr: float, length: dict[str, int], short: dict[str, int]) -> tuple[Setting, ...]:
    return tuple(Setting(method, {"lr": round(lr * f, 6), **n}) for f in (1 / 3, 1.0, 3.0) for n in (length, short))


OLD_PEERS = (*old_grid("scrub", 5e-4, {"epochs": 3, "max_steps": 2}, {"epochs": 1, "max_steps": 1}),
             *old_grid("salun", 0.013, {"epochs": 10}, {"epochs": 1}),
             *old_grid("l1_sparse", 0.01, {"epochs": 10}, {"epochs": 1}),
             *old_grid("neggrad_plus", 0.01, {"epochs": 5}, {"epochs": 1}))


def summary(cal: dict[str, Any]) -> dict[str, Any]:
    ok = sorted((c["setting"]["method"], json.dumps(c["setting"]["params"], sort_keys=True))
                for c in cal["candidates"] if any((c[r] or {}).get("qualifies") for r in ("large", "small")))
    return {"seconds": cal["seconds"], "choice": cal["choice"], "choice_small": cal["choice_small"],
            "ranked": cal["ranked"], "qualifying": ok, "budget_s": cal["budget"]["max_time_s"],
            "skipped": sum(1 for c in cal["candidates"] if c.get("skipped_like")), "trials": len(cal["trials"])}


def main(out: Path) -> None:
    cfg = next(c for c in CONFIGS if c.name == "forgetting-cifar10-rows")
    ds = load_dataset(cfg.experiment.dataset, data_dir=Settings().data_dir, device="cpu")
    t0 = time.perf_counter()
    ctx = prepare(cfg.experiment, ds, 0, progress=False)
    print(f"prepared seed 0 in {time.perf_counter() - t0:.0f} s", flush=True)
    task, hold = replace(ctx.task(0.0), verifier=ctx.verifier), ctx.splits.holdout(10000)
    ccfg = cal_mod.CalibrationConfig(max_accuracy_drop=cfg.max_accuracy_drop, seed=0)
    skip, overrun, results = cal_mod._costs_at_least, cal_mod.OVERRUN, {}
    for name in ("before", "after"):
        before = name == "before"
        cal_mod.OVERRUN = 1.05 if before else overrun
        cal_mod._costs_at_least = (lambda s, slow: False) if before else skip
        cands = cal_mod.CANDIDATES + (OLD_PEERS if before else cal_mod.PEERS)
        results[name] = summary(cal_mod.calibrate(task, hold, ctx.models[0.0].seconds, ccfg, candidates=cands))
        print(name, json.dumps(results[name], default=str)[:600], flush=True)
    results["train_seconds"] = ctx.models[0.0].seconds
    out.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
