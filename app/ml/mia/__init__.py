"""Membership inference (Shokri et al. 2017): attacks registered by their feature set."""

from __future__ import annotations

from collections.abc import Callable

import torch

from app.ml.registry import Registry

# (softmax probabilities (n, K), labels (n,)) → attack features (n, F)
Features = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

ATTACKS: Registry[Features] = Registry("attack")


def _register_builtin() -> None:
    from app.ml.mia import authors, sorted_probs  # noqa: F401  (each registers itself)


_register_builtin()
