"""Suite `shards` (issue 36): what SISA's sharding buys and costs, all in one run per seed.

For each model (CIFAR-10 LeNet5; the memorising MLP on 5,000 CIFAR-10 images) and each K ∈ {1, 2, 4, 8} shards,
R ∈ {1, 4} slices: train the sharded model on the same samples with the same recipe (samples dealt to shards by
subject: three samples a subject, as the compliance suite's requests are), then delete one subject exactly. Rows:
the aggregate's test accuracy; the deletion's seconds against a full retrain without the subject (K = R = 1,
measured in the same run); the membership signal of the aggregate before the deletion (the loss attack's AUC,
members against test samples: reference-free, so every K is measured the same way); and the forward pass's
throughput at one row and at 64 rows, what /predict pays per request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn

from app.ml.bench.report import bench_command, fmt_pm, mean_std, write_results
from app.ml.bench.suites import SUITES, Suite, bind
from app.ml.common.device import resolve
from app.ml.data.dataset import Dataset, SplitConfig, make_splits
from app.ml.data.formats import load_dataset
from app.ml.models.factory import ModelConfig
from app.ml.sharding.plan import make_plan
from app.ml.sharding.train import forget_sharded, train_sharded
from app.ml.training.fit import TrainConfig
from app.ml.training.metrics import accuracy

SUBJECT_SIZE = 3


@dataclass(frozen=True)
class ModelSpec:
    name: str
    arch: str
    n_train: int
    epochs: int


@dataclass(frozen=True)
class ShardsConfig:
    name: str
    dataset: str = "cifar10"
    models: tuple[ModelSpec, ...] = (ModelSpec("CIFAR-10 LeNet5", "lenet5", 10000, 12),
                                     ModelSpec("memorising MLP", "mlp", 5000, 24))
    ks: tuple[int, ...] = (1, 2, 4, 8)
    rs: tuple[int, ...] = (1, 4)
    seeds: int = 3
    mia_rows: int = 1000  # members and test samples each, for the loss attack
    throughput_repeats: int = 50


def _log_probs(model: nn.Module, ds: Dataset, ids: np.ndarray) -> torch.Tensor:
    with torch.inference_mode():
        return F.log_softmax(model(ds.features(ids)), dim=1)


def membership_auc(model: nn.Module, ds: Dataset, members: np.ndarray, others: np.ndarray) -> float:
    """The loss attack: the true class's log-probability ranks members above non-members."""
    def score(ids: np.ndarray) -> np.ndarray:
        return _log_probs(model, ds, ids).gather(1, ds.labels(ids)[:, None])[:, 0].cpu().numpy()

    return float(roc_auc_score(np.r_[np.ones(len(members)), np.zeros(len(others))],
                               np.r_[score(members), score(others)]))


def throughput(model: nn.Module, ds: Dataset, ids: np.ndarray, repeats: int) -> float:
    """Rows per second of the forward pass over IDS's features (median of REPEATS)."""
    x = ds.features(ids)
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return len(ids) / float(np.median(times))


def run_model(cfg: ShardsConfig, ds: Dataset, spec: ModelSpec, seed: int) -> list[dict[str, Any]]:
    splits = make_splits(ds, SplitConfig(seed=seed))
    rng = np.random.default_rng(seed)
    train = np.sort(rng.choice(splits.train, min(spec.n_train, len(splits.train)), replace=False))
    subjects = {int(i): f"s{k // SUBJECT_SIZE}" for k, i in enumerate(rng.permutation(train))}
    person = subjects[int(rng.choice(train))]
    gone = np.asarray(sorted(i for i, s in subjects.items() if s == person), dtype=np.int64)
    mcfg = ModelConfig(spec.arch, ds.in_shape, ds.num_classes)
    recipe = TrainConfig(max_epochs=spec.epochs, seed=seed)
    members = rng.choice(train, min(cfg.mia_rows, len(train)), replace=False)
    others = rng.choice(splits.test, min(cfg.mia_rows, len(splits.test)), replace=False)
    one, batch = splits.test[:1], splits.test[:64]
    t0 = time.perf_counter()  # the full retrain without the subject: what every sharded deletion is measured against
    full = train_sharded(mcfg, ds, make_plan(np.setdiff1d(train, gone), k=1, r=1, seed=seed), recipe)
    retrain_s = time.perf_counter() - t0
    rows = []
    for k in cfg.ks:
        for r in cfg.rs:
            plan = make_plan(train, k=k, r=r, seed=seed, subjects=subjects)
            t0 = time.perf_counter()
            sh = train_sharded(mcfg, ds, plan, recipe)
            train_s = time.perf_counter() - t0
            agg = sh.aggregate()
            after, record = forget_sharded(sh, ds, gone)
            rows.append({
                "model": spec.name, "seed": seed, "k": k, "r": r, "train_s": train_s,
                "test_acc": accuracy(agg, ds, splits.test), "test_acc_after": accuracy(after.aggregate(), ds,
                                                                                      splits.test),
                "delete_s": record["seconds"], "retrain_s": retrain_s, "speedup": retrain_s / record["seconds"],
                "from_slice": record["shards_retrained"][0]["from_slice"],
                "mia_auc": membership_auc(agg, ds, members, others),
                "rows_per_s_1": throughput(agg, ds, one, cfg.throughput_repeats),
                "rows_per_s_64": throughput(agg, ds, batch, cfg.throughput_repeats)})
    full_acc = accuracy(full.aggregate(), ds, splits.test)
    for row in rows:
        row["full_retrain_acc"] = full_acc
    return rows


