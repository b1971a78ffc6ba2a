"""Suite `shards-lira` (issue 36): the membership verifier's own power (offline LiRA, the service's verdicts) on a
sharded model's aggregate, against the same data as one model. Each reference model is sharded as the target is
(app/ml/sharding/references.py), so the test is calibrated on what the target's answers look like on non-members.
The `shards` suite's loss attack needs no references; this is the attack the service runs."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from app.ml.bench.report import fmt_pm
from app.ml.bench.shards import ModelSpec, run_rows
from app.ml.bench.suites import SUITES, Suite, bind
from app.ml.data.dataset import Dataset, SplitConfig, make_splits
from app.ml.models.factory import ModelConfig
from app.ml.sharding.plan import make_plan
from app.ml.sharding.references import sharded_references
from app.ml.sharding.train import train_sharded
from app.ml.training.fit import TrainConfig
from app.ml.training.metrics import accuracy
from app.ml.verify.base import BuildInputs, VerifierConfig
from app.ml.verify.build import build_verifier

KEYS = (("auc", "LiRA AUC", 3), ("tpr@0.01", "TPR at 1% FPR", 3), ("tpr@0.05", "TPR at 5% FPR", 3),
        ("min_detectable_batch", "smallest detectable batch", 0))


@dataclass(frozen=True)
class LiraConfig:
    name: str
    dataset: str = "cifar10"
    models: tuple[ModelSpec, ...] = (ModelSpec("CIFAR-10 LeNet5", "lenet5", 10000, 12),
                                     ModelSpec("memorising MLP", "mlp", 5000, 24))
    ks: tuple[int, ...] = (1, 4)
    n_refs: int = 4
    seeds: int = 3


def run_model(cfg: LiraConfig, ds: Dataset, spec: ModelSpec, seed: int) -> list[dict[str, Any]]:
    splits = make_splits(ds, SplitConfig(seed=seed))
    rng = np.random.default_rng(seed)
    splits = replace(splits, train=np.sort(rng.choice(splits.train, min(spec.n_train, len(splits.train)),
                                                      replace=False)))
    mcfg = ModelConfig(spec.arch, ds.in_shape, ds.num_classes)
    recipe = TrainConfig(max_epochs=spec.epochs, seed=seed)
    rows = []
    for k in cfg.ks:
        t0 = time.perf_counter()
        agg = train_sharded(mcfg, ds, make_plan(splits.train, k=k, r=1, seed=seed), recipe).aggregate()
        inputs = BuildInputs(agg, ds, splits, mcfg, recipe, spec.epochs,
                             fit_ref=sharded_references(mcfg, {"k": k, "r": 1}))
        v = build_verifier("lira", inputs, VerifierConfig(n_refs=cfg.n_refs, seed=seed))
        power = v.measure_power(agg, ds)
        rows.append({"model": spec.name, "seed": seed, "k": k, "test_acc": accuracy(agg, ds, splits.test),
                     "seconds": time.perf_counter() - t0, "ref_train_samples": v.info["ref_train_samples"],
                     **{key: power.get(key) for key, _, _ in KEYS}, "measurable": power.get("measurable")})
    return rows


def _value(x: Any) -> float:
    """A power figure: a number, a rate record ({rate, ci_low, …}), or None (nothing detectable)."""
    if isinstance(x, dict):
        x = x.get("rate")
    return float("nan") if x is None else float(x)


def _cell(values: list[float], digits: int) -> str:
    """Mean ± std of the seeds where the figure exists (a batch size: where membership is detectable at all)."""
    kept = [v for v in values if not np.isnan(v)]
    if not kept:
        return "—"
    return fmt_pm(kept, digits) + (f" ({len(kept)} of {len(values)} seeds)" if len(kept) < len(values) else "")


def _markdown(cfg: LiraConfig, rows: list[dict[str, Any]]) -> str:
    lines = [f"Offline LiRA ({cfg.n_refs} reference models, each sharded as its target is, on half the shadow "
             "split) on the aggregate of K constituents trained on disjoint shards of the same samples, R = 1. "
             f"Mean ± std over {cfg.seeds} seeds; every K of a seed in one run.", ""]
    for spec in cfg.models:
        mine = [r for r in rows if r["model"] == spec.name]
        lines += [f"### {spec.name} ({spec.n_train} training samples, {spec.epochs} epochs)", "",
                  "| K | test acc % | " + " | ".join(t for _, t, _ in KEYS) + " | measurable (per seed) |",
                  "|---|---|" + "---|" * (len(KEYS) + 1)]
        for k in cfg.ks:
            cell = [r for r in mine if r["k"] == k]
            lines.append(f"| {k} | {fmt_pm([100 * r['test_acc'] for r in cell])} | "
                         + " | ".join(_cell([_value(r[key]) for r in cell], d) for key, _, d in KEYS)
                         + f" | {'; '.join(str(r['measurable']) for r in cell)} |")
        lines.append("")
    return "\n".join(lines)


def _plot(cfg: LiraConfig, rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    width = 0.8 / max(len(cfg.models), 1)
    for m, spec in enumerate(cfg.models):
        cells = [[_value(r["auc"]) for r in rows if r["model"] == spec.name and r["k"] == k] for k in cfg.ks]
        ax.bar(np.arange(len(cfg.ks)) + m * width, [np.mean(c) for c in cells], width,
               yerr=[np.std(c) for c in cells], capsize=3, label=spec.name)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(np.arange(len(cfg.ks)) + width * (len(cfg.models) - 1) / 2, [f"K = {k}" for k in cfg.ks])
    ax.set(ylabel="LiRA AUC (members vs non-members)", title="the verifier on the aggregate")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(cfg: LiraConfig, *, out: Path, seeds: int | None, data_dir: Path | None, data_path: Path | None,
        device: str = "cpu") -> dict[str, Any]:
    return run_rows(cfg, run_model, _plot, _markdown, out=out, seeds=seeds, data_dir=data_dir, data_path=data_path,
                    device=device)


for _c in (LiraConfig("shards-lira"),
           LiraConfig("shards-lira-quick", dataset="digits", models=(ModelSpec("digits MLP", "mlp", 600, 10),),
                      ks=(1, 2), n_refs=2, seeds=1)):
    SUITES.register(_c.name)(Suite(f"the verifier's LiRA power on a sharded aggregate, K ∈ {list(_c.ks)} "
                                   f"({_c.dataset}, {_c.seeds} seeds)", bind(run, _c)))
