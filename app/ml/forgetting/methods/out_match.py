"""OUT-matching: pull each forgotten sample's confidence down to what a model that never saw it gives.

A model retrained without D_f scores D_f like any non-member; θ* scores it higher (that excess is
what the membership verifier detects). The verifier's reference models never saw any training
sample, so for each x ∈ D_f they say what a non-member's true-class logit looks like:
target(x) = mean_k φ_k(x) + c, with c θ*'s median offset from the references on held-out
non-members (the references train on less data, so they are less confident overall).

Loss, Adam over D_f in minibatches: mean relu(φ_θ(x) − target(x))² (a sample is never made *more*
confident), plus retain_weight · KL(θ*(x') ‖ θ(x')) on a minibatch of random retained samples x', which
holds the rest of the model where it was. Needs the model's verifier (task.verifier).

target = "shift" instead moves every forgotten sample by one offset Δ (D_f's median calibrated excess
over non-members) with a squared loss: the ceiling empties the member-like tail (over-forgetting that
the KS distance shows), the shift keeps D_f's spread and closes less.

train_last = k moves only the last k parameter-owning layers (in the order a forward calls them). The front
before them is frozen, so torch.fx cuts the model there (app/ml/training/feature_cache.py): the front runs
once over D_f and every retained batch the steps will draw, the steps train the head on those features, and the
teacher's outputs are the head's own before its first step. The same steps on the same batches, without the
front's forward and backward at every step. A model torch.fx cannot cut trains with its front frozen, at full
forward cost (info["feature_cache"] says which ran and why).

First measurements (docs/forgetting.md): on CIFAR-10 LeNet5 (5% forgotten) the defaults took D_f's
set AUC 0.605 → 0.541 (retrain 0.508) on an independent verifier at 1.2 points of test accuracy, in
2.4 s against retrain's 98 s; on an overfit digits MLP the same defaults overshoot (AUC 0.612 →
0.478, 4 points lost) where lr 3e-4 closes 58% of the gap at no accuracy cost. The step is
model-dependent: choosing it per model is calibration's job (issue 13), not a constant's.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from app.errors import ConfigError
from app.ml.data.dataset import minibatches
from app.ml.forgetting.methods.base import UnlearnResult, UnlearnTask, parse_params, seconds_since
from app.ml.forgetting.methods.loops import only_last_trainable, trainable_params
from app.ml.forgetting.methods.registry import METHODS
from app.ml.training.feature_cache import CHUNK, Cached, cached_features
from app.ml.verify.base import phi_from_logits, true_class_logit

CALIB_SAMPLE = 1000


@dataclass(frozen=True)
class OutMatchConfig:
    epochs: int = 5
    lr: float = 1e-3
    retain_weight: float = 3.0
    batch_size: int = 64
    target: str = "ceiling"  # ceiling | shift
    # a small D_f is one minibatch an epoch: a service batch of 10 ids needs steps, not epochs
    min_steps: int = 0
    # Adam's first step moves every weight by ~lr whatever the loss (the KL anchor is still zero there): on
    # CIFAR-10 LeNet5 3 steps at lr 2e-3 cost 3.7 points on a 10-id D_f. A linear ramp over the first steps
    # keeps a small batch's few steps small and is a rounding error for a large one.
    warmup: int = 10
    # 0: every trainable parameter moves; k ≥ 1: only those of the last k modules that hold parameters, in the
    # order a forward calls them. The membership signal is the true-class logit, which the last layers set; the
    # frozen front then needs no backward pass.
    train_last: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0 or self.retain_weight < 0:
            raise ValueError("epochs, batch_size and lr must be positive, retain_weight ≥ 0")
        if self.min_steps < 0 or self.warmup < 0 or self.train_last < 0:
            raise ValueError("min_steps, warmup and train_last must be ≥ 0")
        if self.target not in ("ceiling", "shift"):
            raise ValueError("target must be 'ceiling' or 'shift'")


def targets(task: UnlearnTask, kind: str) -> torch.Tensor:
    """Per forgotten sample, the true-class logit to pull it to (see the module's docstring)."""
    v = task.verifier
    assert v is not None
    cal = v.calib_ids
    if len(cal) > CALIB_SAMPLE:  # a median needs no 5000 forwards: a batch of 10 ids would pay mostly for them
        cal = np.sort(np.random.default_rng(task.seed).choice(cal, CALIB_SAMPLE, replace=False))
    excess_cal = true_class_logit(task.model, task.ds, cal, flip=v.flip) - v.out_mean_of(cal)
    phi_f = true_class_logit(task.model, task.ds, task.forget_ids, flip=v.flip)
    if kind == "shift":
        delta = np.median(phi_f - v.out_mean_of(task.forget_ids)) - np.median(excess_cal)
        return torch.from_numpy(phi_f - max(float(delta), 0.0)).to(task.ds.device)
    return torch.from_numpy(v.out_mean_of(task.forget_ids) + np.median(excess_cal)).to(task.ds.device)


@METHODS.register("out_match")
def out_match(task: UnlearnTask, params: dict[str, object]) -> UnlearnResult:
    cfg = parse_params(OutMatchConfig, params)
    if task.verifier is None:
        raise ConfigError("out_match needs the model's membership verifier (train with --verify-refs K, K ≥ 2)")
    teacher, model = task.model, copy.deepcopy(task.model)
    teacher.eval()
    t0 = time.perf_counter()
    target = targets(task, cfg.target)
    forget = np.asarray(task.forget_ids)
    plan = _plan(cfg, len(forget), task.retain_ids, np.random.default_rng(task.seed))
    info: dict[str, object] = {}
    if not cfg.train_last:
        _fit(cfg, model, forget, target, plan, task, task.ds.features, teacher)
    else:
        with only_last_trainable(model, cfg.train_last, task.ds.features(forget[:1])) as frozen, \
                cached_features(model, frozen, "none", task.ds, [forget, *[rb for _, rb in plan]]) as cached:
            if isinstance(cached, Cached):  # the frozen front once, then steps on the head alone
                info["feature_cache"] = cached.record
                _fit(cfg, cached.cut.head, forget, target, plan, task,
                     lambda ids: cached.ds.features(cached.ids(ids)), cached.cut.head)
            else:  # the frozen front still needs no backward pass
                info["feature_cache"] = {"used": False, "why": cached}
                _fit(cfg, model, forget, target, plan, task, task.ds.features, teacher)
    model.eval()
    return UnlearnResult(model=model, time_s=seconds_since(t0, task), params=asdict(cfg), info=info)


Plan = list[tuple[np.ndarray, np.ndarray]]  # per step: positions in D_f, retained ids


def _plan(cfg: OutMatchConfig, n_forget: int, retain: np.ndarray, rng: np.random.Generator) -> Plan:
    """Every step's forgotten positions and retained ids, drawn up front (a cached front needs them all)."""
    per_epoch = -(-n_forget // cfg.batch_size)
    plan = []
    for _ in range(max(cfg.epochs, -(-cfg.min_steps // per_epoch))):
        for pick in minibatches(rng.permutation(n_forget), cfg.batch_size):
            # a full retained batch even when D_f is tiny: the anchor must outweigh repeated steps on few samples
            plan.append((pick, rng.choice(retain, cfg.batch_size, replace=len(retain) < cfg.batch_size)))
    return plan


def _fit(cfg: OutMatchConfig, net: nn.Module, forget: np.ndarray, target: torch.Tensor, plan: Plan,
         task: UnlearnTask, inputs: Callable[[np.ndarray], torch.Tensor], teacher: nn.Module) -> None:
    """Adam on NET over PLAN; INPUTS(ids) is NET's input. TEACHER: θ*, or NET itself before its first step (the
    retained batches' targets are then all taken up front)."""
    teach = _teacher_outputs(teacher, inputs, plan) if teacher is net else None
    opt = torch.optim.Adam(trainable_params(net), lr=cfg.lr)
    ramp = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / (cfg.warmup + 1)))
    net.train()
    for step, (pick, rb) in enumerate(plan):
        task.tick()
        fb = forget[pick]
        phi = phi_from_logits(net(inputs(fb)), task.ds.labels(fb))
        gap = phi - target[pick]
        loss_f = (F.relu(gap) if cfg.target == "ceiling" else gap).pow(2).mean()
        if teach is None:
            with torch.no_grad():
                probs = F.softmax(teacher(inputs(rb)), dim=1)
        else:
            probs = teach[step]
        loss_r = F.kl_div(F.log_softmax(net(inputs(rb)), dim=1), probs, reduction="batchmean")
        loss = loss_f.float() + cfg.retain_weight * loss_r
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ramp.step()
    net.eval()


@torch.no_grad()
def _teacher_outputs(net: nn.Module, inputs: Callable[[np.ndarray], torch.Tensor], plan: Plan) -> torch.Tensor:
    """(steps, batch, classes): NET's softmax on every step's retained batch, before any step moves it."""
    net.eval()
    rows = np.concatenate([rb for _, rb in plan])
    probs = torch.cat([F.softmax(net(inputs(rows[i:i + CHUNK])), dim=1) for i in range(0, len(rows), CHUNK)])
    return probs.view(len(plan), -1, probs.shape[1])
