"""The membership verifier's own suite: power where a model memorises, and what verifying costs.

- *memorise*: an MLP trained far past early stopping on a subset of CIFAR-10, so single samples
  are memorised; LiRA (K references) against the reference-free loss score, on the same samples.
- *cost* (digits, the service's default recipe): the verifier's build time at publication and its
  per-batch time beside the IAU step it judges, measured side by side in one run. The service
  promises ≤ 20% of the batch's unlearning time plus 1 s.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.ml.bench.context import memorise, task_for
from app.ml.bench.report import bench_command, fmt_pm, mean_std, write_results
from app.ml.bench.suites import SUITES, Suite, bind
from app.ml.data.dataset import Dataset, SplitConfig, make_splits
from app.ml.data.formats import load_dataset
from app.ml.forgetting.gradcache import build_cache
from app.ml.forgetting.methods import run_method
from app.ml.models.factory import ModelConfig
from app.ml.training.fit import TrainConfig, fit
from app.ml.training.metrics import accuracy
from app.ml.verify.base import BuildInputs, VerifierConfig
from app.ml.verify.build import build_verifier
from app.ml.verify.report import verify_forgetting


@dataclass(frozen=True)
class VerifierSuiteConfig:
    name: str = "verifier"
    seeds: int = 3
    memorise_dataset: str = "cifar10"
    memorise_arch: str = "mlp"
    memorise_train: int = 5000  # a subset of the train split: few samples, many epochs → memorised
    memorise_epochs: int = 60
    refs: int = 4
    cost_dataset: str = "digits"
    cost_arch: str = "lenet5"
    cost_alpha: float = 0.1  # the service's default model
    cost_max_epochs: int = 100
    cost_batches: tuple[int, ...] = (10, 50)
    cost_repeats: int = 5


def _memorise(cfg: VerifierSuiteConfig, ds: Dataset, seed: int) -> dict[str, Any]:
    m = memorise(ds, seed, arch=cfg.memorise_arch, n_train=cfg.memorise_train, epochs=cfg.memorise_epochs)
    target, members = m.trained.model, m.splits.train
    out: dict[str, Any] = {"seed": seed, "train_acc": accuracy(target, ds, members),
                           "test_acc": accuracy(target, ds, m.splits.test)}
    for name, k in (("lira", cfg.refs), ("loss", 0)):
        t0 = time.perf_counter()
        v = m.verifier(ds, name, refs=k, seed=seed)
        out[name] = {**v.power, "build_s": time.perf_counter() - t0}
    return out


def _cost(cfg: VerifierSuiteConfig, ds: Dataset, seed: int) -> dict[str, Any]:
    splits = make_splits(ds, SplitConfig(seed=seed))
    mcfg = ModelConfig(cfg.cost_arch, ds.in_shape, ds.num_classes)
    tcfg = TrainConfig(alpha=cfg.cost_alpha, max_epochs=cfg.cost_max_epochs, seed=seed)
    trained = fit(mcfg, ds, splits.train, splits.val, tcfg, progress=False)
    t0 = time.perf_counter()
    v = build_verifier("lira", BuildInputs(trained.model, ds, splits, mcfg, tcfg, trained.best_epoch),
                       VerifierConfig(n_refs=cfg.refs, seed=seed))
    v.power = v.measure_power(trained.model, ds)
    build_s = time.perf_counter() - t0
    cache = build_cache(trained.model, ds, splits.train)
    rng = np.random.default_rng(seed)
    batches = []
    for n in cfg.cost_batches:
        forget = np.sort(rng.choice(splits.train, n, replace=False))
        task = task_for(trained.model, ds, splits.train, forget, cache=cache, seed=seed)
        unlearn_s, verify_s = [], []
        for _ in range(cfg.cost_repeats):  # interleaved: the host's noise hits both alike
            res = run_method("iau", task, {})
            unlearn_s.append(res.time_s)
            t1 = time.perf_counter()
            verify_forgetting(v, ds, forget, before=trained.model, after=res.model)
            verify_s.append(time.perf_counter() - t1)
        u, w = float(np.median(unlearn_s)), float(np.median(verify_s))
        batches.append({"n": n, "unlearn_s": u, "verify_s": w, "budget_s": 0.2 * u + 1.0,
                        "within_budget": w <= 0.2 * u + 1.0})
    return {"seed": seed, "publish_s": build_s, "ref_train_s": v.info["ref_train_seconds"],
            "target_train_s": trained.seconds, "batches": batches}


def _markdown(cfg: VerifierSuiteConfig, mem: list[dict[str, Any]], cost: list[dict[str, Any]]) -> str:
    train_acc, test_acc = (fmt_pm([100 * m[k] for m in mem], 1) for k in ("train_acc", "test_acc"))
    lines = [f"**Memorising model**: {cfg.memorise_arch} on {cfg.memorise_train} {cfg.memorise_dataset} training "
             f"samples, {cfg.memorise_epochs} epochs without early stopping; train acc {train_acc} %, test acc "
             f"{test_acc} %; seeds {[m['seed'] for m in mem]}, mean ± std.", "",
             "| verifier | AUC | TPR@1%FPR | TPR@5%FPR | FPR@1% (eval non-members) | FPR@5% | min. detectable batch "
             "| build (s) |", "|---|---|---|---|---|---|---|---|"]
    for name in ("lira", "loss"):
        ps = [m[name] for m in mem]
        label = f"LiRA (K={cfg.refs})" if name == "lira" else "loss (no references)"
        lines.append(f"| {label} | {fmt_pm([p['auc'] for p in ps], 3)} | "
                     + " | ".join(f"{fmt_pm([100 * p[k]['rate'] for p in ps], 1)} %"
                                  for k in ("tpr@0.01", "tpr@0.05", "fpr@0.01", "fpr@0.05"))
                     + f" | {' / '.join(str(p['min_detectable_batch']) for p in ps)} | "
                       f"{fmt_pm([p['build_s'] for p in ps], 1)} |")
    lines += ["", f"**Cost** ({cfg.cost_dataset} {cfg.cost_arch}, GR α={cfg.cost_alpha}, the service's default "
              f"model; K={cfg.refs}): verifier build at publication {fmt_pm([c['publish_s'] for c in cost], 1)} s "
              f"(references {fmt_pm([c['ref_train_s'] for c in cost], 1)} s; the target itself trained in "
              f"{fmt_pm([c['target_train_s'] for c in cost], 1)} s).", "",
              "| batch | IAU step (s, median) | verification (s, median) | budget 0.2 × IAU + 1 s | within |",
              "|---|---|---|---|---|"]
    for i, n in enumerate(cfg.cost_batches):
        bs = [c["batches"][i] for c in cost]
        lines.append(f"| {n} | {fmt_pm([b['unlearn_s'] for b in bs], 4)} | {fmt_pm([b['verify_s'] for b in bs], 4)} "
                     f"| {fmt_pm([b['budget_s'] for b in bs], 3)} | {all(b['within_budget'] for b in bs)} |")
    return "\n".join(lines)


def plot_power(path: Path, mem: list[dict[str, Any]], refs: int) -> None:
    """TPR at each FPR for LiRA and the loss score on the memorising model, mean ± std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("tpr@0.01", "tpr@0.05")
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for i, (name, label) in enumerate((("lira", f"LiRA (K={refs})"), ("loss", "loss (no references)"))):
        vals = [[100 * m[name][k]["rate"] for m in mem] for k in keys]
        ax.bar(np.arange(len(keys)) + 0.38 * i, [np.mean(v) for v in vals], 0.36, yerr=[np.std(v) for v in vals],
               capsize=4, label=label)
    for j, q in enumerate((1, 5)):
        ax.hlines(q, j - 0.2, j + 0.58, colors="k", linestyles="dotted")
    ax.set_xticks(np.arange(len(keys)) + 0.19, ["TPR @ 1% FPR", "TPR @ 5% FPR"])
    ax.set_ylabel("members flagged (%); dotted: the FPR")
    ax.set_title("memorising model: per-sample power")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(cfg: VerifierSuiteConfig, *, out: Path, seeds: int | None, data_dir: Path | None,
        data_path: Path | None, device: str = "cpu") -> dict[str, Any]:
    n = seeds or cfg.seeds
    mem_ds = load_dataset(cfg.memorise_dataset, path=data_path, data_dir=data_dir, device=device)
    mem = [_memorise(cfg, mem_ds, s) for s in range(n)]
    cost_ds = load_dataset(cfg.cost_dataset, data_dir=data_dir, device=device)
    cost = [_cost(cfg, cost_ds, s) for s in range(n)]
    summary = {"lira_tpr@0.01": mean_std([m["lira"]["tpr@0.01"]["rate"] for m in mem]),
               "loss_tpr@0.01": mean_std([m["loss"]["tpr@0.01"]["rate"] for m in mem])}
    plot_power(out / "verifier.png", mem, cfg.refs)
    command = bench_command(cfg.name, out, seeds)
    return write_results(out, device=mem_ds.device, placement=mem_ds.placement,
                         suite=cfg.name, command=command, config={**asdict(cfg), "seeds": list(range(n))},
                         results={"memorise": mem, "cost": cost, "summary": summary},
                         markdown=_markdown(cfg, mem, cost))


VERIFIER = VerifierSuiteConfig()
SUITES.register("verifier")(Suite("the membership verifier: power on a memorising CIFAR-10 MLP, cost per batch "
                                  "on digits (3 seeds)", bind(run, VERIFIER)))
