"""Work counted, not timed: calibration's cost ratios must not depend on the host's load."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from app.ml.common.work import BACKWARD_COST, counting


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


class _Nested(nn.Module):
    """A model whose forward calls a submodule that is not a leaf, as most models' do (LeNet5's, a ResNet's)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = _mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_each_outermost_forward_counts_its_batch_and_autograd_counts_the_backward_too() -> None:
    model, x = _mlp(), torch.randn(10, 4)
    with counting() as work:
        model(x).sum().backward()  # 10 samples with autograd: their backward too
        with torch.no_grad():
            model(x[:4])  # a teacher's forward: 4 samples, no backward
    assert work.value == 10 * BACKWARD_COST + 4  # the layers inside the Sequential are not counted again
    with counting() as again:
        pass
    model(x)  # after the block: nobody counts, and no hook is left behind
    assert again.value == 0 and work.value == 10 * BACKWARD_COST + 4
    assert not nn.modules.module._global_forward_pre_hooks and not nn.modules.module._global_forward_hooks


def test_other_threads_and_a_raising_forward_do_not_skew_the_count() -> None:
    model = _mlp()

    class Boom(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    with counting() as work:
        t = threading.Thread(target=lambda: model(torch.randn(100, 4)))  # the API serving /predict meanwhile
        t.start()
        t.join()
        with pytest.raises(RuntimeError, match="boom"):
            nn.Sequential(Boom())(torch.randn(7, 4))
        with torch.no_grad():
            model(torch.randn(5, 4))  # counted: the failed call above did not leave it nested
    assert work.value == 7 * BACKWARD_COST + 5


def test_a_vmapped_forward_hides_its_batch_so_the_count_is_unknown() -> None:
    model = _mlp()
    params = dict(model.named_parameters())

    def one(x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(model, params, (x.unsqueeze(0),))

    with counting() as work:
        torch.vmap(one)(torch.randn(32, 4))
    assert work.value is None  # not 1: callers fall back to wall time rather than use a count 32× too small
    with counting() as by_name:
        model(input=torch.randn(8, 4))  # keywords: the hook sees no batch
    assert by_name.value is None
    with counting() as traced:
        torch.fx.symbolic_trace(_Nested())  # a trace calls the inner Sequential with proxies: no batch to see
    assert traced.value is None


def test_a_cut_models_steps_are_timed_not_counted() -> None:
    """out_match with train_last over a cached front: a pass of the head is a fraction of a pass of the model, which
    a count of samples cannot say, and the cut's torch.fx trace leaves the count unknown, so calibration compares
    such a trial by its wall time (app/ml/common/work.py)."""
    from app.ml.training.feature_cache import find_cut

    model = _Nested()
    model.body[0].requires_grad_(False)
    with counting() as work:
        cut = find_cut(model, ("body.0.",), torch.randn(2, 4))
        assert not isinstance(cut, str)
        cut.head(cut.front(torch.randn(5, 4)))
    assert work.value is None