def _cell(rows: list[dict[str, Any]], key: str, scale: float = 1.0, digits: int = 2) -> str:
    return fmt_pm([scale * r[key] for r in rows], digits)


def _markdown(cfg: ShardsConfig, rows: list[dict[str, Any]]) -> str:
    lines = ["Per model, K shards × R slices trained on the same samples with the same recipe; one subject "
             f"({SUBJECT_SIZE} samples) deleted exactly. Speed-up: a full retrain without the subject (K = R = 1, "
             "same run) over the sharded deletion. Membership: the loss attack's AUC on the aggregate (members "
             "against test samples). Throughput: the aggregate's forward pass, rows per second. Mean ± std over "
             f"{cfg.seeds} seeds.", ""]
    for spec in cfg.models:
        mine = [r for r in rows if r["model"] == spec.name]
        if not mine:
            continue
        base = [r for r in mine if r["k"] == 1 and r["r"] == 1]
        lines += [f"### {spec.name} ({spec.n_train} training samples, {spec.epochs} epochs)", "",
                  "| K | R | test acc % | Δ acc vs K=1 (points) | delete s | full retrain s | speed-up | "
                  "membership AUC | rows/s at 1 | rows/s at 64 |", "|---|---|---|---|---|---|---|---|---|---|"]
        for k in cfg.ks:
            for r in cfg.rs:
                cell = [x for x in mine if x["k"] == k and x["r"] == r]
                drop = [100 * (b["test_acc"] - x["test_acc"]) for x, b in zip(cell, base, strict=True)]
                lines.append(f"| {k} | {r} | {_cell(cell, 'test_acc', 100)} | {fmt_pm(drop)} | "
                             f"{_cell(cell, 'delete_s')} | {_cell(cell, 'retrain_s')} | {_cell(cell, 'speedup')}× | "
                             f"{_cell(cell, 'mia_auc', 1, 3)} | {_cell(cell, 'rows_per_s_1', 1, 0)} | "
                             f"{_cell(cell, 'rows_per_s_64', 1, 0)} |")
        lines.append("")
    return "\n".join(lines)


def _plot(cfg: ShardsConfig, rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for spec in cfg.models:
        for r in cfg.rs:
            cells = [[x for x in rows if x["model"] == spec.name and x["k"] == k and x["r"] == r] for k in cfg.ks]
            if not all(cells):
                continue
            for ax, key, scale in ((axes[0], "speedup", 1.0), (axes[1], "test_acc", 100.0)):
                stats = [mean_std([scale * x[key] for x in c]) for c in cells]
                ax.errorbar(cfg.ks, [m for m, _ in stats], yerr=[s for _, s in stats], capsize=3, marker="o",
                            label=f"{spec.name}, R={r}")
    axes[0].set(ylabel="full retrain / exact deletion", title="deletion speed-up")
    axes[1].set(ylabel="test accuracy %", title="the aggregate's accuracy")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(cfg.ks, [str(k) for k in cfg.ks])
        ax.set_xlabel("shards K")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_rows(cfg: Any, one: Callable[[Any, Dataset, ModelSpec, int], list[dict[str, Any]]],
             plot: Callable[[Any, list[dict[str, Any]], Path], None],
             markdown: Callable[[Any, list[dict[str, Any]]], str], *, out: Path, seeds: int | None,
             data_dir: Path | None, data_path: Path | None, device: str) -> dict[str, Any]:
    """A per-model, per-seed suite (CFG: name, dataset, models, seeds): ONE's rows for every seed and model, plotted
    to OUT/<name>.png and written with their markdown."""
    n = seeds or cfg.seeds
    ds = load_dataset(cfg.dataset, path=data_path, data_dir=data_dir, device=resolve(device))
    rows = [row for seed in range(n) for spec in cfg.models for row in one(cfg, ds, spec, seed)]
    png = f"{cfg.name.removesuffix('-quick')}.png"
    plot(cfg, rows, out / png)
    return write_results(out, suite=cfg.name, command=bench_command(cfg.name, out, seeds),
                         config={**asdict(cfg), "seeds": list(range(n))}, results={"rows": rows},
                         markdown=markdown(cfg, rows) + f"\n![{png[:-4]}]({png})", device=ds.device,
                         placement=ds.placement)


def run(cfg: ShardsConfig, *, out: Path, seeds: int | None, data_dir: Path | None, data_path: Path | None,
        device: str = "cpu") -> dict[str, Any]:
    return run_rows(cfg, run_model, _plot, _markdown, out=out, seeds=seeds, data_dir=data_dir, data_path=data_path,
                    device=device)


for _c in (ShardsConfig("shards"),
           ShardsConfig("shards-quick", dataset="digits", models=(ModelSpec("digits LeNet5", "lenet5", 1000, 20),),
                        ks=(1, 2), rs=(1, 2), seeds=1, mia_rows=200, throughput_repeats=5)):
    SUITES.register(_c.name)(Suite(f"SISA on {_c.dataset}: K ∈ {list(_c.ks)} shards × R ∈ {list(_c.rs)} slices, "
                                   f"accuracy, an exact one-subject deletion against a full retrain, membership "
                                   f"and throughput ({_c.seeds} seeds)", bind(run, _c)))
