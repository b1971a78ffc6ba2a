"""Calibration at publication: which fast setting forgets best on *this* model within the budgets.

Simulated deletions of random training subsets at service-like sizes (10 ids, 1%, 5%) run every
candidate setting from θ*. Each of the policy's two steps is scored on what it answers for (RUM's split), by how
close it brings D_f to where a retrain would leave it (each part 1 − |1 − share of the gap closed|: overshooting
is over-forgetting):

- the *set-level step* (the choice), on the whole batch: the mean of *forget-set accuracy and loss*, against
  what a model that never saw D_f gives, predicted from the verifier's reference models
  (app/ml/forgetting/unseen.py), measurable at every size; and, where the verifier can judge a batch (at or
  above its minimum detectable size), *D_f's set AUC* against non-members, which the verdict's set test judges;
- the *per-sample step* (the escalation), on the few most member-like samples: the share of D_f flagged per
  sample at the verdict's FPR (the verdict's own test), which sees the memorised samples a set AUC averages
  away. Counted in the set-level score, it chose a step that clips the tail and leaves the bulk: on CIFAR-10
  LeNet5 the flagged share went past the FPR while the set AUC moved a fifth of the way (docs/forgetting.md).

Two regimes, split at the verifier's minimum detectable batch:

- *batches it can judge*: a candidate qualifies when, at those sizes, it keeps accuracy within the
  budget, does not push D_f below non-member level, runs within the time budget and removes membership
  signal; the best score wins, except that a setting three times slower must win by more than the two
  scores' noise (app/ml/forgetting/ranking.py);
- *smaller batches*: qualifiers at the small sizes, in the order above, are chained (20 deletions of 10 ids,
  each from the previous result), and the first that stays within the accuracy budget along the whole chain
  wins. Small deletions are what a service chains, and a step that costs a few tenths of a point is harmless
  once and fatal twenty times.

A regime with no winner takes the exact path (retrain per batch), and the record says why. Calibration also
names an *escalation*: the setting that removes the most per-sample signal within the budget on the smallest
judged set (it runs on a few samples, not on a whole batch), run once on
the samples a `partial` batch still has flagged before that batch waits for an exact retrain, and on the most
member-like samples (flagged under θ*) that a batch judged otherwise still has flagged (app/ml/forgetting/policy.py).

The candidates are generic settings of registered methods, not per-dataset numbers; what depends on the
model is the measurement, stored in meta.json with its evidence.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from app.errors import OverTimeBudget
from app.ml.common.hashing import weights_sha256
from app.ml.common.work import counting
from app.ml.forgetting.methods import run_method
from app.ml.forgetting.methods.base import UnlearnTask
from app.ml.forgetting.policy import OVER_FORGOTTEN_P, Setting, validate, with_model
from app.ml.forgetting.ranking import SLOWER, Z95, gap_se, ordered, score_noise
from app.ml.forgetting.unseen import Fit, closeness, fit_on, gaps_closed, predictions, references
from app.ml.training.metrics import accuracy
from app.ml.verify.report import flagged, gap_closed
from app.ml.verify.verdicts import PRIMARY_FPR

CANDIDATES = (  # docs/forgetting.md: how this grid was narrowed on CIFAR-10 LeNet5
    Setting("iau", {"eta": 1e-4}),
    Setting("iau", {"eta": 5e-4}),
    Setting("iau", {"eta": 2e-3}),
    Setting("out_match", {"target": "shift", "epochs": 5, "lr": 1e-3, "retain_weight": 10.0}),
    Setting("out_match", {"target": "shift", "epochs": 3, "lr": 2e-3, "retain_weight": 10.0}),
    Setting("out_match", {"target": "shift", "epochs": 2, "lr": 2e-3, "retain_weight": 10.0, "batch_size": 128}),
    Setting("out_match", {"target": "shift", "epochs": 5, "lr": 1e-3}),
    Setting("out_match", {"target": "ceiling", "epochs": 3, "lr": 3e-4, "retain_weight": 10.0}),
    Setting("out_match", {"target": "ceiling", "epochs": 3, "lr": 1e-3}),
    # the per-sample ceiling at its registered defaults: on a memorising model it brought a 10-id batch's flagged
    # share to the retrain's (docs/forgetting.md, "Small deletions on a model that memorises")
    Setting("out_match", {"target": "ceiling", "epochs": 5, "lr": 1e-3, "retain_weight": 3.0}),
    # shift moving only the last three parameterised layers, over the frozen front's features computed once: on
    # CIFAR-10 LeNet5 it closed as much as shift on every layer (docs/results/head-only-frozen). Its lr 3e-3 sibling
    # is not here: it forgot no more and cost twice the held-out accuracy per step (docs/results/chain-cost), which
    # a service chaining deletions pays at every step, and calibration's one draw per size could not tell them apart
    Setting("out_match", {"target": "shift", "epochs": 5, "lr": 1e-3, "retain_weight": 10.0, "train_last": 3}),
)


def _peer_grid(method: str, lr: float, length: dict[str, int], short: dict[str, int]) -> tuple[Setting, ...]:
    """A peer's search budget, the same size as out_match's six: its step size at a third, one and three
    times its authors' default, each at one epoch and at its authors' length. The short ones run first: when
    one of them is stopped at twice the time budget, its step-size siblings and the longer runs would be too
    (`_costs_at_least`)."""
    return tuple(Setting(method, {"lr": round(lr * f, 6), **n}) for n in (short, length) for f in (1 / 3, 1.0, 3.0))


# The field's methods (issue 25), tuned by the same rule on the same sets, within the same budgets: a peer that
# wins is chosen (docs/forgetting.md says who does).
PEERS = (
    *_peer_grid("scrub", 5e-4, {"epochs": 3, "max_steps": 2}, {"epochs": 1, "max_steps": 1}),
    *_peer_grid("salun", 0.013, {"epochs": 10}, {"epochs": 1}),
    *_peer_grid("l1_sparse", 0.01, {"epochs": 10}, {"epochs": 1}),
    *_peer_grid("neggrad_plus", 0.01, {"epochs": 5}, {"epochs": 1}),
    *_peer_grid("amun", 0.05, {"epochs": 10}, {"epochs": 1}),
)


# A trial is stopped at this multiple of the time budget. A run that slow is over the budget beyond any timing
# noise, so every setting that does at least its work is skipped; one that ends between 1× and 2× fails the
# budget but decides nothing for its siblings (a noisy host could have pushed it over).
OVERRUN = 2.0
LENGTH_KEYS = ("epochs", "max_steps")  # more of these costs more; the step size ("lr") costs nothing


def _costs_at_least(s: Setting, slow: Setting) -> bool:
    """Does S do at least the work of SLOW: the same method and options but the step size, and no fewer
    epochs or steps? Then S cannot run within a time budget that SLOW overran twice over."""
    if s.method != slow.method:
        return False
    rest = [k for k in {*s.params, *slow.params} if k != "lr" and k not in LENGTH_KEYS]
    if any(s.params.get(k) != slow.params.get(k) for k in rest):
        return False
    lengths = [k for k in LENGTH_KEYS if k in s.params or k in slow.params]
    if any(k not in s.params or k not in slow.params for k in lengths):  # a default on one side: unknown
        return False
    return all(s.params[k] >= slow.params[k] for k in lengths)


@dataclass(frozen=True)
class CalibrationConfig:
    max_accuracy_drop: float = 0.01  # held-out accuracy, absolute (0.01 = 1 point)
    max_time_frac: float = 0.1  # of the model's own training time: slower than that, retrain instead
    sizes: tuple[float, ...] = (10, 0.01, 0.05)  # ≥ 1: ids; < 1: share of the training set
    chain: int = 20
    chain_size: int = 10
    seed: int = 0


def _size(n_train: int, s: float) -> int:
    return max(1, min(n_train - 1, int(s) if s >= 1 else round(s * n_train)))


def calibrate(base: UnlearnTask, hold: np.ndarray, train_seconds: float, cfg: CalibrationConfig,
              candidates: tuple[Setting, ...] = CANDIDATES + PEERS, progress: bool = False) -> dict[str, Any]:
    """BASE: θ* with its training ids, verifier and (optional) gradient cache; forget_ids is ignored."""
    t0 = time.perf_counter()
    if base.verifier is None:
        return {"choice": None, "why": "the model has no membership verifier to measure forgetting with",
                "config": asdict(cfg)}
    rng = np.random.default_rng(cfg.seed)
    acc0 = accuracy(base.model, base.ds, hold)
    sizes = [_size(len(base.train_ids), s) for s in cfg.sizes]
    sets = [np.sort(rng.choice(base.train_ids, n, replace=False)) for n in sizes]
    before = [base.verifier.assess(base.model, base.ds, f) for f in sets]  # θ* on each set: once, not per candidate
    unseen = predictions(base.model, references(base.verifier, base.model), base.ds, sets, hold)
    if unseen is not None:
        before = [{**b, "fit": u} for b, u in zip(before, unseen, strict=True)]
    need = (base.verifier.power or {}).get("min_detectable_batch")
    budget = {"max_accuracy_drop": cfg.max_accuracy_drop, "holdout_acc": acc0, "n_holdout": len(hold),
              "train_seconds": train_seconds, "max_time_s": cfg.max_time_frac * train_seconds}
    small = [i for i, n in enumerate(sizes) if need is None or n < need]
    large = [i for i, n in enumerate(sizes) if i not in small]
    if progress:
        print(f"  calibrating {len(candidates)} settings on {len(sets)} simulated deletions ({sizes} ids; budget "
              f"{budget['max_time_s']:.1f} s each); θ* assessed in {time.perf_counter() - t0:.1f} s", flush=True)
    trials, summary = _weigh(base, candidates, sets, before, hold, acc0, budget, large, small, need,
                             t0 if progress else None)
    large_order = ordered(summary, "large", "large")
    ranked = [x["setting"] for x in large_order]
    small_order = ordered(summary, "small", "large" if large else "small")
    chains, choice_small = [], None
    for x in small_order:
        c0 = time.perf_counter()
        chains.append(_chain(base, x["setting"], hold, acc0, cfg, rng))
        if progress:
            print(f"  chained {cfg.chain} deletions with {x['setting']['method']}: "
                  f"{'stable' if chains[-1]['stable'] else 'not stable'} [{time.perf_counter() - c0:.1f} s; "
                  f"{time.perf_counter() - t0:.0f} s in]", flush=True)
        if chains[-1]["stable"]:
            choice_small = x["setting"]
            break
    ranked_small = [choice_small] if choice_small else []  # the fallbacks past it were not chained
    escalation = _escalation(summary, large_order, trials, budget, min((sizes[i] for i in large), default=None))
    chosen = {"large": _evidence(large_order[0], "large") if large_order else None,
              "small": _evidence(next(x for x in small_order if x["setting"] == choice_small), "small")
              if choice_small else None}
    return {"choice": ranked[0] if ranked else None, "ranked": ranked, "choice_small": choice_small,
            "ranked_small": ranked_small, "chosen": chosen, "escalation": escalation and escalation["setting"],
            "escalation_evidence": escalation, "why": _why(bool(large), ranked, choice_small),
            "measurable": bool(large), "min_detectable_batch": need, "budget": budget, "sizes": sizes,
            "small_sizes": [sizes[i] for i in small], "large_sizes": [sizes[i] for i in large],
            "candidates": summary, "trials": trials, "chains": chains, "verifier": base.verifier.name,
            "config": asdict(cfg), "seed": cfg.seed, "seconds": time.perf_counter() - t0}


def _regimes(rows: list[dict[str, Any]], large: list[int], small: list[int], budget: dict[str, Any],
             need: int | None) -> dict[str, Any]:
    if len(rows) < len(large) + len(small):  # stopped early: over the time budget
        slow = {"qualifies": False, "why": f"{rows[-1]['time_s']:.2f} s, over the time budget", "score": None,
                "max_acc_drop": max(r["acc_drop"] for r in rows), "time_s": rows[-1]["time_s"], "work": None}
        return {"large": slow if large else None, "small": slow if small else None}
    return {"large": _judge([rows[i] for i in large], budget, need) if large else None,
            "small": _judge([rows[i] for i in small], budget, need) if small else None}


def _weigh(base: UnlearnTask, candidates: tuple[Setting, ...], sets: list[np.ndarray], before: list[dict[str, Any]],
           hold: np.ndarray, acc0: float, budget: dict[str, Any], large: list[int], small: list[int],
           need: int | None, t0: float | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every candidate on every simulated deletion: the trials, and each candidate's verdict per regime. T0: when
    calibration began, to print progress lines from (None: silent)."""
    trials: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    stopped: list[tuple[Setting, float]] = []  # settings stopped at OVERRUN × the time budget, and when
    for s in candidates:
        c0 = time.perf_counter()
        if (like := next((x for x in stopped if _costs_at_least(s, x[0])), None)) is not None:
            summary.append({"setting": s.to_dict(), **_skipped(*like, large, small)})
        else:
            rows = []
            for f, b in zip(sets, before, strict=True):
                rows.append(_trial(base, s, f, b, hold, acc0, budget["max_time_s"]))
                if rows[-1]["time_s"] > budget["max_time_s"]:  # too slow at any size: the other sizes cannot save it
                    break
            trials += rows
            if rows[-1].get("stopped"):
                stopped.append((s, rows[-1]["time_s"]))
            summary.append({"setting": s.to_dict(), **_regimes(rows, large, small, budget, need)})
        if t0 is not None:
            print(f"  calibrate {s.method} {s.params}: " + "; ".join(
                f"{k}: {v['why'] or 'ok'} (score {v['score']})" for k in ("large", "small")
                if (v := summary[-1][k]) is not None)
                + f" [{time.perf_counter() - c0:.1f} s; {time.perf_counter() - t0:.0f} s in]", flush=True)
    return trials, summary


