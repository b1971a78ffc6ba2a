"""`alpha-rho` (paper Fig. 4): MU and UE of IAU over GR strength α × forget ratio ρ.

One seed: a θ* per α, a retrain per ρ (on that ρ's D_r, plain recipe: the gold standard),
one membership attack; IAU with its defaults for every (α, ρ) cell. Heatmaps of MU and UE.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from app.ml.bench.context import choose_forget, load_split, task_for
from app.ml.bench.mia.shadow import MIAConfig, fit_attack
from app.ml.bench.report import bench_command, write_results
from app.ml.bench.suites import SUITES, Suite, bind
from app.ml.forgetting.gradcache import build_cache
from app.ml.forgetting.methods import run_method
from app.ml.training.fit import TrainConfig, fit
from app.ml.training.metrics import accuracy


@dataclass(frozen=True)
class AlphaRhoConfig:
    name: str
    dataset: str
    arch: str = "lenet5"
    alphas: tuple[float, ...] = tuple(round(0.01 * i, 2) for i in range(11))
    rhos: tuple[float, ...] = tuple(round(0.01 * i, 2) for i in range(1, 11))
    max_epochs: int = 100
    patience: int = 10
    seed: int = 0


def run_alpha_rho(cfg: AlphaRhoConfig, *, out: Path, data_dir: Path | None, data_path: Path | None,
                  device: str = "cpu", progress: bool = True) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    ds, splits, sized = load_split(cfg.dataset, seed=cfg.seed, data_path=data_path, data_dir=data_dir, device=device)
    model_cfg = replace(sized, arch=cfg.arch)

    def recipe(alpha: float) -> TrainConfig:
        return TrainConfig(alpha=alpha, max_epochs=cfg.max_epochs, patience=cfg.patience, seed=cfg.seed)

    models = {a: fit(model_cfg, ds, splits.train, splits.val, recipe(a), progress=progress) for a in cfg.alphas}
    plain = models.get(0.0) or fit(model_cfg, ds, splits.train, splits.val, recipe(0.0), progress=progress)
    attack = fit_attack(ds, splits.shadow, model_cfg, recipe(0.0), plain.best_epoch, MIAConfig(seed=cfg.seed))
    caches = {a: build_cache(m.model, ds, splits.train) for a, m in models.items()}
    rows = []
    for rho in cfg.rhos:
        forget = choose_forget(ds, splits.train, frac=rho, how="random", seed=cfg.seed)
        retain = np.setdiff1d(splits.train, forget)
        gold = fit(model_cfg, ds, retain, splits.val, recipe(0.0), progress=progress).model
        gold_acc, gold_mia = accuracy(gold, ds, splits.test), attack.member_rate(gold, ds, forget)
        for alpha, trained in models.items():
            task = task_for(trained.model, ds, splits.train, forget, cache=caches[alpha], seed=cfg.seed)
            res = run_method("iau", task, {})
            acc, mia = accuracy(res.model, ds, splits.test), attack.member_rate(res.model, ds, forget)
            rows.append({"alpha": alpha, "rho": rho, "MU": 100 * abs(acc - gold_acc), "UE": 100 * abs(mia - gold_mia),
                         "test_acc": 100 * acc, "time_s": res.time_s})
    _plot(out / "alpha_rho.png", rows, cfg)
    return write_results(out, device=ds.device, placement=ds.placement,
                         suite=cfg.name, command=bench_command(cfg.name, out),
                         config=asdict(cfg), results={"rows": rows}, markdown=_markdown(rows, cfg))


def _grid(rows: list[dict[str, Any]], cfg: AlphaRhoConfig, key: str) -> np.ndarray:
    g = np.full((len(cfg.alphas), len(cfg.rhos)), np.nan)
    for r in rows:
        g[cfg.alphas.index(r["alpha"]), cfg.rhos.index(r["rho"])] = r[key]
    return g


def _markdown(rows: list[dict[str, Any]], cfg: AlphaRhoConfig) -> str:
    lines = []
    for key in ("MU", "UE"):
        g = _grid(rows, cfg, key)
        lines += [f"**{key}** (points; rows α, columns ρ)", "",
                  "| α \\ ρ | " + " | ".join(f"{r:g}" for r in cfg.rhos) + " |",
                  "|---" * (len(cfg.rhos) + 1) + "|"]
        lines += [f"| {a:g} | " + " | ".join(f"{v:.2f}" for v in g[i]) + " |" for i, a in enumerate(cfg.alphas)]
        lines.append("")
    mu, ue = _grid(rows, cfg, "MU").mean(1), _grid(rows, cfg, "UE").mean(1)
    corr = float(np.corrcoef(mu, ue)[0, 1]) if len(cfg.alphas) > 2 else float("nan")
    lines.append(f"Across α (means over ρ), corr(MU, UE) = {corr:.2f}: the paper's Fig. 4 claim is a trade-off "
                 "(negative: as α grows one falls while the other rises).")
    return "\n".join(lines)


def _plot(path: Path, rows: list[dict[str, Any]], cfg: AlphaRhoConfig) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key in zip(axes, ("MU", "UE"), strict=True):
        im = ax.imshow(_grid(rows, cfg, key), aspect="auto", origin="lower", cmap="viridis")
        ax.set_xticks(range(len(cfg.rhos)), [f"{r:g}" for r in cfg.rhos])
        ax.set_yticks(range(len(cfg.alphas)), [f"{a:g}" for a in cfg.alphas])
        ax.set_xlabel("forget ratio ρ")
        ax.set_ylabel("GR α")
        ax.set_title(f"{key} (points) ↓")
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


SUITES.register("alpha-rho-full")(Suite("MU/UE heatmaps over α ∈ {0..0.1} × ρ ∈ {0.01..0.1} (Fig. 4): "
                                        "11 GR trainings + 10 retrains, about 2.5 h on one CPU core",
                                        bind(run_alpha_rho, AlphaRhoConfig("alpha-rho-full", "cifar10"),
                                             fixed_seeds=True)))
# The committed CIFAR-10 run: a 4 × 3 corner-and-middle subgrid of Fig. 4 that fits a CPU session.
SUBGRID = AlphaRhoConfig("alpha-rho", "cifar10", alphas=(0.0, 0.01, 0.05, 0.1), rhos=(0.01, 0.05, 0.1))
QUICK = AlphaRhoConfig("alpha-rho-quick", "digits", alphas=(0.0, 0.05, 0.1), rhos=(0.02, 0.05, 0.1))
SUITES.register("alpha-rho")(Suite("alpha-rho-full's subgrid α ∈ {0, .01, .05, .1} × ρ ∈ {.01, .05, .1}",
                                   bind(run_alpha_rho, SUBGRID, fixed_seeds=True)))
SUITES.register("alpha-rho-quick")(Suite("alpha-rho on digits, a 3 × 3 grid",
                                         bind(run_alpha_rho, QUICK, fixed_seeds=True)))
