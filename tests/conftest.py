"""Shared fixtures: the bundled digits data and small models trained on it once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from app.ml.data.dataset import Dataset, SplitConfig, Splits, make_splits
from app.ml.data.formats import load_dataset
from app.ml.models.factory import ModelConfig
from app.ml.training.fit import TrainConfig, TrainResult, fit

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def digits() -> Dataset:
    return load_dataset("digits")


@pytest.fixture(scope="session")
def digit_splits(digits: Dataset) -> Splits:
    return make_splits(digits, SplitConfig(seed=0))


@pytest.fixture(scope="session")
def lenet_cfg(digits: Dataset) -> ModelConfig:
    return ModelConfig(arch="lenet5", in_shape=digits.in_shape, num_classes=digits.num_classes)


def _fit(digits: Dataset, splits: Splits, cfg: ModelConfig, alpha: float) -> TrainResult:
    return fit(cfg, digits, splits.train, splits.val, TrainConfig(alpha=alpha, max_epochs=40, seed=0),
               progress=False)


@pytest.fixture(scope="session")
def plain_model(digits: Dataset, digit_splits: Splits, lenet_cfg: ModelConfig) -> TrainResult:
    return _fit(digits, digit_splits, lenet_cfg, alpha=0.0)


@pytest.fixture(scope="session")
def gr_model(digits: Dataset, digit_splits: Splits, lenet_cfg: ModelConfig) -> TrainResult:
    return _fit(digits, digit_splits, lenet_cfg, alpha=0.1)


@pytest.fixture(scope="session")
def digits_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory made by the library's own train job (with its gradient cache, verifier and a
    calibration at the test services' budget, which every service start then reuses)."""
    from app.ml.forgetting.calibrate import CalibrationConfig
    from app.ml.workflows.pipeline import train_to_dir
    from tests.service_harness import TEST_MAX_ACCURACY_DROP

    out = tmp_path_factory.mktemp("model")
    train_to_dir(dataset="digits", arch="lenet5", out=out, split_cfg=SplitConfig(seed=0),
                 train_cfg=TrainConfig(alpha=0.01, max_epochs=15, seed=0), progress=False,
                 calibration=CalibrationConfig(max_accuracy_drop=TEST_MAX_ACCURACY_DROP, seed=0))
    return out


def forget_sample(train_ids: np.ndarray, frac: float = 0.05, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(train_ids, size=max(1, int(frac * len(train_ids))), replace=False))


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis for the service tests: the CI's (queues namespaced per test) or one of our own."""
    from tests.service_harness import RedisForTests

    r = RedisForTests(tmp_path_factory.mktemp("redis"))
    yield r.url
    r.stop()


# modules that run live services (API, worker, Redis, a ledger) or whole benchmark suites: `-m "not slow"`
# leaves a quick loop of the ML core and the ledger; `make test` runs everything
SLOW_MODULES = {"api.test_http_contract", "service.test_kills_and_races", "service.test_deletion_flow",
                "service.test_supervision", "api.test_ui", "service.test_audit_and_erasure",
                "service.test_hostile_defects", "service.test_hostile_corpus", "service.test_consolidation",
                "ml.test_bench", "ml.test_paper_suites", "cli.test_train_unlearn", "cli.test_bad_input",
                "ml.test_device", "service.test_load_generator"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.module is not None and item.module.__name__.removeprefix("tests.") in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run scripts/gpu_check.sh on a GPU machine)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
