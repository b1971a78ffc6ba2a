"""Work: how many samples an update passes through a model, a cost that does not depend on the host's load.

Calibration compares costs as ratios (a setting SLOWER times slower than another, a step whose cost on 10 ids is
a third of its cost on 250). Wall time made those comparisons coin flips near the threshold: on
forgetting-small's memorising CIFAR-10 MLP, out_match's ceiling and shift both cost ~3× more on 250 ids than on 10
in wall time, and a second calibration of the same θ* named the shift as the per-sample step where the first
named the ceiling (docs/forgetting.md, "seventh pass"). Work is counted, not timed, so the same model and seed
give the same choice.

The unit is one sample's forward pass: a forward with autograd recording counts BACKWARD_COST (its backward costs
about two forwards, the usual estimate), a forward without it counts 1. Only the outermost module call counts (a
model's layers are part of its forward), and only calls from the thread that opened the count. A forward on
functorch-transformed inputs (vmap, grad), or with no positional tensor, hides its batch from the hook: the count is
then unknown (None), and callers fall back to wall time rather than use a number that is too small. A torch.fx trace
calls a model's inner modules with proxies, not tensors, so it leaves the count unknown too. That is as well: the
model it cuts (out_match's train_last) then steps on its head alone, and a pass of the head costs a fraction of a
pass of the model, which a count of samples cannot say.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch._C import _functorch

BACKWARD_COST = 3  # forward + backward ≈ 3 forwards


@dataclass
class Work:
    samples: int = 0  # forward-pass equivalents
    exact: bool = True
    _depth: int = 0

    @property
    def value(self) -> int | None:
        return self.samples if self.exact else None


def _batch(args: tuple[Any, ...]) -> tuple[int, bool]:
    """The batch size of a forward's first tensor argument, and whether it can be trusted (not without one: a
    model called with keywords or a dict of inputs hides its batch too)."""
    x = next((a for a in args if isinstance(a, torch.Tensor)), None)
    if x is None or x.dim() == 0:
        return 0, False
    return int(x.shape[0]), not _functorch.is_functorch_wrapped_tensor(x)


@contextmanager
def counting() -> Iterator[Work]:
    """Count the samples every module call in this thread passes through a model, while the block runs."""
    work, me = Work(), threading.get_ident()

    def pre(module: nn.Module, args: tuple[Any, ...]) -> None:
        if threading.get_ident() != me:
            return
        if work._depth == 0:
            n, exact = _batch(args)
            work.samples += n * (BACKWARD_COST if torch.is_grad_enabled() else 1)
            work.exact = work.exact and exact
        work._depth += 1

    def post(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        if threading.get_ident() == me:
            work._depth = max(0, work._depth - 1)

    handles = [nn.modules.module.register_module_forward_pre_hook(pre),
               nn.modules.module.register_module_forward_hook(post, always_call=True)]
    try:
        yield work
    finally:
        for h in handles:
            h.remove()
