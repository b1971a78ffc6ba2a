"""The GR loss gradient against independent computations, for both norms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad

from app.ml.data.dataset import Dataset
from app.ml.models.factory import ModelConfig, create_model
from app.ml.training.gr import gr_loss_and_grads, penalty


def _batch(digits: Dataset, n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    ids = np.arange(n)
    return digits.features(ids), digits.labels(ids)


def _gr_objective(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, alpha: float, norm: str):
    """ℓ + α·‖∇ℓ‖ written with torch.func, independently of app.ml.training.gr."""

    def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, p, (x,)), y)

    def objective(p: dict[str, torch.Tensor]) -> torch.Tensor:
        g = grad(loss)(p)
        if norm == "global":
            pen = torch.sqrt(sum((t**2).sum() for t in g.values()))
        else:
            pen = sum(torch.linalg.vector_norm(t) for t in g.values())
        return loss(p) + alpha * pen

    return objective


@pytest.mark.parametrize("norm", ["global", "per_tensor"])
@pytest.mark.parametrize("arch", ["lenet5", "mlp"])
def test_exact_gr_gradient_matches_torch_func(digits: Dataset, norm: str, arch: str) -> None:
    torch.manual_seed(0)
    model = create_model(ModelConfig(arch, digits.in_shape, 10)).double()
    x, y = _batch(digits)
    x = x.double()
    value, grads = gr_loss_and_grads(model, x, y, alpha=0.3, norm=norm, method="exact")
    params = {k: v.detach() for k, v in model.named_parameters()}
    objective = _gr_objective(model, x, y, 0.3, norm)
    expected = grad(objective)(params)
    assert float(value) == pytest.approx(float(objective(params)), rel=1e-10)
    for (name, _), g in zip(model.named_parameters(), grads, strict=True):
        torch.testing.assert_close(g, expected[name], rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("norm", ["global", "per_tensor"])
def test_exact_gr_gradient_matches_finite_differences(digits: Dataset, norm: str) -> None:
    """Central differences of the GR objective along random directions (smooth tanh MLP, float64)."""
    torch.manual_seed(1)
    model = create_model(ModelConfig("mlp", digits.in_shape, 10)).double()
    x, y = _batch(digits, 16)
    x = x.double()
    _, grads = gr_loss_and_grads(model, x, y, alpha=0.5, norm=norm, method="exact")
    params = list(model.parameters())

    def objective() -> float:
        g = torch.autograd.grad(F.cross_entropy(model(x), y), params)
        return float((F.cross_entropy(model(x), y) + 0.5 * penalty(g, norm)).detach())

    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        v = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
        h = 1e-5
        with torch.no_grad():
            for p, d in zip(params, v, strict=True):
                p.add_(d, alpha=h)
        up = objective()
        with torch.no_grad():
            for p, d in zip(params, v, strict=True):
                p.add_(d, alpha=-2 * h)
        down = objective()
        with torch.no_grad():
            for p, d in zip(params, v, strict=True):
                p.add_(d, alpha=h)
        numeric = (up - down) / (2 * h)
        analytic = float(sum((g * d).sum() for g, d in zip(grads, v, strict=True)))
        assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("norm", ["global", "per_tensor"])
@pytest.mark.parametrize("arch", ["lenet5", "mlp", "vgg19", "resnet18"])
def test_fd_approximation_tracks_exact_gradient(digits: Dataset, norm: str, arch: str) -> None:
    """fd with frozen gates is autograd's HVP up to O(r), on ReLU/max-pool nets as on smooth ones."""
    torch.manual_seed(0)
    model = create_model(ModelConfig(arch, digits.in_shape, 10))
    x, y = _batch(digits, 64)
    _, exact = gr_loss_and_grads(model, x, y, alpha=0.1, norm=norm, method="exact")
    _, approx = gr_loss_and_grads(model, x, y, alpha=0.1, norm=norm, method="fd")
    _, plain = gr_loss_and_grads(model, x, y, alpha=0.0)
    e = torch.cat([(g - p).flatten() for g, p in zip(exact, plain, strict=True)])  # the penalty's part
    a = torch.cat([(g - p).flatten() for g, p in zip(approx, plain, strict=True)])
    # train-mode batch norm curves more: float32 round-off and O(r) meet near 1.4e-2 there
    tolerance = 2e-2 if arch == "resnet18" else 1e-2
    assert float(torch.linalg.vector_norm(a - e) / torch.linalg.vector_norm(e)) < tolerance


def test_fd_without_frozen_gates_would_be_wrong(digits: Dataset) -> None:
    """Why the gates exist: a plain finite difference across ReLU/max-pool kinks is far off."""
    torch.manual_seed(0)
    model = create_model(ModelConfig("lenet5", digits.in_shape, 10))
    x, y = _batch(digits, 64)
    params = list(model.parameters())
    _, exact = gr_loss_and_grads(model, x, y, alpha=1.0, method="exact")
    g = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    total = torch.sqrt(sum((t * t).sum() for t in g))
    r = 1e-3
    with torch.no_grad():
        for p, t in zip(params, g, strict=True):
            p.add_(t / total, alpha=r)
    g2 = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    naive = torch.cat([(b - a).flatten() / r for a, b in zip(g, g2, strict=True)])
    e = torch.cat([(a - b).flatten() for a, b in zip(exact, g, strict=True)])
    assert float(torch.linalg.vector_norm(naive - e) / torch.linalg.vector_norm(e)) > 0.1


def _hooks(model: torch.nn.Module) -> list[tuple[str, int, int]]:
    return [(n, len(m._forward_pre_hooks), len(m._forward_hooks)) for n, m in model.named_modules()]


def test_fd_probe_leaves_weights_and_buffers_untouched(digits: Dataset) -> None:
    torch.manual_seed(0)
    model = create_model(ModelConfig("resnet18", (1, 8, 8), 10))
    model.train()
    x, y = _batch(digits, 8)
    model(x)  # one real forward moves BN statistics, as in training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = _hooks(model)
    gr_loss_and_grads(model, x, y, alpha=0.1, method="fd")
    after = model.state_dict()
    assert _hooks(model) == hooks  # the gates' hooks removed; the model's own (batch norm on one row) kept
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    # only the BN statistics of the one real forward in gr_loss_and_grads may move
    assert all("running" in k or "num_batches" in k for k in changed)
    assert not any(k.endswith("weight") or k.endswith("bias") for k in changed)


def test_alpha_zero_is_plain_cross_entropy(digits: Dataset) -> None:
    torch.manual_seed(0)
    model = create_model(ModelConfig("lenet5", digits.in_shape, 10))
    x, y = _batch(digits)
    value, grads = gr_loss_and_grads(model, x, y, alpha=0.0)
    loss = F.cross_entropy(model(x), y)
    expected = torch.autograd.grad(loss, list(model.parameters()))
    assert float(value) == pytest.approx(float(loss.detach()))
    for g, e in zip(grads, expected, strict=True):
        assert torch.equal(g, e)
