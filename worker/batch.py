"""One batch: claim pending requests → forget_version (app.ml.forgetting.job: the model's calibrated setting,
validated, verified, escalated; the same job as `unlearnd unlearn`'s) → write the version → commit.

The commit is one transaction: new version + head compare-and-set + audit entry + requests
completed + samples forgotten. If another batch moved the head first, this batch's requests
go back to pending and are redone on the new head (so each sample is forgotten once).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
from sqlalchemy.exc import IntegrityError
from torch import nn

from app.core.config import Settings
from app.core.secrets import subject_key
from app.db import ledger
from app.db.audit import append_entry
from app.db.models import DeletionRequest, ModelVersion
from app.db.session import transaction, utcnow
from app.errors import Conflict, ModelLoadError, public_reason
from app.ml.common.device import describe, resolve
from app.ml.common.hashing import ids_sha256
from app.ml.data.dataset import Dataset
from app.ml.forgetting.gradcache import load_cache
from app.ml.forgetting.job import ForgettingRecord, forget_version
from app.ml.forgetting.methods.base import UnlearnTask
from app.ml.forgetting.policy import Budget, PolicyOptions, Setting
from app.ml.models.checkpoint import ModelDir
from app.ml.sharding.job import forget_shards
from app.ml.sharding.store import load_shards
from app.ml.sharding.train import Sharded
from app.ml.verify.store import load_verifier
from app.service.faults import is_transient
from app.service.ledger_conn import LedgerConn
from app.service.store import erased_rows, store_on
from app.service.versions import accuracy_budget, holdout_ids, ledger_path, load_version, version_dir, write_version
from worker.derived import has_references, verifier_folder
from worker.exact import exact_fit

log = logging.getLogger("unlearnd.worker")


@dataclass
class Claimed:
    batch_id: str
    requests: list[DeletionRequest]
    head: ModelVersion
    first: ModelVersion
    forget: list[int]  # training samples: the served model must forget them
    train_ids: np.ndarray  # active samples before this batch, sorted
    already: dict[str, list[int]]
    others: dict[int, str] = field(default_factory=dict)  # val / test / shadow samples → their split
    forgotten: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # every sample forgotten before

    @property
    def erased(self) -> list[int]:
        """Every sample this batch takes out of the ledger: the training ones and the others."""
        return sorted([*self.forget, *self.others])


@dataclass
class Outcome:
    batch_id: str
    state: str  # completed | failed | released
    version_id: str | None = None
    n_forget: int = 0
    info: dict[str, Any] = field(default_factory=dict)


def claim(settings: Settings, conn: LedgerConn) -> Claimed | None:
    batch_id = str(uuid.uuid4())
    with transaction(conn.write) as s:
        reqs = ledger.claim_batch(s, batch_id=batch_id, max_samples=settings.batch_max_samples, now=utcnow(),
                                  worker_id=settings.worker_id)
        if not reqs:
            return None
        head = ledger.head(s)
        first = ledger.first_version(s)
        by_req = ledger.request_sample_ids(s, request_ids=[r.id for r in reqs])
        active = np.asarray(ledger.active_ids(s), dtype=np.int64)
        live = ledger.active_split_of(s, ids=sorted({i for ids in by_req.values() for i in ids}))
        forgotten = np.asarray(ledger.forgotten_ids(s), dtype=np.int64)
    assert head is not None and first is not None
    forget = sorted(i for i, split in live.items() if split == "train")
    others = {i: split for i, split in live.items() if split != "train"}
    already = {rid: [i for i in ids if i not in live] for rid, ids in by_req.items()}
    return Claimed(batch_id, reqs, head, first, forget, active, already, others, forgotten)


def _by_split(others: dict[int, str]) -> dict[str, int]:
    return dict(Counter(others.values()))


def budget(settings: Settings, first: ModelVersion) -> Budget:
    return accuracy_budget(settings, first.metrics)


def _override(settings: Settings) -> Setting | None:
    """The operator's setting, if any: else what calibration chose for this model at publication."""
    return Setting(settings.unlearn_method, dict(settings.unlearn_params)) if settings.unlearn_method else None


def _derived_pending(settings: Settings, c: Claimed) -> bool:
    """Deleted shadow samples are inside the verifier's reference models until worker/derived.py retrains
    them: the batch's requests are not exact before then."""
    return "shadow" in c.others.values() and has_references(settings)


