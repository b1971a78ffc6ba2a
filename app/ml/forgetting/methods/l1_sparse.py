"""ℓ1-sparse unlearning (Jia et al., NeurIPS 2023, "Model Sparsity Can Simplify Machine Unlearning";
OPTML-Group/Unlearn-Sparse, FT_l1): fine-tune on D_r with an ℓ1 penalty on the weights whose strength decays
linearly to 0, α_e = α·(1 − e / (epochs − no_l1_epochs)), so early epochs sparsify and late ones recover
accuracy. Defaults are their CIFAR-10 setting: α = 5e-4, 10 epochs, SGD lr 0.01, momentum 0.9, weight decay
5e-4, batch 256.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from app.ml.forgetting.methods.base import UnlearnResult, UnlearnTask, parse_params, seconds_since
from app.ml.forgetting.methods.loops import SGDConfig, batches, trainable_params
from app.ml.forgetting.methods.registry import METHODS


@dataclass(frozen=True)
class L1SparseConfig(SGDConfig):
    alpha: float = 5e-4
    epochs: int = 10
    no_l1_epochs: int = 0  # the last epochs without the penalty
    batch_size: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alpha < 0 or self.epochs < 1 or not 0 <= self.no_l1_epochs <= self.epochs or self.batch_size < 1:
            raise ValueError("alpha ≥ 0, epochs ≥ 1, 0 ≤ no_l1_epochs ≤ epochs, batch_size ≥ 1")


def l1_strength(cfg: L1SparseConfig, epoch: int) -> float:
    span = cfg.epochs - cfg.no_l1_epochs
    if span == 0:
        return cfg.alpha
    return cfg.alpha * (1 - epoch / span) if epoch < span else 0.0


@METHODS.register("l1_sparse")
def l1_sparse(task: UnlearnTask, params: dict[str, object]) -> UnlearnResult:
    cfg = parse_params(L1SparseConfig, params)
    model = copy.deepcopy(task.model)
    t0 = time.perf_counter()
    opt = cfg.optimizer(model)
    weights = trainable_params(model)
    rng = np.random.default_rng(task.seed)
    model.train()
    for epoch in range(cfg.epochs):
        strength = l1_strength(cfg, epoch)
        for b in batches(task.retain_ids, cfg.batch_size, rng):
            task.tick()
            loss = F.cross_entropy(model(task.ds.features(b)), task.ds.labels(b))
            if strength:
                loss = loss + strength * torch.cat([w.flatten() for w in weights]).abs().sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    return UnlearnResult(model=model, time_s=seconds_since(t0, task), params=asdict(cfg))