def _skipped(like: Setting, seconds: float, large: list[int], small: list[int]) -> dict[str, Any]:
    """Not run: LIKE was stopped at OVERRUN × the time budget (after SECONDS), and this setting does at least its
    work."""
    why = f"skipped: at least the work of {like.method} {like.params}, stopped at {OVERRUN:g}× the time budget"
    slow = {"qualifies": False, "why": why, "score": None, "max_acc_drop": 0.0, "time_s": seconds, "work": None}
    return {"large": slow if large else None, "small": slow if small else None, "skipped_like": like.to_dict()}


def _evidence(x: dict[str, Any], regime: str) -> dict[str, Any]:
    """What the choice in REGIME was chosen on: its score, that score's noise, its time, and the forget set's
    accuracy and loss it reached beside a never-saw model's prediction (`forget`: pooled over the sizes)."""
    v = x[regime]
    return {"setting": x["setting"], "score": v["score"], "noise": v.get("noise"), "time_s": v["time_s"],
            "work": v.get("work"), "flagged_closed": v.get("flagged_closed"), "forget": v.get("forget")}


def _escalation(summary: list[dict[str, Any]], large_order: list[dict[str, Any]], trials: list[dict[str, Any]],
                budget: dict[str, Any], n: int | None) -> dict[str, Any] | None:
    """The per-sample step: the setting that closes the most of the per-sample flagged gap over the judged sizes,
    when that is more than the choice closes, among those that hold the budget on the smallest judged set (N ids):
    it runs on a batch's few flagged samples, never on a 5% batch, and it is validated against the floor where it
    runs. Requiring the budget at every size kept out the per-sample ceiling that brings a 10-id batch to a
    retrain's flagged share and costs more only on 250 ids (docs/forgetting.md). Diverging (non-finite weights) at
    any size is not a budget matter: such a setting is never the per-sample step (a SCRUB step that diverged on 5%
    batches was named on CIFAR-10, and cost 3.5 s and a fifth of the gap where it ran). Its cost must shrink with
    its few samples, or be small beside the choice's (_cheap_on_few): SCRUB and SalUn take an epoch over D_r
    however few samples they forget, 3.5 s on 10 CIFAR-10 ids as on 1,750, where out_match's ceiling took 0.09 s
    and 1.3 s."""
    if not large_order or n is None:
        return None
    def mine(x: dict[str, Any]) -> list[dict[str, Any]]:
        return [t for t in trials if t["method"] == x["setting"]["method"] and t["params"] == x["setting"]["params"]]
    def strength(x: dict[str, Any]) -> float:
        return float(x["large"].get("flagged_closed") or 0.0)
    choice = mine(large_order[0])
    def holds(x: dict[str, Any]) -> bool:
        its = mine(x)
        rows = [t for t in its if t["n"] == n]
        return bool(rows) and all(t["finite"] for t in its) and all(
            r["holdout_acc"] is not None and not r["over_forgotten"] and r["acc_drop"] <= budget["max_accuracy_drop"]
            and r["time_s"] <= budget["max_time_s"] for r in rows) and _cheap_on_few(its, choice)
    pool = [x for x in summary if x is not large_order[0] and x["large"] is not None and holds(x)]
    best = max(pool, key=strength, default=None)
    if best is None or strength(best) <= strength(large_order[0]):
        return None
    return {**_evidence(best, "large"), "held_at": n}


