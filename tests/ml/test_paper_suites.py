"""The paper's complementary experiments (ablation, α×ρ, outliers, gradient norms, epochs) and
the GPU-sized table configs, each run end to end on a tiny setting."""

from __future__ import annotations

import json
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from app.ml.bench import SUITES
from app.ml.bench.ablation import CIFAR as ABLATION
from app.ml.bench.ablation import run_ablation
from app.ml.bench.alpha_rho import AlphaRhoConfig, run_alpha_rho
from app.ml.bench.context import choose_forget
from app.ml.bench.epochs import EpochsConfig, run_epochs_suite
from app.ml.bench.grad_norms import GradNormsConfig, run_grad_norms
from app.ml.bench.table import OUTLIERS, TABLE2_RESNET18, TABLE3_MLP, TABLE4_VGG19, run_table, smoke
from app.ml.data.dataset import Dataset, Splits
from app.ml.data.formats import load_dataset

RNG = np.random.default_rng(0)


def _outputs(out: Path, png: str) -> dict:
    assert (out / "results.md").read_text().strip()
    assert (out / png).read_bytes()[:4] == b"\x89PNG"
    return json.loads((out / "results.json").read_text())


def test_every_paper_suite_is_registered() -> None:
    for name in ("ablation", "alpha-rho", "outliers", "grad-norms", "epochs", "table2-resnet18",
                 "table4-vgg19-cifar100", "table3-mlp-purchase100"):
        assert name in SUITES.names()
        if not name.startswith("table"):
            assert f"{name}-quick" in SUITES.names()


def test_ablation(tmp_path: Path) -> None:
    cfg = replace(ABLATION, seeds=1, experiment=replace(ABLATION.experiment, dataset="digits", max_epochs=3,
                                                        patience=2))
    doc = run_ablation(cfg, out=tmp_path, data_dir=None, data_path=None, progress=False)
    assert {r["variant"] for r in doc["rows"]} == {"IA", "IA+GC", "IA+GC+GR", "retrain"}
    assert all(r["UE_lira"] >= 0 for r in doc["rows"]) and "| UE_lira ↓ |" in (tmp_path / "results.md").read_text()
    _outputs(tmp_path, "ablation.png")


def test_alpha_rho(tmp_path: Path) -> None:
    cfg = AlphaRhoConfig("t", "digits", alphas=(0.0, 0.1), rhos=(0.02, 0.05), max_epochs=3, patience=2)
    doc = run_alpha_rho(cfg, out=tmp_path, data_dir=None, data_path=None, progress=False)
    assert len(doc["rows"]) == 4 and all(r["MU"] >= 0 and r["UE"] >= 0 for r in doc["rows"])
    assert "| α \\ ρ |" in (tmp_path / "results.md").read_text()
    _outputs(tmp_path, "alpha_rho.png")


def test_grad_norms(tmp_path: Path) -> None:
    doc = run_grad_norms(GradNormsConfig("t", "digits", max_epochs=3, patience=2), out=tmp_path, data_dir=None,
                         data_path=None, progress=False)
    assert [r["variant"] for r in doc["rows"]] == ["plain", "GR", "clipping", "SignSGD"]
    assert all(r["mean"] > 0 for r in doc["rows"])
    _outputs(tmp_path, "grad_norms.png")


def test_epochs(tmp_path: Path) -> None:
    doc = run_epochs_suite(EpochsConfig("t", "digits", seeds=1, max_epochs=4, patience=2), out=tmp_path,
                           data_dir=None, data_path=None, progress=False)
    assert len(doc["rows"]) == 2 and all(1 <= r["best_epoch"] <= r["epochs_run"] <= 4 for r in doc["rows"])
    _outputs(tmp_path, "epochs.png")


def test_outliers_are_the_isolation_forest_outliers(digits: Dataset, digit_splits: Splits) -> None:
    from sklearn.ensemble import IsolationForest

    chosen = choose_forget(digits, digit_splits.train, frac=0.05, how="outliers", seed=0)
    x = digits.features(digit_splits.train).flatten(1).numpy()
    scores = IsolationForest(n_estimators=100, random_state=0).fit(x).score_samples(x)
    in_set = np.isin(digit_splits.train, chosen)
    assert scores[in_set].max() <= scores[~in_set].min()
    assert len(chosen) == int(0.05 * len(digit_splits.train))


def test_outliers_table_runs(tmp_path: Path) -> None:
    cfg = smoke(replace(OUTLIERS, experiment=replace(OUTLIERS.experiment, dataset="digits")), epochs=3)
    doc = run_table(cfg, out=tmp_path, data_dir=None, data_path=None, progress=False)
    assert doc["config"]["experiment"]["forget"] == "outliers"
    _outputs(tmp_path, "mu_ue.png")


def _cifar_like(path: Path, n_train: int, n_test: int, classes: int) -> None:
    np.savez(path, x_train=RNG.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
             y_train=np.arange(n_train) % classes, x_test=RNG.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
             y_test=np.arange(n_test) % classes)


def _cifar100_files(folder: Path, n_train: int, n_test: int) -> None:
    folder.mkdir()
    for name, n in (("train", n_train), ("test", n_test)):
        rows = RNG.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
        with (folder / name).open("wb") as f:
            pickle.dump({b"data": rows, b"fine_labels": (np.arange(n) % 100).tolist()}, f)


@pytest.mark.parametrize("cfg", [TABLE2_RESNET18, TABLE3_MLP, TABLE4_VGG19], ids=lambda c: c.name)
def test_gpu_sized_table_configs_run_end_to_end_on_a_tiny_file(cfg, tmp_path: Path) -> None:
    if cfg.experiment.dataset == "cifar10":
        data = tmp_path / "tiny.npz"
        _cifar_like(data, 50, 10, 10)
    elif cfg.experiment.dataset == "cifar100":
        data = tmp_path / "cifar100"
        _cifar100_files(data, 40, 10)
    else:
        data = tmp_path / "purchase.npz"
        np.savez(data, features=RNG.integers(0, 2, (300, 600)).astype(np.float32), labels=np.arange(300) % 100)
    assert load_dataset(cfg.experiment.dataset, path=data).num_classes in (10, 100)
    out = tmp_path / "out"
    doc = run_table(smoke(cfg, epochs=1), out=out, data_dir=None, data_path=data, progress=False)
    assert {r["method"] for r in doc["summary"]} >= set(cfg.methods)
    _outputs(out, "mu_ue.png")
