"""`ablation` (paper Fig. 2): IA alone, IA + GC, IA + GC + GR; MU, UE and UE_lira per variant.

IA: ascent on D_f only (no correction), on the plainly trained θ*. IA+GC: Eq. 8 on the plain
θ*. IA+GC+GR: Eq. 8 on the GR-trained θ*. Every variant uses IAU's defaults otherwise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from app.ml.bench.context import ExperimentConfig, SeedContext, evaluate_model, prepare
from app.ml.bench.report import bench_command, fmt_pm, write_results
from app.ml.bench.suites import SUITES, Suite, bind
from app.ml.data.formats import load_dataset
from app.ml.forgetting.methods import run_method

VARIANTS: dict[str, tuple[bool, dict[str, Any]]] = {  # name → (use the GR θ*, IAU params)
    "IA": (False, {"correction": False}),
    "IA+GC": (False, {}),
    "IA+GC+GR": (True, {}),
}


@dataclass(frozen=True)
class AblationConfig:
    name: str
    experiment: ExperimentConfig
    seeds: int = 3


def ablation_rows(ctx: SeedContext) -> list[dict[str, Any]]:
    gold = evaluate_model(ctx, ctx.retrain.model)
    rows = []
    for name, (use_gr, params) in VARIANTS.items():
        res = run_method("iau", ctx.task(ctx.cfg.alpha if use_gr else 0.0), params)
        m = evaluate_model(ctx, res.model)
        rows.append({"variant": name, "seed": ctx.seed, **m, "time_s": res.time_s,
                     "MU": abs(m["test_acc"] - gold["test_acc"]), "UE": abs(m["mia_forget"] - gold["mia_forget"]),
                     "UE_lira": abs(m["lira_flagged"] - gold["lira_flagged"])})
    rows.append({"variant": "retrain", "seed": ctx.seed, **gold, "time_s": ctx.retrain_seconds, "MU": 0.0, "UE": 0.0,
                 "UE_lira": 0.0})
    return rows


def run_ablation(cfg: AblationConfig, *, out: Path, data_dir: Path | None, data_path: Path | None,
                 device: str = "cpu", seeds: int | None = None, progress: bool = True) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    n = seeds or cfg.seeds
    ds = load_dataset(cfg.experiment.dataset, path=data_path, data_dir=data_dir, device=device)
    rows, attack = [], []
    for seed in range(n):
        ctx = prepare(cfg.experiment, ds, seed, progress=progress)
        attack.append(ctx.attack_eval)
        rows += ablation_rows(ctx)
    lines = ["| variant | MU ↓ | UE ↓ | UE_lira ↓ | D_f flagged @5% | D_f set AUC | test acc | forget acc |",
             "|---|---|---|---|---|---|---|---|"]
    for v in (*VARIANTS, "retrain"):
        mine = [r for r in rows if r["variant"] == v]
        cells = [fmt_pm([r[k] for r in mine]) for k in ("MU", "UE", "UE_lira")]
        cells += [fmt_pm([r["lira_flagged"] for r in mine], 1), fmt_pm([r["lira_auc"] for r in mine], 3)]
        cells += [fmt_pm([r[k] for r in mine], 1) for k in ("test_acc", "forget_acc")]
        lines.append(f"| {v} | {' | '.join(cells)} |")
    lines += ["", "Attack balanced accuracy on θ*: " + fmt_pm([100 * a["balanced_accuracy"] for a in attack], 1)
              + " %; the paper's Fig. 2 claim is that MU and UE fall as GC, then GR, are added."]
    _plot(out / "ablation.png", rows)
    return write_results(out, device=ds.device, placement=ds.placement,
                         suite=cfg.name, command=bench_command(cfg.name, out, seeds),
                         config={**asdict(cfg), "seeds": list(range(n))},
                         results={"rows": rows, "attack": attack}, markdown="\n".join(lines))


def _plot(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.5))
    for ax, key in zip(axes, ("MU", "UE", "UE_lira"), strict=True):
        vals = [[r[key] for r in rows if r["variant"] == v] for v in VARIANTS]
        ax.bar(list(VARIANTS), [np.mean(v) for v in vals], yerr=[np.std(v) for v in vals], capsize=4,
               color=["C0", "C1", "C2"])
        ax.set_title(f"{key} (points) ↓")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


CIFAR = AblationConfig("ablation", ExperimentConfig("cifar10", "lenet5"))
QUICK = replace(CIFAR, name="ablation-quick", seeds=1, experiment=ExperimentConfig("digits", "lenet5"))
SUITES.register("ablation")(Suite("IA / IA+GC / IA+GC+GR on CIFAR-10 LeNet5 (Fig. 2), 3 seeds",
                                  bind(run_ablation, CIFAR)))
SUITES.register("ablation-quick")(Suite("the ablation on digits, one seed", bind(run_ablation, QUICK)))
