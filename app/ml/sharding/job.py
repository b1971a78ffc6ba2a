"""A sharded model's deletion job, for the worker and `unlearnd unlearn`: the exact shard retrain
(train.forget_sharded), validated on the held-out set against the exact floor and verified on the aggregate
like any version, with the typed record every other forgetting step writes (app/ml/forgetting/record.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from torch import nn

from app.ml.common.hashing import ids_sha256
from app.ml.data.dataset import Dataset
from app.ml.forgetting.policy import Budget, validate
from app.ml.forgetting.record import ForgettingRecord
from app.ml.sharding.train import Sharded, forget_sharded
from app.ml.verify.base import Verifier
from app.ml.verify.report import verify_forgetting
from app.ml.verify.verdicts import Verdict

METHOD = "shard_retrain"


@dataclass
class ShardsForgotten:
    sharded: Sharded | None  # None: the retrained aggregate failed validation (the record says why)
    model: nn.Module | None
    record: ForgettingRecord


def forget_shards(sh: Sharded, before: nn.Module, ds: Dataset, forget_ids: np.ndarray, hold: np.ndarray,
                  budget: Budget, verifier: Verifier | None, *, holdout_acc_before: float) -> ShardsForgotten:
    t0 = time.perf_counter()
    forget_ids = np.unique(np.asarray(forget_ids, dtype=np.int64))
    new, info = forget_sharded(sh, ds, forget_ids)
    model = new.aggregate()
    acc, problem = validate(model, ds, hold, budget.exact_floor, exact=True, spread=budget.exact_spread)
    attempt = {"method": METHOD, "params": {}, "time_s": info["seconds"], "holdout_acc": acc, "rejected": problem,
               "shards_retrained": info["shards_retrained"]}
    if problem:
        verification = {"verdict": Verdict.UNVERIFIED, "why": "no model passed validation"}
    elif verifier is None:
        verification = {"verdict": Verdict.UNVERIFIED, "why": "the model has no membership verifier"}
    else:
        verification = verify_forgetting(verifier, ds, forget_ids, before=before, after=model)
        attempt["verdict"] = verification["verdict"]
    record = ForgettingRecord(
        method=METHOD, params={"k": sh.plan.k, "r": sh.plan.r, "shards_retrained": info["shards_retrained"]},
        exact=not problem, verdict=Verdict.parse(verification["verdict"]), n_forget=len(forget_ids),
        forget_ids_sha256=ids_sha256(forget_ids), holdout_acc_before=holdout_acc_before, holdout_acc_after=acc,
        accuracy_floor=budget.exact_floor, time_s=info["seconds"], policy_time_s=time.perf_counter() - t0,
        attempts=[attempt], verification=verification, problem=problem)
    return ShardsForgotten(None if problem else new, None if problem else model, record)
