"""AMUN (Ebrahimpour-Boroojeny et al., ICML 2025, "Adversarial Mixup Unlearning"): fine-tune on adversarial
examples of the forgotten samples, each labelled with the class the attack reached.

Written from the authors' code (the unlearning script and its modified `PGDL2`):

- *the attack*: per forget sample, L2 PGD on the cross-entropy of its true label, step ε/10, at most
  `pgd_steps` steps, stopped for a sample as soon as it is misclassified; samples still correct after
  `pgd_steps` steps have their ε doubled and go on from where they are. The first `probe` samples start at
  ε = `eps0`; the rest at the median of the ε the probe needed (their speed-up, kept);
- *the labels*: the model's prediction on each adversarial example (`adv_pred`);
- *the fine-tune*: SGD (lr 0.05, momentum 0.9, weight decay 5e-4, the rate ×0.1 every 5 epochs), 10 epochs,
  batch 128, over D_r ∪ the adversarial set shuffled together (their `--remain use`); `use_retain=False`
  fine-tunes on D_f ∪ the adversarial set instead (their variant without access to D_r).

One departure, stated: the authors clamp adversarial images to [0, 1] pixels; our features are whatever the
user's data loader gives (often normalised), so no clamp is applied. The attack's forward and backward passes
count in the method's time.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from app.ml.forgetting.methods.base import UnlearnResult, UnlearnTask, parse_params, seconds_since
from app.ml.forgetting.methods.loops import SGDConfig
from app.ml.forgetting.methods.registry import METHODS


@dataclass(frozen=True)
class AmunConfig(SGDConfig):
    lr: float = 0.05
    epochs: int = 10
    batch_size: int = 128
    lr_step: int = 5  # epochs between the rate's ×0.1 steps
    use_retain: bool = True
    eps0: float = 0.01  # the probe's starting L2 radius
    probe: int = 50  # samples whose smallest ε sets the others' start
    pgd_steps: int = 50  # per radius, before it doubles
    max_doublings: int = 20  # a sample the attack cannot flip by then keeps its last point and its true label

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.epochs < 1 or self.batch_size < 1 or self.lr_step < 1 or self.probe < 1 or self.pgd_steps < 1:
            raise ValueError("epochs, batch_size, lr_step, probe and pgd_steps must be ≥ 1")
        if not self.eps0 > 0 or self.max_doublings < 0:
            raise ValueError("eps0 > 0 and max_doublings ≥ 0")


def adversarial_set(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: AmunConfig, task: UnlearnTask,
                    eps0: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(adversarial inputs, the labels the attack reached, the radius each needed) for X (N, ...) of labels Y."""
    model.eval()
    adv, eps = x.clone(), torch.full((len(x),), eps0, device=x.device, dtype=x.dtype)
    pred = torch.full_like(y, -1)
    active = torch.arange(len(x), device=x.device)
    for _ in range(cfg.max_doublings + 1):
        for _ in range(cfg.pgd_steps):
            task.tick()
            a = adv[active].clone().requires_grad_(True)
            logits = model(a)
            p = logits.argmax(1)
            wrong = p != y[active]
            pred[active[wrong]] = p[wrong]
            keep = ~wrong
            if not bool(keep.any()):
                active = active[keep]
                break
            (g,) = torch.autograd.grad(F.cross_entropy(logits, y[active]), a)
            g = g[keep].flatten(1)
            step = (eps[active[keep]] / 10)[:, None] * g / (g.norm(dim=1, keepdim=True) + 1e-10)
            idx = active[keep]
            delta = (adv[idx].flatten(1) + step) - x[idx].flatten(1)
            scale = torch.clamp(eps[idx] / (delta.norm(dim=1) + 1e-12), max=1.0)[:, None]
            adv[idx] = (x[idx].flatten(1) + delta * scale).view_as(x[idx]).detach()
            active = idx
        if len(active) == 0:
            break
        eps[active] *= 2
    pred[pred < 0] = y[pred < 0]  # never flipped: the sample's own label (a copy of it, as a last resort)
    return adv.detach(), pred, eps


@METHODS.register("amun")
def amun(task: UnlearnTask, params: dict[str, object]) -> UnlearnResult:
    cfg = parse_params(AmunConfig, params)
    model = copy.deepcopy(task.model)
    t0 = time.perf_counter()
    ds, forget = task.ds, np.asarray(task.forget_ids)
    xf, yf = ds.features(forget), ds.labels(forget)
    n_probe = min(cfg.probe, len(forget))
    adv_p, lab_p, eps_p = adversarial_set(model, xf[:n_probe], yf[:n_probe], cfg, task, cfg.eps0)
    parts = [(adv_p, lab_p)]
    if len(forget) > n_probe:
        start = float(torch.quantile(eps_p.float(), 0.5))
        adv_r, lab_r, _ = adversarial_set(model, xf[n_probe:], yf[n_probe:], cfg, task, start)
        parts.append((adv_r, lab_r))
    x_adv, y_adv = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    flipped = float((y_adv != yf).float().mean())
    attack_s = time.perf_counter() - t0
    _fine_tune(model, task, x_adv, y_adv, cfg)
    return UnlearnResult(model=model, time_s=seconds_since(t0, task), params=asdict(cfg),
                         info={"attack_seconds": attack_s, "flipped": flipped})


def _fine_tune(model: nn.Module, task: UnlearnTask, x_adv: torch.Tensor, y_adv: torch.Tensor,
               cfg: AmunConfig) -> None:
    """SGD over the real rows (D_r, or D_f) and the adversarial rows, shuffled together each epoch."""
    real = task.retain_ids if cfg.use_retain else np.asarray(task.forget_ids)
    n_real, n = len(real), len(real) + len(x_adv)
    opt = cfg.optimizer(model)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_step, gamma=0.1)
    rng = np.random.default_rng(task.seed)
    model.train()
    for _ in range(cfg.epochs):
        order = rng.permutation(n)
        for start in range(0, n, cfg.batch_size):
            task.tick()
            pick = order[start:start + cfg.batch_size]
            r, a = real[np.sort(pick[pick < n_real])], torch.as_tensor(pick[pick >= n_real] - n_real)
            xs = [task.ds.features(r)] if len(r) else []
            ys = [task.ds.labels(r)] if len(r) else []
            if len(a):
                xs.append(x_adv[a.to(x_adv.device)])
                ys.append(y_adv[a.to(y_adv.device)])
            loss = F.cross_entropy(model(torch.cat(xs)), torch.cat(ys))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    model.eval()