def _cheap_on_few(rows: list[dict[str, Any]], choice: list[dict[str, Any]]) -> bool:
    """Whether a setting's trials (ROWS) cost, on the fewest ids calibration tried, at most 1/SLOWER of their cost
    on the most (it scales with the samples it forgets), or at most SLOWER times the CHOICE's trials there. The
    second clause keeps a step as cheap as IAU, whose few milliseconds barely scale; the first keeps out_match
    after an IAU choice, which no step of a few epochs is within SLOWER times of. Cost is work where every trial
    counted it: out_match's wall time on 10 ids is about a third of its time on 250, and the
    host's noise decided this clause on forgetting-small's MLP."""
    key = "work" if all(r.get("work") is not None for r in [*rows, *choice]) else "time_s"
    def at(rs: list[dict[str, Any]], n: int) -> float:  # 0 where RS never ran N ids: no clause holds on it
        return float(np.mean([r[key] for r in rs if r["n"] == n] or [0.0]))
    sizes = sorted({r["n"] for r in rows})
    if not sizes:
        return False
    few = at(rows, sizes[0])
    return (len(sizes) > 1 and few * SLOWER <= at(rows, sizes[-1])) or few <= SLOWER * at(choice, sizes[0])


def _why(measurable: bool, ranked: list[dict[str, Any]], choice_small: dict[str, Any] | None) -> str | None:
    parts = []
    if measurable and not ranked:
        parts.append("batches the verifier can judge: no candidate kept held-out accuracy within the budget and "
                     "removed membership signal, so they take the exact path (retrain)")
    if choice_small is None:
        parts.append("small batches: no candidate stayed within the budget along the chain, so they take the "
                     "exact path (retrain)")
    if not measurable:
        parts.append("membership is not measurable on this model at these sizes: chosen for accuracy and stability")
    return "; ".join(parts) or None


