"""out_match: pulls D_f down to the references' non-member level, keeps the rest, needs a verifier."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from torch import nn

import app.ml.forgetting.methods.out_match as out_match_module
from app.errors import ConfigError
from app.ml.common.hashing import weights_sha256
from app.ml.data.dataset import Dataset, Splits
from app.ml.forgetting.methods import run_method
from app.ml.forgetting.methods.base import UnlearnTask
from app.ml.forgetting.methods.loops import only_last_trainable
from app.ml.models.factory import ModelConfig
from app.ml.training.fit import TrainConfig, fit
from app.ml.training.metrics import accuracy
from tests.ml.test_verify import Setting, _setting


@pytest.fixture(scope="module")
def setting(digits: Dataset, digit_splits: Splits) -> Setting:
    return _setting(digits, digit_splits, 300)


def _task(s: Setting, forget: np.ndarray, *, with_verifier: bool = True) -> UnlearnTask:
    return UnlearnTask(model=s.target, ds=s.ds, train_ids=s.members, forget_ids=forget,  # type: ignore[arg-type]
                       weights_sha256=weights_sha256(s.target.state_dict()), seed=0,  # type: ignore[attr-defined]
                       verifier=s.verifier if with_verifier else None)


def test_out_match_closes_most_of_the_membership_gap(setting: Setting, digit_splits: Splits) -> None:
    forget = np.sort(np.random.default_rng(3).choice(setting.members, 100, replace=False))
    v, ds = setting.verifier, setting.ds
    before = v.assess(setting.target, ds, forget)  # type: ignore[arg-type]
    # the step size is model-dependent (this small MLP overshoots at 1e-3 without warmup): calibration's job
    res = run_method("out_match", _task(setting, forget), {"epochs": 5, "lr": 6e-4})
    after = v.assess(res.model, ds, forget)
    assert before["set"]["p_member"] < 1e-3, before["set"]
    gap = before["set"]["auc"] - 0.5
    assert before["set"]["auc"] - after["set"]["auc"] > 0.4 * gap, (before["set"], after["set"])
    assert after["set"]["p_member"] > 0.01
    # accuracy: against the gold standard, a model retrained from scratch without D_f
    cfg = ModelConfig("mlp", ds.in_shape, 10)
    retrained = fit(cfg, ds, np.setdiff1d(setting.members, forget), None, TrainConfig(max_epochs=60, seed=0),
                    progress=False).model
    acc, gold = accuracy(res.model, ds, digit_splits.test), accuracy(retrained, ds, digit_splits.test)
    print(f"test acc: θ* {accuracy(setting.target, ds, digit_splits.test):.3f}, out_match {acc:.3f}, "  # type: ignore[arg-type]
          f"retrain {gold:.3f}; set AUC {before['set']['auc']:.3f} → {after['set']['auc']:.3f}")
    assert acc > gold - 0.03
    # θ* is untouched
    assert weights_sha256(setting.target.state_dict()) == _task(setting, forget).weights_sha256  # type: ignore[attr-defined]


def test_out_match_needs_a_verifier_and_valid_params(setting: Setting) -> None:
    forget = setting.members[:10]
    with pytest.raises(ConfigError, match="needs the model's membership verifier"):
        run_method("out_match", _task(setting, forget, with_verifier=False), {})
    with pytest.raises(ConfigError, match="does not take"):
        run_method("out_match", _task(setting, forget), {"eta": 1.0})
    with pytest.raises(ConfigError, match="positive"):
        run_method("out_match", _task(setting, forget), {"epochs": 0})


def test_shift_target_moves_df_by_its_median_excess(setting: Setting) -> None:
    forget = np.sort(np.random.default_rng(3).choice(setting.members, 100, replace=False))
    v, ds = setting.verifier, setting.ds

    def excess(model: object) -> float:  # D_f's median calibrated score above the non-members'
        return float(np.median(v.scores(model, ds, forget)) - np.median(v.scores(model, ds, v.calib_ids)))  # type: ignore[arg-type]

    # 100 samples are 2 minibatches an epoch: the shift needs more passes than CIFAR-10's 28 batches did
    res = run_method("out_match", _task(setting, forget), {"target": "shift", "epochs": 30, "retain_weight": 1.0})
    before, after = excess(setting.target), excess(res.model)
    print(f"median excess {before:.3f} → {after:.3f}")
    assert before > 0 and abs(after) < 0.75 * before  # a no-op keeps it; measured 0.326 → 0.175
    with pytest.raises(ConfigError, match="ceiling"):
        run_method("out_match", _task(setting, forget), {"target": "both"})


class _CalledOutOfOrder(nn.Module):
    """Registers its output layer first: only a forward says which layer is last."""

    def __init__(self) -> None:
        super().__init__()
        self.out = nn.Linear(8, 3)
        self.body = nn.Linear(4, 8)
        self.norm = nn.BatchNorm1d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.norm(self.body(x))))


def test_only_the_last_called_layers_train_and_everything_trains_again_after() -> None:
    model = _CalledOutOfOrder().train()
    model.body.bias.requires_grad_(False)  # frozen by the user (--freeze) before: stays frozen
    with only_last_trainable(model, 1, torch.zeros(2, 4)) as frozen:
        assert set(frozen) == {"body.", "norm."}
        assert [n for n, p in model.named_parameters() if p.requires_grad] == ["out.weight", "out.bias"]
        before = model.norm.running_mean.clone()
        model(torch.randn(16, 4))
        assert torch.equal(model.norm.running_mean, before)  # a frozen norm layer keeps its statistics
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == ["body.bias"]
    model.train()(torch.randn(16, 4))
    assert not torch.equal(model.norm.running_mean, before)  # and moves them again once the block is left


def test_train_last_moves_only_the_head_and_its_cached_front_gives_the_uncached_step(
        setting: Setting, monkeypatch: pytest.MonkeyPatch) -> None:
    forget = np.sort(np.random.default_rng(3).choice(setting.members, 100, replace=False))
    params = {"target": "shift", "epochs": 3, "lr": 3e-3, "retain_weight": 10.0, "train_last": 1}
    cached = run_method("out_match", _task(setting, forget), params)
    assert cached.info["feature_cache"]["used"] is True
    theta, after = setting.target.state_dict(), cached.model.state_dict()  # type: ignore[attr-defined]
    moved = {k for k in theta if not torch.equal(theta[k], after[k])}
    assert moved == {"net.5.weight", "net.5.bias"}
    assert all(p.requires_grad for p in cached.model.parameters())  # the next step may move everything

    def not_traceable(*_a: object, **_k: object) -> Iterator[str]:
        yield "torch.fx cannot trace the model"
    monkeypatch.setattr(out_match_module, "cached_features", contextmanager(not_traceable))
    plain = run_method("out_match", _task(setting, forget), params)
    assert plain.info["feature_cache"] == {"used": False, "why": "torch.fx cannot trace the model"}
    for k, v in plain.model.state_dict().items():  # the same steps on the same batches: float rounding apart
        torch.testing.assert_close(after[k], v, atol=1e-5, rtol=1e-4)
    v, ds = setting.verifier, setting.ds
    assert v.assess(cached.model, ds, forget)["set"]["auc"] < v.assess(setting.target, ds, forget)["set"]["auc"]  # type: ignore[arg-type]
