"""Table II suites: every method against Retrain on MU, Time, UE, with mean ± std over seeds.

MU = |test acc(method) − test acc(retrain)|, UE = |MIA member rate on D_f (method) − (retrain)|,
both in points (UE with the paper's Shokri attack); UE_lira = |D_f's flagged rate at 5% FPR under
the membership verifier (method) − (retrain)|, beside D_f's set-level AUC against non-members and
the KS distance of its p-values from uniform; Time in seconds of the unlearning step. Avg rank:
the mean of each method's ranks on mean MU, Time and UE among the compared methods (Retrain excluded). IAU starts from
the GR-trained θ*, every other method from the plainly trained θ* (as in the paper).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from app.ml.bench.context import ExperimentConfig, SeedContext, evaluate_model, prepare
from app.ml.bench.report import bench_command, fmt_pm, mean_std, write_results
from app.ml.bench.suites import SUITES, Suite, bind
from app.ml.data.formats import load_dataset
from app.ml.forgetting.methods import run_method

METHOD_ORDER = ("retrain", "iau", "fisher", "amnesiac", "bad_teaching", "unrolling", "finetune", "gradient_ascent")


@dataclass(frozen=True)
class TableConfig:
    name: str
    experiment: ExperimentConfig
    seeds: int = 3
    methods: tuple[str, ...] = METHOD_ORDER
    # IAU rows: (row name, α of the θ* it starts from (None: the experiment's α), IAU params)
    iau_variants: tuple[tuple[str, float | None, dict[str, Any]], ...] = (("iau", None, {}),)
    paper: dict[str, dict[str, float]] = field(default_factory=dict)  # the paper's numbers, for the md


def run_seed(cfg: TableConfig, ctx: SeedContext) -> list[dict[str, Any]]:
    rows = []
    retrain_metrics = evaluate_model(ctx, ctx.retrain.model)
    for method in cfg.methods:
        if method == "retrain":  # trained once in prepare(); the gold standard every MU/UE compares to
            rows.append(_row(method, ctx.seed, retrain_metrics, retrain_metrics, ctx.retrain_seconds, {}))
            continue
        variants = cfg.iau_variants if method == "iau" else ((method, 0.0, {}),)
        for name, alpha, params in variants:
            # only IAU has a fast path to feed: the others get no cache
            task = ctx.task(ctx.cfg.alpha if alpha is None else alpha, with_cache=method == "iau")
            res = run_method(method, task, params)
            rows.append(_row(name, ctx.seed, evaluate_model(ctx, res.model), retrain_metrics, res.time_s,
                             {**res.params, **res.info, "alpha": task.train_cfg.alpha if task.train_cfg else None}))
    for alpha, trained in ctx.models.items():  # the models before unlearning, for reference
        rows.append(_row(f"original (α={alpha})", ctx.seed, evaluate_model(ctx, trained.model), retrain_metrics,
                         trained.seconds, {}))
    return rows


def _row(name: str, seed: int, metrics: dict[str, float], gold: dict[str, float], seconds: float,
         params: dict[str, Any]) -> dict[str, Any]:
    return {"method": name, "seed": seed, "time_s": seconds, **metrics,
            "MU": abs(metrics["test_acc"] - gold["test_acc"]), "UE": abs(metrics["mia_forget"] - gold["mia_forget"]),
            "UE_lira": abs(metrics["lira_flagged"] - gold["lira_flagged"]), "params": params}


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    names = list(dict.fromkeys(r["method"] for r in rows))
    keys = ("MU", "UE", "UE_lira", "time_s", "test_acc", "forget_acc", "retain_acc", "mia_forget", "lira_flagged",
            "lira_auc", "lira_ks")
    summary = []
    for name in names:
        mine = [r for r in rows if r["method"] == name]
        entry: dict[str, Any] = {"method": name, "n_seeds": len(mine)}
        for k in keys:
            m, s = mean_std([r[k] for r in mine])
            entry[k], entry[f"{k}_std"] = m, s
        summary.append(entry)
    ranked = [e for e in summary if e["method"] != "retrain" and not e["method"].startswith("original")]
    for key in ("MU", "time_s", "UE"):
        order = sorted(ranked, key=lambda e: e[key])
        for rank, e in enumerate(order, 1):
            e[f"rank_{key}"] = rank
    for e in ranked:
        e["avg_rank"] = statistics.fmean([e["rank_MU"], e["rank_time_s"], e["rank_UE"]])
    return summary


def _markdown(cfg: TableConfig, rows: list[dict[str, Any]], summary: list[dict[str, Any]],
              attack: list[dict[str, float]], power: list[dict[str, Any]]) -> str:
    seeds = sorted({r["seed"] for r in rows})
    how = "at random" if cfg.experiment.forget == "random" else "as the IsolationForest's most anomalous"
    lines = [f"{cfg.experiment.dataset} / {cfg.experiment.arch}, forget {cfg.experiment.forget_frac:.0%} {how}, "
             f"seeds {seeds}; mean ± std over seeds. MU, UE and accuracies in points, Time in seconds.", "",
             "| method | MU ↓ | Time (s) ↓ | UE ↓ | Avg rank ↓ | test acc | forget acc | retain acc | MIA on D_f "
             "| D_f flagged @5% | UE_lira ↓ | D_f set AUC | D_f p (member) | KS |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in summary:
        mine = [r for r in rows if r["method"] == e["method"]]
        cells = [fmt_pm([r[k] for r in mine]) for k in ("MU", "time_s", "UE")]
        rank = f"{e['avg_rank']:.2f}" if "avg_rank" in e else "—"
        accs = [fmt_pm([r[k] for r in mine], 1) for k in ("test_acc", "forget_acc", "retain_acc", "mia_forget",
                                                           "lira_flagged", "UE_lira")]
        lira = [fmt_pm([r["lira_auc"] for r in mine], 3), " / ".join(f"{r['lira_p']:.1e}" for r in mine),
                fmt_pm([r["lira_ks"] for r in mine], 3)]
        lines.append(f"| {e['method']} | {' | '.join(cells)} | {rank} | {' | '.join(accs)} | {' | '.join(lira)} |")
    ba = [a["balanced_accuracy"] for a in attack]
    auc = [a["auc"] for a in attack]
    lines += ["", f"Membership attack ({cfg.experiment.attack} features, 3 shadows) on the plain θ*, held-out "
              f"members vs test non-members: balanced accuracy {fmt_pm([100 * b for b in ba], 1)} %, "
              f"AUC {fmt_pm(auc, 3)}. Near 50 % / 0.5, UE differences are mostly noise."]
    lines += ["", power_table(power), "",
              "D_f p (member): the set-level Mann-Whitney p-value of D_f against held-out non-members, per seed; "
              "below 0.01 the verifier still sees D_f as members."]
    if cfg.paper:
        lines += ["", "The paper's Table II for this setting:", "", "| method | MU | Time (s) | UE |",
                  "|---|---|---|---|"]
        lines += [f"| {m} | {v.get('MU', '—')} | {v.get('time_s', '—')} | {v.get('UE', '—')} |"
                  for m, v in cfg.paper.items()]
    return "\n".join(lines)


def power_table(power: list[dict[str, Any]]) -> str:
    """The verifier's power on each θ*, next to the Shokri attack's on the same samples, mean ± std over seeds."""
    k = power[0]["verifier"].get("K")
    lines = [f"Membership power on held-out members vs test non-members (verifier: offline LiRA, K={k} references "
             "on the shadow split; same samples and calibration for the Shokri attack):", "",
             "| scorer | AUC | TPR@1%FPR | TPR@5%FPR | FPR@5% (evaluation non-members) | min. detectable batch |",
             "|---|---|---|---|---|---|"]
    for name in power[0]["by_model"]:
        ps = [p["by_model"][name] for p in power]
        mdb = " / ".join(str(p["min_detectable_batch"]) for p in ps)
        label = name if name.startswith("shokri") else f"LiRA on {name}"
        lines.append(f"| {label} | {fmt_pm([p['auc'] for p in ps], 3)} "
                     f"| {fmt_pm([100 * p['tpr@0.01']['rate'] for p in ps], 2)} % "
                     f"| {fmt_pm([100 * p['tpr@0.05']['rate'] for p in ps], 2)} % "
                     f"| {fmt_pm([100 * p['fpr@0.05']['rate'] for p in ps], 2)} % | {mdb} |")
    return "\n".join(lines)


def _plot(path: Path, summary: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = [e for e in summary if not e["method"].startswith("original")]
    times = np.array([max(e["time_s"], 1e-3) for e in entries])
    sizes = 30 + 300 * (np.log10(times) - np.log10(times).min() + 0.1) / (np.ptp(np.log10(times)) + 0.1)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for e, size in zip(entries, sizes, strict=True):
        ax.errorbar(e["MU"], e["UE"], xerr=e["MU_std"], yerr=e["UE_std"], fmt="none", ecolor="0.7", zorder=1)
        ax.scatter(e["MU"], e["UE"], s=size, zorder=2, alpha=0.8)
        ax.annotate(f"{e['method']} ({e['time_s']:.2g}s)", (e["MU"], e["UE"]), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("MU: |test acc − retrain| (points) ↓")
    ax.set_ylabel("UE: |MIA rate on D_f − retrain| (points) ↓")
    ax.set_title("unlearning quality; marker size = time (log)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_table(cfg: TableConfig, *, out: Path, data_dir: Path | None, data_path: Path | None,
              device: str = "cpu", seeds: int | None = None, progress: bool = True) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    n_seeds = seeds or cfg.seeds
    ds = load_dataset(cfg.experiment.dataset, path=data_path, data_dir=data_dir, device=device)
    rows: list[dict[str, Any]] = []
    attack: list[dict[str, float]] = []
    power: list[dict[str, Any]] = []
    for seed in range(n_seeds):
        ctx = prepare(cfg.experiment, ds, seed, progress=progress)
        attack.append({"seed": seed, **ctx.attack_eval})
        power.append({"seed": seed, "verifier": ctx.verifier.info, "by_model": ctx.info["power"]})
        rows += run_seed(cfg, ctx)
    summary = summarise(rows)
    _plot(out / "mu_ue.png", summary)
    command = bench_command(cfg.name, out, seeds)
    return write_results(out, device=ds.device, placement=ds.placement,
                         suite=cfg.name, command=command,
                         config={**asdict(cfg), "seeds": list(range(n_seeds))},
                         results={"rows": rows, "summary": summary, "attack": attack, "verifier_power": power},
                         markdown=_markdown(cfg, rows, summary, attack, power))


QUICK = TableConfig(name="quick", seeds=1, experiment=ExperimentConfig(dataset="digits", arch="lenet5"))
# IAU rows from docs/results/iau-sweep (validation split): the best GR configuration (α = 0.1,
# the paper's mean/sgd form) and the sweep's overall winner, IAU's defaults on the plain θ*.
CIFAR10_LENET5 = TableConfig(
    name="cifar10-lenet5", seeds=3, experiment=ExperimentConfig(dataset="cifar10", arch="lenet5", alpha=0.1),
    iau_variants=(("iau (GR α=0.1, mean/sgd η=0.3)", 0.1, {"reduction": "mean", "step": "sgd", "eta": 0.3}),
                  ("iau (α=0, defaults)", 0.0, {})),
    paper={"IAU": {"MU": 1.31, "time_s": 13, "UE": 5.21}, "Retrain": {"time_s": 414}},
)

# Paper Table V: forget the training set's IsolationForest outliers instead of a random subset.
OUTLIERS = replace(CIFAR10_LENET5, name="outliers", paper={},
                   experiment=replace(CIFAR10_LENET5.experiment, forget="outliers"))
OUTLIERS_QUICK = replace(QUICK, name="outliers-quick", experiment=replace(QUICK.experiment, forget="outliers"))
# Paper Tables II (ResNet18), IV (VGG19, CIFAR-100) and III (MLP, Purchase100): these need a GPU
# (hours per seed on 2 CPU cores) and, for CIFAR-100 and Purchase100, data we do not have here;
# the tests run each config end to end on a tiny file of the same format (smoke()).
TABLE2_RESNET18 = TableConfig(name="table2-resnet18", experiment=ExperimentConfig("cifar10", "resnet18"),
                              paper={"IAU": {"MU": 0.42, "time_s": 19, "UE": 20.10}, "Retrain": {"time_s": 424}})
# The device check's share of Table II (scripts/gpu_check.sh): minutes on one GPU, so fewer epochs (the
# issue's reference: 15 plain epochs reach test 0.79), batch 128, GR by the fd HVP, two LiRA references.
TABLE2_RESNET18_CHECK = replace(TABLE2_RESNET18, name="table2-resnet18-check", seeds=1, experiment=replace(
    TABLE2_RESNET18.experiment, max_epochs=12, patience=3, batch_size=128, gr_grad="fd", verify_refs=2))
TABLE4_VGG19 = TableConfig(name="table4-vgg19-cifar100", experiment=ExperimentConfig("cifar100", "vgg19"))
TABLE3_MLP = TableConfig(name="table3-mlp-purchase100", experiment=ExperimentConfig("purchase100", "mlp"))

SUITES.register("quick")(Suite("digits, every method, one seed (minutes on 2 cores)", bind(run_table, QUICK)))
SUITES.register("outliers")(Suite("Table V: forget IsolationForest outliers, CIFAR-10 LeNet5, 3 seeds",
                                  bind(run_table, OUTLIERS)))
SUITES.register("outliers-quick")(Suite("Table V setting on digits, one seed", bind(run_table, OUTLIERS_QUICK)))
SUITES.register("table2-resnet18")(Suite("Table II ResNet18/CIFAR-10 (needs a GPU)", bind(run_table, TABLE2_RESNET18)))
SUITES.register("table2-resnet18-check")(Suite("Table II ResNet18/CIFAR-10, one seed, ≤ 12 epochs (the GPU check)",
                                               bind(run_table, TABLE2_RESNET18_CHECK)))
SUITES.register("table4-vgg19-cifar100")(Suite("Table IV VGG19/CIFAR-100 (needs a GPU and the data)",
                                               bind(run_table, TABLE4_VGG19)))
SUITES.register("table3-mlp-purchase100")(Suite("Table III MLP/Purchase100 (needs the data)",
                                                bind(run_table, TABLE3_MLP)))
SUITES.register("cifar10-lenet5")(Suite("the paper's Table II LeNet5/CIFAR-10 setting, 3 seeds",
                                        bind(run_table, CIFAR10_LENET5)))


def tiny(name: str = "tiny") -> TableConfig:
    """A seconds-long configuration for tests."""
    return smoke(QUICK, name=name)


def smoke(cfg: TableConfig, name: str | None = None, epochs: int = 4) -> TableConfig:
    """CFG cut to one seed and a few epochs: runs end to end on CPU in seconds on a tiny file."""
    return replace(cfg, name=name or f"{cfg.name}-smoke", seeds=1,
                   experiment=replace(cfg.experiment, max_epochs=epochs, patience=2))
