"""SalUn (Fan et al., ICLR 2024, "Saliency Unlearning"; OPTML-Group/Unlearn-Saliency).

A weight saliency mask: the `threshold` share of weights with the largest |∇_θ Σ_{D_f} −ℓ| at θ*
(the forget loss's gradient, summed over D_f's minibatches). Then random-label fine-tuning with every
update restricted to the mask: each epoch, a pass over D_f with labels drawn uniformly at random, then a
pass over D_r with the true labels (their CIFAR-10 loop). Defaults are the paper's CIFAR-10 random-data
setting: mask 50%, SGD lr 0.013, momentum 0.9, weight decay 5e-4, 10 epochs, batch 256. Weight decay
acts through the optimiser, so masked-out weights are also held at θ*'s values after each step, as the
authors' code does.
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
from app.ml.forgetting.methods.loops import SGDConfig, batches
from app.ml.forgetting.methods.registry import METHODS
from app.ml.training.grads import trainable


@dataclass(frozen=True)
class SalUnConfig(SGDConfig):
    lr: float = 0.013
    threshold: float = 0.5  # share of (trainable) weights the mask keeps
    epochs: int = 10
    batch_size: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.threshold <= 1 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError("threshold in (0, 1], epochs ≥ 1, batch_size ≥ 1")


def saliency_mask(model: nn.Module, task: UnlearnTask, share: float, batch_size: int) -> dict[str, torch.Tensor]:
    """1 for the SHARE of weights with the largest forget-loss gradient magnitude, 0 elsewhere."""
    named = trainable(model)
    acc = [torch.zeros_like(p) for _, p in named]
    model.eval()
    for start in range(0, len(task.forget_ids), batch_size):
        b = task.forget_ids[start:start + batch_size]
        loss = -F.cross_entropy(model(task.ds.features(b)), task.ds.labels(b))
        for a, g in zip(acc, torch.autograd.grad(loss, [p for _, p in named]), strict=True):
            a.add_(g)
    flat = torch.cat([a.abs().flatten() for a in acc])
    k = max(1, round(share * flat.numel()))
    cut = torch.topk(flat, k).values.min()
    return {n: (a.abs() >= cut).to(a.dtype) for (n, _), a in zip(named, acc, strict=True)}


@METHODS.register("salun")
def salun(task: UnlearnTask, params: dict[str, object]) -> UnlearnResult:
    cfg = parse_params(SalUnConfig, params)
    model = copy.deepcopy(task.model)
    t0 = time.perf_counter()
    mask = saliency_mask(model, task, cfg.threshold, cfg.batch_size)
    start = {n: p.detach().clone() for n, p in trainable(model)}
    opt = cfg.optimizer(model)
    rng = np.random.default_rng(task.seed)
    gen = torch.Generator().manual_seed(task.seed)
    k = task.ds.num_classes
    for _ in range(cfg.epochs):
        for b in batches(task.forget_ids, cfg.batch_size, rng):
            task.tick()
            _masked_step(model, opt, mask, start, task.ds.features(b),
                         torch.randint(0, k, (len(b),), generator=gen).to(task.ds.device))
        for b in batches(task.retain_ids, cfg.batch_size, rng):
            task.tick()
            _masked_step(model, opt, mask, start, task.ds.features(b), task.ds.labels(b))
    model.eval()
    kept = float(sum(m.sum() for m in mask.values()) / sum(m.numel() for m in mask.values()))
    return UnlearnResult(model=model, time_s=seconds_since(t0, task), params=asdict(cfg), info={"mask_share": kept})


def _masked_step(model: nn.Module, opt: torch.optim.Optimizer, mask: dict[str, torch.Tensor],
                 start: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> None:
    model.train()
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    named = trainable(model)
    for n, p in named:
        if p.grad is not None:
            p.grad.mul_(mask[n])
    opt.step()
    with torch.no_grad():  # weight decay and momentum must not move what the mask leaves out
        for n, p in named:
            p.copy_(p * mask[n] + start[n] * (1 - mask[n]))
            state = opt.state.get(p)
            if state and state.get("momentum_buffer") is not None:
                state["momentum_buffer"].mul_(mask[n])
