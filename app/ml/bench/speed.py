"""`speed` suites: the core's speed and memory targets, all measured side by side in one run.

Measures, on one machine in one process: seconds per epoch of plain vs GR training (exact
double backprop and the fd approximation), full retrain on D_r, the gradient-cache refresh,
one forward+backward over D_f and over D, IAU's fast and slow paths, and the peak RSS of
`unlearnd unlearn` (a child process) on both paths.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.ml.bench.context import load_split, task_for
from app.ml.bench.report import bench_command, interleaved, write_results
from app.ml.bench.suites import SUITES, Suite, bind
from app.ml.common.device import synchronize
from app.ml.data.dataset import Dataset, Splits
from app.ml.forgetting.gradcache import build_cache, save_cache
from app.ml.forgetting.methods import run_method
from app.ml.models.checkpoint import META_FILE, save_model_dir
from app.ml.models.factory import ModelConfig
from app.ml.models.meta import ModelMeta
from app.ml.training.fit import TrainConfig, fit, make_optimizer, seeded_model, train_epoch
from app.ml.training.grads import grad_sum
from app.ml.training.metrics import accuracy


@dataclass(frozen=True)
class SpeedConfig:
    dataset: str = "cifar10"
    arch: str = "lenet5"
    alpha: float = 0.01
    forget_frac: float = 0.05
    max_epochs: int = 100
    patience: int = 10
    epoch_repeats: int = 3  # epochs timed per training variant
    repeats: int = 7  # timings per unlearning variant
    chunk_size: int = 1024
    batch_size: int = 64
    gr_grad: str = "exact"  # the GR recipe of the trained model and the retrain (the epoch rows time both)
    seed: int = 0


def _epoch_seconds(ds: Dataset, splits: Splits, model_cfg: ModelConfig, cfg: SpeedConfig) -> dict[str, list[float]]:
    variants = {"plain": TrainConfig(alpha=0.0, batch_size=cfg.batch_size, seed=cfg.seed),
                "gr_exact": TrainConfig(alpha=cfg.alpha, gr_grad="exact", batch_size=cfg.batch_size, seed=cfg.seed),
                "gr_fd": TrainConfig(alpha=cfg.alpha, gr_grad="fd", batch_size=cfg.batch_size, seed=cfg.seed)}
    fns = {}
    for name, tcfg in variants.items():
        model = seeded_model(model_cfg, cfg.seed, ds.device)
        opt = make_optimizer(model, tcfg)
        rng = np.random.default_rng(cfg.seed)
        fns[name] = (lambda m=model, o=opt, t=tcfg, r=rng: train_epoch(m, o, ds, splits.train, t, r))
    return interleaved(fns, cfg.epoch_repeats, ds.device)


def _peak_rss(model_dir: Path, forget_file: Path, out: Path, *, slow: bool, chunk_size: int,
              device: torch.device) -> dict[str, Any]:
    # IAU's own footprint, whatever the model's calibrated setting and however far its one step moves accuracy
    args = ["unlearn", "--model", str(model_dir), "--method", "iau", "--max-accuracy-drop", "1", "--forget-ids",
            str(forget_file), "--out", str(out)]
    if slow:
        args.append("--no-cache")
    code, peak_mib, err = peak_rss_of([sys.executable, "-m", "app.cli", *args],
                                      env={**os.environ, "UNLEARND_CHUNK_SIZE": str(chunk_size),
                                           "UNLEARND_DEVICE": str(device)})
    if code != 0:
        raise RuntimeError(f"unlearn child failed: {err[-2000:]}")
    unlearn = ModelMeta.read(out / META_FILE).unlearn or {}
    return {"peak_rss_mib": peak_mib, "path": unlearn["attempts"][0]["path"]}


def peak_rss_of(cmd: list[str], *, env: dict[str, str], timeout_s: float = 1800) -> tuple[int, float, str]:
    """Run CMD; (exit code, its own peak RSS in MiB from wait4's rusage, its stderr)."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + timeout_s
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        return proc.returncode, usage.ru_maxrss / 1024, err.read().decode(errors="replace")  # Linux: KiB


def run_speed(cfg: SpeedConfig, *, out: Path, data_dir: Path | None, data_path: Path | None,
              device: str = "cpu") -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    ds, splits, sized = load_split(cfg.dataset, seed=cfg.seed, data_path=data_path, data_dir=data_dir, device=device)
    model_cfg = replace(sized, arch=cfg.arch)
    rng = np.random.default_rng(cfg.seed)
    forget = np.sort(rng.choice(splits.train, size=int(cfg.forget_frac * len(splits.train)), replace=False))
    retain = np.setdiff1d(splits.train, forget)

    epochs = _epoch_seconds(ds, splits, model_cfg, cfg)
    tcfg = TrainConfig(alpha=cfg.alpha, max_epochs=cfg.max_epochs, patience=cfg.patience, seed=cfg.seed,
                       batch_size=cfg.batch_size, gr_grad=cfg.gr_grad)
    trained = fit(model_cfg, ds, splits.train, splits.val, tcfg)
    retrained = fit(model_cfg, ds, retain, splits.val, tcfg)
    model = trained.model

    work = Path(tempfile.mkdtemp(prefix="unlearnd-speed-"))  # model dirs for the child process, not results
    model_dir = work / "model"
    save_model_dir(model_dir, model=model, model_cfg=model_cfg, splits=splits,
                   meta={"dataset": cfg.dataset, "data_path": str(data_path.resolve()) if data_path else None,
                         "alpha": cfg.alpha, "gr_norm": "global", "seed": cfg.seed, "train_config": asdict(tcfg),
                         "epochs": trained.epochs_run, "val_acc": trained.val_acc})
    synchronize(ds.device)
    t_cache = time.perf_counter()
    cache = build_cache(model, ds, splits.train, chunk_size=cfg.chunk_size)
    synchronize(ds.device)
    cache_seconds = time.perf_counter() - t_cache
    save_cache(cache, model_dir)

    fast_task = task_for(model, ds, splits.train, forget, cache=cache, chunk_size=cfg.chunk_size)
    slow_task = replace(fast_task, cache=None)
    results: dict[str, Any] = {}

    def fast() -> None:
        results["fast"] = run_method("iau", fast_task, {})

    def slow() -> None:
        results["slow"] = run_method("iau", slow_task, {})

    t = interleaved({
        "fwd_bwd_forget": lambda: grad_sum(model, ds, forget, chunk_size=cfg.chunk_size),
        "fwd_bwd_train": lambda: grad_sum(model, ds, splits.train, chunk_size=cfg.chunk_size),
        "iau_fast": fast,
        "iau_slow": slow,
    }, cfg.repeats, ds.device)
    # the methods' own clocks (update only) agree with the outer ones; report the outer medians
    diff = max(float((a - b).detach().abs().max()) for a, b in zip(results["fast"].model.parameters(),
                                                          results["slow"].model.parameters(), strict=True))

    forget_file = work / "forget_ids.txt"
    forget_file.write_text("\n".join(str(int(i)) for i in forget) + "\n")
    mem_fast = _peak_rss(model_dir, forget_file, work / "unlearned_fast", slow=False, chunk_size=cfg.chunk_size,
                         device=ds.device)
    mem_slow = _peak_rss(model_dir, forget_file, work / "unlearned_slow", slow=True, chunk_size=cfg.chunk_size,
                         device=ds.device)
    shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in {**t, **epochs}.items()}
    summary = {
        "n_train": len(splits.train), "n_forget": len(forget),
        "recipe": {"gr_grad": cfg.gr_grad, "batch_size": cfg.batch_size, "device": str(ds.device),
                   "data_placement": ds.placement},
        "seconds": {**med, "retrain": retrained.seconds, "train": trained.seconds,
                    "cache_refresh": cache_seconds},
        "raw_seconds": {**t, **epochs},
        "epochs": {"train": trained.epochs_run, "retrain": retrained.epochs_run},
        "ratios": {
            "fast_over_fwd_bwd_forget": med["iau_fast"] / med["fwd_bwd_forget"],
            "retrain_over_fast": retrained.seconds / med["iau_fast"],
            "slow_over_fwd_bwd_train": med["iau_slow"] / med["fwd_bwd_train"],
            "gr_exact_over_plain_epoch": med["gr_exact"] / med["plain"],
            "gr_fd_over_plain_epoch": med["gr_fd"] / med["plain"],
        },
        "fast_vs_slow_max_abs_weight_diff": diff,
        "memory": {"fast": mem_fast, "slow": mem_slow},
        "accuracy": {"test_trained": accuracy(model, ds, splits.test),
                     "test_retrained": accuracy(retrained.model, ds, splits.test),
                     "test_unlearned": accuracy(results["fast"].model, ds, splits.test)},
    }
    targets = {
        "fast ≤ 1.5× fwd+bwd over D_f": summary["ratios"]["fast_over_fwd_bwd_forget"] <= 1.5,
        "fast ≥ 500× faster than retrain": summary["ratios"]["retrain_over_fast"] >= 500,
        "slow ≤ 1.2× fwd+bwd over D": summary["ratios"]["slow_over_fwd_bwd_train"] <= 1.2,
        "peak RSS of unlearn < 2 GiB": max(mem_fast["peak_rss_mib"], mem_slow["peak_rss_mib"]) < 2048,
        "GR (exact) epoch ≤ 2.0× plain": summary["ratios"]["gr_exact_over_plain_epoch"] <= 2.0,
        "GR (fd) epoch ≤ 2.0× plain": summary["ratios"]["gr_fd_over_plain_epoch"] <= 2.0,
    }
    if ds.device.type == "cuda":  # issue 14's GPU targets (ResNet18, CIFAR-10, 5% forgotten)
        targets["GPU: IAU fast path ≤ 0.25 s"] = med["iau_fast"] <= 0.25
        targets["GPU: cache refresh ≤ 2.5 s"] = cache_seconds <= 2.5
        targets["GPU: retrain ≥ 100× the fast path"] = summary["ratios"]["retrain_over_fast"] >= 100
    summary["targets_met"] = targets
    _plot(out / "speed.png", med, retrained.seconds)
    return write_results(out, device=ds.device, placement=ds.placement,
                         suite=f"speed ({cfg.dataset}/{cfg.arch})", command=_command(cfg, out),
                         config=asdict(cfg), results={"summary": summary, "rows": []},
                         markdown=_markdown(summary))


