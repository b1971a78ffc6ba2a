"""Small training loops that several baselines share (fine-tune, ascent, relabel, distil)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from app.ml.data.dataset import Dataset, minibatches

BatchLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor, np.ndarray], torch.Tensor]


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ids: np.ndarray) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def run_epochs(model: nn.Module, ds: Dataset, ids: np.ndarray, *, epochs: int, lr: float, batch_size: int,
               seed: int, loss_fn: BatchLoss = cross_entropy,
               labels: Callable[[np.ndarray], torch.Tensor] | None = None,
               tick: Callable[[], None] = lambda: None) -> None:
    """Adam on LOSS_FN over IDS in a seeded order; LABELS may replace the true labels."""
    model.train()
    opt = torch.optim.Adam(trainable_params(model), lr=lr)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(ids)
        for batch in minibatches(order, batch_size):
            tick()
            y = labels(batch) if labels is not None else ds.labels(batch)
            loss = loss_fn(model, ds.features(batch), y, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()


def trainable_params(model: nn.Module) -> list[nn.Parameter]:
    """What an unlearning optimiser may move: never a frozen parameter (`--freeze`)."""
    return [p for p in model.parameters() if p.requires_grad]


@dataclass(frozen=True)
class SGDConfig:
    """The peers' optimiser (SCRUB, SalUn, ℓ1-sparse, NegGrad+ all use SGD with momentum and weight decay);
    each method's config extends it and overrides the authors' step size."""

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4

    def __post_init__(self) -> None:
        if not self.lr > 0 or not 0 <= self.momentum < 1 or self.weight_decay < 0:
            raise ValueError("lr > 0, 0 ≤ momentum < 1, weight_decay ≥ 0")

    def optimizer(self, model: nn.Module) -> torch.optim.SGD:
        return torch.optim.SGD(trainable_params(model), lr=self.lr, momentum=self.momentum,
                               weight_decay=self.weight_decay)


def batches(ids: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """IDS in a seeded random order, cut into minibatches."""
    return minibatches(rng.permutation(ids), batch_size)
