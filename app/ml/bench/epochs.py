"""`epochs` (paper Table VI): epochs to early stopping and seconds per epoch, plain vs GR loss."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from app.ml.bench.report import bench_command, fmt_pm, write_results
from app.ml.bench.suites import SUITES, Suite, bind
from app.ml.data.dataset import SplitConfig, make_splits
from app.ml.data.formats import load_dataset
from app.ml.models.factory import ModelConfig
from app.ml.training.fit import TrainConfig, fit
from app.ml.training.metrics import accuracy


@dataclass(frozen=True)
class EpochsConfig:
    name: str
    dataset: str
    arch: str = "lenet5"
    alpha: float = 0.1
    max_epochs: int = 100
    patience: int = 10
    seeds: int = 3


def run_epochs_suite(cfg: EpochsConfig, *, out: Path, data_dir: Path | None, data_path: Path | None,
                     device: str = "cpu", seeds: int | None = None, progress: bool = True) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    n = seeds or cfg.seeds
    ds = load_dataset(cfg.dataset, path=data_path, data_dir=data_dir, device=device)
    model_cfg = ModelConfig(cfg.arch, ds.in_shape, ds.num_classes)
    rows = []
    for seed in range(n):
        splits = make_splits(ds, SplitConfig(seed=seed))
        base = TrainConfig(max_epochs=cfg.max_epochs, patience=cfg.patience, seed=seed)
        for name, tcfg in (("plain", base), (f"GR α={cfg.alpha}", replace(base, alpha=cfg.alpha))):
            res = fit(model_cfg, ds, splits.train, splits.val, tcfg, progress=progress)
            rows.append({"loss": name, "seed": seed, "best_epoch": res.best_epoch, "epochs_run": res.epochs_run,
                         "seconds_per_epoch": sum(res.epoch_seconds) / len(res.epoch_seconds),
                         "val_acc": 100 * res.val_acc, "test_acc": 100 * accuracy(res.model, ds, splits.test)})
    names = list(dict.fromkeys(r["loss"] for r in rows))
    lines = ["| loss | best epoch | epochs run (patience " + str(cfg.patience) + ") | s / epoch | test acc |",
             "|---|---|---|---|---|"]
    for name in names:
        mine = [r for r in rows if r["loss"] == name]
        lines.append(f"| {name} | {fmt_pm([r['best_epoch'] for r in mine], 1)} | "
                     f"{fmt_pm([r['epochs_run'] for r in mine], 1)} | "
                     f"{fmt_pm([r['seconds_per_epoch'] for r in mine])} | {fmt_pm([r['test_acc'] for r in mine], 1)} |")
    lines += ["", "The paper's Table VI claim: GR training reaches its early stop in fewer epochs."]
    _plot(out / "epochs.png", rows, names)
    return write_results(out, device=ds.device, placement=ds.placement,
                         suite=cfg.name, command=bench_command(cfg.name, out, seeds),
                         config={**asdict(cfg), "seeds": list(range(n))}, results={"rows": rows},
                         markdown="\n".join(lines))


def _plot(path: Path, rows: list[dict[str, Any]], names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
    for ax, key, label in ((axes[0], "best_epoch", "epoch of the best val acc"),
                           (axes[1], "seconds_per_epoch", "seconds per epoch")):
        vals = [[r[key] for r in rows if r["loss"] == n] for n in names]
        ax.bar(names, [np.mean(v) for v in vals], yerr=[np.std(v) for v in vals], capsize=4, color=["C0", "C2"])
        ax.set_title(label)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


SUITES.register("epochs")(Suite("epochs to early stop and s/epoch, plain vs GR (Table VI), 3 seeds",
                                bind(run_epochs_suite, EpochsConfig("epochs", "cifar10"))))
SUITES.register("epochs-quick")(Suite("the epochs suite on digits, one seed",
                                      bind(run_epochs_suite, EpochsConfig("epochs-quick", "digits", seeds=1))))