def _trial(base: UnlearnTask, s: Setting, forget: np.ndarray, before: dict[str, Any], hold: np.ndarray,
           acc0: float, max_time_s: float) -> dict[str, Any]:
    """One candidate on one simulated D_f; BEFORE is θ*'s assessment of that D_f, the same for every candidate.
    A multi-step method is stopped at OVERRUN × the time budget (a slower trial cannot qualify, so nothing is
    lost): a peer's ten epochs over D_r would otherwise cost calibration minutes for a verdict known after seconds."""
    t0 = time.perf_counter()
    deadline = t0 + OVERRUN * max_time_s if max_time_s > 0 else None
    try:
        with counting() as work:
            res = run_method(s.method, dataclasses.replace(base, forget_ids=forget, deadline=deadline), s.params)
    except OverTimeBudget:
        return {**s.to_dict(), "n": len(forget), "time_s": time.perf_counter() - t0, "work": None, "holdout_acc": None,
                "acc_drop": 0.0, "finite": True, "stopped": f"at {OVERRUN:g}× the time budget", "auc_before": None,
                "auc_after": None, "gap_closed": None, "gap_se": None, "p_member": None,
                "over_forgotten": False, "flagged_before": None, "flagged_after": None, "forget": None}
    acc, problem = validate(res.model, base.ds, hold, -1.0)
    assert base.verifier is not None
    after = base.verifier.assess(res.model, base.ds, forget)
    return {**s.to_dict(), "n": len(forget), "time_s": res.time_s, "work": work.value, "holdout_acc": acc,
            "acc_drop": acc0 - acc,
            "finite": problem is None, "auc_before": before["set"]["auc"], "auc_after": after["set"]["auc"],
            "gap_closed": gap_closed(before, after), "gap_se": gap_se(before, after),
            "p_member": after["set"]["p_member"],
            "over_forgotten": bool(after["set"]["p_below"] < OVER_FORGOTTEN_P),
            "flagged_before": flagged(before), "flagged_after": flagged(after), "forget": _forget_fit(res.model, base,
                                                                                                    forget, before)}


