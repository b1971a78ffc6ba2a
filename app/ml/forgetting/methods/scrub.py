"""SCRUB (Kurmanji et al., NeurIPS 2023, "Towards Unbounded Machine Unlearning"; meghdadk/SCRUB).

A student, initialised at θ*, is taught by θ* (the teacher, frozen): each epoch, for the first
`max_steps` epochs, a *max* pass over D_f pushes the student's outputs away from the teacher's (loss
−KL(teacher ‖ student) at temperature T), then a *min* pass over D_r keeps them close and keeps the task
(loss γ·CE + α·KL). Defaults are the authors' CIFAR-10 settings: SGD lr 5e-4, momentum 0.9, weight
decay 5e-4, T = 4, γ = 0.99, α = 0.001, 3 epochs of which 2 with a max pass, forget batches of 32 and
retain batches of 128 (their lr decay at epochs 3, 5, 9 never fires within 3 epochs).
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

from app.ml.forgetting.methods.base import UnlearnResult, UnlearnTask, parse_params, seconds_since
from app.ml.forgetting.methods.loops import SGDConfig, batches
from app.ml.forgetting.methods.registry import METHODS


@dataclass(frozen=True)
class ScrubConfig(SGDConfig):
    lr: float = 5e-4
    epochs: int = 3
    max_steps: int = 2  # epochs that begin with a max pass over D_f (the authors' msteps)
    gamma: float = 0.99  # cross-entropy on D_r
    alpha: float = 0.001  # KL to the teacher on D_r
    temperature: float = 4.0
    forget_batch: int = 32
    retain_batch: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.epochs < 1 or self.max_steps < 0 or self.temperature <= 0:
            raise ValueError("epochs ≥ 1, max_steps ≥ 0 and temperature > 0")
        if self.forget_batch < 1 or self.retain_batch < 1:
            raise ValueError("batch sizes must be ≥ 1")


def distill_kl(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    """KL(teacher ‖ student) at temperature T, scaled by T² and averaged over the batch (RepDistiller's KD)."""
    return F.kl_div(F.log_softmax(student / t, dim=1), F.softmax(teacher / t, dim=1), reduction="sum") \
        * t * t / student.shape[0]


@METHODS.register("scrub")
def scrub(task: UnlearnTask, params: dict[str, object]) -> UnlearnResult:
    cfg = parse_params(ScrubConfig, params)
    teacher = task.model.eval()
    student = copy.deepcopy(task.model)
    t0 = time.perf_counter()
    opt = cfg.optimizer(student)
    rng = np.random.default_rng(task.seed)
    for epoch in range(cfg.epochs):
        if epoch < cfg.max_steps:
            for b in batches(task.forget_ids, cfg.forget_batch, rng):
                _step(student, teacher, opt, task, b, lambda s, t, y: -distill_kl(s, t, cfg.temperature))
        for b in batches(task.retain_ids, cfg.retain_batch, rng):
            _step(student, teacher, opt, task, b, lambda s, t, y: cfg.gamma * F.cross_entropy(s, y)
                  + cfg.alpha * distill_kl(s, t, cfg.temperature))
    student.eval()
    return UnlearnResult(model=student, time_s=seconds_since(t0, task), params=asdict(cfg))


Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (student, teacher logits, labels)


def _step(student: nn.Module, teacher: nn.Module, opt: torch.optim.Optimizer, task: UnlearnTask, ids: np.ndarray,
          loss_fn: Loss) -> None:
    task.tick()
    x, y = task.ds.features(ids), task.ds.labels(ids)
    student.train()
    with torch.no_grad():
        target = teacher(x)
    loss = loss_fn(student(x), target, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
