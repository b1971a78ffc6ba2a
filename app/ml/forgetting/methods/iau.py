"""IAU, paper Eq. 8: θ_u = θ* − η·(Σ_{D_r} ∇ℓ(θ*) − Σ_{D_f} ∇ℓ(θ*)), one step, no Hessian.

Variants (docs/method.md, "How IAU is computed"), because the paper and the authors' code disagree:
  reduction  sum  (paper; η absorbs 1/n)   | mean (code: mean over D_r − mean over D_f)
  step       sgd  (paper)                  | adam (code: first step of a fresh Adam = η·d/(|d|+ε))
  correction True: IA + GC (ascent on D_f and descent on D_r) | False: IA only

Fast path: with a gradient cache of Σ_D at exactly these weights and training ids,
Σ_{D_r} = Σ_D − Σ_{D_f}, so only D_f is passed through the model.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass

import torch

from app.errors import CacheMismatchError
from app.ml.forgetting.methods.base import UnlearnResult, UnlearnTask, parse_params, seconds_since
from app.ml.forgetting.methods.registry import METHODS
from app.ml.training.grads import GradSums, grad_sum, trainable

ADAM_EPS = 1e-8  # torch.optim.Adam's default


@dataclass(frozen=True)
class IAUConfig:
    # The validation sweep's winner on CIFAR-10/LeNet5 (docs/results/iau-sweep): the authors'
    # code form, mean reduction with one Adam-like step.
    eta: float = 0.002
    reduction: str = "mean"
    step: str = "adam"
    correction: bool = True

    def __post_init__(self) -> None:
        if self.reduction not in ("sum", "mean"):
            raise ValueError("reduction must be 'sum' or 'mean'")
        if self.step not in ("sgd", "adam"):
            raise ValueError("step must be 'sgd' or 'adam'")
        if not self.eta > 0:
            raise ValueError("eta must be > 0")


def _retain_sums(task: UnlearnTask, forget: GradSums) -> tuple[GradSums, str, str | None]:
    """Σ_{D_r} ∇ℓ: from the cache when it matches these weights and ids, else a full pass."""
    reason = "no cache"
    if task.cache is not None:
        try:
            task.cache.check(weights=task.weights_sha256, ids=task.train_ids)
            return {k: task.cache.sums[k].to(forget[k].device) - forget[k] for k in forget}, "fast", None
        except CacheMismatchError as e:
            reason = str(e)
    return grad_sum(task.model, task.ds, task.retain_ids, chunk_size=task.chunk_size), "slow", reason


def iau_direction(task: UnlearnTask, cfg: IAUConfig) -> tuple[GradSums, dict[str, object]]:
    """d such that θ_u = θ* − η·step(d)."""
    n_f = len(task.forget_ids)
    n_r = len(task.train_ids) - n_f
    g_f = grad_sum(task.model, task.ds, task.forget_ids, chunk_size=task.chunk_size)
    w_f = 1.0 / n_f if cfg.reduction == "mean" else 1.0
    if not cfg.correction:
        return {k: -w_f * v for k, v in g_f.items()}, {"path": "ia-only"}
    g_r, path, reason = _retain_sums(task, g_f)
    w_r = 1.0 / max(n_r, 1) if cfg.reduction == "mean" else 1.0
    info: dict[str, object] = {"path": path}
    if reason is not None and task.cache is not None:
        info["cache_refused"] = reason
    return {k: w_r * g_r[k] - w_f * g_f[k] for k in g_f}, info


@METHODS.register("iau")
def iau(task: UnlearnTask, params: dict[str, object]) -> UnlearnResult:
    cfg = parse_params(IAUConfig, params)
    model = copy.deepcopy(task.model)
    t0 = time.perf_counter()
    direction, info = iau_direction(task, cfg)
    with torch.no_grad():
        for name, p in trainable(model):
            d = direction[name]
            if cfg.step == "adam":
                d = d / (d.abs() + ADAM_EPS)
            p.sub_((cfg.eta * d).to(p.dtype))
    elapsed = seconds_since(t0, task)
    return UnlearnResult(model=model, time_s=elapsed, params=asdict(cfg), info=info)