def _forget_fit(model: object, base: UnlearnTask, forget: np.ndarray, before: dict[str, Any]) -> dict[str, Any] | None:
    """The forget set's accuracy and loss after the update, beside θ*'s and a never-saw model's prediction."""
    fit = before.get("fit")
    if fit is None:
        return None
    after = fit_on(model, base.ds, forget)  # type: ignore[arg-type]
    return {"after": after.to_dict(), "before": fit["before"].to_dict(), "unseen": fit["unseen"].to_dict(),
            "refs": fit["refs"].to_dict(), "loss_sd": after.loss_sd}


def _judge(rows: list[dict[str, Any]], budget: dict[str, Any], need: int | None) -> dict[str, Any]:
    """Score: the set-level step's closeness to where a retrain leaves D_f (1 − |1 − gap closed|, overshooting is
    over-forgetting), the mean of the set AUC and forget-fit parts these sizes measure (module docstring); with no
    part measurable, the smallest accuracy cost. NOISE: the score's standard error. The per-sample share closed is
    recorded beside it (`flagged_closed`) for the per-sample step's choice, and is not part of the score."""
    worst = max(r["acc_drop"] for r in rows)
    measured = [r for r in rows if need is not None and r["n"] >= need and r["gap_closed"] is not None]
    gaps = [r["gap_closed"] for r in measured]
    parts, noises, per_sample = [], [], None
    auc_part = float(np.mean([1 - abs(1 - g) for g in gaps])) if gaps else None
    if auc_part is not None:
        parts.append(auc_part)
        noises.append(score_noise([r["gap_se"] for r in measured if r["gap_se"] is not None], 0.0, 1))
        per_sample = _flagged_closed(measured)
    forget = _forget_closed(rows)
    if forget is not None:
        parts.append(forget["score"])
        noises.append(forget["noise"])
    if parts:
        score = float(np.mean(parts))
        noise = float(np.sqrt(np.sum(np.square(noises))) / len(noises))
    else:
        score = -worst
        noise = score_noise([], budget["holdout_acc"], budget["n_holdout"])
    slowest = max(r["time_s"] for r in rows)
    works = [r.get("work") for r in rows]
    why = ("non-finite weights" if not all(r["finite"] for r in rows)
           else f"accuracy drop {100 * worst:.2f} points" if worst > budget["max_accuracy_drop"]
           else "over-forgets: D_f below non-member level" if any(r["over_forgotten"] for r in rows)
           else f"{slowest:.2f} s, over the time budget" if slowest > budget["max_time_s"]
           else "removes no membership signal" if auc_part is not None and auc_part <= 0 else None)
    return {"qualifies": why is None, "why": why, "score": round(score, 4), "noise": round(noise, 4),
            "max_acc_drop": worst, "time_s": slowest, "flagged_closed": per_sample,
            "work": max(works) if None not in works else None,
            "forget": forget}


