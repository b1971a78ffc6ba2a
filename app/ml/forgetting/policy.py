"""One forgetting policy for the CLI, the bench and the worker: update → validate → verify → escalate.

- **update**: the model's calibrated setting (meta.json's `calibration`), or one the caller names;
- **validate**: finite weights and held-out accuracy at or above a floor; a setting that breaks it is
  retried smaller (its step halved) a bounded number of times, then the next calibrated setting;
- **verify**: D_f under the membership verifier → `forgotten`, `partial` (with the share of the
  membership signal removed) or `not measurable`;
- **one per-sample step**: calibration's escalation setting runs once, from the update, on the samples that need
  it, validated and re-verified on the whole batch (both attempts and both verdicts stay in the record):
  a `partial` batch's samples still flagged at the verifier's FPR (*escalation*); in a batch judged otherwise,
  the most member-like samples (flagged under θ*, RUM's split on the verifier's own scores) when more of them
  stay flagged than a never-saw model would flag by chance (*memorised*). A step that pushes the batch below
  non-member level is refused, as calibration refuses an over-forgetting setting;
- **escalate**: nothing valid, or a `partial` verdict under on_partial=retrain, runs the exact path
  (retrain on D_r with the model's own recipe). on_partial=consolidate leaves the update in place and
  says so (`consolidate_now`): the service then queues an exact consolidation with priority.

A model below the floor is never returned: the outcome then carries `problem` and no model.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from app.errors import ConfigError, ModelLoadError
from app.ml.common.hashing import weights_sha256
from app.ml.data.dataset import Dataset
from app.ml.forgetting.methods import METHODS, run_method
from app.ml.forgetting.methods.base import UnlearnTask
from app.ml.models.checkpoint import check_finite
from app.ml.training.metrics import accuracy
from app.ml.verify.report import verify_forgetting
from app.ml.verify.verdicts import PRIMARY_FPR, Verdict
from app.shared import ON_INVALID, ON_PARTIAL, OnInvalid, OnPartial

EXACT = "retrain"
OVER_FORGOTTEN_P = 0.01  # the set test's one-sided p that D_f scores *below* non-members: calibration's rule too
# the parameter each method's step size lives in: halved when a result breaks the accuracy floor
STEP_PARAM = {"iau": "eta", "out_match": "lr", "finetune": "lr", "gradient_ascent": "lr"}


@dataclass(frozen=True)
class Setting:
    method: str
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "params": dict(self.params)}

    def smaller(self) -> Setting | None:
        """Half the step; None for a method without one. Called on the parameters a method reported using,
        so its defaults are filled in."""
        key = STEP_PARAM.get(self.method)
        if key is None or key not in self.params:
            return None
        return Setting(self.method, {**self.params, key: float(self.params[key]) / 2})


@dataclass(frozen=True)
class Budget:
    """The held-out accuracy a new version must keep: computed here once, for the CLI, the bench, the worker,
    consolidation and the operator page."""

    floor: float  # a fast update's result
    exact_floor: float  # an exact retrain's: it is the model without the data, the floor only guards a broken run
    # the recipe's seed-to-seed spread of held-out accuracy (the verifier's references; 0: not measured): the
    # reference accuracy is one run of the recipe, and a retrain is another, so the exact floor allows for it
    exact_spread: float = 0.0

    @classmethod
    def below(cls, reference: float, *, max_drop: float, exact_max_drop: float = 0.0,
              absolute: float | None = None, spread: float | None = None) -> Budget:
        """MAX_DROP under REFERENCE (the first version's held-out accuracy, or the model's own), the exact path
        max(MAX_DROP, EXACT_MAX_DROP) under it; an operator's ABSOLUTE floor binds both. SPREAD: the recipe's
        seed-to-seed spread (app/ml/verify/report.py: recipe_spread), allowed for on the exact path when the floor
        is relative to REFERENCE, itself one run of the recipe (an absolute floor is not)."""
        if absolute is not None:
            return cls(absolute, absolute)
        return cls(reference - max_drop, reference - max(max_drop, exact_max_drop), spread or 0.0)

    @classmethod
    def at(cls, floor: float) -> Budget:
        """One FLOOR for both paths."""
        return cls(floor, floor)


@dataclass(frozen=True)
class PolicyOptions:
    """What the policy does past the floors: the one set of options, read by Settings (`UNLEARND_BACKTRACKS`,
    `UNLEARND_ON_PARTIAL`, `UNLEARND_ON_INVALID`) for the worker, and given by the CLI and the bench."""

    backtracks: int = 2  # halvings of one setting's step before the next setting is tried
    on_partial: OnPartial = "consolidate"
    on_invalid: OnInvalid = "retrain"  # "fail": no valid fast result → no model (the caller fails the batch)
    exact_tries: int = 3  # retrains from the recipe's next seeds while one is below its floor

    @property
    def exact_seeds(self) -> range:
        return range(max(self.exact_tries, 1))

    def __post_init__(self) -> None:
        for name, allowed in (("on_partial", ON_PARTIAL), ("on_invalid", ON_INVALID)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {list(allowed)}, not {getattr(self, name)!r}")


@dataclass
class Outcome:
    model: nn.Module | None
    setting: Setting | None  # the setting whose result was kept
    holdout_acc: float
    attempts: list[dict[str, Any]]  # every try: setting, seconds, held-out accuracy, why rejected
    verification: dict[str, Any]
    time_s: float  # every try's update, validation and verification
    consolidate_now: bool = False
    problem: str | None = None

    @property
    def exact(self) -> bool:
        return self.setting is not None and self.setting.method == EXACT

    @property
    def verdict(self) -> Verdict:
        return Verdict.parse(self.verification.get("verdict", Verdict.UNVERIFIED))

    @property
    def update_seconds(self) -> float:
        """The updates' own seconds, every try included (no validation or verification)."""
        return float(sum(a["time_s"] for a in self.attempts))


