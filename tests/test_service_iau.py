"""The IAU step the default service model ships must survive a service's life: many chained deletions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.core.config import Settings
from app.ml.checkpoint import ModelDir, load_model_dir
from app.ml.data import Dataset
from app.ml.grads import grad_sum
from app.ml.metrics import accuracy
from app.ml.unlearn import run_method
from app.ml.unlearn.base import UnlearnTask
from app.service.bootstrap import DIGITS_SERVICE_IAU, train_default


@pytest.fixture(scope="module")
def default_model(tmp_path_factory: pytest.TempPathFactory) -> ModelDir:
    home = tmp_path_factory.mktemp("home")
    return load_model_dir(train_default(Settings(home=home), home / "model", progress=False))


def _chain(md: ModelDir, ds: Dataset, params: dict[str, object], n: int) -> tuple[list[float], list[float]]:
    """N chained deletions of 10 random ids; held-out accuracy and ‖Σ_{D_r}∇ℓ‖ after each."""
    train, hold = np.sort(md.splits.train), np.sort(md.splits.test)
    rng = np.random.default_rng(0)
    model, accs, norms = md.model, [], []
    for _ in range(n):
        forget = np.sort(rng.choice(train, 10, replace=False))
        task = UnlearnTask(model=model, ds=ds, train_ids=train, forget_ids=forget, weights_sha256="-")
        model = run_method("iau", task, params).model
        train = np.setdiff1d(train, forget)
        accs.append(accuracy(model, ds, hold))
        norms.append(float(torch.sqrt(sum((g**2).sum() for g in grad_sum(model, ds, train).values()))))
    return accs, norms


def test_shipped_step_is_stable_over_chained_deletions(default_model: ModelDir, digits: Dataset) -> None:
    assert default_model.meta["iau"] == DIGITS_SERVICE_IAU
    base = accuracy(default_model.model, digits, np.sort(default_model.splits.test))
    accs, norms = _chain(default_model, digits, DIGITS_SERVICE_IAU, 20)
    assert min(accs) >= base - 0.02
    assert norms[-1] < norms[0]  # the retain term shrinks: below the stability edge


def test_twice_the_step_collapses(default_model: ModelDir, digits: Dataset) -> None:
    """Why the shipped η is what it is, and proof that the check above can fail."""
    accs, norms = _chain(default_model, digits, {**DIGITS_SERVICE_IAU, "eta": 2 * DIGITS_SERVICE_IAU["eta"]}, 20)
    assert max(norms) > 20 * norms[0]
    assert min(accs) < 0.5
