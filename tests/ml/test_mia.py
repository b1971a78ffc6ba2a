"""The membership attack: clearly better than chance on an overfit model, chance on unseen data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.errors import UnknownNameError
from app.ml.bench.mia import ATTACKS
from app.ml.bench.mia.shadow import MIAConfig, fit_attack
from app.ml.data.dataset import Dataset, Splits
from app.ml.models.factory import ModelConfig
from app.ml.training.fit import TrainConfig, fit

EPOCHS = 60
N_TRAIN = 150  # tiny training sets overfit: confident on members, less so elsewhere


@pytest.fixture(scope="module")
def overfit(digits: Dataset, digit_splits: Splits):
    cfg = ModelConfig("mlp", digits.in_shape, 10)
    train = digit_splits.train[:N_TRAIN]
    tcfg = TrainConfig(max_epochs=EPOCHS, seed=0)
    target = fit(cfg, digits, train, None, tcfg, progress=False).model
    shadow_pool = digit_splits.shadow[: 2 * N_TRAIN]
    attacks = {name: fit_attack(digits, shadow_pool, cfg, tcfg, EPOCHS, MIAConfig(attack=name, seed=0))
               for name in ATTACKS.names()}
    return target, train, attacks


@pytest.mark.parametrize("attack", ["authors", "sorted"])
def test_attack_beats_chance_on_an_overfit_model(overfit, digits: Dataset, digit_splits: Splits,
                                                  attack: str) -> None:
    target, train, attacks = overfit
    result = attacks[attack].evaluate(target, digits, train, digit_splits.test)
    assert result["balanced_accuracy"] > 0.6 and result["auc"] > 0.65, result
    members = attacks[attack].member_rate(target, digits, train)
    outsiders = attacks[attack].member_rate(target, digits, digit_splits.test)
    assert members > outsiders + 0.15


def test_attack_is_near_chance_on_data_the_model_never_saw(overfit, digits: Dataset, digit_splits: Splits) -> None:
    target, _, attacks = overfit
    unseen_a = digit_splits.train[N_TRAIN : N_TRAIN + 300]  # never trained on, same distribution
    result = attacks["authors"].evaluate(target, digits, unseen_a, digit_splits.test)
    assert abs(result["balanced_accuracy"] - 0.5) < 0.08, result
    assert abs(result["auc"] - 0.5) < 0.1, result


def test_attack_features_have_documented_shapes() -> None:
    probs = torch.softmax(torch.randn(4, 10), 1)
    labels = torch.tensor([0, 3, 9, 1])
    authors = ATTACKS.get("authors")(probs, labels)
    assert authors.shape == (4, 20) and torch.allclose(authors[:, 10:].sum(1), torch.ones(4))
    srt = ATTACKS.get("sorted")(probs, labels)
    assert srt.shape == (4, 10) and bool((srt[:, :-1] >= srt[:, 1:]).all())


def test_unknown_attack_lists_valid_ones() -> None:
    with pytest.raises(UnknownNameError, match="authors, sorted"):
        ATTACKS.get("lira")


def test_member_rate_of_empty_set_is_nan(overfit, digits: Dataset) -> None:
    _, _, attacks = overfit
    assert np.isnan(attacks["authors"].member_rate(overfit[0], digits, np.array([], dtype=np.int64)))
