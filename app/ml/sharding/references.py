"""The verifier's reference models for a sharded model: each one sharded as the target is (K shards of R slices,
the same aggregation), so that a reference's answer on a non-member looks like the target's would. A single model
trained on the reference's ids is more confident than an aggregate of K models each trained on a K-th of them,
and LiRA would read that difference as membership."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from torch import nn

from app.ml.data.dataset import Dataset
from app.ml.models.factory import ModelConfig
from app.ml.sharding.plan import make_plan
from app.ml.sharding.train import train_sharded
from app.ml.training.fit import TrainConfig


def sharded_references(model_cfg: ModelConfig, shards: dict[str, object] | None,
                       ) -> Callable[[Dataset, np.ndarray, TrainConfig], nn.Module] | None:
    """BuildInputs.fit_ref for a model whose meta.json `shards` is SHARDS (None: a single model, the default)."""
    if not shards:
        return None
    k, r, how = int(shards["k"]), int(shards["r"]), str(shards.get("how", "mean"))  # type: ignore[call-overload]

    def fit_ref(ds: Dataset, inside: np.ndarray, recipe: TrainConfig) -> nn.Module:
        plan = make_plan(inside, k=k, r=r, seed=recipe.seed)
        return train_sharded(model_cfg, ds, plan, recipe, how=how).aggregate()

    return fit_ref
