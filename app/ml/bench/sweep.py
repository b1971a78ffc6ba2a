"""IAU hyper-parameter sweep on the validation split (never the test split).

For one seed: θ* for each α, the retrain on D_r and the membership attack (context.prepare).
Then every (α, reduction, step, η) in the grid is scored by
    score = |val acc(IAU) − val acc(retrain)| + |MIA rate on D_f (IAU) − (retrain)|   (points)
and the lowest score becomes IAU's documented default. `sum` reduction gets the `mean` grid
divided by |D_r|, so that both forms cover the same range of step sizes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from app.ml.bench import SUITES, Suite
from app.ml.bench.context import ExperimentConfig, evaluate_model, prepare
from app.ml.bench.report import write_results
from app.ml.datasets import load_dataset
from app.ml.unlearn import run_method


@dataclass(frozen=True)
class SweepConfig:
    name: str
    experiment: ExperimentConfig
    alphas: tuple[float, ...] = (0.0, 0.01, 0.1)
    etas_sgd: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)  # for mean; sum gets these / |D_r|
    etas_adam: tuple[float, ...] = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3)
    seed: int = 0


def _grid(cfg: SweepConfig, n_retain: int) -> list[dict[str, Any]]:
    grid = []
    for reduction in ("mean", "sum"):
        scale = 1.0 if reduction == "mean" else 1.0 / n_retain
        grid += [{"reduction": reduction, "step": "sgd", "eta": e * scale} for e in cfg.etas_sgd]
        grid += [{"reduction": reduction, "step": "adam", "eta": e} for e in cfg.etas_adam]
    return grid


def run_sweep(cfg: SweepConfig, *, out: Path, data_dir: Path | None, data_path: Path | None,
              progress: bool = True) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    exp = replace(cfg.experiment, alpha=cfg.alphas[0], extra_alphas=cfg.alphas[1:])
    ds = load_dataset(exp.dataset, path=data_path, data_dir=data_dir)
    ctx = prepare(exp, ds, cfg.seed, progress=progress)
    gold = evaluate_model(ctx, ctx.retrain.model, ids="val")
    rows = []
    for alpha in cfg.alphas:
        task = ctx.task(alpha)
        for params in _grid(cfg, len(ctx.retain)):
            res = run_method("iau", task, params)
            m = evaluate_model(ctx, res.model, ids="val")
            mu_val, ue = abs(m["val_acc"] - gold["val_acc"]), abs(m["mia_forget"] - gold["mia_forget"])
            rows.append({"alpha": alpha, **params, "val_acc": m["val_acc"], "forget_acc": m["forget_acc"],
                         "mia_forget": m["mia_forget"], "MU_val": mu_val, "UE": ue, "score": mu_val + ue,
                         "time_s": res.time_s})
    best = min(rows, key=lambda r: r["score"])
    families = {}
    for r in rows:
        key = f"{r['reduction']}/{r['step']}"
        if key not in families or r["score"] < families[key]["score"]:
            families[key] = r
    _plot(out / "sweep.png", rows, cfg.alphas)
    return write_results(out, suite=cfg.name, command=f"unlearnd bench --suite {cfg.name} --out {out}",
                         config=asdict(cfg), results={"rows": rows, "best": best, "best_per_form": families,
                                                       "retrain_val": gold, "attack": ctx.attack_eval},
                         markdown=_markdown(rows, best, families, gold, ctx.attack_eval))


def _markdown(rows: list[dict[str, Any]], best: dict[str, Any], families: dict[str, dict[str, Any]],
              gold: dict[str, float], attack: dict[str, float]) -> str:
    lines = [f"Retrain on D_r: val acc {gold['val_acc']:.2f}, MIA rate on D_f {gold['mia_forget']:.2f}. "
             f"Attack on θ*: balanced accuracy {100 * attack['balanced_accuracy']:.1f} %, AUC {attack['auc']:.3f}.",
             "", f"**Best**: α = {best['alpha']}, reduction = {best['reduction']}, step = {best['step']}, "
             f"η = {best['eta']:.3g} (score {best['score']:.2f} = MU_val {best['MU_val']:.2f} + UE {best['UE']:.2f}).",
             "", "Best per form (paper: sum/sgd; authors' code: mean/adam):", "",
             "| form | α | η | MU_val | UE | score | val acc | forget acc |", "|---|---|---|---|---|---|---|---|"]
    for key, r in sorted(families.items(), key=lambda kv: kv[1]["score"]):
        lines.append(f"| {key} | {r['alpha']} | {r['eta']:.3g} | {r['MU_val']:.2f} | {r['UE']:.2f} | "
                     f"{r['score']:.2f} | {r['val_acc']:.2f} | {r['forget_acc']:.2f} |")
    lines += ["", "<details><summary>every configuration</summary>", "",
              "| α | reduction | step | η | MU_val | UE | score | val acc | forget acc |",
              "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['alpha']} | {r['reduction']} | {r['step']} | {r['eta']:.3g} | {r['MU_val']:.2f} | {r['UE']:.2f} "
              f"| {r['score']:.2f} | {r['val_acc']:.2f} | {r['forget_acc']:.2f} |" for r in rows]
    lines += ["", "</details>"]
    return "\n".join(lines)


def _plot(path: Path, rows: list[dict[str, Any]], alphas: tuple[float, ...]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    forms = [("mean", "sgd"), ("sum", "sgd"), ("mean", "adam"), ("sum", "adam")]
    fig, axes = plt.subplots(1, len(forms), figsize=(16, 3.8), sharey=True)
    for ax, (reduction, step) in zip(axes, forms, strict=True):
        for alpha in alphas:
            pts = [r for r in rows if r["alpha"] == alpha and r["reduction"] == reduction and r["step"] == step]
            ax.plot([r["eta"] for r in pts], [r["score"] for r in pts], marker="o", label=f"α={alpha}")
        ax.set_xscale("log")
        ax.set_title(f"{reduction} / {step}")
        ax.set_xlabel("η")
    axes[0].set_ylabel("MU_val + UE (points) ↓")
    axes[-1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _suite(cfg: SweepConfig) -> Any:
    def run(*, out: Path, seeds: int | None, data_dir: Path | None, data_path: Path | None) -> dict[str, Any]:
        return run_sweep(cfg, out=out, data_dir=data_dir, data_path=data_path)

    return run


SUITES.register("iau-sweep")(Suite("IAU defaults by a validation sweep on CIFAR-10/LeNet5 (α, form, η)",
                                   _suite(SweepConfig("iau-sweep", ExperimentConfig("cifar10", "lenet5")))))
SUITES.register("iau-sweep-quick")(Suite("the IAU sweep on digits",
                                         _suite(SweepConfig("iau-sweep-quick", ExperimentConfig("digits", "lenet5")))))
