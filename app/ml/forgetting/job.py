"""One forgetting job for the CLI, the bench and the worker: a version's task in, a new model and its typed
record out. Callers only do their I/O: `unlearnd unlearn` writes a model directory, the worker writes a
version and commits it with its audit entry, the bench compares it with a retrain.

    task = UnlearnTask.from_model_dir(md, ds, forget_ids=ids, cache=..., verifier=..., exclude=deleted)
    done = forget_version(task, md.meta.calibration, hold, Budget.below(acc0, max_drop=0.01))
    done.model, done.record.to_payload()
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from app.ml.common.hashing import ids_sha256
from app.ml.forgetting.methods.base import UnlearnTask
from app.ml.forgetting.policy import Budget, PolicyOptions, Setting, calibrated_escalation, calibrated_settings, forget
from app.ml.forgetting.record import ForgettingRecord
from app.ml.models.pretrained import start_evidence
from app.ml.training.metrics import accuracy


@dataclass
class Forgotten:
    model: nn.Module | None  # None: nothing kept the accuracy floor (the record says why)
    record: ForgettingRecord


def forget_version(task: UnlearnTask, calibration: dict[str, Any] | None, hold: np.ndarray, budget: Budget,
                   override: Setting | None = None, *, options: PolicyOptions | None = None,
                   holdout_acc_before: float | None = None) -> Forgotten:
    """Forget task.forget_ids from a version whose calibration record (meta.json's) is CALIBRATION: the OVERRIDE
    setting, else the one calibration chose for a batch of this size; validated on HOLD within BUDGET, verified,
    escalated."""
    t0 = time.perf_counter()
    settings = [override] if override is not None else calibrated_settings(calibration, len(task.forget_ids))
    before = accuracy(task.model, task.ds, hold) if holdout_acc_before is None else holdout_acc_before
    escalation = calibrated_escalation(calibration) if override is None else None  # a named setting runs alone
    out = forget(task, settings, hold, budget, options or PolicyOptions(), escalation)
    s = out.setting
    start: dict[str, Any] = {}
    if out.model is not None and task.model_cfg is not None:
        start = start_evidence(task.model, out.model, task.model_cfg.init_sha256, task.model_cfg.freeze,
                               s.method if s else "the policy")
    record = ForgettingRecord(
        method=s.method if s else None, params=s.params if s else None, exact=out.exact, verdict=out.verdict,
        n_forget=len(task.forget_ids), forget_ids_sha256=ids_sha256(np.asarray(task.forget_ids)),
        holdout_acc_before=before, holdout_acc_after=out.holdout_acc, accuracy_floor=budget.floor,
        time_s=out.update_seconds, policy_time_s=time.perf_counter() - t0, attempts=out.attempts,
        verification=out.verification, consolidate_now=out.consolidate_now, problem=out.problem, start=start)
    return Forgotten(out.model, record)
