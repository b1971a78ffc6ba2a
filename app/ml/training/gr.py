"""Gradient-restriction (GR) loss, paper Eq. 7:  ℓ_GR = ℓ + α·‖∇_θ ℓ‖.

ℓ is the minibatch-mean cross-entropy. Two norms (docs/method.md, "How IAU is computed"):
  global      ‖g‖₂ over all parameters at once (the paper's formula, the default)
  per_tensor  Σ_i ‖g_i‖₂ over parameter tensors (the authors' public code)

Two ways to get ∇_θ ℓ_GR = g + α·H·u, with u = ∂penalty/∂g (g/‖g‖, or per tensor g_i/‖g_i‖):
  exact  double backprop (create_graph=True): the reference.
  fd     a finite-difference Hessian-vector product, H·u ≈ (∇ℓ(θ + r·u) − ∇ℓ(θ)) / r:
         two ordinary backward passes instead of a backward through a backward. The probe
         at θ + r·u replays θ's ReLU masks and max-pool winners (app.ml.training.gates), so it stays on
         the smooth piece whose Hessian autograd's exact form uses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from app.ml.training.gates import FrozenGates

GR_NORMS = ("global", "per_tensor")
GR_GRADS = ("exact", "fd")


def penalty(grads: Sequence[torch.Tensor], norm: str) -> torch.Tensor:
    if norm == "global":
        return torch.sqrt(sum((g * g).sum() for g in grads))  # type: ignore[arg-type]
    if norm == "per_tensor":
        return sum(g.norm() for g in grads)  # type: ignore[return-value]
    raise ValueError(f"unknown gr_norm {norm!r}; valid: {', '.join(GR_NORMS)}")


def _penalty_direction(grads: Sequence[torch.Tensor], norm: str) -> list[torch.Tensor]:
    """u = ∂penalty/∂g."""
    tiny = 1e-12
    if norm == "global":
        total = torch.sqrt(sum((g * g).sum() for g in grads))  # type: ignore[arg-type]
        return [g / (total + tiny) for g in grads]
    return [g / (g.norm() + tiny) for g in grads]


def gr_loss_and_grads(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    alpha: float,
    norm: str = "global",
    method: str = "exact",
    fd_eps: float = 1e-3,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Return (ℓ_GR value, ∇_θ ℓ_GR) for one minibatch, without touching .grad. The value is a detached
    0-dim tensor: reading it as a float would wait for the GPU at every step."""
    if method not in GR_GRADS:
        raise ValueError(f"unknown gr_grad {method!r}; valid: {', '.join(GR_GRADS)}")
    if alpha != 0.0 and method == "fd":
        return gr_fd_loss_and_grads(model, x, y, alpha=alpha, norm=norm, fd_eps=fd_eps)
    params = [p for p in model.parameters() if p.requires_grad]
    loss = F.cross_entropy(model(x), y)
    if alpha == 0.0:
        return loss.detach(), list(torch.autograd.grad(loss, params))
    g = torch.autograd.grad(loss, params, create_graph=True)
    total = loss + alpha * penalty(g, norm)
    return total.detach(), list(torch.autograd.grad(total, params))


def gr_fd_loss_and_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, alpha: float,
                         norm: str = "global", fd_eps: float = 1e-3,
                         gates: FrozenGates | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The fd form of gr_loss_and_grads. GATES (made once per model) avoids re-hooking per call."""
    own = gates is None
    gates = gates or FrozenGates(model)
    try:
        params = [p for p in model.parameters() if p.requires_grad]
        gates.record()
        loss = F.cross_entropy(model(x), y)
        gates.off()
        g = torch.autograd.grad(loss, params)
        u = _penalty_direction(g, norm)
        gates.replay()
        hu = _fd_hvp(model, params, x, y, g, u, fd_eps)
        gates.off()
        return loss.detach() + alpha * penalty(g, norm), [gi + alpha * hi for gi, hi in zip(g, hu, strict=True)]
    finally:
        gates.off()
        if own:
            gates.remove()


def _fd_hvp(
    model: nn.Module,
    params: list[nn.Parameter],
    x: torch.Tensor,
    y: torch.Tensor,
    g: Sequence[torch.Tensor],
    u: Sequence[torch.Tensor],
    eps: float,
) -> list[torch.Tensor]:
    # r stays a tensor: a Python float would make the host wait for the GPU at every step
    u_norm = torch.sqrt(sum((t * t).sum() for t in u))  # type: ignore[arg-type]
    r = eps / u_norm.clamp(min=1e-12)
    saved = [p.detach().clone() for p in params]
    # The probe forward must not move batch-norm running statistics a second time.
    buffers = [b.detach().clone() for b in model.buffers()]
    with torch.no_grad():
        for p, d in zip(params, u, strict=True):
            p.add_(d * r)
    g2 = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    with torch.no_grad():
        for p, s in zip(params, saved, strict=True):
            p.copy_(s)
        for b, s in zip(model.buffers(), buffers, strict=True):
            b.copy_(s)
    return [(b - a) / r for a, b in zip(g, g2, strict=True)]
