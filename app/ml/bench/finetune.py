"""Suite `finetune-cifar10` (issue 24): deleting fine-tuning data from a model fine-tuned on a pretrained backbone.

A backbone is pretrained on CIFAR-10's classes 0–4 (the "public" data, once per run). Per seed, the classifier
is fine-tuned from it on classes 5–9 (the "private" data) with the backbone frozen (`--freeze features.`: the
convolutions; the three fully connected layers train), its verifier's references are re-fine-tuned from the same
init, calibration runs as at publication, and 5% of the private training data is deleted at random. Rows:

- the calibrated policy (what the service does for the deletion);
- the exact re-fine-tune from the same init, over the frozen features computed once (what consolidation does,
  app/ml/training/feature_cache.py), and the same re-fine-tune running the whole model every epoch;
- a full retrain from scratch, backbone included (what a team without the init would pay), same recipe.

Columns: time, held-out accuracy, MU against the re-fine-tune, the verifier's set AUC on D_f and the share of the
membership gap closed, frozen parameters bit-identical, and the speed-ups, all measured in the same run.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import save_file

from app.ml.bench.context import choose_forget, task_for
from app.ml.bench.report import bench_command, fmt_pm, summary_rows, write_results
from app.ml.bench.suites import SUITES, Suite, bind
from app.ml.common.device import resolve
from app.ml.common.hashing import weights_sha256
from app.ml.data.dataset import Dataset, SplitConfig, make_splits
from app.ml.data.formats import load_dataset
from app.ml.forgetting.calibrate import CalibrationConfig, calibrate
from app.ml.forgetting.job import forget_version
from app.ml.forgetting.policy import Budget, PolicyOptions
from app.ml.models.factory import ModelConfig
from app.ml.models.pretrained import frozen_state
from app.ml.training.fit import TrainConfig, fit
from app.ml.training.metrics import accuracy
from app.ml.verify.base import BuildInputs, VerifierConfig
from app.ml.verify.build import build_verifier
from app.ml.verify.report import flagged


@dataclass(frozen=True)
class FinetuneConfig:
    name: str
    dataset: str = "cifar10"
    arch: str = "lenet5"
    public_classes: tuple[int, ...] = (0, 1, 2, 3, 4)
    freeze: tuple[str, ...] = ("features.",)
    forget_frac: float = 0.05
    seeds: int = 3
    max_epochs: int = 100
    patience: int = 5
    verify_refs: int = 4
    max_accuracy_drop: float = 0.01
    limit: int | None = None  # rows per half, for the quick variant

    def recipe(self, seed: int) -> TrainConfig:
        return TrainConfig(max_epochs=self.max_epochs, patience=self.patience, seed=seed)


def halves(ds: Dataset, cfg: FinetuneConfig) -> tuple[Dataset, Dataset]:
    """(public, private): the classes in cfg.public_classes, and the rest relabelled 0..k−1; each keeps the
    official train/test split."""
    public = np.isin(ds.y, cfg.public_classes)
    return _subset(ds, public, cfg), _subset(ds, ~public, cfg)


def _subset(ds: Dataset, mask: np.ndarray, cfg: FinetuneConfig) -> Dataset:
    train, test = np.flatnonzero(mask[: ds.n_pool]), ds.n_pool + np.flatnonzero(mask[ds.n_pool:])
    if cfg.limit:
        train, test = train[: cfg.limit], test[: cfg.limit // 5]
    rows = np.concatenate([train, test])
    classes = np.unique(ds.y[rows])
    y = np.searchsorted(classes, ds.y[rows])
    return Dataset(name=f"{ds.name}[{','.join(map(str, classes))}]", x=np.asarray(ds.x[rows]), y=y,
                   num_classes=len(classes), n_pool=len(train), class_names=tuple(ds.names[c] for c in classes))


def pretrain(public: Dataset, cfg: FinetuneConfig, out: Path) -> tuple[Path, str, float]:
    splits = make_splits(public, SplitConfig(seed=0))
    mc = ModelConfig(cfg.arch, public.in_shape, public.num_classes)
    res = fit(mc, public, splits.train, splits.val, cfg.recipe(0), progress=False)
    state = {k: v.detach().cpu().contiguous() for k, v in res.model.state_dict().items()}
    path = out / "backbone.safetensors"
    save_file(state, str(path))
    return path, weights_sha256(state), res.seconds


def run_seed(cfg: FinetuneConfig, ds: Dataset, init: Path, init_sha: str, seed: int) -> dict[str, Any]:
    splits = make_splits(ds, SplitConfig(seed=seed))
    forget = choose_forget(ds, splits.train, frac=cfg.forget_frac, how="random", seed=seed)
    retain = np.setdiff1d(splits.train, forget)
    tuned = ModelConfig(cfg.arch, ds.in_shape, ds.num_classes, init=init, init_sha256=init_sha, freeze=cfg.freeze)
    recipe = cfg.recipe(seed)
    star = fit(tuned, ds, splits.train, splits.val, recipe, progress=False)
    verifier = build_verifier("lira", BuildInputs(star.model, ds, splits, tuned, recipe, epochs=star.best_epoch),
                              VerifierConfig(n_refs=cfg.verify_refs, seed=seed))
    verifier.power = verifier.measure_power(star.model, ds)
    base = task_for(star.model, ds, splits.train, forget, cache=True, seed=seed, model_cfg=tuned, train_cfg=recipe,
                    val_ids=splits.val, epochs_trained=star.epochs_run, verifier=verifier)
    hold = splits.holdout(10000)
    cal = calibrate(base, hold, star.seconds, CalibrationConfig(max_accuracy_drop=cfg.max_accuracy_drop, seed=seed))
    acc0 = accuracy(star.model, ds, hold)
    done = forget_version(base, cal, hold,
                          Budget.below(acc0, max_drop=cfg.max_accuracy_drop, exact_max_drop=0.05),
                          options=PolicyOptions(on_partial="accept"), holdout_acc_before=acc0)
    if done.model is None:
        raise RuntimeError(f"the policy kept no model: {done.record.problem}")
    exact = fit(tuned, ds, retain, splits.val, recipe, progress=False)
    whole = fit(tuned, ds, retain, splits.val, recipe, progress=False, feature_cache=False)
    scratch = fit(replace(tuned, init=None, init_sha256=None, freeze=()), ds, retain, splits.val, recipe,
                  progress=False)
    start = _measure(verifier, star.model, ds, splits.test, forget)
    gold = _measure(verifier, exact.model, ds, splits.test, forget)
    frozen0 = frozen_state(star.model, cfg.freeze)
    rows = []
    for name, model, seconds, epochs in (
            ("θ* (fine-tuned)", star.model, star.seconds, star.epochs_run),
            ("calibrated policy", done.model, done.record.time_s, None),
            ("exact re-fine-tune (same init)", exact.model, exact.seconds, exact.epochs_run),
            ("same, whole model every epoch", whole.model, whole.seconds, whole.epochs_run),
            ("retrain from scratch (all layers)", scratch.model, scratch.seconds, scratch.epochs_run)):
        m = _measure(verifier, model, ds, splits.test, forget)
        gap = start["auc"] - gold["auc"]
        after = frozen_state(model, cfg.freeze)
        rows.append({"method": name, "seed": seed, **m, "time_s": seconds, "epochs": epochs,
                     "MU": abs(m["test_acc"] - gold["test_acc"]),
                     "gap_closed": (start["auc"] - m["auc"]) / gap if gap > 0 else float("nan"),
                     "frozen_identical": all(np.array_equal(frozen0[k].cpu().numpy(), after[k].cpu().numpy())
                                             for k in frozen0) if "scratch" not in name else None})
    t = {r["method"]: r["time_s"] for r in rows}
    return {"seed": seed, "rows": rows, "policy": {k: v for k, v in done.record.to_payload().items()
                                                   if k in ("method", "params", "verdict", "exact")},
            "calibration_choice": cal.get("choice"), "calibration_s": cal.get("seconds"),
            "verifier_power": {k: verifier.power.get(k) for k in ("auc", "tpr@0.01", "tpr@0.05")}
            if verifier.power else None,
            "feature_cache": exact.feature_cache,
            "speedups": {"scratch / re-fine-tune": t["retrain from scratch (all layers)"]
                         / t["exact re-fine-tune (same init)"],
                         "whole-model / cached re-fine-tune": t["same, whole model every epoch"]
                         / t["exact re-fine-tune (same init)"],
                         "re-fine-tune / policy": t["exact re-fine-tune (same init)"] / t["calibrated policy"],
                         "scratch / policy": t["retrain from scratch (all layers)"] / t["calibrated policy"]}}


def _measure(verifier: Any, model: Any, ds: Dataset, test: np.ndarray, forget: np.ndarray) -> dict[str, float]:
    a = verifier.assess(model, ds, forget)
    return {"test_acc": 100 * accuracy(model, ds, test), "forget_acc": 100 * accuracy(model, ds, forget),
            "auc": a["set"]["auc"], "flagged": 100 * flagged(a)}


def _markdown(cfg: FinetuneConfig, per_seed: list[dict[str, Any]], pre_s: float) -> str:
    rows = [r for s in per_seed for r in s["rows"]]
    lines = [f"{cfg.dataset} / {cfg.arch}: backbone pretrained on classes {list(cfg.public_classes)} "
             f"({pre_s:.0f} s, once); fine-tuned on the other classes with `{','.join(cfg.freeze)}` frozen; "
             f"{cfg.forget_frac:.0%} of the fine-tuning data deleted at random; seeds {[s['seed'] for s in per_seed]}, "
             "mean ± std. MU = |test acc − the re-fine-tune's| (points); gap closed = (AUC θ* − AUC) / (AUC θ* − AUC "
             "re-fine-tune) on D_f's set AUC under the LiRA verifier (references re-fine-tuned from the same init).",
             "", "| row | test acc | forget acc | MU ↓ | D_f set AUC | D_f flagged @5% | gap closed ↑ | time (s) | "
             "epochs | frozen bit-identical |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == name]
        cells = [fmt_pm([r[k] for r in mine], d) for k, d in (("test_acc", 2), ("forget_acc", 2), ("MU", 2),
                                                             ("auc", 3), ("flagged", 1), ("gap_closed", 2),
                                                             ("time_s", 2))]
        ep = [r["epochs"] for r in mine if r["epochs"] is not None]
        fz = [r["frozen_identical"] for r in mine if r["frozen_identical"] is not None]
        cells += [fmt_pm(ep, 1) if ep else "—", f"{sum(fz)}/{len(fz)}" if fz else "—"]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    lines += ["", "Speed-ups, each a ratio of two times measured in the same run:", ""]
    for k in per_seed[0]["speedups"]:
        lines.append(f"- {k}: {fmt_pm([s['speedups'][k] for s in per_seed], 1)}×")
    fc = per_seed[0]["feature_cache"] or {"used": False, "why": "nothing frozen"}
    lines += ["", "The exact re-fine-tune's frozen features: " + (
        f"cut after `{fc['cut']}` (shape {fc['shape']}), {fc['rows']} rows computed once per run "
        f"({fmt_pm([s['feature_cache']['seconds'] for s in per_seed], 2)} s of its time)" if fc["used"]
        else f"not cached: {fc['why']}")]
    lines += ["", "The policy's choice per seed: " + "; ".join(
        f"seed {s['seed']}: {s['policy']['method']} {s['policy']['params']} ({s['policy']['verdict']})"
        for s in per_seed)]
    return "\n".join(lines)


def plot(path: Path, per_seed: list[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summary_rows([r for s in per_seed for r in s["rows"]], ("time_s", "gap_closed", "MU"))
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    names = [e["method"] for e in summary]
    a.barh(names, [e["time_s"] for e in summary], xerr=[e["time_s_std"] for e in summary], log=True)
    a.set_xlabel("seconds (log)")
    for e in summary:
        b.errorbar(e["MU"], e["gap_closed"], xerr=e["MU_std"], yerr=e["gap_closed_std"], fmt="o", capsize=3)
        b.annotate(e["method"], (e["MU"], e["gap_closed"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    b.axhline(0.5, color="grey", ls=":", lw=0.7)
    b.axvline(1.0, color="grey", ls=":", lw=0.7)
    b.set_xlabel("MU (points)")
    b.set_ylabel("share of the membership gap closed")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def run(cfg: FinetuneConfig, *, out: Path, seeds: int | None, data_dir: Path | None, data_path: Path | None,
        device: str = "cpu") -> dict[str, Any]:
    n = seeds or cfg.seeds
    public, private = halves(load_dataset(cfg.dataset, path=data_path, data_dir=data_dir), cfg)
    dev = resolve(device)
    public, private = public.on(dev), private.on(dev)
    t0 = time.perf_counter()
    init, sha, pre_s = pretrain(public, cfg, out)
    per_seed = [run_seed(cfg, private, init, sha, s) for s in range(n)]
    plot(out / "finetune.png", per_seed, f"{cfg.name}: {n} seeds")
    command = bench_command(cfg.name, out, seeds)
    return write_results(out, suite=cfg.name, command=command, config={**asdict(cfg), "seeds": list(range(n))},
                         results={"pretrain_seconds": pre_s, "wall_s": time.perf_counter() - t0,
                                  "per_seed": per_seed, "rows": [r for s in per_seed for r in s["rows"]]},
                         markdown=_markdown(cfg, per_seed, pre_s), device=private.device,
                         placement=private.placement)


for _c in (FinetuneConfig("finetune-cifar10"),
           FinetuneConfig("finetune-quick", dataset="digits", seeds=1, max_epochs=3, verify_refs=2, limit=400)):
    SUITES.register(_c.name)(Suite(f"delete fine-tuning data: policy vs exact re-fine-tune vs scratch retrain "
                                   f"({_c.dataset}, {_c.seeds} seeds)", bind(run, _c)))
