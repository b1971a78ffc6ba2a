"""What every unlearning method takes and returns."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from torch import nn

from app.errors import ConfigError, ForgetSetError, OverTimeBudget
from app.ml.common.device import synchronize
from app.ml.data.dataset import Dataset
from app.ml.forgetting.gradcache import GradCache
from app.ml.models.checkpoint import ModelDir
from app.ml.models.factory import ModelConfig
from app.ml.training.fit import TrainConfig
from app.ml.training.recipe import train_config_from_meta
from app.ml.verify.base import Verifier

# an exact retrain run elsewhere (the worker's torchrun job): (active ids, validation ids, recipe) → the model and
# how it ran ({world_size, backend, feature_cache, epochs})
Refit = Callable[[np.ndarray, np.ndarray, TrainConfig], tuple[nn.Module, dict[str, Any]]]


@dataclass
class UnlearnTask:
    model: nn.Module  # θ*: methods must not modify it
    ds: Dataset
    train_ids: np.ndarray  # D: every active training id, the forget ids included
    forget_ids: np.ndarray  # D_f ⊆ D
    weights_sha256: str
    cache: GradCache | None = None
    chunk_size: int = 1024
    seed: int = 0
    # what retraining-style methods need: how θ* was made, and the data it stopped on
    model_cfg: ModelConfig | None = None
    train_cfg: TrainConfig | None = None
    val_ids: np.ndarray | None = None
    epochs_trained: int | None = None
    verifier: Verifier | None = None  # the model's membership verifier, for methods that target it
    deadline: float | None = None  # time.perf_counter() past which a multi-step method stops (calibration)
    refit: Refit | None = None  # how retrain runs its fit; None: in this process

    @classmethod
    def from_model_dir(cls, md: ModelDir, ds: Dataset, *, forget_ids: np.ndarray, train_ids: np.ndarray | None = None,
                       cache: GradCache | None = None, verifier: Verifier | None = None,
                       exclude: np.ndarray | None = None, chunk_size: int = 1024) -> UnlearnTask:
        """The task of forgetting FORGET_IDS from the version in MD: its weights, recipe, seed and validation
        ids; TRAIN_IDS default to its training split. EXCLUDE: deleted samples, which neither steer a retrain's
        early stopping nor are scored by the verifier."""
        gone = np.asarray([] if exclude is None else exclude, dtype=np.int64)
        return cls(model=md.model, ds=ds, train_ids=np.sort(md.splits.train) if train_ids is None else train_ids,
                   forget_ids=np.asarray(forget_ids, dtype=np.int64), weights_sha256=md.weights_sha256, cache=cache,
                   chunk_size=chunk_size, seed=md.meta.seed, model_cfg=md.model_cfg,
                   train_cfg=train_config_from_meta(md.meta), val_ids=np.setdiff1d(md.splits.val, gone),
                   epochs_trained=md.meta.epochs,
                   verifier=verifier.without(gone) if verifier is not None and len(gone) else verifier)

    def require_training_setup(self, method: str) -> tuple[ModelConfig, TrainConfig, np.ndarray]:
        if self.model_cfg is None or self.train_cfg is None or self.val_ids is None:
            raise ConfigError(f"{method} needs the model's training config and validation ids")
        return self.model_cfg, self.train_cfg, self.val_ids

    def tick(self) -> None:
        """Called between minibatches by the methods that take many: past the deadline, stop."""
        if self.deadline is not None and time.perf_counter() > self.deadline:
            raise OverTimeBudget("past the time budget")

    @property
    def retain_ids(self) -> np.ndarray:
        return np.setdiff1d(self.train_ids, self.forget_ids)


def seconds_since(t0: float, task: UnlearnTask) -> float:
    """Wall time of an update, its queued GPU kernels included (else a GPU time is only the launches)."""
    synchronize(task.ds.device)
    return time.perf_counter() - t0


@dataclass
class UnlearnResult:
    model: nn.Module
    time_s: float  # the update alone: no I/O, no evaluation
    params: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)  # e.g. IAU's "path": "fast" | "slow"


Method = Callable[[UnlearnTask, dict[str, Any]], UnlearnResult]

C = TypeVar("C")


def parse_params(cls: type[C], params: dict[str, Any]) -> C:
    """Build a method's config dataclass, refusing unknown names and bad values."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(params) - names)
    if unknown:
        raise ConfigError(f"{cls.__name__} does not take {unknown}; valid: {sorted(names)}")
    try:
        return cls(**params)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{cls.__name__}: {e}") from e


def check_forget_ids(train_ids: np.ndarray, forget_ids: np.ndarray) -> np.ndarray:
    """Unique, sorted forget ids, all inside the training split."""
    forget = np.unique(np.asarray(forget_ids, dtype=np.int64))
    if len(forget) == 0:
        raise ForgetSetError("the forget list is empty")
    outside = np.setdiff1d(forget, train_ids)
    if len(outside):
        shown = ", ".join(str(int(i)) for i in outside[:20]) + (" …" if len(outside) > 20 else "")
        raise ForgetSetError(f"{len(outside)} forget id(s) are not in the train split: {shown}",
                             bad_ids=outside.tolist())
    return forget
