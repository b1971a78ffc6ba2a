"""Fine-tune: keep training θ* on D_r only, so that D_f fades (catastrophic forgetting).

Hyper-parameters: the training recipe's optimiser (Adam, lr 1e-3, batch 64) for 2 epochs,
the "Fine-tune" baseline of Golatkar et al. 2020 (Eternal Sunshine) with its few-epoch
budget; more epochs approach retraining in cost.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass

from app.ml.forgetting.methods.base import UnlearnResult, UnlearnTask, parse_params, seconds_since
from app.ml.forgetting.methods.loops import run_epochs
from app.ml.forgetting.methods.registry import METHODS


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 2
    lr: float = 1e-3
    batch_size: int = 64


@METHODS.register("finetune")
def finetune(task: UnlearnTask, params: dict[str, object]) -> UnlearnResult:
    cfg = parse_params(FinetuneConfig, params)
    model = copy.deepcopy(task.model)
    t0 = time.perf_counter()
    run_epochs(model, task.ds, task.retain_ids, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size,
               seed=task.seed, tick=task.tick)
    return UnlearnResult(model=model, time_s=seconds_since(t0, task), params=asdict(cfg))
