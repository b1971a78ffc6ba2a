"""Gradient ascent (NegGrad): maximise the loss on D_f for one epoch.

Hyper-parameters: Adam, lr 1e-5, batch 64, 1 epoch: the NegGrad baseline as used by
Kurmanji et al. 2023 (SCRUB) and Chundawat et al. 2023; a small lr because ascent has no
floor and quickly destroys the model.
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
from app.ml.forgetting.methods.loops import run_epochs
from app.ml.forgetting.methods.registry import METHODS


@dataclass(frozen=True)
class AscentConfig:
    epochs: int = 1
    lr: float = 1e-5
    batch_size: int = 64


def _negative_ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ids: np.ndarray) -> torch.Tensor:
    return -F.cross_entropy(model(x), y)


@METHODS.register("gradient_ascent")
def gradient_ascent(task: UnlearnTask, params: dict[str, object]) -> UnlearnResult:
    cfg = parse_params(AscentConfig, params)
    model = copy.deepcopy(task.model)
    t0 = time.perf_counter()
    run_epochs(model, task.ds, task.forget_ids, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size,
               seed=task.seed, tick=task.tick, loss_fn=_negative_ce)
    return UnlearnResult(model=model, time_s=seconds_since(t0, task), params=asdict(cfg))