def _command(cfg: SpeedConfig, out: Path) -> str:
    suite = {"lenet5": "speed", "resnet18": "speed-resnet18"}[cfg.arch] if cfg.dataset == "cifar10" else "speed-quick"
    return bench_command(suite, out)


def _markdown(s: dict[str, Any]) -> str:
    sec, r, mem = s["seconds"], s["ratios"], s["memory"]
    lines = [
        f"|D| = {s['n_train']}, |D_f| = {s['n_forget']}; medians of interleaved repeats.", "",
        "| measurement | seconds |", "|---|---:|",
        f"| one fwd+bwd over D_f | {sec['fwd_bwd_forget']:.4f} |",
        f"| IAU fast path (cache) | {sec['iau_fast']:.4f} |",
        f"| one fwd+bwd over D | {sec['fwd_bwd_train']:.4f} |",
        f"| IAU slow path | {sec['iau_slow']:.4f} |",
        f"| gradient-cache refresh | {sec['cache_refresh']:.4f} |",
        f"| epoch, plain | {sec['plain']:.2f} |",
        f"| epoch, GR exact (double backprop) | {sec['gr_exact']:.2f} |",
        f"| epoch, GR fd (finite-difference HVP) | {sec['gr_fd']:.2f} |",
        f"| full retrain on D_r (GR {s['recipe']['gr_grad']}, batch {s['recipe']['batch_size']}, "
        f"{s['epochs']['retrain']} epochs) | {sec['retrain']:.1f} |", "",
        "| ratio | value | target | met |", "|---|---:|---|---|",
        f"| fast / fwd+bwd(D_f) | {r['fast_over_fwd_bwd_forget']:.2f} | ≤ 1.5 | "
        f"{s['targets_met']['fast ≤ 1.5× fwd+bwd over D_f']} |",
        f"| retrain / fast | {r['retrain_over_fast']:.0f} | ≥ 500 | "
        f"{s['targets_met']['fast ≥ 500× faster than retrain']} |",
        f"| slow / fwd+bwd(D) | {r['slow_over_fwd_bwd_train']:.2f} | ≤ 1.2 | "
        f"{s['targets_met']['slow ≤ 1.2× fwd+bwd over D']} |",
        f"| GR exact / plain epoch | {r['gr_exact_over_plain_epoch']:.2f} | ≤ 2.0 | "
        f"{s['targets_met']['GR (exact) epoch ≤ 2.0× plain']} |",
        f"| GR fd / plain epoch | {r['gr_fd_over_plain_epoch']:.2f} | ≤ 2.0 | "
        f"{s['targets_met']['GR (fd) epoch ≤ 2.0× plain']} |",
        *[f"| {name} | | | {met} |" for name, met in s["targets_met"].items() if name.startswith("GPU")], "",
        f"Device {s['recipe']['device']}, data {s['recipe']['data_placement']}.",
        f"Peak RSS of `unlearnd unlearn` (whole process, dataset included): fast path "
        f"{mem['fast']['peak_rss_mib']:.0f} MiB, slow path {mem['slow']['peak_rss_mib']:.0f} MiB.",
        f"Fast vs slow path, max |Δθ_u| = {s['fast_vs_slow_max_abs_weight_diff']:.2e}.",
        "Test accuracy: trained {test_trained:.4f}, retrained {test_retrained:.4f}, "
        "unlearned {test_unlearned:.4f}.".format(**s["accuracy"]),
    ]
    return "\n".join(lines)


