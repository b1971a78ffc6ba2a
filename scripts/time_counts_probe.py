"""Issue 34's speed regression on the default digits model: calibration's choice (time counted: app/ml/forgetting/
ranking.py) beside the settings calibration weighed against it and the exact retrain, on the same 50-id deletions.

    PYTHONPATH=. .venv/bin/python scripts/time_counts_probe.py --out docs/results/time-counts [--draws 3]

The model is the one `make run` trains (digits, GR, seed 0), trained and calibrated here. Per draw of 50 random
training ids, each setting from θ*: the method's own seconds, forget-set accuracy and mean loss, held-out accuracy,
and the share of the retrain's forget-accuracy and forget-loss gaps it closed (1 = where the retrain lands).
Writes OUT/probe.json and OUT/probe.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from app.core.config import Settings
from app.ml.bench.report import fmt_pm
from app.ml.forgetting.gradcache import load_cache
from app.ml.forgetting.methods import run_method
from app.ml.forgetting.methods.base import UnlearnTask
from app.ml.forgetting.policy import Setting, calibrated_settings
from app.ml.models.checkpoint import dataset_for, load_model_dir
from app.ml.training.metrics import accuracy, predict_logits
from app.ml.verify.store import load_verifier
from app.service.bootstrap import train_default

N_FORGET = 50
OTHERS = (  # the last round's choice on digits, and the peers that won since
    Setting("out_match", {"target": "shift", "epochs": 5, "lr": 1e-3, "retain_weight": 10.0}),
    Setting("l1_sparse", {}),
    Setting("salun", {}),
    Setting("iau", {"eta": 5e-4}),
)


def _forget_stats(model: torch.nn.Module, ds: Any, ids: np.ndarray) -> tuple[float, float]:
    logits, y = predict_logits(model, ds, ids), ds.labels(ids)
    return float((logits.argmax(1) == y).float().mean()), float(F.cross_entropy(logits, y))


def _closed(value: float, before: float, retrain: float) -> float:
    return (before - value) / (before - retrain) if before != retrain else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--draws", type=int, default=3)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="unlearnd-time-counts-"))  # the model's folder: weights, not results
    t0 = time.perf_counter()
    model_dir = train_default(Settings(home=home), home / "model", progress=False)
    train_s = time.perf_counter() - t0
    md = load_model_dir(model_dir)
    ds = dataset_for(md, data_path=None, data_dir=None)
    cal = md.meta.calibration or {}
    chosen = calibrated_settings(cal, N_FORGET)
    settings = [("calibrated", chosen[0])] if chosen else []
    settings += [(s.method, s) for s in OTHERS if not chosen or s != chosen[0]]
    cache, verifier = load_cache(model_dir), load_verifier(model_dir / "verifier")
    hold = md.splits.test
    rows = []
    for draw in range(args.draws):
        ids = np.sort(np.random.default_rng(draw).choice(md.splits.train, N_FORGET, replace=False))
        task = UnlearnTask.from_model_dir(md, ds, forget_ids=ids, cache=cache, verifier=verifier)
        before = _forget_stats(md.model, ds, ids)
        gold = run_method("retrain", task, {})
        ref = _forget_stats(gold.model, ds, ids)
        rows.append({"draw": draw, "setting": "retrain", "time_s": gold.time_s, "forget_acc": ref[0],
                     "forget_loss": ref[1], "holdout_acc": accuracy(gold.model, ds, hold)})
        for name, s in settings:
            res = run_method(s.method, task, s.params)
            acc, loss = _forget_stats(res.model, ds, ids)
            rows.append({"draw": draw, "setting": name, "params": s.to_dict(), "time_s": res.time_s,
                         "forget_acc": acc, "forget_loss": loss, "holdout_acc": accuracy(res.model, ds, hold),
                         "acc_gap_closed": _closed(acc, before[0], ref[0]),
                         "loss_gap_closed": _closed(-loss, -before[1], -ref[1]),
                         "speedup": gold.time_s / max(res.time_s, 1e-9)})
    out = {"command": "PYTHONPATH=. .venv/bin/python scripts/time_counts_probe.py --out "
                      f"{args.out} --draws {args.draws}", "train_and_calibrate_s": train_s,
           "calibration_seconds": cal.get("seconds"), "chosen": cal.get("chosen"), "rows": rows}
    (args.out / "probe.json").write_text(json.dumps(out, indent=1, default=str))
    (args.out / "probe.md").write_text(_markdown(out))
    print(_markdown(out))


def _markdown(out: dict[str, Any]) -> str:
    names = list(dict.fromkeys(r["setting"] for r in out["rows"]))
    lines = ["# The default digits model: time counted in calibration's choice", "",
             f"Command: `{out['command']}`", "",
             f"Calibration's choice for a {N_FORGET}-id batch: `{json.dumps(out['chosen'])}`.", "",
             f"{N_FORGET} random training ids per draw, mean ± std over draws; gaps closed: 1 is the retrain's.", "",
             "| setting | seconds | × retrain's speed | forget acc | forget loss | acc gap closed | loss gap closed "
             "| held-out acc |", "|---|---|---|---|---|---|---|---|"]
    for n in names:
        rs = [r for r in out["rows"] if r["setting"] == n]
        col = {k: [r[k] for r in rs if k in r] for k in ("time_s", "speedup", "forget_acc", "forget_loss",
                                                          "acc_gap_closed", "loss_gap_closed", "holdout_acc")}
        lines.append(f"| {n} | " + " | ".join(fmt_pm(v) if v else "—" for v in col.values()) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
