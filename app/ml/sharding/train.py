"""Training a sharded model slice by slice, and the exact deletion that retrains only the shards it touches.

Slice j of a shard trains on slices 0..j for the slice's share of the recipe's epochs (max_epochs / R, at least
one), resuming from the checkpoint after slice j-1: SISA's incremental training. A constituent's seed is the
recipe's plus its shard index, so a shard retrained from its first slice repeats its own draw."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from app.ml.data.dataset import Dataset
from app.ml.models.aggregate import Aggregate
from app.ml.models.factory import ModelConfig
from app.ml.sharding.plan import ShardPlan
from app.ml.training.fit import TrainConfig, fit_from, seeded_model

State = dict[str, torch.Tensor]


@dataclass
class Sharded:
    plan: ShardPlan
    model_cfg: ModelConfig
    recipe: TrainConfig
    constituents: list[nn.Module]
    checkpoints: list[list[State]]  # [shard][slice]: the weights after that slice
    seconds: list[float] = field(default_factory=list)  # each shard's last training, slices included
    how: str = "mean"

    def aggregate(self) -> Aggregate:
        return Aggregate(self.constituents, self.how).eval()


def slice_recipe(recipe: TrainConfig, r: int) -> TrainConfig:
    return replace(recipe, max_epochs=max(1, math.ceil(recipe.max_epochs / r)))


def _snapshot(model: nn.Module) -> State:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _train_slices(model: nn.Module, ds: Dataset, plan: ShardPlan, k: int, first: int, recipe: TrainConfig,
                  ) -> list[State]:
    cfg = slice_recipe(recipe, plan.r)
    out = []
    for j in range(first, plan.r):
        seed = recipe.seed + 1000 * k + j
        torch.manual_seed(seed)  # dropout and the like: a slice retrained from its checkpoint repeats its draws
        fit_from(model, ds, plan.members(k, upto=j + 1), replace(cfg, seed=seed))
        out.append(_snapshot(model))
    return out


def train_sharded(model_cfg: ModelConfig, ds: Dataset, plan: ShardPlan, recipe: TrainConfig, *,
                  how: str = "mean") -> Sharded:
    constituents, checkpoints, seconds = [], [], []
    for k in range(plan.k):
        t0 = time.perf_counter()
        model = seeded_model(model_cfg, recipe.seed + k, ds.device)
        checkpoints.append(_train_slices(model, ds, plan, k, 0, recipe))
        constituents.append(model.eval())
        seconds.append(time.perf_counter() - t0)
    return Sharded(plan, model_cfg, recipe, constituents, checkpoints, seconds, how)


def forget_sharded(sh: Sharded, ds: Dataset, forget_ids: np.ndarray) -> tuple[Sharded, dict[str, Any]]:
    """The exact deletion: each shard holding some of FORGET_IDS is retrained without them from the checkpoint
    before the first slice that held one; the other constituents and their checkpoints are kept as they are.
    Every checkpoint that saw a forgotten sample is replaced, never kept."""
    t0 = time.perf_counter()
    shards, slices = sh.plan.where(np.unique(np.asarray(forget_ids, dtype=np.int64)))
    plan = sh.plan.without(forget_ids)
    constituents, checkpoints = list(sh.constituents), [list(c) for c in sh.checkpoints]
    retrained = []
    for k in sorted(set(shards.tolist())):
        first = int(slices[shards == k].min())
        s0 = time.perf_counter()
        if first == 0:
            model = seeded_model(sh.model_cfg, sh.recipe.seed + k, ds.device)
        else:
            model = copy.deepcopy(constituents[k])
            model.load_state_dict(checkpoints[k][first - 1])
        checkpoints[k] = checkpoints[k][:first] + _train_slices(model, ds, plan, k, first, sh.recipe)
        constituents[k] = model.eval()
        retrained.append({"shard": k, "from_slice": first, "slices": plan.r - first,
                          "seconds": time.perf_counter() - s0})
    out = Sharded(plan, sh.model_cfg, sh.recipe, constituents, checkpoints, sh.seconds, sh.how)
    return out, {"shards_retrained": retrained, "seconds": time.perf_counter() - t0, "n_forget": len(forget_ids)}