def calibrated_settings(cal: dict[str, Any] | None, n_forget: int) -> list[Setting]:
    """The settings calibration (CAL: meta.json's record) chose for a batch of N_FORGET, best first; [] when it
    chose the exact path for batches of that size; IAU's registered defaults for a model never calibrated (or
    without verifier)."""
    if not isinstance(cal, dict) or "candidates" not in cal:
        return [Setting("iau")]
    need = cal.get("min_detectable_batch")
    large = bool(cal.get("large_sizes")) and need is not None and n_forget >= need
    chosen = cal.get("ranked" if large else "ranked_small") or []
    return [Setting(r["method"], dict(r.get("params") or {})) for r in chosen]


def calibrated_escalation(cal: dict[str, Any] | None) -> Setting | None:
    """The stronger step calibration named for a `partial` batch (meta.json's calibration `escalation`)."""
    e = cal.get("escalation") if isinstance(cal, dict) else None
    return Setting(e["method"], dict(e.get("params") or {})) if isinstance(e, dict) else None


def check_setting(s: Setting) -> Setting:
    METHODS.get(s.method)  # unknown names fail with the valid ones
    return s


EXACT_CONFIDENCE_Z = 1.645  # one-sided 95%: an exact retrain is refused only when it is surely below its floor


def noise_margin(floor: float, n: int, spread: float = 0.0) -> float:
    """How far below FLOOR an exact retrain's held-out accuracy may fall by chance alone: the one-sided 95%
    bound of the difference of two accuracies near FLOOR, each measured on the same N held-out samples (the
    floor is itself θ*'s point estimate on them), and each one run of a recipe whose runs spread by SPREAD
    (a standard deviation). 34 samples at 0.92: 0.11; 10,000 samples: 0.006; spread 0.03 on 500: 0.08."""
    p = min(max(floor, 0.0), 1.0)
    sampling = 2 * max(p * (1 - p), 0.25 / max(n, 1)) / max(n, 1)
    return EXACT_CONFIDENCE_Z * math.sqrt(sampling + 2 * spread ** 2)


def validate(model: nn.Module, ds: Dataset, hold: np.ndarray, floor: float, *,
             exact: bool = False, spread: float = 0.0) -> tuple[float, str | None]:
    """Held-out accuracy and why it is refused (None: kept). EXACT: the model is a retrain without the data,
    so the floor only guards against a broken run, and the validation set's noise is allowed for."""
    try:
        check_finite(model)
    except ModelLoadError as e:
        return float("nan"), str(e)
    acc = accuracy(model, ds, hold)
    if not exact:
        return acc, None if acc >= floor else f"held-out accuracy {acc:.4f} is below the floor {floor:.4f}"
    margin = noise_margin(floor, len(hold), spread)
    if acc >= floor - margin:
        return acc, None
    seeds = f" and the recipe's seed-to-seed spread {spread:.4f}" if spread else ""
    return acc, (f"held-out accuracy {acc:.4f} is below the floor {floor:.4f} by more than the validation noise"
                 f"{seeds} allows (95% margin {margin:.4f} on {len(hold)} held-out samples)")


RECORDED_INFO = ("path", "epochs", "feature_cache", "distributed")  # a method's info an audit needs: how it ran