def _plot(path: Path, med: dict[str, float], retrain: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["fwd_bwd_forget", "iau_fast", "fwd_bwd_train", "iau_slow", "plain", "gr_exact", "gr_fd"]
    labels = ["fwd+bwd D_f", "IAU fast", "fwd+bwd D", "IAU slow", "epoch plain", "epoch GR exact", "epoch GR fd",
              "retrain"]
    values = [med[n] for n in names] + [retrain]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.barh(labels, values, color=["C0", "C0", "C1", "C1", "C2", "C2", "C2", "C3"])
    ax.set_xscale("log")
    ax.set_xlabel("seconds (log scale)")
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.3g}s", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


RESNET18 = SpeedConfig(arch="resnet18", max_epochs=15, patience=3, epoch_repeats=2, repeats=5, batch_size=128,
                       gr_grad="fd")
QUICK = SpeedConfig(dataset="digits", max_epochs=5, patience=3, epoch_repeats=1, repeats=2)
SUITES.register("speed")(Suite("CIFAR-10/LeNet5: fast & slow path, retrain, GR epoch cost, peak memory",
                               bind(run_speed, SpeedConfig(), fixed_seeds=True)))
SUITES.register("speed-resnet18")(Suite("ResNet18/CIFAR-10 on a GPU: the speed suite with batch 128, GR by fd, "
                                        "≤ 15 epochs", bind(run_speed, RESNET18, fixed_seeds=True)))
SUITES.register("speed-quick")(Suite("the speed suite on digits in well under a minute (for tests)",
                                     bind(run_speed, QUICK, fixed_seeds=True)))
