"""Does out_match forget as much when it moves only the last layers, and how much faster is it? (issue 34)

Per seed, on the forgetting-cifar10 bench's own context (θ*, D_f, the timed retrain, the verifier): out_match
shift as calibration chose it there (5 epochs, lr 1e-3, retain weight 10) moving every parameter, and the same
with only the last k parameterised modules moving (`train_last`), at a few step sizes. Each row: the LiRA gap
closed, test accuracy against the retrain's, forget accuracy, and the speed-up against the retrain timed in the
same process. The full setting runs first and last, so its two times show the host's drift over the seed.

    PYTHONPATH=. .venv/bin/python scripts/head_only_probe.py OUT [--seeds 3]

Writes OUT/results.jsonl (one row per run, as it goes), OUT/results.md and OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from app.ml.bench.context import ExperimentConfig, evaluate_model, prepare
from app.ml.bench.report import write_results
from app.ml.data.formats import load_dataset
from app.ml.forgetting.methods import run_method

BASE = {"target": "shift", "epochs": 5, "lr": 1e-3, "retain_weight": 10.0}
VARIANTS = [("full", BASE), *[(f"last {k}, lr {lr:g}", {**BASE, "train_last": k, "lr": lr})
                               for k, lrs in ((1, (1e-2,)), (2, (1e-3, 3e-3, 1e-2)), (3, (1e-3, 3e-3)))
                               for lr in lrs], ("full (again)", BASE)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--seeds", type=int, default=3)
    ns = ap.parse_args()
    ns.out.mkdir(parents=True, exist_ok=True)
    ds = load_dataset("cifar10", data_dir=Path("../shared/data"))
    rows = []
    for seed in range(ns.seeds):
        ctx = prepare(ExperimentConfig("cifar10", "lenet5", alpha=0.0), ds, seed, progress=False)
        task = replace(ctx.task(0.0), verifier=ctx.verifier)
        start, gold = evaluate_model(ctx, task.model), evaluate_model(ctx, ctx.retrain.model)
        for name, params in VARIANTS:
            res = run_method("out_match", task, params)
            m = evaluate_model(ctx, res.model)
            row = {"seed": seed, "variant": name, "params": params, "time_s": res.time_s,
                   "retrain_s": ctx.retrain_seconds, "speedup": ctx.retrain_seconds / res.time_s,
                   "gap_closed": (start["lira_auc"] - m["lira_auc"]) / (start["lira_auc"] - gold["lira_auc"]),
                   "test_drop": start["test_acc"] - m["test_acc"], "MU": abs(m["test_acc"] - gold["test_acc"]),
                   "forget_acc": m["forget_acc"], "forget_acc_theta": start["forget_acc"],
                   "forget_acc_retrain": gold["forget_acc"], "flagged": m["lira_flagged"]}
            rows.append(row)
            with open(ns.out / "results.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    write_results(ns.out, suite="head-only-probe", command=" ".join(["scripts/head_only_probe.py", *sys.argv[1:]]),
                  config={"seeds": list(range(ns.seeds)), "variants": dict(VARIANTS)}, results={"rows": rows},
                  markdown=markdown(rows), device=ds.device, placement=ds.placement)


def markdown(rows: list[dict]) -> str:
    lines = ["out_match shift with only the last k parameterised layers moving (CIFAR-10 LeNet5, 5% forgotten at "
             "random, the forgetting-cifar10 bench's θ*, D_f and retrain per seed).\n",
             "| variant | LiRA gap closed | test drop (points) | MU | D_f flagged @5% | time (s) | speed-up |",
             "|---|---|---|---|---|---|---|"]
    for name, _ in VARIANTS:
        mine = [r for r in rows if r["variant"] == name]

        def pm(key: str, fmt: str = ".2f", mine: list[dict] = mine) -> str:
            v = np.array([r[key] for r in mine])
            return f"{v.mean():{fmt}} ± {v.std():{fmt}}"
        lines.append(f"| {name} | {pm('gap_closed')} | {pm('test_drop')} | {pm('MU')} | {pm('flagged', '.1f')} | "
                     f"{pm('time_s')} | {pm('speedup', '.0f')}× |")
    seeds = sorted({r["seed"] for r in rows})
    lines.append(f"\nSeeds {seeds}; mean ± std over seeds. Retrains: "
                 + ", ".join(f"{r['retrain_s']:.0f} s" for r in rows if r["variant"] == "full") + ".\n")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