def _try(task: UnlearnTask, s: Setting, hold: np.ndarray, floor: float, attempts: list[dict[str, Any]],
         spread: float = 0.0, note: dict[str, Any] | None = None) -> tuple[nn.Module | None, Setting, float]:
    res = run_method(s.method, task, s.params)
    acc, problem = validate(res.model, task.ds, hold, floor, exact=s.method == EXACT, spread=spread)
    kept = Setting(s.method, res.params if s.method != EXACT else dict(s.params))
    attempts.append({**kept.to_dict(), "time_s": res.time_s, "holdout_acc": acc, "rejected": problem,
                     **{k: res.info[k] for k in RECORDED_INFO if k in res.info}, **(note or {})})
    return (None if problem else res.model), kept, acc


def _halving(task: UnlearnTask, s: Setting, hold: np.ndarray, floor: float, attempts: list[dict[str, Any]],
             backtracks: int, *, note: dict[str, Any] | None = None,
             accept: Callable[[nn.Module], bool | None] | None = None) -> tuple[nn.Module | None, Setting, float]:
    """S, then S at half its step while a try is refused (by the floor, or by ACCEPT, which records its own
    reason: False, try smaller; None, a smaller step would not help either), at most BACKTRACKS times; NOTE goes
    into each try's attempt."""
    cur: Setting | None = s
    kept, acc = s, float("nan")
    for _ in range(backtracks + 1):
        if cur is None:
            break
        model, kept, acc = _try(task, cur, hold, floor, attempts, note=note)
        if model is not None:
            ok = True if accept is None else accept(model)
            if ok:
                return model, kept, acc
            if ok is None:
                break
        cur = kept.smaller()
    return None, kept, acc


def forget(task: UnlearnTask, settings: list[Setting], hold: np.ndarray, budget: Budget,
           options: PolicyOptions = PolicyOptions(), escalation: Setting | None = None) -> Outcome:
    """Forget task.forget_ids from task.model within BUDGET under OPTIONS, trying SETTINGS in order ([]: exact
    at once); the ESCALATION setting then runs once on the samples that need it (_targets)."""
    t0 = time.perf_counter()
    attempts: list[dict[str, Any]] = []
    model, kept, acc = None, None, float("nan")
    fast = [s for s in settings if s.method != EXACT]  # the exact path, when asked for, runs once, below
    for s in fast:
        model, kept, acc = _halving(task, check_setting(s), hold, budget.floor, attempts, options.backtracks)
        if model is not None:
            break
    verification = _verify(task, model)
    if model is not None:
        attempts[-1]["verdict"] = verification["verdict"]
    if model is not None and escalation is not None:
        stronger, s2, acc2, v2 = _per_sample_step(task, model, check_setting(escalation), hold, budget, attempts,
                                                  backtracks=options.backtracks, first=verification)
        if stronger is not None:
            model, kept, acc, verification = stronger, s2, acc2, v2
    exact_why = None
    if model is None and (options.on_invalid == "retrain" or len(fast) < len(settings) or not settings):
        exact_why = ("no fast setting kept the accuracy floor" if fast else
                     "the exact path was asked for" if settings else "calibration chose the exact path")
    elif model is not None and verification.get("verdict") == Verdict.PARTIAL and options.on_partial == "retrain":
        exact_why = "the fast update left D_f partially member-like (on_partial=retrain)"
    if exact_why:
        exact_model, exact_kept, exact_acc = _exact(task, hold, budget, attempts, exact_why, options)
        if exact_model is not None or model is None:  # a retrain below the floor never replaces a valid update
            model, kept, acc = exact_model, exact_kept, exact_acc
            verification = _verify(task, model)
            attempts[-1]["verdict"] = verification["verdict"]
    out = Outcome(model=model, setting=kept if model is not None else None, holdout_acc=acc, attempts=attempts,
                  verification=verification, time_s=time.perf_counter() - t0)
    if model is None:
        out.problem = attempts[-1]["rejected"] if attempts else "no setting to try"
    out.consolidate_now = (model is not None and not out.exact and out.verdict == Verdict.PARTIAL
                           and options.on_partial == "consolidate")
    return out


def _exact(task: UnlearnTask, hold: np.ndarray, budget: Budget, attempts: list[dict[str, Any]], why: str,
           options: PolicyOptions) -> tuple[nn.Module | None, Setting, float]:
    """The retrain on D_r, from the recipe's seed and then its next ones while the floor refuses it."""
    for k in options.exact_seeds:
        model, kept, acc = _try(task, Setting(EXACT, {"seed_offset": k} if k else {}), hold, budget.exact_floor,
                                attempts, budget.exact_spread)
        attempts[-1]["why"] = why if k == 0 else "the retrain before was below its floor: the recipe's next seed"
        if model is not None:
            break
    return model, kept, acc


