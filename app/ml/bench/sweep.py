"""IAU hyper-parameter sweep on the validation split (never the test split).

For one seed: θ* for each α, the retrain on D_r and the membership attack (context.prepare).
Every (α, reduction, step, η) in the grid gets, in points,
    MU_val = |val acc(IAU) − val acc(retrain)|,  UE = |MIA rate on D_f (IAU) − (retrain)|.
The default is the lowest UE among configurations with MU_val ≤ max_mu_val (a service
must not trade its accuracy for forgetting: every deletion batch would pay it again),
ties broken by MU_val + UE. The unconstrained minimum of MU_val + UE is reported too.
`sum` reduction gets the `mean` grid divided by |D_r|, so both forms span the same steps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from app.ml.bench.context import ExperimentConfig, evaluate_model, prepare
from app.ml.bench.report import bench_command, write_results
from app.ml.bench.suites import SUITES, Suite, bind
from app.ml.data.formats import load_dataset
from app.ml.forgetting.methods import run_method


@dataclass(frozen=True)
class SweepConfig:
    name: str
    experiment: ExperimentConfig
    alphas: tuple[float, ...] = (0.0, 0.01, 0.1)
    etas_sgd: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1, 0.2, 0.3, 0.5, 1.0)  # mean; sum: these / |D_r|
    etas_adam: tuple[float, ...] = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 2e-3, 3e-3, 5e-3)
    max_mu_val: float = 2.0
    seed: int = 0


def _grid(cfg: SweepConfig, n_retain: int) -> list[dict[str, Any]]:
    grid = []
    for reduction in ("mean", "sum"):
        scale = 1.0 if reduction == "mean" else 1.0 / n_retain
        grid += [{"reduction": reduction, "step": "sgd", "eta": e * scale} for e in cfg.etas_sgd]
        grid += [{"reduction": reduction, "step": "adam", "eta": e} for e in cfg.etas_adam]
    return grid


def run_sweep(cfg: SweepConfig, *, out: Path, data_dir: Path | None, data_path: Path | None,
              device: str = "cpu", progress: bool = True) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    exp = replace(cfg.experiment, alpha=cfg.alphas[0], extra_alphas=cfg.alphas[1:])
    ds = load_dataset(exp.dataset, path=data_path, data_dir=data_dir, device=device)
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
    best_score = min(rows, key=lambda r: r["score"])
    best = select_default(rows, cfg.max_mu_val)
    families = {}
    for r in rows:
        key = f"{r['reduction']}/{r['step']}"
        if r["MU_val"] <= cfg.max_mu_val and (key not in families or _key(r) < _key(families[key])):
            families[key] = r
    _plot(out / "sweep.png", rows, cfg.alphas)
    return write_results(out, device=ds.device, placement=ds.placement,
                         suite=cfg.name, command=bench_command(cfg.name, out),
                         config=asdict(cfg), results={"rows": rows, "best": best, "best_unconstrained": best_score,
                                                       "best_per_form": families, "retrain_val": gold,
                                                       "attack": ctx.attack_eval},
                         markdown=_markdown(rows, best, best_score, families, gold, ctx.attack_eval, cfg.max_mu_val))


def _key(r: dict[str, Any]) -> tuple[float, float]:
    return (r["UE"], r["score"])


def select_default(rows: list[dict[str, Any]], max_mu_val: float) -> dict[str, Any]:
    """Lowest UE with MU_val ≤ max_mu_val (ties: lowest MU_val + UE); none feasible: lowest MU_val."""
    feasible = [r for r in rows if r["MU_val"] <= max_mu_val]
    if not feasible:
        return min(rows, key=lambda r: r["MU_val"])
    return min(feasible, key=_key)


def _markdown(rows: list[dict[str, Any]], best: dict[str, Any], best_score: dict[str, Any],
              families: dict[str, dict[str, Any]], gold: dict[str, float], attack: dict[str, float],
              max_mu_val: float) -> str:
    lines = [f"Retrain on D_r: val acc {gold['val_acc']:.2f}, MIA rate on D_f {gold['mia_forget']:.2f}. "
             f"Attack on θ*: balanced accuracy {100 * attack['balanced_accuracy']:.1f} %, AUC {attack['auc']:.3f}.",
             "", f"**Chosen default** (lowest UE with MU_val ≤ {max_mu_val}): α = {best['alpha']}, reduction = "
             f"{best['reduction']}, step = {best['step']}, η = {best['eta']:.3g} (MU_val {best['MU_val']:.2f}, "
             f"UE {best['UE']:.2f}).",
             "", f"Unconstrained lowest MU_val + UE: α = {best_score['alpha']}, {best_score['reduction']}/"
             f"{best_score['step']}, η = {best_score['eta']:.3g} (MU_val {best_score['MU_val']:.2f}, "
             f"UE {best_score['UE']:.2f})" + (": the same configuration." if best_score is best else
                                               ": it buys its UE with accuracy."),
             "", f"Best per form with MU_val ≤ {max_mu_val} (paper: sum/sgd; authors' code: mean/adam):", "",
             "| form | α | η | MU_val | UE | score | val acc | forget acc |", "|---|---|---|---|---|---|---|---|"]
    for key, r in sorted(families.items(), key=lambda kv: _key(kv[1])):
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


SUITES.register("iau-sweep")(Suite("IAU defaults by a validation sweep on CIFAR-10/LeNet5 (α, form, η)", bind(
    run_sweep, SweepConfig("iau-sweep", ExperimentConfig("cifar10", "lenet5")), fixed_seeds=True)))
SUITES.register("iau-sweep-quick")(Suite("the IAU sweep on digits", bind(
    run_sweep, SweepConfig("iau-sweep-quick", ExperimentConfig("digits", "lenet5")), fixed_seeds=True)))