def process(settings: Settings, conn: LedgerConn, c: Claimed) -> Outcome:
    if not c.forget:  # nothing the served model trained on: no unlearning, but the auditors hear of it
        now = utcnow()
        event = "erase" if c.others else "already_forgotten"
        pending = _derived_pending(settings, c)
        with transaction(conn.write) as s:
            entry = append_entry(s, batch_id=c.batch_id, created_at=now.isoformat(), payload={
                "event": event, "request_ids": sorted(r.id for r in c.requests),
                "served_model_sha256": c.head.sha256, "n_already_forgotten": sum(map(len, c.already.values())),
                "erased_by_split": _by_split(c.others), "erased_ids_sha256": ids_sha256(np.asarray(c.erased)),
                "derived_pending": pending})
            # the served model never held these samples: exact for it at once
            ledger.complete_batch(s, batch_id=c.batch_id, request_ids=[r.id for r in c.requests],
                                  version_id=c.head.id, forget_ids=c.erased, audit_seq=entry.seq, now=now,
                                  already=c.already, method="erase" if c.others else None, exact=True,
                                  derived_pending=pending, subject_key=subject_key(settings))
        return Outcome(c.batch_id, "completed", c.head.id, len(c.others),
                       {"method": "erase" if c.others else None, "exact": True, "derived_pending": pending})
    t0 = time.perf_counter()
    dev = resolve(settings.device)
    ds = store_on(settings.store_dir, dev)
    md = load_version(c.head, device=dev, home=settings.home)
    if not np.array_equal(np.sort(md.splits.train), c.train_ids):
        raise ModelLoadError(f"version {c.head.id} was not trained on the ledger's active samples")
    # every deleted sample, and every row the store erased, stays out of validation and verification: a purged
    # row's label is -1, and the verifier's files may not have dropped it yet
    gone = np.union1d(np.union1d(c.forgotten, np.asarray(list(c.others), dtype=np.int64)), erased_rows(ds))
    if md.meta.shards:
        return _process_sharded(settings, conn, c, md, ds, gone, t0)
    folder = verifier_folder(settings)
    task = UnlearnTask.from_model_dir(
        md, ds, forget_ids=np.asarray(c.forget), train_ids=c.train_ids, exclude=gone, chunk_size=settings.chunk_size,
        cache=load_cache(version_dir(settings.home, c.head), ds.device),
        verifier=load_verifier(folder) if settings.verify_refs and folder.is_dir() else None)
    task.refit = partial(exact_fit, settings, md, ds)  # an exact retrain as a consolidation's: UNLEARND_EXACT_*
    options = PolicyOptions(backtracks=settings.backtracks, on_partial=settings.on_partial,
                            on_invalid=settings.on_invalid, exact_tries=settings.exact_tries)
    done = forget_version(task, md.meta.calibration, holdout_ids(md.splits, settings.holdout_size, gone),
                          budget(settings, c.first), _override(settings), options=options,
                          holdout_acc_before=float(c.head.metrics.get("holdout_acc", float("nan"))))
    if done.model is None:
        return _fail(conn, c, public_reason(f"new weights failed validation: {done.record.problem}"))
    done.record.device, done.record.data_placement = describe(dev), ds.placement
    if done.record.consolidate_now:
        log.warning("batch %s: verdict partial; an exact consolidation follows within %s "
                    "(UNLEARND_PARTIAL_EXPOSURE)", c.batch_id, settings.partial_exposure)
    return _write_and_commit(settings, conn, c, md, done.model, done.record, t0)


def _process_sharded(settings: Settings, conn: LedgerConn, c: Claimed, md: ModelDir, ds: Dataset,
                     gone: np.ndarray, t0: float) -> Outcome:
    """A sharded model forgets exactly at once: the shards that held the batch's samples retrain from their
    last checkpoint before them (app/ml/sharding/job.py); the other constituents are kept bit for bit."""
    sh = load_shards(md)
    if not np.array_equal(sh.plan.ids, c.train_ids):
        raise ModelLoadError(f"version {c.head.id}'s shard plan does not hold the ledger's active samples")
    folder = verifier_folder(settings)
    done = forget_shards(sh, md.model, ds, np.asarray(c.forget), holdout_ids(md.splits, settings.holdout_size, gone),
                         budget(settings, c.first), load_verifier(folder) if settings.verify_refs and
                         folder.is_dir() else None,
                         holdout_acc_before=float(c.head.metrics.get("holdout_acc", float("nan"))))
    if done.sharded is None or done.model is None:
        return _fail(conn, c, public_reason(f"the shard retrain failed validation: {done.record.problem}"))
    done.record.device, done.record.data_placement = describe(resolve(settings.device)), ds.placement
    return _write_and_commit(settings, conn, c, md, done.model, done.record, t0, sharded=done.sharded)