def _flagged_closed(rows: list[dict[str, Any]]) -> float | None:
    """The share of D_f's excess per-sample flagged rate (θ*'s over the FPR, a retrain's level: its D_f are
    non-members) that the update removed, pooled over ROWS by size. None when θ*'s excess is within the flagged
    rate's own noise (nothing measurable to close). Flagged below the FPR counts as the FPR: a few samples short of
    it is chance, and the per-sample step is checked for over-forgetting where it runs (policy.py)."""
    n = np.array([r["n"] for r in rows], dtype=float)
    fb, fa = np.array([r["flagged_before"] for r in rows]), np.array([r["flagged_after"] for r in rows])
    q = PRIMARY_FPR
    gap = float(np.sum(n * (fb - q)))
    if gap <= Z95 * np.sqrt(q * (1 - q) * n.sum()):
        return None
    return float(np.sum(n * (fb - np.maximum(fa, q))) / gap)


def _forget_closed(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Closeness of the forget set's accuracy and loss to a never-saw model's, pooled over ROWS; None without the
    verifier's references or without a gap."""
    fits = [r["forget"] for r in rows]
    if any(f is None for f in fits):
        return None
    sizes = [r["n"] for r in rows]
    g = gaps_closed([{"before": Fit.from_dict(f["before"]), "unseen": Fit.from_dict(f["unseen"])} for f in fits],
                    [Fit.from_dict(f["after"]) for f in fits], sizes)
    close = [c for c in (closeness(g["acc"]), closeness(g["loss"])) if c is not None]
    if not close:
        return None
    n = np.array(sizes, dtype=float)
    a = np.array([f["after"]["acc"] for f in fits])
    ses = [float(np.sqrt(np.sum(n * a * (1 - a))) / g["acc_gap"]) if g["acc"] is not None else None,
           float(np.sqrt(np.sum(n * np.square([f["loss_sd"] for f in fits]))) / g["loss_gap"])
           if g["loss"] is not None else None]
    ses = [x for x in ses if x is not None]
    return {"score": float(np.mean(close)), "noise": float(np.sqrt(np.sum(np.square(ses))) / len(ses)),
            "acc_closed": g["acc"], "loss_closed": g["loss"],
            **{m: {k: float(np.average([f[k][m] for f in fits], weights=n)) for k in ("before", "after", "unseen")}
               for m in ("acc", "loss")}}


def _chain(base: UnlearnTask, setting: dict[str, Any], hold: np.ndarray, acc0: float, cfg: CalibrationConfig,
           rng: np.random.Generator) -> dict[str, Any]:
    """CHAIN deletions of CHAIN_SIZE ids, each from the previous result, as the service would run them."""
    s = Setting(setting["method"], setting["params"])
    model, train = base.model, np.asarray(base.train_ids)
    steps = []
    for k in range(cfg.chain):
        n = min(cfg.chain_size, len(train) - 1)
        if n < 1:  # a tiny training set runs out before the chain does
            break
        forget = np.sort(rng.choice(train, n, replace=False))
        task = base if k == 0 else with_model(base, model, train_ids=train, forget_ids=forget,
                                              weights_sha256=weights_sha256(model.state_dict()))
        task = dataclasses.replace(task, forget_ids=forget)
        res = run_method(s.method, task, s.params)
        acc, problem = validate(res.model, base.ds, hold, acc0 - cfg.max_accuracy_drop)
        steps.append({"k": k + 1, "holdout_acc": acc, "time_s": res.time_s})
        if problem:
            return {"setting": setting, "stable": False, "why": f"deletion {k + 1}: {problem}", "steps": steps}
        model, train = res.model, np.setdiff1d(train, forget)
    return {"setting": setting, "stable": True, "why": None, "steps": steps}
