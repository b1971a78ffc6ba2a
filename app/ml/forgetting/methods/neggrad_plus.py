"""NegGrad+ (Kurmanji et al., NeurIPS 2023; the tuned baseline of large evaluations): descend on D_r and ascend
on D_f at once, loss = β·ℓ(D_r batch) − (1 − β)·ℓ(D_f batch), one D_f batch (cycled) beside each D_r batch.
Defaults: β = 0.999, SGD lr 0.01, momentum 0.9, weight decay 5e-4, 5 epochs over D_r, batch 128.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch.nn.functional as F

from app.ml.forgetting.methods.base import UnlearnResult, UnlearnTask, parse_params, seconds_since
from app.ml.forgetting.methods.loops import SGDConfig, batches
from app.ml.forgetting.methods.registry import METHODS


@dataclass(frozen=True)
class NegGradPlusConfig(SGDConfig):
    beta: float = 0.999
    epochs: int = 5
    batch_size: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.beta <= 1 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError("beta in [0, 1], epochs ≥ 1, batch_size ≥ 1")


@METHODS.register("neggrad_plus")
def neggrad_plus(task: UnlearnTask, params: dict[str, object]) -> UnlearnResult:
    cfg = parse_params(NegGradPlusConfig, params)
    model = copy.deepcopy(task.model)
    t0 = time.perf_counter()
    opt = cfg.optimizer(model)
    rng = np.random.default_rng(task.seed)
    model.train()
    for _ in range(cfg.epochs):
        forget = batches(task.forget_ids, cfg.batch_size, rng)
        for k, b in enumerate(batches(task.retain_ids, cfg.batch_size, rng)):
            task.tick()
            f = forget[k % len(forget)]
            loss = cfg.beta * F.cross_entropy(model(task.ds.features(b)), task.ds.labels(b)) \
                - (1 - cfg.beta) * F.cross_entropy(model(task.ds.features(f)), task.ds.labels(f))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    return UnlearnResult(model=model, time_s=seconds_since(t0, task), params=asdict(cfg))
