"""Batch norm on a batch of one: running statistics for that forward.

A batch-norm layer in training mode needs more than one value per channel. `minibatches` folds a lone last
sample into the batch before it, but a deletion can name a single training sample, and every method that takes
steps on D_f alone (SCRUB's max steps, NegGrad+, SalUn, …) then forwards a batch of one in training mode.
For that forward only the layer uses its running statistics (as in eval mode) and leaves them as they were:
one sample has no batch statistics to normalise by or to learn from. Larger batches are untouched.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

_SWITCHED = "_unlearnd_one_value_eval"


def allow_batches_of_one(model: nn.Module) -> nn.Module:
    """Hook every batch-norm layer of MODEL (after its frozen prefixes, whose layers stay in eval anyway)."""
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            module.register_forward_pre_hook(_before)
            module.register_forward_hook(_after)
    return model


def _before(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
    x = args[0]
    if module.training and x.dim() >= 2 and x.numel() // max(x.shape[1], 1) <= 1:
        module.training = False
        setattr(module, _SWITCHED, True)


def _after(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
    if getattr(module, _SWITCHED, False):
        module.training = True
        setattr(module, _SWITCHED, False)