def _write_and_commit(settings: Settings, conn: LedgerConn, c: Claimed, md: ModelDir, model: nn.Module,
                      record: ForgettingRecord, t0: float, *, sharded: Sharded | None = None) -> Outcome:
    fields = record.to_payload()
    payload = {"event": "unlearn", "request_ids": sorted(r.id for r in c.requests), **fields,
               "parent_model_sha256": c.head.sha256, "erased_by_split": _by_split(c.others),
               "derived_pending": _derived_pending(settings, c)}
    meta = md.meta.inherited(unlearn={**fields, "parent_weights_sha256": md.weights_sha256, "batch_id": c.batch_id})
    sha, path = write_version(settings.models_dir, model=model, model_cfg=md.model_cfg, meta=meta,
                              splits=md.splits.without_train(np.asarray(c.forget)), sharded=sharded)
    payload["model_sha256"] = sha
    if settings.debug_commit_delay_s:
        time.sleep(settings.debug_commit_delay_s)
    now = utcnow()
    metrics = {"holdout_acc": record.holdout_acc_after, "n_train": len(c.train_ids) - len(c.forget),
               "verdict": str(record.verdict), "method": record.method, "exact": record.exact}
    try:
        with transaction(conn.write) as s:
            v = ledger.add_version(s, sha256=sha, parent_id=c.head.id, path=ledger_path(path), now=now, metrics=metrics)
            if not ledger.set_head(s, version_id=v.id, expected=c.head.id, now=now):
                raise Conflict("the head moved while this batch ran")
            entry = append_entry(s, batch_id=c.batch_id, created_at=now.isoformat(), payload=payload)
            ledger.complete_batch(s, batch_id=c.batch_id, request_ids=[r.id for r in c.requests],
                                  version_id=v.id, forget_ids=c.erased, audit_seq=entry.seq, now=now,
                                  already=c.already, method=record.method, verdict=str(record.verdict),
                                  exact=record.exact, derived_pending=payload["derived_pending"],
                                  subject_key=subject_key(settings))
    except Conflict as e:
        return _release(conn, c, str(e))
    except IntegrityError:
        # Two workers built on one head: the slower one's version row collides on seq before set_head can
        # say so. That is the head moving, not a fault of the batch's (which abandon() would count towards
        # failing it); anything else is.
        with transaction(conn.read) as s:
            head = ledger.head(s)
        if head is None or head.id == c.head.id:
            raise
        return _release(conn, c, "the head moved while this batch ran")
    total_s = time.perf_counter() - t0
    log.info("batch %s: forgot %d samples → version %s in %.2f s", c.batch_id, len(c.forget), sha[:16], total_s)
    return Outcome(c.batch_id, "completed", sha[:16], len(c.forget),
                   {**fields, "total_s": total_s, "derived_pending": payload["derived_pending"]})


def _release(conn: LedgerConn, c: Claimed, why: str) -> Outcome:
    log.info("batch %s released: %s", c.batch_id, why)
    with transaction(conn.write) as s:
        ledger.release_batch(s, batch_id=c.batch_id, count_attempt=False)
    return Outcome(c.batch_id, "released", info={"why": why})


def _fail(conn: LedgerConn, c: Claimed, reason: str) -> Outcome:
    log.error("batch %s FAILED: %s", c.batch_id, reason)
    with transaction(conn.write) as s:
        ledger.fail_batch(s, batch_id=c.batch_id, reason=reason, now=utcnow())
    return Outcome(c.batch_id, "failed", info={"reason": reason})


def abandon(settings: Settings, conn: LedgerConn, c: Claimed, error: BaseException) -> Outcome:
    """An unexpected error: a transient fault (disk, database, Redis) hands the batch back without spending an
    attempt, and the job backs off; any other error is retried, and fails the batch after max_attempts."""
    if is_transient(error):
        log.warning("batch %s: transient fault (%s: %s); it is retried after a back-off", c.batch_id,
                    type(error).__name__, error)
        with transaction(conn.write) as s:
            ledger.release_batch(s, batch_id=c.batch_id, count_attempt=False)
        return Outcome(c.batch_id, "released", info={"why": str(error), "transient": True})
    if max(r.attempts for r in c.requests) >= settings.max_attempts:
        log.error("batch %s: %s", c.batch_id, error, exc_info=error)
        return _fail(conn, c, public_reason(f"{type(error).__name__}: {error} (after {settings.max_attempts} "
                                            "attempts)"))
    log.exception("batch %s will be retried", c.batch_id, exc_info=error)
    with transaction(conn.write) as s:
        ledger.release_batch(s, batch_id=c.batch_id, count_attempt=True)
    return Outcome(c.batch_id, "released", info={"why": str(error)})
