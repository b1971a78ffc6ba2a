"""Chunked sums of per-sample loss gradients.

Σ_z ∇ℓ(z, θ) over a set is one backward of the summed loss, so a chunk costs one ordinary
forward+backward; memory depends on the chunk size, never on the size of the set. Sums are
accumulated in float64 so that Σ_D − Σ_{D_f} (the fast path) matches Σ_{D_r} (the slow path).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from app.ml.data.dataset import Dataset

GradSums = dict[str, torch.Tensor]  # parameter name → float64 tensor of its shape


def trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def grad_sum(model: nn.Module, ds: Dataset, ids: np.ndarray, *, chunk_size: int = 1024) -> GradSums:
    """Σ_{z ∈ ids} ∇_θ ℓ(z, θ), taken in eval mode (no dropout, batch-norm running stats)."""
    named = trainable(model)
    params = [p for _, p in named]
    acc = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    was_training = model.training
    model.eval()
    ids = np.asarray(ids)
    dtype = params[0].dtype
    for start in range(0, len(ids), chunk_size):
        chunk = ids[start : start + chunk_size]
        loss = F.cross_entropy(model(ds.features(chunk).to(dtype)), ds.labels(chunk), reduction="sum")
        for a, g in zip(acc, torch.autograd.grad(loss, params), strict=True):
            a.add_(g)
    model.train(was_training)
    return {n: a for (n, _), a in zip(named, acc, strict=True)}
