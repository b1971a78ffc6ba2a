"""Amnesiac unlearning (Graves et al. 2021, AAAI), the relabelling form.

D_f gets random wrong labels; θ* is then trained on D_r ∪ relabelled D_f. (The paper's other
form subtracts recorded batch updates, which needs the whole training history stored.)
Hyper-parameters: Adam, lr 1e-4, batch 64, 1 epoch, as the amnesiac baseline of
Chundawat et al. 2023 (Bad Teaching) uses for CIFAR.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from app.ml.forgetting.methods.base import UnlearnResult, UnlearnTask, parse_params, seconds_since
from app.ml.forgetting.methods.loops import run_epochs
from app.ml.forgetting.methods.registry import METHODS


@dataclass(frozen=True)
class AmnesiacConfig:
    epochs: int = 1
    lr: float = 1e-4
    batch_size: int = 64


def wrong_labels(task: UnlearnTask) -> dict[int, int]:
    rng = np.random.default_rng(task.seed)
    true = task.ds.y[task.forget_ids]
    shift = rng.integers(1, task.ds.num_classes, size=len(true))  # never the true class
    return dict(zip(task.forget_ids.tolist(), ((true + shift) % task.ds.num_classes).tolist(), strict=True))


@METHODS.register("amnesiac")
def amnesiac(task: UnlearnTask, params: dict[str, object]) -> UnlearnResult:
    cfg = parse_params(AmnesiacConfig, params)
    model = copy.deepcopy(task.model)
    t0 = time.perf_counter()
    relabel = wrong_labels(task)

    def labels(batch: np.ndarray) -> torch.Tensor:
        return torch.tensor([relabel.get(int(i), int(task.ds.y[i])) for i in batch], dtype=torch.int64,
                            device=task.ds.device)

    run_epochs(model, task.ds, task.train_ids, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size,
               seed=task.seed, tick=task.tick, labels=labels)
    return UnlearnResult(model=model, time_s=seconds_since(t0, task), params=asdict(cfg))
