"""Suite `forgetting` (issue 13): does each fast method forget like retrain, at what accuracy and speed?

Per seed, on one θ* (the experiment's recipe): a random D_f, the gold-standard retrain on D_r, the
membership verifier, the calibration the service would run at publication (app.ml.forgetting.calibrate), then
every fast method and the calibrated choice through the forgetting policy, all on the same D_f.
Columns: test / forget accuracy and MU against retrain; Shokri UE; the verifier's flagged rate,
UE_lira, set AUC and KS; the share of the membership gap closed, (AUC θ* − AUC method) / (AUC θ* −
AUC retrain); time and the speed-up against the retrain timed in the same run. Plus the chained
scenario: 20 successive deletions through the policy with the calibrated setting, per step the
held-out accuracy, the method that served and the verdict.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.ml.bench.context import ExperimentConfig, SeedContext, evaluate_model, prepare
from app.ml.bench.mia.svc_efficacy import mia_efficacy
from app.ml.bench.report import bench_command, fmt_pm, summary_rows, write_results
from app.ml.bench.suites import SUITES, Suite, bind
from app.ml.common.hashing import weights_sha256
from app.ml.data.formats import load_dataset
from app.ml.forgetting.calibrate import CANDIDATES, CalibrationConfig, calibrate
from app.ml.forgetting.job import forget_version
from app.ml.forgetting.methods import run_method
from app.ml.forgetting.policy import Budget, PolicyOptions, with_model
from app.ml.training.metrics import accuracy

FAST = (("iau (paper: one step)", "iau", {}), ("out_match (ceiling)", "out_match", {}),
        ("out_match (shift)", "out_match", {"target": "shift"}), ("finetune", "finetune", {}),
        ("gradient_ascent", "gradient_ascent", {}))
CALIBRATED = "calibrated (policy)"
PEER_METHODS = ("scrub", "salun", "l1_sparse", "neggrad_plus", "amun")


@dataclass(frozen=True)
class ForgettingConfig:
    name: str
    experiment: ExperimentConfig
    seeds: int = 3
    chain: int = 20
    chain_sizes: tuple[float, ...] = (10, 0.005)  # ≥ 1: ids per deletion; < 1: share of the training set
    max_accuracy_drop: float = 0.01
    exact_max_accuracy_drop: float = 0.05
    target_alpha: float = 0.0  # which trained θ* the rows forget from: the plain one, or the experiment's GR one


ACCEPT = PolicyOptions(on_partial="accept")


def _evaluate(ctx: SeedContext, model: Any) -> dict[str, float]:
    """evaluate_model's columns, plus the SalUn protocol's MIA-efficacy (points) and whether the weights are
    finite (a peer at its authors' step size can diverge on another model)."""
    finite = all(bool(torch.isfinite(v).all()) for v in model.state_dict().values() if v.is_floating_point())
    return {**evaluate_model(ctx, model), "finite": float(finite), "mia_efficacy": 100 * mia_efficacy(
        model, ctx.ds, retain=ctx.retain, test=ctx.splits.test, forget=ctx.forget, seed=ctx.seed)}


def run_seed(cfg: ForgettingConfig, ctx: SeedContext) -> dict[str, Any]:
    task = replace(ctx.task(cfg.target_alpha), verifier=ctx.verifier)
    hold = ctx.splits.holdout(10000)
    gold = _evaluate(ctx, ctx.retrain.model)
    start = _evaluate(ctx, task.model)
    rows = [_row("θ*", start, start, gold, ctx, None), _row("retrain", gold, start, gold, ctx, ctx.retrain_seconds)]
    for name, method, params in FAST:
        res = run_method(method, task, params)
        rows.append(_row(name, _evaluate(ctx, res.model), start, gold, ctx, res.time_s, res.params))
    for cand in CANDIDATES:  # every setting calibration weighs, on this D_f and against this retrain
        res = run_method(cand.method, task, cand.params)
        rows.append(_row(label(cand.to_dict()), _evaluate(ctx, res.model), start, gold, ctx, res.time_s,
                         res.params))
    cal = calibrate(task, hold, ctx.models[cfg.target_alpha].seconds,
                    CalibrationConfig(max_accuracy_drop=cfg.max_accuracy_drop, seed=ctx.seed))
    for peer in PEER_METHODS:  # the field's methods at their authors' defaults, and tuned by calibration's rule
        res = run_method(peer, task, {})
        rows.append(_row(f"{peer} (paper defaults)", _evaluate(ctx, res.model), start, gold, ctx, res.time_s,
                         res.params))
        tuned, qualified = best_setting(cal, peer)
        res = run_method(peer, task, tuned["params"])
        rows.append({**_row(f"{peer} (tuned)", _evaluate(ctx, res.model), start, gold, ctx, res.time_s,
                            res.params), "qualified": qualified})
    acc0 = accuracy(task.model, ctx.ds, hold)
    # as the service runs it: a fast result within the budget, an exact retrain only guarded against a broken run
    budget = Budget.below(acc0, max_drop=cfg.max_accuracy_drop, exact_max_drop=cfg.exact_max_accuracy_drop)
    done = forget_version(task, cal, hold, budget, options=ACCEPT, holdout_acc_before=acc0)
    if done.model is None:
        raise RuntimeError(f"the policy kept no model for the 5% deletion: {done.record.problem}")
    rows.append(_row(CALIBRATED, _evaluate(ctx, done.model), start, gold, ctx, done.record.time_s,
                     {**done.record.to_payload(), "verification": None}))
    chains = [_chain(cfg, ctx, task, hold, cal, budget, size) for size in cfg.chain_sizes]
    # the whole calibration, its per-size trials included: a choice that differs between runs is read from them
    return {"seed": ctx.seed, "rows": rows, "calibration": cal, "chains": chains,
            "retrain_seconds": ctx.retrain_seconds}


def _row(name: str, m: dict[str, float], start: dict[str, float], gold: dict[str, float], ctx: SeedContext,
         seconds: float | None, params: dict[str, Any] | None = None) -> dict[str, Any]:
    gap = start["lira_auc"] - gold["lira_auc"]
    return {"method": name, "seed": ctx.seed, **m, "time_s": seconds,
            "speedup": ctx.retrain_seconds / seconds if seconds else None,
            "MU": abs(m["test_acc"] - gold["test_acc"]), "UE": abs(m["mia_forget"] - gold["mia_forget"]),
            "UE_lira": abs(m["lira_flagged"] - gold["lira_flagged"]),
            "gap_closed": (start["lira_auc"] - m["lira_auc"]) / gap if gap > 0 else float("nan"),
            # how far D_f's accuracy and loss moved from θ*'s toward the retrain's (1: there)
            "acc_gap_closed": _closed(m, start, gold, "forget_acc"),
            "loss_gap_closed": _closed(m, start, gold, "forget_loss"),
            # SalUn's protocol (weak: an SVC on confidence), for comparison with papers
            "salun_gap": float(np.mean([abs(m[k] - gold[k]) for k in ("retain_acc", "forget_acc", "test_acc",
                                                                       "mia_efficacy")])),
            "params": params or {}}


def _closed(m: dict[str, float], start: dict[str, float], gold: dict[str, float], key: str) -> float:
    gap = gold[key] - start[key]
    return (m[key] - start[key]) / gap if gap != 0 else float("nan")


def best_setting(cal: dict[str, Any], method: str) -> tuple[dict[str, Any], bool]:
    """METHOD's best setting by calibration's own rule (score where the verifier can measure, else the smallest
    accuracy cost), and whether it qualified; the best-scoring one when none did."""
    regime = "large" if cal["measurable"] else "small"
    mine = [x for x in cal["candidates"] if x["setting"]["method"] == method and x[regime] is not None]
    ok = [x for x in mine if x[regime]["qualifies"]]
    pool = ok or [x for x in mine if x[regime]["score"] is not None] or mine
    best = max(pool, key=lambda x: (x[regime]["score"] if x[regime]["score"] is not None else -1e9,
                                    -x[regime]["time_s"]))
    return best["setting"], bool(ok)


def _chain(cfg: ForgettingConfig, ctx: SeedContext, task: Any, hold: np.ndarray, cal: dict[str, Any],
           budget: Budget, size: float) -> dict[str, Any]:
    rng = np.random.default_rng(1000 + ctx.seed)
    n = int(size) if size >= 1 else max(1, round(size * len(task.train_ids)))
    model, train, steps = task.model, np.asarray(task.train_ids), []
    acc0 = accuracy(model, ctx.ds, hold)
    for k in range(cfg.chain):
        ids = np.sort(rng.choice(train, n, replace=False))
        step = with_model(task, model, train_ids=train, forget_ids=ids,
                          weights_sha256=weights_sha256(model.state_dict()))
        done = forget_version(step, cal, hold, budget, options=ACCEPT, holdout_acc_before=float("nan"))
        r = done.record
        steps.append({"k": k + 1, "holdout_acc": r.holdout_acc_after, "method": r.method, "exact": r.exact,
                      "verdict": str(r.verdict), "gap_closed": r.verification.get("gap_closed"), "time_s": r.time_s,
                      "escalated": any(a.get("escalation") for a in r.attempts),
                      "memorised": any(a.get("memorised") for a in r.attempts),
                      "tries": len(r.attempts), "failed": r.problem})
        if done.model is None:  # the service fails such a batch and keeps serving the previous version
            steps[-1]["holdout_acc"] = accuracy(model, ctx.ds, hold)
            continue
        model, train = done.model, np.setdiff1d(train, ids)
    return {"size": n, "holdout_acc_start": acc0, "steps": steps,
            "max_drop": acc0 - min(s["holdout_acc"] for s in steps)}


KEYS = ("test_acc", "forget_acc", "forget_loss", "acc_gap_closed", "loss_gap_closed",
        "MU", "UE", "lira_flagged", "UE_lira", "lira_auc", "lira_ks", "gap_closed",
        "salun_gap", "mia_efficacy", "time_s", "speedup")


def summarise(per_seed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return summary_rows([r for s in per_seed for r in s["rows"]], KEYS)


def _caveats(mine: list[dict[str, Any]]) -> str:
    """What a row's mean hides: seeds on which it diverged, or on which no tuned setting qualified."""
    n, notes = len(mine), []
    if diverged := sum(not r.get("finite", 1.0) for r in mine):
        notes.append(f"diverged on {diverged}/{n}")
    if "qualified" in mine[0]:
        notes.append(f"qualified on {sum(bool(r['qualified']) for r in mine)}/{n}")
    return f" ({'; '.join(notes)})" if notes else ""


def _markdown(cfg: ForgettingConfig, per_seed: list[dict[str, Any]]) -> str:
    x = cfg.experiment
    rows = [r for s in per_seed for r in s["rows"]]
    lines = [f"{x.dataset} / {x.arch} (α = {x.alpha}), forget {x.forget_frac:.0%} at random, seeds "
             f"{[s['seed'] for s in per_seed]}; mean ± std over seeds. Accuracies, MU, UE and flagged rates in points; "
             f"gap closed = (AUC θ* − AUC method) / (AUC θ* − AUC retrain) on D_f's set AUC against non-members "
             f"(1 = retrain's level, > 1 past it); speed-up = retrain's seconds / the method's, same run. "
             "SalUn gap: the SalUn protocol's average gap to retrain, mean of |Δ retain acc|, |Δ forget acc|, "
             "|Δ test acc| and |Δ MIA-efficacy| (an SVC on the model's confidence, fitted on its retain and test "
             "outputs: a weak attack, for comparison with papers only). Peers: at their authors' defaults, and tuned "
             "(the best of six settings by calibration's own rule on this seed's simulated deletions).", "",
             "Forget acc / loss gap: the share of the way from θ*'s forget-set accuracy (mean loss) to the retrain's "
             "that the method moved it (1 = retrain's).", "",
             "| method | test acc | forget acc | forget loss | forget acc gap | forget loss gap | MU ↓ | UE (Shokri) "
             "| D_f flagged @5% | UE_lira ↓ | D_f set AUC | KS "
             "| gap closed ↑ | SalUn gap (weak) ↓ | MIA-eff. | time (s) | speed-up |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == name]
        cell = [fmt_pm([r[k] for r in mine], d) for k, d in (("test_acc", 2), ("forget_acc", 2), ("forget_loss", 3),
                                                            ("acc_gap_closed", 2), ("loss_gap_closed", 2),
                                                            ("MU", 2), ("UE", 2),
                                                            ("lira_flagged", 1), ("UE_lira", 1), ("lira_auc", 3),
                                                            ("lira_ks", 3), ("gap_closed", 2), ("salun_gap", 2),
                                                            ("mia_efficacy", 1))]
        t = [r["time_s"] for r in mine if r["time_s"] is not None]
        sp = [r["speedup"] for r in mine if r["speedup"] is not None]
        cell += [fmt_pm(t, 2) if t else "—", f"{fmt_pm(sp, 0)}×" if sp and name != "retrain" else "—"]
        lines.append(f"| {name}{_caveats(mine)} | {' | '.join(cell)} |")
    lines += ["", "Calibration's choice per seed (budget: held-out accuracy within "
              f"{100 * cfg.max_accuracy_drop:g} point; chained {CalibrationConfig.chain} × 10 ids):", ""]
    for s in per_seed:
        c = s["calibration"]
        big = (f"batches ≥ {c['min_detectable_batch']} ids: **{_name(c['choice'])}**; smaller"
               if c["large_sizes"] else "no batch size measurable; every batch")
        lines.append(f"- seed {s['seed']}: {big}: **{_name(c['choice_small'])}** "
                     f"({c['why'] or 'both measured'}; {c['seconds']:.0f} s). "
                     "Candidates: " + "; ".join(
                         f"{x['setting']['method']} {x['setting']['params']} → " + ", ".join(
                             f"{k} {v['why'] or 'qualifies'} ({v['score']})" for k in ("large", "small")
                             if (v := x[k]) is not None) for x in c["candidates"]))
    if cfg.chain_sizes:
        lines += _chain_table(cfg, per_seed)
    return "\n".join(lines)


def _chain_table(cfg: ForgettingConfig, per_seed: list[dict[str, Any]]) -> list[str]:
    lines = ["", f"Chained deletions through the policy with the calibrated setting ({cfg.chain} steps; "
              "held-out accuracy drop from the start, worst step; verdicts over all steps; steps served by an exact "
              f"retrain, which only has to stay within {100 * cfg.exact_max_accuracy_drop:g} points; steps that "
              "failed, where the service keeps the previous version; no consolidation in between, unlike the "
              "service):",
              "", "| size | worst drop (points) | final drop (points) | verdicts | forgotten without a retrain "
              "| escalated steps | memorised steps | exact steps | failed steps |",
              "|---|---|---|---|---|---|---|---|---|"]
    for i in range(len(cfg.chain_sizes)):
        ch = [s["chains"][i] for s in per_seed]
        finals = [100 * (c["holdout_acc_start"] - c["steps"][-1]["holdout_acc"]) for c in ch]
        verdicts: dict[str, int] = {}
        for c in ch:
            for st in c["steps"]:
                verdicts[st["verdict"]] = verdicts.get(st["verdict"], 0) + 1
        steps = [st for c in ch for st in c["steps"]]
        exact = sum(st["exact"] for st in steps)
        failed = sum(bool(st["failed"]) for st in steps)
        fast_forgotten = sum(st["verdict"] == "forgotten" and not st["exact"] for st in steps)
        escalated = sum(bool(st.get("escalated")) for st in steps)
        memorised = sum(bool(st.get("memorised")) for st in steps)
        said = ", ".join(f"{k} {v}" for k, v in sorted(verdicts.items()))
        lines.append(f"| {ch[0]['size']} ids | {fmt_pm([100 * c['max_drop'] for c in ch])} | {fmt_pm(finals)} | "
                     f"{said} | {fast_forgotten} / {len(steps)} | {escalated} | {memorised} | {exact} / {len(steps)} | "
                     f"{failed} |")
    return lines


def _name(setting: dict[str, Any] | None) -> str:
    return f"{setting['method']} {setting['params']}" if setting else "exact retrain"


def label(setting: dict[str, Any]) -> str:
    """A candidate's row name: `cand. out_match target=shift,epochs=5,…`."""
    return f"cand. {setting['method']} " + ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                                     for k, v in setting["params"].items())


def plot(path: Path, per_seed: list[dict[str, Any]], title: str) -> None:
    """The frontier: gap closed against MU, each method's speed-up in its label; mean ± std over seeds. The
    field's methods are squares, the calibrated policy a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = [e for e in summarise(per_seed) if e["method"] != "θ*"]
    fig, ax = plt.subplots(figsize=(8.5, 6.0))
    for e in summary:
        peer = e["method"].split(" ")[0] in PEER_METHODS
        ax.errorbar(e["MU"], e["gap_closed"], xerr=e["MU_std"], yerr=e["gap_closed_std"], capsize=3,
                    fmt="*" if e["method"] == CALIBRATED else "s" if peer else "o",
                    markersize=13 if e["method"] == CALIBRATED else 6)
        speed = "" if e["method"] == "retrain" or np.isnan(e["speedup"]) else f" ({e['speedup']:.0f}×)"
        name = e["method"].replace("cand. ", "").replace("out_match", "om").replace("retain_weight", "rw")
        ax.annotate(name + speed, (e["MU"], e["gap_closed"]), textcoords="offset points", xytext=(5, 4),
                    fontsize=6)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.axhline(0.5, color="grey", lw=0.6, ls=":")
    ax.axvline(1.0, color="grey", lw=0.6, ls=":")
    ax.set_xlabel("MU: |test acc − retrain's| (points)")
    ax.set_ylabel("share of the membership gap closed")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def render(out: Path) -> None:
    """results.md and frontier.png again from OUT/results.json (its run's provenance kept): a change of
    presentation must not cost an hour of CPU."""
    doc = json.loads((out / "results.json").read_text())
    c = doc["config"]
    exp = {**c["experiment"], "extra_alphas": tuple(c["experiment"]["extra_alphas"])}
    cfg = ForgettingConfig(**{**c, "experiment": ExperimentConfig(**exp), "chain_sizes": tuple(c["chain_sizes"]),
                              "seeds": len(c["seeds"])})
    per_seed = doc["per_seed"]
    plot(out / "frontier.png", per_seed, _title(cfg, len(per_seed)))
    write_results(out, suite=doc["suite"], command=doc["command"], config=c,
                  results=_results(per_seed), markdown=_markdown(cfg, per_seed), prov=doc["provenance"])


def _title(cfg: ForgettingConfig, seeds: int) -> str:
    x = cfg.experiment
    return f"{x.dataset} / {x.arch}, {x.forget_frac:.0%} forgotten, {seeds} seeds"


def _results(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    return {"per_seed": per_seed, "summary": summarise(per_seed), "rows": [r for s in per_seed for r in s["rows"]]}


def run(cfg: ForgettingConfig, *, out: Path, seeds: int | None, data_dir: Path | None,
        data_path: Path | None, device: str = "cpu") -> dict[str, Any]:
    n = seeds or cfg.seeds
    ds = load_dataset(cfg.experiment.dataset, path=data_path, data_dir=data_dir, device=device)
    per_seed = [run_seed(cfg, prepare(cfg.experiment, ds, s, progress=False)) for s in range(n)]
    plot(out / "frontier.png", per_seed, _title(cfg, n))
    command = bench_command(cfg.name, out, seeds)
    return write_results(out, device=ds.device, placement=ds.placement,
                         suite=cfg.name, command=command, config={**asdict(cfg), "seeds": list(range(n))},
                         results=_results(per_seed),
                         markdown=_markdown(cfg, per_seed))


CONFIGS = (
    ForgettingConfig("forgetting-digits", ExperimentConfig("digits", "lenet5", alpha=0.0)),
    ForgettingConfig("forgetting-cifar10", ExperimentConfig("cifar10", "lenet5", alpha=0.0)),
    # the rows and the calibration (peers included) without the chained scenario (issue 25's run)
    ForgettingConfig("forgetting-cifar10-rows", ExperimentConfig("cifar10", "lenet5", alpha=0.0),
                     chain_sizes=()),
    # issue 34's third model: an MLP trained with GR α = 0.01, forgotten from its own θ* (rows only)
    ForgettingConfig("forgetting-digits-mlp", ExperimentConfig("digits", "mlp", alpha=0.01), target_alpha=0.01,
                     chain_sizes=()),
    # tests: a few epochs of everything, one chain of 5
    ForgettingConfig("forgetting-quick", ExperimentConfig("digits", "lenet5", alpha=0.0, max_epochs=4,
                                                          verify_refs=2), seeds=1, chain=3, chain_sizes=(10,)),
)
for _c in CONFIGS:
    SUITES.register(_c.name)(Suite(f"does each fast method forget like retrain: {_c.experiment.dataset} "
                                   f"{_c.experiment.arch}, {_c.seeds} seed(s), frontier PNG"
                                   + (", chained deletions" if _c.chain_sizes else ", no chains"), bind(run, _c)))


def _both(*, out: Path, seeds: int | None, data_dir: Path | None, data_path: Path | None,
          device: str = "cpu") -> dict[str, Any]:
    done = {}
    for c in CONFIGS[:2]:
        (out / c.experiment.dataset).mkdir(parents=True, exist_ok=True)
        done[c.experiment.dataset] = run(c, out=out / c.experiment.dataset, seeds=seeds, data_dir=data_dir,
                                         data_path=None, device=device)
    return {"rows": [r for d in done.values() for r in d["rows"]]}


SUITES.register("forgetting")(Suite("forgetting-digits then forgetting-cifar10, into OUT/digits and OUT/cifar10",
                                    _both))
