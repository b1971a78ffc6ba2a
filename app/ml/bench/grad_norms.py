"""`grad-norms` (paper Fig. 3): per-sample gradient L2 norms after plain, GR, clipped and SignSGD training.

The claim under test: GR training leaves smaller per-sample gradients on the training data
than the other ways of restraining gradients. Clipping: global norm 1.0 per minibatch
(Adam); SignSGD: lr 1e-4 on sign(g).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from app.ml.bench.context import load_split
from app.ml.bench.report import bench_command, write_results
from app.ml.bench.suites import SUITES, Suite, bind
from app.ml.training.fit import TrainConfig, fit
from app.ml.training.metrics import accuracy, per_sample_grad_norms


@dataclass(frozen=True)
class GradNormsConfig:
    name: str
    dataset: str
    arch: str = "lenet5"
    alpha: float = 0.1
    clip_norm: float = 1.0
    signsgd_lr: float = 1e-4
    max_epochs: int = 100
    patience: int = 10
    seed: int = 0

    def variants(self) -> dict[str, TrainConfig]:
        base = TrainConfig(max_epochs=self.max_epochs, patience=self.patience, seed=self.seed)
        return {"plain": base, "GR": replace(base, alpha=self.alpha),
                "clipping": replace(base, clip_norm=self.clip_norm),
                "SignSGD": replace(base, optimizer="signsgd", lr=self.signsgd_lr)}


def run_grad_norms(cfg: GradNormsConfig, *, out: Path, data_dir: Path | None, data_path: Path | None,
                   device: str = "cpu", progress: bool = True) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    ds, splits, sized = load_split(cfg.dataset, seed=cfg.seed, data_path=data_path, data_dir=data_dir, device=device)
    model_cfg = replace(sized, arch=cfg.arch)
    norms, rows = {}, []
    for name, tcfg in cfg.variants().items():
        res = fit(model_cfg, ds, splits.train, splits.val, tcfg, progress=progress)
        n = per_sample_grad_norms(res.model, ds, splits.train)
        norms[name] = n
        rows.append({"variant": name, "mean": float(n.mean()), "median": float(np.median(n)),
                     "p90": float(np.quantile(n, 0.9)), "max": float(n.max()), "epochs": res.epochs_run,
                     "test_acc": 100 * accuracy(res.model, ds, splits.test)})
    lines = ["| training | mean ‖∇ℓ‖ | median | p90 | max | epochs | test acc |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['mean']:.4f} | {r['median']:.4f} | {r['p90']:.4f} | {r['max']:.3f} | "
              f"{r['epochs']} | {r['test_acc']:.1f} |" for r in rows]
    gr_lowest = min(rows, key=lambda r: r["mean"])["variant"] == "GR"
    lines += ["", f"GR has the lowest mean per-sample gradient norm: **{gr_lowest}** (the paper's Fig. 3 claim)."]
    _plot(out / "grad_norms.png", norms)
    return write_results(out, device=ds.device, placement=ds.placement,
                         suite=cfg.name, command=bench_command(cfg.name, out),
                         config=asdict(cfg), results={"rows": rows, "gr_lowest": gr_lowest},
                         markdown="\n".join(lines))


def _plot(path: Path, norms: dict[str, np.ndarray]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    lo = max(min(float(v.min()) for v in norms.values()), 1e-8)
    hi = max(float(v.max()) for v in norms.values())
    bins = np.logspace(np.log10(lo), np.log10(hi), 60)
    for name, v in norms.items():
        ax.hist(np.maximum(v, lo), bins=bins, histtype="step", label=f"{name} (mean {v.mean():.3g})", linewidth=1.5)
    ax.set_xscale("log")
    ax.set_xlabel("per-sample ‖∇θ ℓ‖₂ on the training set")
    ax.set_ylabel("samples")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


SUITES.register("grad-norms")(Suite("per-sample gradient norms: plain / GR / clipping / SignSGD (Fig. 3)",
                                    bind(run_grad_norms, GradNormsConfig("grad-norms", "cifar10"), fixed_seeds=True)))
SUITES.register("grad-norms-quick")(Suite("grad-norms on digits", bind(
    run_grad_norms, GradNormsConfig("grad-norms-quick", "digits"), fixed_seeds=True)))
