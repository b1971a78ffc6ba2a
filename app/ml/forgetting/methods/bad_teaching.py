"""Bad Teaching (Chundawat et al. 2023, AAAI): distil from a competent and an incompetent teacher.

The student starts at θ*. On D_f it matches a randomly initialised (incompetent) teacher, on
a random 30% of D_r it matches θ* (the competent teacher), by KL divergence at temperature
1. Hyper-parameters from the paper's code: Adam, lr 1e-4, batch 256, 1 epoch, 30% of D_r.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from app.ml.forgetting.methods.base import UnlearnResult, UnlearnTask, parse_params, seconds_since
from app.ml.forgetting.methods.loops import run_epochs
from app.ml.forgetting.methods.registry import METHODS
from app.ml.models.factory import create_model


@dataclass(frozen=True)
class BadTeachingConfig:
    epochs: int = 1
    lr: float = 1e-4
    batch_size: int = 256
    retain_frac: float = 0.3
    temperature: float = 1.0


@METHODS.register("bad_teaching")
def bad_teaching(task: UnlearnTask, params: dict[str, object]) -> UnlearnResult:
    cfg = parse_params(BadTeachingConfig, params)
    model_cfg, _, _ = task.require_training_setup("bad_teaching")
    student, good = copy.deepcopy(task.model), task.model
    t0 = time.perf_counter()
    torch.manual_seed(task.seed + 1)
    bad = create_model(model_cfg, task.ds.device).eval()
    rng = np.random.default_rng(task.seed)
    retain = task.retain_ids
    subset = rng.choice(retain, size=max(1, int(cfg.retain_frac * len(retain))), replace=False)
    forget = set(task.forget_ids.tolist())
    t = cfg.temperature

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ids: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            is_forget = torch.tensor([int(i) in forget for i in ids], device=x.device).unsqueeze(1)
            target = torch.where(is_forget, F.softmax(bad(x) / t, 1), F.softmax(good(x) / t, 1))
        return F.kl_div(F.log_softmax(model(x) / t, 1), target, reduction="batchmean")

    run_epochs(student, task.ds, np.concatenate([task.forget_ids, subset]), epochs=cfg.epochs, lr=cfg.lr,
               batch_size=cfg.batch_size, seed=task.seed, tick=task.tick, loss_fn=loss)
    return UnlearnResult(model=student, time_s=seconds_since(t0, task), params=asdict(cfg))
