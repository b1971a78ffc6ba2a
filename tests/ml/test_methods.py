"""Every registered method runs on a tiny config, changes the weights, and Retrain is the gold.

The context is built on each device this machine has, named explicitly ("cpu" always; "cuda" where torch
sees a GPU), so every method runs with its data and models on that device."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from app.errors import UnknownNameError
from app.ml.bench.context import ExperimentConfig, SeedContext, prepare
from app.ml.bench.table import run_seed, tiny
from app.ml.data.dataset import Dataset
from app.ml.forgetting.methods import METHODS, run_method

BASELINES = ["retrain", "iau", "fisher", "amnesiac", "bad_teaching", "unrolling", "finetune", "gradient_ascent"]
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.fixture(scope="module", params=DEVICES)
def ctx(digits: Dataset, request: pytest.FixtureRequest) -> SeedContext:
    return prepare(ExperimentConfig("digits", "lenet5", max_epochs=4, patience=2), digits.on(request.param), seed=0,
                   progress=False)


def test_registry_holds_every_method() -> None:
    assert set(BASELINES) <= set(METHODS.names())


@pytest.mark.parametrize("method", [*BASELINES, "out_match"])
def test_method_changes_the_weights(ctx: SeedContext, method: str) -> None:
    alpha = ctx.cfg.alpha if method == "iau" else 0.0
    task = replace(ctx.task(alpha), verifier=ctx.verifier)
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    res = run_method(method, task, {})
    after = res.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), f"{method} left θ* as it was"
    assert all(torch.equal(before[k], v) for k, v in task.model.state_dict().items()), "θ* itself must not change"
    assert res.time_s > 0
    assert all(v.device.type == ctx.ds.device.type for v in after.values()), "the result stays on the task's device"
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())


def test_retrain_is_deterministic_so_its_mu_and_ue_are_zero(ctx: SeedContext) -> None:
    again = run_method("retrain", ctx.task(0.0), {})
    for k, v in ctx.retrain.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k])
    rows = {r["method"]: r for r in run_seed(tiny(), ctx)}
    assert rows["retrain"]["MU"] == 0.0 and rows["retrain"]["UE"] == 0.0
    assert set(BASELINES) <= set(rows)
    for name in BASELINES:
        assert rows[name]["MU"] >= 0 and rows[name]["UE"] >= 0


def test_retrain_never_sees_the_forget_set(ctx: SeedContext) -> None:
    assert not np.intersect1d(ctx.retain, ctx.forget).size
    assert len(ctx.retain) + len(ctx.forget) == len(ctx.splits.train)


def test_unknown_method_lists_valid_ones(ctx: SeedContext) -> None:
    with pytest.raises(UnknownNameError) as e:
        run_method("nope", ctx.task(0.0), {})
    assert e.value.valid == METHODS.names() and "bad_teaching" in str(e.value)


def test_every_method_forgets_one_sample_from_a_batch_norm_model() -> None:
    """A deletion may name one training sample; a method's steps on D_f alone then forward a batch of one, which
    batch norm in training mode cannot normalise (issue 31's journey: SCRUB failed the request three times)."""
    from app.ml.bench.context import task_for
    from app.ml.models.factory import ModelConfig
    from app.ml.training.fit import TrainConfig, fit

    rng = np.random.default_rng(0)
    x = rng.normal(size=(160, 6)).astype(np.float32)
    ds = Dataset(name="table", x=x, y=(x[:, 0] + x[:, 1] > 0).astype(np.int64), num_classes=2, n_pool=160)
    cfg = ModelConfig("tests.models_for_tests:mlp_bn", ds.in_shape, 2)
    recipe = TrainConfig(max_epochs=2, seed=0)
    train, val = np.arange(120), np.arange(120, 160)
    model = fit(cfg, ds, train, val, recipe, progress=False).model
    task = task_for(model, ds, train, np.array([7]), cache=True, model_cfg=cfg, train_cfg=recipe, val_ids=val,
                    epochs_trained=2)
    model.train()
    stats = model[1].running_mean.clone()
    assert model(ds.features(np.array([3]))).shape == (1, 2) and model.training and model[1].training
    assert torch.equal(stats, model[1].running_mean), "one sample is not a batch to learn statistics from"
    for name in METHODS.names():
        if name == "out_match":  # needs a membership verifier: covered with one in test_out_match
            continue
        res = run_method(name, task, {})
        assert all(torch.isfinite(v).all() for v in res.model.state_dict().values() if v.is_floating_point()), name
