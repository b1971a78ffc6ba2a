"""Unrolling SGD (Thudi et al. 2022, EuroS&P): undo D_f's first-order contribution to training.

Unrolled over training, a sample z moved the weights by about η·Σ_t ∇ℓ(z, w_t)/B; taking
every w_t ≈ w_0 (the seeded initial weights) gives θ_u = θ* + (η·E/B)·Σ_{D_f} ∇ℓ(z, w_0), with
E the epochs θ* trained, B the batch size and η its learning rate. The approximation assumes
plain SGD; our models are trained with Adam, which the method cannot see (a known weakness).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass

import torch

from app.ml.forgetting.methods.base import UnlearnResult, UnlearnTask, parse_params, seconds_since
from app.ml.forgetting.methods.registry import METHODS
from app.ml.training.fit import seeded_model
from app.ml.training.grads import grad_sum, trainable


@dataclass(frozen=True)
class UnrollingConfig:
    epochs: int | None = None  # default: the epochs θ* was trained for (task.epochs_trained)
    scale: float = 1.0


@METHODS.register("unrolling")
def unrolling(task: UnlearnTask, params: dict[str, object]) -> UnlearnResult:
    cfg = parse_params(UnrollingConfig, params)
    model_cfg, train_cfg, _ = task.require_training_setup("unrolling")
    epochs = cfg.epochs or task.epochs_trained or train_cfg.max_epochs
    model = copy.deepcopy(task.model)
    t0 = time.perf_counter()
    init = seeded_model(model_cfg, train_cfg.seed, task.ds.device)
    g0 = grad_sum(init, task.ds, task.forget_ids, chunk_size=task.chunk_size)
    step = cfg.scale * train_cfg.lr * epochs / train_cfg.batch_size
    with torch.no_grad():
        for name, p in trainable(model):
            p.add_((step * g0[name]).to(p.dtype))
    return UnlearnResult(model=model, time_s=seconds_since(t0, task),
                         params={**asdict(cfg), "epochs": epochs, "step": step})
