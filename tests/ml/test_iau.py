"""IAU: the fast path equals the slow path, stale caches are refused, forgetting happens."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from app.errors import CacheMismatchError, ConfigError, ForgetSetError, UnknownNameError
from app.ml.common.hashing import weights_sha256
from app.ml.data.dataset import Dataset, Splits
from app.ml.forgetting.gradcache import build_cache, load_cache, save_cache
from app.ml.forgetting.methods import METHODS, run_method
from app.ml.forgetting.methods.base import UnlearnTask, check_forget_ids
from app.ml.models.factory import ModelConfig, create_model
from app.ml.training.fit import TrainResult
from app.ml.training.grads import grad_sum
from app.ml.training.metrics import accuracy, mean_loss
from tests.conftest import forget_sample


def _task(model: torch.nn.Module, ds: Dataset, train: np.ndarray, forget: np.ndarray, *, cache: bool,
          chunk: int = 128) -> UnlearnTask:
    return UnlearnTask(model=model, ds=ds, train_ids=train, forget_ids=forget,
                       weights_sha256=weights_sha256(model.state_dict()), chunk_size=chunk,
                       cache=build_cache(model, ds, train, chunk_size=chunk) if cache else None)


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().double() for p in model.parameters()])


def _rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize(("dtype", "reduction", "step"), [
    (torch.float64, "mean", "sgd"), (torch.float64, "sum", "sgd"), (torch.float64, "mean", "adam"),
    (torch.float32, "mean", "sgd"), (torch.float32, "sum", "sgd"),
    # no float32 adam: d/(|d|+ε) flips sign where d is within rounding of 0, on either path
])
def test_fast_path_equals_slow_path(digits: Dataset, digit_splits: Splits, dtype: torch.dtype,
                                    reduction: str, step: str) -> None:
    torch.manual_seed(0)
    model = create_model(ModelConfig("lenet5", digits.in_shape, 10)).to(dtype)
    forget = forget_sample(digit_splits.train)
    theta = _flat(model)
    params = {"eta": 0.05 if reduction == "mean" else 1e-3, "reduction": reduction, "step": step}
    fast = run_method("iau", _task(model, digits, digit_splits.train, forget, cache=True), params)
    slow = run_method("iau", _task(model, digits, digit_splits.train, forget, cache=False), params)
    assert fast.info["path"] == "fast" and slow.info["path"] == "slow"
    assert torch.equal(_flat(model), theta), "theta* must not be modified"
    assert _rel_diff(_flat(fast.model), _flat(slow.model)) <= 1e-5
    if step == "sgd":  # the update itself, not only θ_u, must agree
        tol = 1e-9 if dtype == torch.float64 else 1e-4
        assert _rel_diff(_flat(fast.model) - theta, _flat(slow.model) - theta) <= tol


def test_update_is_eq8(digits: Dataset, digit_splits: Splits) -> None:
    """θ_u = θ* − η(Σ_{D_r}∇ℓ − Σ_{D_f}∇ℓ) with sums computed one sample at a time."""
    torch.manual_seed(0)
    model = create_model(ModelConfig("mlp", digits.in_shape, 10)).double()
    train = digit_splits.train[:60]
    forget = train[::6]
    params = {"eta": 1e-3, "reduction": "sum", "step": "sgd"}
    res = run_method("iau", _task(model, digits, train, forget, cache=True), params)
    params = list(model.parameters())
    expected = [p.detach().clone() for p in params]
    for i in train:
        x = digits.features(np.array([i])).double()
        g = torch.autograd.grad(F.cross_entropy(model(x), digits.labels(np.array([i]))), params)
        sign = -1.0 if i in forget else 1.0
        for e, gi in zip(expected, g, strict=True):
            e.sub_(1e-3 * sign * gi)
    for e, p in zip(expected, res.model.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), e, rtol=1e-10, atol=1e-12)


def test_cache_for_other_weights_is_refused(digits: Dataset, digit_splits: Splits, tmp_path) -> None:
    torch.manual_seed(0)
    model = create_model(ModelConfig("lenet5", digits.in_shape, 10))
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    stale = build_cache(other, digits, digit_splits.train, chunk_size=256)
    save_cache(stale, tmp_path)
    loaded = load_cache(tmp_path)
    assert loaded is not None
    with pytest.raises(CacheMismatchError):
        loaded.check(weights=weights_sha256(model.state_dict()), ids=digit_splits.train)
    forget = forget_sample(digit_splits.train)
    task = _task(model, digits, digit_splits.train, forget, cache=False)
    task.cache = loaded
    res = run_method("iau", task, {})
    assert res.info["path"] == "slow" and "weights" in res.info["cache_refused"]
    reference = run_method("iau", _task(model, digits, digit_splits.train, forget, cache=False), {})
    assert torch.equal(_flat(res.model), _flat(reference.model))


def test_cache_for_other_ids_is_refused(digits: Dataset, digit_splits: Splits) -> None:
    torch.manual_seed(0)
    model = create_model(ModelConfig("lenet5", digits.in_shape, 10))
    cache = build_cache(model, digits, digit_splits.train[1:], chunk_size=256)
    with pytest.raises(CacheMismatchError, match="training ids"):
        cache.check(weights=weights_sha256(model.state_dict()), ids=digit_splits.train)


def test_cache_round_trip_is_exact(digits: Dataset, digit_splits: Splits, tmp_path) -> None:
    torch.manual_seed(0)
    model = create_model(ModelConfig("lenet5", digits.in_shape, 10))
    cache = build_cache(model, digits, digit_splits.train, chunk_size=256)
    save_cache(cache, tmp_path)
    loaded = load_cache(tmp_path)
    assert loaded is not None and loaded.weights_sha256 == cache.weights_sha256 and loaded.n == cache.n
    for k, v in cache.sums.items():
        assert torch.equal(loaded.sums[k], v)


def test_grad_sum_is_independent_of_chunking(digits: Dataset, digit_splits: Splits) -> None:
    torch.manual_seed(0)
    model = create_model(ModelConfig("lenet5", digits.in_shape, 10)).double()
    a = grad_sum(model, digits, digit_splits.train, chunk_size=7)
    b = grad_sum(model, digits, digit_splits.train, chunk_size=10_000)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-10, atol=1e-12)


def test_iau_forgets_on_digits(digits: Dataset, digit_splits: Splits, gr_model: TrainResult) -> None:
    model = gr_model.model
    forget = forget_sample(digit_splits.train)
    res = run_method("iau", _task(model, digits, digit_splits.train, forget, cache=True), {})
    assert mean_loss(res.model, digits, forget) > mean_loss(model, digits, forget)
    before = accuracy(model, digits, digit_splits.test)
    after = accuracy(res.model, digits, digit_splits.test)
    assert abs(after - before) <= 0.03
    assert res.time_s > 0 and res.params["eta"] > 0


def test_ia_only_ascends_on_forget_set(digits: Dataset, digit_splits: Splits, gr_model: TrainResult) -> None:
    forget = forget_sample(digit_splits.train)
    res = run_method("iau", _task(gr_model.model, digits, digit_splits.train, forget, cache=False),
                     {"correction": False})
    assert res.info["path"] == "ia-only"
    assert mean_loss(res.model, digits, forget) > mean_loss(gr_model.model, digits, forget)


def test_bad_forget_sets_and_params(digit_splits: Splits) -> None:
    with pytest.raises(ForgetSetError, match="empty"):
        check_forget_ids(digit_splits.train, np.array([], dtype=np.int64))
    outside = digit_splits.test[:3]
    with pytest.raises(ForgetSetError, match=str(outside[0])) as e:
        check_forget_ids(digit_splits.train, np.concatenate([digit_splits.train[:2], outside]))
    assert e.value.bad_ids == sorted(outside.tolist())
    dupes = np.array([digit_splits.train[0]] * 3)
    assert check_forget_ids(digit_splits.train, dupes).tolist() == [digit_splits.train[0]]
    with pytest.raises(UnknownNameError, match="iau"):
        METHODS.get("no-such-method")
    with pytest.raises(ConfigError, match="lr"):
        run_method("iau", None, {"lr": 1.0})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="reduction"):
        run_method("iau", None, {"reduction": "median"})  # type: ignore[arg-type]


def test_weights_hash_covers_scalar_buffers() -> None:
    """Batch-norm's num_batches_tracked is a 0-d tensor; it must hash, and count."""
    model = create_model(ModelConfig("resnet18", (3, 32, 32), 10))
    state = model.state_dict()
    before = weights_sha256(state)
    state["bn1.num_batches_tracked"] += 1
    assert weights_sha256(state) != before
