"""Retrain: the gold standard. Train from scratch on D_r with θ*'s own recipe and seed."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

from app.ml.forgetting.methods.base import UnlearnResult, UnlearnTask, parse_params, seconds_since
from app.ml.forgetting.methods.registry import METHODS
from app.ml.training.fit import fit


@dataclass(frozen=True)
class RetrainConfig:
    # the recipe is θ*'s (task.train_cfg); a retrain below the floor is redone from its seed + SEED_OFFSET
    seed_offset: int = 0


@METHODS.register("retrain")
def retrain(task: UnlearnTask, params: dict[str, object]) -> UnlearnResult:
    cfg = parse_params(RetrainConfig, params)
    model_cfg, train_cfg, val_ids = task.require_training_setup("retrain")
    train_cfg = replace(train_cfg, seed=train_cfg.seed + cfg.seed_offset)
    t0 = time.perf_counter()
    if task.refit is not None:
        model, run = task.refit(task.retain_ids, val_ids, train_cfg)
        info = {"epochs": run.get("epochs"), "feature_cache": run.get("feature_cache"),
                "distributed": {k: v for k, v in run.items() if k not in ("epochs", "feature_cache")}}
    else:
        result = fit(model_cfg, task.ds, task.retain_ids, val_ids, train_cfg, progress=False)
        model, info = result.model, {"epochs": result.epochs_run, "feature_cache": result.feature_cache}
    model.eval()
    return UnlearnResult(model=model, time_s=seconds_since(t0, task), params={**asdict(cfg), **asdict(train_cfg)},
                         info=info)
