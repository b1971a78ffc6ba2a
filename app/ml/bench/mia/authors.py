"""The IAU authors' attack features: (softmax − one-hot label, one-hot label)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from app.ml.bench.mia.attacks import ATTACKS


@ATTACKS.register("authors")
def authors_features(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    onehot = F.one_hot(labels, probs.shape[1]).to(probs.dtype)
    return torch.cat([probs - onehot, onehot], dim=1)  # (n, 2K)
