"""Frozen gates: record ReLU masks and max-pool winners in one forward, replay them in the next.

A ReLU/max-pool network is piecewise smooth; autograd's Hessian is that of the piece the
weights sit on. A finite difference of gradients crosses into other pieces (the gradient
jumps there), so it does not converge to autograd's Hessian-vector product. Replaying the
gates of θ at θ + r·u keeps the probe on θ's piece, where the difference is exact to O(r).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class FrozenGates:
    def __init__(self, model: nn.Module) -> None:
        self.mode = "off"
        self.records: list[torch.Tensor] = []
        self.pos = 0
        self._pre: torch.Tensor | None = None
        self.handles = []
        for m in model.modules():
            if isinstance(m, nn.ReLU):
                self.handles.append(m.register_forward_pre_hook(self._relu_pre))
                self.handles.append(m.register_forward_hook(self._relu_post))
            elif isinstance(m, nn.MaxPool2d) and not m.return_indices:
                self.handles.append(m.register_forward_pre_hook(self._pool_pre))
                self.handles.append(m.register_forward_hook(self._pool_post))

    @property
    def active(self) -> bool:
        return bool(self.handles)

    def record(self) -> None:
        self.mode, self.records, self.pos = "record", [], 0

    def replay(self) -> None:
        self.mode, self.pos = "replay", 0

    def off(self) -> None:
        self.mode = "off"

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def _next(self) -> torch.Tensor:
        rec = self.records[self.pos]
        self.pos += 1
        return rec

    def _relu_pre(self, module: nn.Module, inputs: tuple[Any, ...]) -> None:
        if self.mode == "replay":  # an in-place ReLU would overwrite the pre-activation
            self._pre = inputs[0].clone() if getattr(module, "inplace", False) else inputs[0]

    def _relu_post(self, module: nn.Module, inputs: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor | None:
        if self.mode == "record":
            self.records.append(out > 0)
        elif self.mode == "replay":
            assert self._pre is not None
            pre, self._pre = self._pre, None
            return pre * self._next()
        return None

    def _pool_pre(self, module: nn.MaxPool2d, inputs: tuple[Any, ...]) -> None:
        if self.mode == "record":  # the pool computes its winners anyway: have it return them
            module.return_indices = True

    def _pool_post(self, module: nn.MaxPool2d, inputs: tuple[Any, ...], out: Any) -> torch.Tensor | None:
        if self.mode == "record":
            module.return_indices = False
            pooled, idx = out
            self.records.append(idx)
            return pooled
        if self.mode == "replay":
            idx = self._next()
            return inputs[0].flatten(2).gather(2, idx.flatten(2)).view_as(out)
        return None
