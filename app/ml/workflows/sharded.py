"""`unlearnd train --shards K --slices R`: a SISA model directory (app/ml/sharding), and its exact deletion for
`unlearnd unlearn`. The constituents train with the model's recipe, init and freeze; the verifier's references
are sharded as the model is; there is no gradient cache and no calibration, since no fast update ever runs."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.errors import ConfigError, UnlearnFailed
from app.ml.common.provenance import provenance
from app.ml.data.dataset import Dataset, SplitConfig, Splits
from app.ml.forgetting.policy import Budget
from app.ml.models.checkpoint import ModelDir, save_model_dir
from app.ml.models.factory import ModelConfig
from app.ml.models.meta import ModelMeta
from app.ml.sharding.job import forget_shards
from app.ml.sharding.plan import ShardSpec, make_plan
from app.ml.sharding.store import load_shards, save_shards, shards_record
from app.ml.sharding.train import train_sharded
from app.ml.training.fit import TrainConfig
from app.ml.training.metrics import accuracy
from app.ml.verify.base import Verifier


def subjects_of(ds: Dataset) -> dict[int, str] | None:
    """Whose each row is, where the data says: a subject's rows then all live in one shard."""
    if ds.subjects is None:
        return None
    return {int(i): str(ds.subjects[i]) for i in np.flatnonzero(ds.subjects != "")}


def train_sharded_fields(model_cfg: ModelConfig, ds: Dataset, splits: Splits, train_cfg: TrainConfig,
                         split_cfg: SplitConfig, spec: ShardSpec, *, progress: bool) -> tuple[Any, dict[str, Any]]:
    """The sharded model, trained, and the meta fields of its training run."""
    if not train_cfg.max_epochs >= spec.r:
        raise ConfigError(f"--slices {spec.r} needs at least as many epochs (--max-epochs is {train_cfg.max_epochs})")
    plan = make_plan(splits.train, k=spec.k, r=spec.r, seed=train_cfg.seed, subjects=subjects_of(ds))
    if progress:
        print(f"training {spec.k} constituents of {spec.r} slices each ({len(splits.train)} samples)", flush=True)
    sh = train_sharded(model_cfg, ds, plan, train_cfg, how=spec.how)
    model = sh.aggregate()
    fields = {"alpha": train_cfg.alpha, "gr_norm": train_cfg.gr_norm, "seed": train_cfg.seed,
              "train_config": asdict(train_cfg), "split_config": asdict(split_cfg), "epochs": train_cfg.max_epochs,
              "seconds_per_epoch": sum(sh.seconds) / train_cfg.max_epochs,
              "train_acc": accuracy(model, ds, splits.train),
              "val_acc": accuracy(model, ds, splits.val) if len(splits.val) else None,
              "test_acc": accuracy(model, ds, splits.test), "n_train": len(splits.train),
              "split_origin": splits.origin, "shards": shards_record(sh)}
    return sh, fields


def unlearn_sharded(md: ModelDir, ds: Dataset, forget_ids: np.ndarray, out: Path, *, hold: np.ndarray,
                    budget: Budget, verifier: Verifier | None, device: torch.device) -> ModelMeta:
    """`unlearnd unlearn` on a sharded model: its exact shard retrain, written to OUT."""
    if not len(forget_ids):
        raise ConfigError("nothing to forget")
    acc0 = accuracy(md.model, ds, hold)
    done = forget_shards(load_shards(md), md.model, ds, forget_ids, hold, budget, verifier,
                         holdout_acc_before=acc0)
    if done.sharded is None or done.model is None:
        raise UnlearnFailed(f"the shard retrain failed validation: {done.record.problem}; nothing was written")
    new_splits = md.splits.without_train(forget_ids)
    record = {**done.record.to_payload(), "chosen_by": "sharded model", "parent_weights_sha256": md.weights_sha256,
              "time_s": done.record.time_s,
              "forget_acc_before": accuracy(md.model, ds, forget_ids),
              "forget_acc_after": accuracy(done.model, ds, forget_ids),
              "test_acc_before": accuracy(md.model, ds, md.splits.test),
              "test_acc_after": accuracy(done.model, ds, md.splits.test)}
    meta = md.meta.inherited(**provenance(device, ds.placement), n_train=len(new_splits.train),
                             test_acc=record["test_acc_after"], unlearn=record,
                             train_acc=accuracy(done.model, ds, new_splits.train))
    save_model_dir(out, model=done.model, model_cfg=md.model_cfg, meta=meta, splits=new_splits)
    save_shards(out, done.sharded)
    return meta
