"""The model `make run` serves: its forgetting setting is calibrated for it, not a constant in code, and holds
through a service's life of chained deletions."""

from __future__ import annotations

import numpy as np
import pytest

from app.core.config import Settings
from app.ml.calibrate import CANDIDATES, PEERS
from app.ml.checkpoint import ModelDir, load_model_dir
from app.ml.data import Dataset
from app.ml.grads import weights_sha256
from app.ml.metrics import accuracy
from app.ml.policy import PolicyConfig, forget, settings_from_meta, with_model
from app.ml.train import TrainConfig
from app.ml.unlearn.base import UnlearnTask
from app.ml.verify.store import load_verifier
from app.service.bootstrap import train_default


@pytest.fixture(scope="module")
def default_model(tmp_path_factory: pytest.TempPathFactory) -> ModelDir:
    home = tmp_path_factory.mktemp("home")
    return load_model_dir(train_default(Settings(home=home), home / "model", progress=False))


def test_the_setting_is_calibrated_with_its_evidence(default_model: ModelDir) -> None:
    cal = default_model.meta["calibration"]
    assert "iau" not in default_model.meta  # no hard-coded step rides along any more
    assert cal["budget"]["max_accuracy_drop"] == 0.01 and cal["sizes"][0] == 10
    assert len(cal["candidates"]) == len(CANDIDATES) + len(PEERS)  # the field's methods are weighed too
    for c in cal["candidates"]:  # every size was tried, or the first sizes already broke the time budget
        trials = [t for t in cal["trials"] if t["method"] == c["setting"]["method"]
                  and t["params"] == c["setting"]["params"]]
        why = (c["small"] or c["large"])["why"] or ""
        assert len(trials) == 3 or (0 < len(trials) < 3 and "time budget" in why), (c, len(trials))
    if cal["choice_small"] is not None:  # what a 10-id deletion runs: it held over 20 chained ones
        assert cal["chains"][-1]["stable"] and len(cal["chains"][-1]["steps"]) == 20
        assert cal["chains"][-1]["setting"] == cal["choice_small"] == cal["ranked_small"][0]
    else:
        assert "exact path" in cal["why"]


def test_twenty_chained_deletions_keep_accuracy_within_one_point(default_model: ModelDir, digits: Dataset) -> None:
    """Other deletions than calibration's, through the policy as the worker runs it."""
    md = default_model
    hold = md.splits.holdout(2000)
    acc0 = accuracy(md.model, digits, hold)
    settings = settings_from_meta(md.meta, 10)
    cfg = PolicyConfig(floor=acc0 - 0.01, on_partial="accept")
    task = UnlearnTask(model=md.model, ds=digits, train_ids=np.sort(md.splits.train), forget_ids=md.splits.train[:0],
                       weights_sha256=md.weights_sha256, model_cfg=md.model_cfg,
                       train_cfg=TrainConfig(**md.meta["train_config"]), val_ids=md.splits.val,
                       verifier=load_verifier(md.path / "verifier"))
    rng = np.random.default_rng(7)
    model, train, exact = md.model, task.train_ids, 0
    for _ in range(20):
        ids = np.sort(rng.choice(train, 10, replace=False))
        step = with_model(task, model, train_ids=train, forget_ids=ids,
                          weights_sha256=weights_sha256(model.state_dict()))
        out = forget(step, settings, hold, cfg)
        assert out.model is not None and out.holdout_acc >= acc0 - 0.01
        assert out.verdict in ("forgotten", "partial", "not measurable")
        exact += out.exact
        model, train = out.model, np.setdiff1d(train, ids)
    assert accuracy(model, digits, hold) >= acc0 - 0.01
    if settings:  # the calibrated fast setting carries the chain; retraining is the rare fallback
        assert exact <= 2, exact
