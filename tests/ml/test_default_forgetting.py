"""The model `make run` serves: its forgetting setting is calibrated for it, not a constant in code, and holds
through a service's life of chained deletions."""

from __future__ import annotations

import numpy as np
import pytest

from app.core.config import Settings
from app.ml.common.hashing import weights_sha256
from app.ml.data.dataset import Dataset
from app.ml.forgetting.calibrate import CANDIDATES, PEERS, _costs_at_least
from app.ml.forgetting.methods.base import UnlearnTask
from app.ml.forgetting.policy import Budget, PolicyOptions, Setting, calibrated_settings, forget, with_model
from app.ml.models.checkpoint import ModelDir, load_model_dir
from app.ml.training.fit import TrainConfig
from app.ml.training.metrics import accuracy
from app.ml.verify.store import load_verifier
from app.service.bootstrap import train_default


@pytest.fixture(scope="module")
def default_model(tmp_path_factory: pytest.TempPathFactory) -> ModelDir:
    home = tmp_path_factory.mktemp("home")
    return load_model_dir(train_default(Settings(home=home), home / "model", progress=False))


def test_the_setting_is_calibrated_with_its_evidence(default_model: ModelDir) -> None:
    cal = default_model.meta.calibration
    assert "iau" not in default_model.meta.extra  # no hard-coded step rides along any more
    assert cal["budget"]["max_accuracy_drop"] == 0.01 and cal["sizes"][0] == 10
    assert len(cal["candidates"]) == len(CANDIDATES) + len(PEERS)  # the field's methods are weighed too
    for c in cal["candidates"]:  # every size was tried, or the first sizes already broke the time budget
        trials = [t for t in cal["trials"] if t["method"] == c["setting"]["method"]
                  and t["params"] == c["setting"]["params"]]
        why = (c["small"] or c["large"])["why"] or ""
        assert len(trials) == 3 or (0 < len(trials) < 3 and "time budget" in why) or (
            not trials and why.startswith("skipped")), (c, len(trials))
    if cal["choice_small"] is not None:  # what a 10-id deletion runs: it held over 20 chained ones
        assert cal["chains"][-1]["stable"] and len(cal["chains"][-1]["steps"]) == 20
        assert cal["chains"][-1]["setting"] == cal["choice_small"] == cal["ranked_small"][0]
        chosen = cal["chosen"]["small"]  # the choice's time beside its score and that score's noise
        assert chosen["setting"] == cal["choice_small"] and chosen["time_s"] > 0 and chosen["noise"] > 0
    else:
        assert "exact path" in cal["why"]


def test_calibration_skips_only_settings_that_do_at_least_the_work_of_one_the_budget_stopped(
        default_model: ModelDir) -> None:
    """A step size costs nothing: once the budget stops a setting, its step-size siblings and longer runs would
    be stopped too, and running them would only spend calibration's time."""
    cal = default_model.meta.calibration
    stopped: list[Setting] = []
    for c in cal["candidates"]:  # in the order calibration weighed them
        s = Setting(c["setting"]["method"], c["setting"]["params"])
        mine = [t for t in cal["trials"] if t["method"] == s.method and t["params"] == s.params]
        like = c.get("skipped_like")
        if like is not None:  # skipped: because of one stopped earlier that it out-costs
            assert not mine and Setting(**like) in stopped and _costs_at_least(s, Setting(**like)), c
        else:  # run: nothing stopped before it that it out-costs
            assert mine and not any(_costs_at_least(s, x) for x in stopped), c
            stopped += [s] if mine[-1].get("stopped") else []


def test_costs_at_least_compares_work_not_step_size() -> None:
    short = Setting("scrub", {"lr": 5e-4, "epochs": 1, "max_steps": 1})
    assert _costs_at_least(Setting("scrub", {"lr": 1e-3, "epochs": 1, "max_steps": 1}), short)
    assert _costs_at_least(Setting("scrub", {"lr": 1e-4, "epochs": 3, "max_steps": 2}), short)
    assert not _costs_at_least(short, Setting("scrub", {"lr": 5e-4, "epochs": 3, "max_steps": 2}))
    assert not _costs_at_least(Setting("salun", {"lr": 5e-4, "epochs": 1}), Setting("scrub", short.params))
    wide = Setting("out_match", {"target": "shift", "epochs": 2, "lr": 2e-3, "batch_size": 128})
    assert not _costs_at_least(Setting("out_match", {"target": "shift", "epochs": 5, "lr": 1e-3}), wide)
    assert not _costs_at_least(Setting("salun", {"lr": 0.1}), Setting("salun", {"lr": 0.2, "epochs": 1}))  # default


def test_twenty_chained_deletions_keep_accuracy_within_one_point(default_model: ModelDir, digits: Dataset) -> None:
    """Other deletions than calibration's, through the policy as the worker runs it."""
    md = default_model
    hold = md.splits.holdout(2000)
    acc0 = accuracy(md.model, digits, hold)
    settings = calibrated_settings(md.meta.calibration, 10)
    budget, options = Budget.at(acc0 - 0.01), PolicyOptions(on_partial="accept")
    task = UnlearnTask(model=md.model, ds=digits, train_ids=np.sort(md.splits.train), forget_ids=md.splits.train[:0],
                       weights_sha256=md.weights_sha256, model_cfg=md.model_cfg,
                       train_cfg=TrainConfig(**md.meta.train_config), val_ids=md.splits.val,
                       verifier=load_verifier(md.path / "verifier"))
    rng = np.random.default_rng(7)
    model, train, exact = md.model, task.train_ids, 0
    for _ in range(20):
        ids = np.sort(rng.choice(train, 10, replace=False))
        step = with_model(task, model, train_ids=train, forget_ids=ids,
                          weights_sha256=weights_sha256(model.state_dict()))
        out = forget(step, settings, hold, budget, options)
        assert out.model is not None and out.holdout_acc >= acc0 - 0.01
        assert out.verdict in ("forgotten", "partial", "not measurable")
        exact += out.exact
        model, train = out.model, np.setdiff1d(train, ids)
    assert accuracy(model, digits, hold) >= acc0 - 0.01
    if settings:  # the calibrated fast setting carries the chain; retraining is the rare fallback
        assert exact <= 2, exact
