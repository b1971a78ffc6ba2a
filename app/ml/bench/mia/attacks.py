"""The attack registry: an attack is named by its feature set."""

from __future__ import annotations

from collections.abc import Callable

import torch

from app.ml.common.registry import Registry

# (softmax probabilities (n, K), labels (n,)) → attack features (n, F)
Features = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

ATTACKS: Registry[Features] = Registry("attack")