def _targets(task: UnlearnTask, model: nn.Module, verdict: object) -> tuple[np.ndarray, str] | None:
    """Which of the batch's samples get the per-sample step, and why; None: none need it.

    - a `partial` batch: the samples MODEL still flags at the primary FPR (all of them when the set test detects
      what no single sample shows): the escalation;
    - otherwise RUM's split on the verifier's own scores: the samples θ* flagged (the most member-like) that the
      set-level step left flagged, when there are more of them than a model that never saw the batch would flag
      by chance (the FPR's share): a set verdict averages these few away.
    """
    assert task.verifier is not None  # a verdict came from it
    ids = np.asarray(task.forget_ids)
    after = task.verifier.pvalues(model, task.ds, ids) <= PRIMARY_FPR
    if verdict == Verdict.PARTIAL:
        return (ids[after] if after.any() else ids), "escalation"
    memorised = after & (task.verifier.pvalues(task.model, task.ds, ids) <= PRIMARY_FPR)
    if memorised.sum() > PRIMARY_FPR * len(ids):
        return ids[memorised], "memorised"
    return None


def _per_sample_step(task: UnlearnTask, model: nn.Module, s: Setting, hold: np.ndarray, budget: Budget,
                     attempts: list[dict[str, Any]], *, backtracks: int = 0, first: dict[str, Any],
                     ) -> tuple[nn.Module | None, Setting, float, dict[str, Any]]:
    """S from MODEL (the set-level update) on the samples _targets names, the rest of the batch left out of D_r;
    the whole batch is then verified again against θ*. A step that breaks the floor, or pushes the batch below
    non-member level (over-forgetting is a signal too), is retried at half its step up to BACKTRACKS times, as
    the set-level update is; a step that leaves the batch's set AUC no lower than the update did is refused
    (a step that forgets nothing more only costs accuracy). None when nothing needs it or no try is kept."""
    if task.verifier is None:
        return None, s, float("nan"), {}
    auc_first = (first.get("after") or {}).get("set", {}).get("auc")  # FIRST: the update's verification
    word = attempts[-1]["verdict"]
    chosen = _targets(task, model, Verdict.parse(word))
    if chosen is None:
        return None, s, float("nan"), {}
    still, why = chosen
    others = np.setdiff1d(task.forget_ids, still)
    step = with_model(task, model, train_ids=np.setdiff1d(task.train_ids, others), forget_ids=still,
                      weights_sha256=weights_sha256(model.state_dict()))
    verification: dict[str, Any] = {}

    def forgets_more(m: nn.Module) -> bool | None:
        verification.clear()
        verification.update(_verify(task, m))
        attempts[-1]["verdict"] = verification["verdict"]
        after = verification["after"]["set"]
        if after["p_below"] < OVER_FORGOTTEN_P:
            attempts[-1]["rejected"] = (f"the batch's scores fell below non-member level (p = {after['p_below']:.3g}):"
                                        " over-forgotten")
            return False
        if auc_first is not None and after["auc"] >= auc_first:
            attempts[-1]["rejected"] = (f"the batch's set AUC {after['auc']:.4f} is no lower than after the update "
                                        f"({auc_first:.4f}): the step forgot nothing more")
            return None
        return True

    stronger, kept, acc = _halving(step, s, hold, budget.floor, attempts, backtracks, accept=forgets_more,
                                   note={why: True, "n_flagged": len(still), "verdict_before": word})
    return stronger, kept, acc, (verification if stronger is not None else {})


def _verify(task: UnlearnTask, model: nn.Module | None) -> dict[str, Any]:
    if model is None:
        return {"verdict": Verdict.UNVERIFIED, "why": "no model passed validation"}
    if task.verifier is None:
        return {"verdict": Verdict.UNVERIFIED, "why": "the model has no membership verifier"}
    return verify_forgetting(task.verifier, task.ds, task.forget_ids, before=task.model, after=model)


def with_model(task: UnlearnTask, model: nn.Module, *, train_ids: np.ndarray, forget_ids: np.ndarray,
               weights_sha256: str) -> UnlearnTask:
    """The same task on another model (a chain's next step): no gradient cache matches it."""
    return dataclasses.replace(task, model=model, train_ids=train_ids, forget_ids=forget_ids,
                               weights_sha256=weights_sha256, cache=None)
