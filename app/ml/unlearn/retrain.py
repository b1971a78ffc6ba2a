"""Retrain: the gold standard. Train from scratch on D_r with θ*'s own recipe and seed."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from app.ml.train import fit
from app.ml.unlearn import METHODS
from app.ml.unlearn.base import UnlearnResult, UnlearnTask, parse_params, seconds_since


@dataclass(frozen=True)
class RetrainConfig:
    pass  # the recipe is θ*'s (task.train_cfg): nothing to tune


@METHODS.register("retrain")
def retrain(task: UnlearnTask, params: dict[str, object]) -> UnlearnResult:
    cfg = parse_params(RetrainConfig, params)
    model_cfg, train_cfg, val_ids = task.require_training_setup("retrain")
    t0 = time.perf_counter()
    result = fit(model_cfg, task.ds, task.retain_ids, val_ids, train_cfg, progress=False)
    result.model.eval()
    return UnlearnResult(model=result.model, time_s=seconds_since(t0, task),
                         params={**asdict(cfg), **asdict(train_cfg)}, info={"epochs": result.epochs_run})
