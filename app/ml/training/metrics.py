"""Evaluation helpers: accuracy, loss and per-sample gradient norms, all chunked."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from app.ml.data.dataset import Dataset


def _chunks(ids: np.ndarray, size: int) -> list[np.ndarray]:
    return [ids[i : i + size] for i in range(0, len(ids), size)]


@torch.no_grad()
def predict_logits(model: nn.Module, ds: Dataset, ids: np.ndarray, *, chunk: int = 2048) -> torch.Tensor:
    was_training = model.training
    model.eval()
    out = [model(ds.features(c)) for c in _chunks(np.asarray(ids), chunk)]
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, ds.num_classes, device=ds.device)


def accuracy(model: nn.Module, ds: Dataset, ids: np.ndarray, *, chunk: int = 2048) -> float:
    """Top-1 accuracy in [0, 1]; NaN for an empty id set."""
    if len(ids) == 0:
        return float("nan")
    pred = predict_logits(model, ds, ids, chunk=chunk).argmax(1)
    return float((pred == ds.labels(ids)).float().mean())


def mean_loss(model: nn.Module, ds: Dataset, ids: np.ndarray, *, chunk: int = 2048) -> float:
    logits = predict_logits(model, ds, ids, chunk=chunk)
    return float(F.cross_entropy(logits, ds.labels(ids)))


def per_sample_grad_norms(model: nn.Module, ds: Dataset, ids: np.ndarray, *, chunk: int = 256) -> np.ndarray:
    """‖∇_θ ℓ(z, θ)‖₂ for each sample z, in eval mode (as the paper's Fig. 3)."""
    was_training = model.training
    model.eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss_one(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return F.cross_entropy(logits, y.unsqueeze(0))

    per_sample = vmap(grad(loss_one), in_dims=(None, 0, 0))
    norms = []
    for c in _chunks(np.asarray(ids), chunk):
        gs = per_sample(params, ds.features(c), ds.labels(c))
        sq = sum(g.flatten(1).pow(2).sum(1) for g in gs.values())
        norms.append(torch.sqrt(sq))  # type: ignore[arg-type]
    model.train(was_training)
    return torch.cat(norms).cpu().numpy()
