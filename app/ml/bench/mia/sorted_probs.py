"""Label-free attack features: the class probabilities sorted in decreasing order."""

from __future__ import annotations

import torch

from app.ml.bench.mia.attacks import ATTACKS


@ATTACKS.register("sorted")
def sorted_features(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return probs.sort(dim=1, descending=True).values  # (n, K)
