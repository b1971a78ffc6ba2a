"""What one exact retrain costs at N = 1 and N = 2 processes (bench suite `scaling`).

The retrain is the worker's own (worker/exact.py: exact_fit): in the worker's process at N = 1, a torchrun job
of N gloo processes above, reading the service's data store, as a consolidation or a batch's `retrain` runs it.
Per seed a LeNet5 is trained on a CIFAR-10 subsample, DELETIONS training samples are dropped, and the retrain
on the rest runs once per N, interleaved over seeds so that the host's noise hits every N alike. Wall time is
the whole call (the job's start-up, data loading and writing included); the speed-up is N=1's over N's within
one seed, the efficiency the speed-up over N.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from app.core.config import Settings
from app.ml.bench.report import bench_command, fmt_pm, write_results
from app.ml.bench.suites import SUITES, Suite, bind
from app.ml.common.device import resolve
from app.ml.data.dataset import Dataset, SplitConfig
from app.ml.data.formats import load_dataset
from app.ml.models.checkpoint import dataset_for, load_model_dir
from app.ml.training.fit import TrainConfig
from app.ml.training.metrics import accuracy
from app.ml.workflows.pipeline import train_to_dir
from app.service.store import create_store, store_on
from worker.compliance import npz, subsample
from worker.exact import exact_fit


@dataclass(frozen=True)
class ScalingConfig:
    name: str
    dataset: str = "cifar10"
    n_train: int = 20000  # training rows (CIFAR-10 subsampled at random per seed), so three seeds fit in minutes
    n_test: int = 2000
    epochs: int = 8
    alpha: float = 0.01
    deletions: int = 50
    nprocs: tuple[int, ...] = (1, 2)
    seeds: int = 3


def run_seed(cfg: ScalingConfig, ds: Dataset, seed: int, device: str) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="unlearnd-scaling-") as tmp:
        work = Path(tmp)
        train, test = subsample(ds, cfg.n_train, cfg.n_test, rng)
        data = npz(work / "data.npz", ds, train, test)
        recipe = TrainConfig(alpha=cfg.alpha, max_epochs=cfg.epochs, patience=3, seed=seed)
        train_to_dir(dataset="npz", data_path=data, arch="lenet5", out=work / "model", train_cfg=recipe,
                     split_cfg=SplitConfig(seed=seed), progress=False, with_cache=False, verifier=None,
                     calibration=None, device=device)
        dev = resolve(device)
        md = load_model_dir(work / "model", device=dev)
        settings = Settings(home=work / "home", database_url=None, redis_url=None, device=device)
        create_store(settings.store_dir, dataset_for(md, data_path=data, data_dir=None))
        store = store_on(settings.store_dir, dev)
        active = np.setdiff1d(md.splits.train, rng.choice(md.splits.train, cfg.deletions, replace=False))
        rows = []
        for n in cfg.nprocs:
            t0 = time.perf_counter()
            model, run = exact_fit(settings.model_copy(update={"exact_nproc": n}), md, store, active, md.splits.val,
                                   recipe)
            rows.append({"seed": seed, "nproc": n, "wall_s": time.perf_counter() - t0,
                         "test_acc": accuracy(model.eval(), store, md.splits.test), "epochs": run.get("epochs"),
                         "world_size": run.get("world_size"), "backend": run.get("backend")})
    return rows


def _markdown(cfg: ScalingConfig, rows: list[dict[str, Any]], wall_s: float) -> str:
    seeds = sorted({r["seed"] for r in rows})
    base = {r["seed"]: r["wall_s"] for r in rows if r["nproc"] == 1}
    lines = [f"One exact retrain through the worker's own path (worker/exact.py), at each number of processes: "
             f"LeNet5 (GR α={cfg.alpha}, up to {cfg.epochs} epochs, patience 3) on {cfg.dataset} subsampled to "
             f"{cfg.n_train} training and {cfg.n_test} test images per seed, {cfg.deletions} training samples "
             f"deleted. N = 1 fits in the worker's process; N > 1 is a torchrun job of N gloo processes. Wall time "
             f"is the whole call, start-up included. Seeds {seeds}, mean ± std; {wall_s / 60:.0f} min in all.", "",
             "| processes | wall time (s) | speed-up | efficiency | test accuracy (%) | epochs |",
             "|---|---|---|---|---|---|"]
    for n in cfg.nprocs:
        mine = [r for r in rows if r["nproc"] == n]
        speedup = [base[r["seed"]] / r["wall_s"] for r in mine]
        lines.append(f"| {n} | {fmt_pm([r['wall_s'] for r in mine], 1)} | {fmt_pm(speedup, 2)}× | "
                     f"{fmt_pm([100 * s / n for s in speedup], 0)}% | {fmt_pm([100 * r['test_acc'] for r in mine], 2)}"
                     f" | {fmt_pm([float(r['epochs']) for r in mine], 1)} |")
    return "\n".join(lines) + "\n"


def plot(path: Path, cfg: ScalingConfig, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    for seed in sorted({r["seed"] for r in rows}):
        mine = sorted((r for r in rows if r["seed"] == seed), key=lambda r: r["nproc"])
        ax.plot([r["nproc"] for r in mine], [r["wall_s"] for r in mine], marker="o", label=f"seed {seed}")
    ax.set_xticks(list(cfg.nprocs))
    ax.set_xlabel("processes (gloo)")
    ax.set_ylabel("retrain wall time (s)")
    ax.set_title(f"exact retrain, {cfg.dataset} {cfg.n_train} images", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def run(cfg: ScalingConfig, *, out: Path, seeds: int | None, data_dir: Path | None, data_path: Path | None,
        device: str = "cpu") -> dict[str, Any]:
    n = seeds or cfg.seeds
    t0 = time.perf_counter()
    ds = load_dataset(cfg.dataset, path=data_path, data_dir=data_dir)
    rows = [r for s in range(n) for r in run_seed(cfg, ds, s, device)]
    wall = time.perf_counter() - t0
    plot(out / "scaling.png", cfg, rows)
    command = bench_command(cfg.name, out, seeds)
    return write_results(out, suite=cfg.name, command=command, config={**asdict(cfg), "seeds": list(range(n))},
                         results={"wall_s": wall, "rows": rows}, markdown=_markdown(cfg, rows, wall))


_FULL = ScalingConfig("scaling")
_QUICK = replace(_FULL, name="scaling-quick", dataset="digits", n_train=1000, n_test=300, epochs=3, deletions=10,
                 seeds=1)
for _c in (_FULL, _QUICK):
    SUITES.register(_c.name)(Suite(f"an exact retrain's wall time at N = {', '.join(map(str, _c.nprocs))} "
                                   f"processes ({_c.dataset}, {_c.seeds} seeds)", bind(run, _c)))
