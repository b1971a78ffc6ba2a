"""Small training loops that several baselines share (fine-tune, ascent, relabel, distil)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from app.ml.data.dataset import Dataset, minibatches
from app.ml.models.pretrained import keep_frozen_norms_in_eval

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


@contextmanager
def only_last_trainable(model: nn.Module, k: int, example: torch.Tensor) -> Iterator[tuple[str, ...]]:
    """Within the block, only the parameters of MODEL's last K parameter-owning modules train, in the order one
    forward of EXAMPLE calls them (registration order need not be the computation's; a module called twice
    counts at its last call). The frozen part's normalisation layers stay in eval mode: their running statistics
    are part of what is frozen. Yields the frozen modules' name prefixes ("name."); on exit every parameter
    trains as before, so the model goes on like any other."""
    owners = {m: n for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))}
    calls: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda mod, _a: calls.append(owners[mod])) for m in owners]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    keep = set(list(dict.fromkeys(reversed(calls)))[:k])
    frozen = [p for m, n in owners.items() if n not in keep for p in m.parameters(recurse=False) if p.requires_grad]
    prefixes = tuple(f"{n}." for n in owners.values() if n not in keep)
    stay = keep_frozen_norms_in_eval(model, prefixes)
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield prefixes
    finally:
        for p in frozen:
            p.requires_grad_(True)
        for h in stay:
            h.remove()


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
