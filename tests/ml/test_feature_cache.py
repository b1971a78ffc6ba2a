"""Cached frozen features (issue 33, part 2): a re-fine-tune over the frozen part's outputs, computed once,
gives the trainable weights the whole-model run gives, leaves the frozen ones bit-identical, and says why when
it cannot apply."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from app.ml.data.dataset import Dataset, Splits
from app.ml.models.factory import ModelConfig, create_model
from app.ml.training.feature_cache import find_cut
from app.ml.training.fit import TrainConfig, fit

FREEZE = ("features.",)


@pytest.fixture(scope="module")
def frozen_lenet(digits: Dataset) -> ModelConfig:
    return ModelConfig("lenet5", digits.in_shape, digits.num_classes, freeze=FREEZE)


@pytest.mark.parametrize("alpha", [0.0, 0.01])
def test_cached_and_whole_model_fits_agree(digits: Dataset, digit_splits: Splits, frozen_lenet: ModelConfig,
                                           alpha: float) -> None:
    recipe = TrainConfig(max_epochs=3, patience=2, seed=1, alpha=alpha)
    train = digit_splits.train[:400]
    whole = fit(frozen_lenet, digits, train, digit_splits.val, recipe, progress=False, feature_cache=False)
    cached = fit(frozen_lenet, digits, train, digit_splits.val, recipe, progress=False)
    assert whole.feature_cache is None or not whole.feature_cache["used"]
    assert cached.feature_cache is not None and cached.feature_cache["used"], cached.feature_cache
    assert cached.feature_cache["rows"] == len(np.union1d(train, digit_splits.val))
    init = create_model(frozen_lenet).state_dict()
    a, b = whole.model.state_dict(), cached.model.state_dict()
    for k in a:
        if k.startswith(FREEZE):
            assert torch.equal(a[k], b[k]), f"frozen {k} moved"
        else:
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)
            assert not torch.equal(b[k], init[k]), f"{k} never trained"
    assert (whole.best_epoch, whole.epochs_run) == (cached.best_epoch, cached.epochs_run)
    assert [h["val_acc"] for h in whole.history] == [h["val_acc"] for h in cached.history]


def test_the_head_is_the_models_own_modules(digits: Dataset, frozen_lenet: ModelConfig) -> None:
    model = create_model(frozen_lenet)
    cut = find_cut(model, FREEZE, digits.features(np.arange(2)))
    assert not isinstance(cut, str), cut
    own = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in cut.head.parameters() if p.requires_grad} == own
    assert not any(p.requires_grad for p in cut.front.parameters())
    x = digits.features(np.arange(16))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(cut.head.eval()(cut.front.eval()(x).flatten(1)), model(x))


class Skip(nn.Module):
    """A frozen layer whose input also reaches the trainable part: no single tensor to cut at."""

    def __init__(self) -> None:
        super().__init__()
        self.frozen = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)
        self.skip = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.frozen(x)) + self.skip(x)


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.frozen = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.frozen(x)
        return self.out(h) if h.sum() > 0 else -self.out(h)  # data-dependent: torch.fx cannot trace it


def _frozen(model: nn.Module) -> nn.Module:
    model.frozen.requires_grad_(False)
    return model


def test_why_not_in_one_line() -> None:
    x = torch.randn(2, 4)
    assert "2 points" in find_cut(_frozen(Skip()), ("frozen.",), x)
    assert "cannot trace" in find_cut(_frozen(Branchy()), ("frozen.",), x)
    first_trains = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    first_trains[1].requires_grad_(False)
    assert "first operation trains" in find_cut(first_trains, ("1.",), x)
    dropout = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 2))
    dropout[0].requires_grad_(False)
    cut = find_cut(dropout, ("0.",), x)
    assert not isinstance(cut, str) and cut.node == "_0"  # dropout is random in training: it stays in the head


def test_an_augmenting_recipe_trains_the_whole_model_and_says_so(digits: Dataset, digit_splits: Splits) -> None:
    images = Dataset(name="rgb", x=np.repeat((digits.x[:300] * 255 / 16).astype(np.uint8), 3, axis=-1),
                     y=digits.y[:300], num_classes=digits.num_classes, n_pool=300)
    cfg = ModelConfig("lenet5", images.in_shape, images.num_classes, freeze=FREEZE)
    res = fit(cfg, images, np.arange(200), np.arange(200, 300), TrainConfig(max_epochs=1, augment="flip_crop"),
              progress=False)
    assert res.feature_cache is not None and not res.feature_cache["used"]
    assert "augments" in res.feature_cache["why"]


def test_a_model_without_frozen_prefixes_records_nothing(digits: Dataset, digit_splits: Splits,
                                                        lenet_cfg: ModelConfig) -> None:
    res = fit(lenet_cfg, digits, digit_splits.train[:100], None, TrainConfig(max_epochs=1), progress=False)
    assert res.feature_cache is None


def test_a_fine_tuned_model_dir_records_its_cache(tmp_path: Path, digits_model_dir: Path) -> None:
    from app.cli import main

    out = tmp_path / "tuned"
    init = str(digits_model_dir / "model.safetensors")
    assert main(["train", "--arch", "lenet5", "--dataset", "digits", "--init", init, "--freeze", "features.",
                 "--max-epochs", "2", "--verify-refs", "0", "--no-calibrate", "--quiet", "--out", str(out)]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["feature_cache"]["used"] and meta["feature_cache"]["cut"] == "classifier_0"
