"""Exact consolidation: approximate unlearning is fast evidence, not erasure.

A retrain from scratch on the ledger's active samples, with the served model's own recipe and seed,
validated and swapped in like any version (head compare-and-set, one transaction with its audit entry
and the covered requests' `exact_at`). It runs when

- a completed request is still approximate and due within `consolidate_margin_days`,
- a batch's verdict was `partial` and on_partial is `consolidate`,
- `consolidate_after` approximate versions follow the last exact one,
- or an operator asks (`unlearnd consolidate`).

Deletions that arrive meanwhile stay pending and are forgotten on the new head; a batch that
commits first moves the head, and this consolidation is then discarded and redone. Killed or
failed, it leaves the served version as it was (its folder is an orphan the sweep removes).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app.core.config import Settings
from app.db import ledger
from app.db.audit import append_entry
from app.db.models import ModelVersion
from app.db.session import as_utc, transaction, utcnow
from app.errors import Conflict
from app.ml.checkpoint import inherited_meta, train_config_from_meta
from app.ml.device import describe, resolve
from app.ml.grads import ids_sha256
from app.ml.policy import validate
from app.ml.pretrained import start_evidence
from app.ml.train import TrainConfig, fit
from app.service.ledger_conn import LedgerConn
from app.service.store import erased_rows, store_on
from app.service.versions import ledger_path, load_version, write_version
from worker.batch import budget

log = logging.getLogger("unlearnd.consolidate")


@dataclass
class Result:
    state: str  # completed | nothing | released | failed
    version_id: str | None = None
    info: dict[str, Any] | None = None


def chain_length(session: Any) -> int:
    """Approximate versions since the newest exact one (publish, retrain or consolidation)."""
    n = 0
    for v in session.scalars(select(ModelVersion).order_by(ModelVersion.seq.desc())):
        if (v.metrics or {}).get("exact", v.parent_id is None):
            return n
        n += 1
    return n


def due(settings: Settings, conn: LedgerConn, now: datetime) -> str | None:
    """Why a consolidation should run now, or None."""
    with transaction(conn.read) as s:
        approx = ledger.approximate_requests(s)
        chain = chain_length(s)
    if not approx:
        return None
    if settings.on_partial == "consolidate" and any(r.verdict == "partial" for r in approx):
        return "a batch's verdict was partial"
    first = approx[0]
    by = as_utc(first.due_at) - timedelta(days=settings.consolidate_margin_days)  # type: ignore[operator]
    if by <= now:
        return f"request {first.id} is due at {as_utc(first.due_at).isoformat()}"  # type: ignore[union-attr]
    if chain >= settings.consolidate_after:
        return f"{chain} approximate versions in a row"
    return None


def consolidate(settings: Settings, conn: LedgerConn, *, reason: str) -> Result:
    with transaction(conn.read) as s:
        head, first = ledger.head(s), ledger.first_version(s)
        active = np.asarray(ledger.active_ids(s), dtype=np.int64)
        forgotten = np.asarray(ledger.forgotten_ids(s), dtype=np.int64)
        covered = [r.id for r in ledger.approximate_requests(s)]
        chain = chain_length(s)
    if head is None or first is None or (not covered and chain == 0):
        return Result("nothing", info={"why": "every completed request is already exact"})
    log.info("consolidating (%s): retraining on %d samples, %d requests to make exact", reason, len(active),
             len(covered))
    t0 = time.perf_counter()
    dev = resolve(settings.device)
    ds = store_on(settings.store_dir, dev)
    md = load_version(head, device=dev, home=settings.home)
    cfg = train_config_from_meta(md.meta) or TrainConfig()
    erased = erased_rows(ds)
    if np.isin(active, erased).any():  # the ledger and the store disagree: the store's erasure wins
        log.error("%d samples the ledger calls active were erased from the store; they are left out",
                  int(np.isin(active, erased).sum()))
        active = np.setdiff1d(active, erased)
    kept = md.splits.without(np.union1d(forgotten, erased))  # a deleted validation sample must not steer training
    model = fit(md.model_cfg, ds, active, kept.val, cfg, progress=False).model
    model.eval()
    start = start_evidence(md.model, model, md.model_cfg.init_sha256, md.model_cfg.freeze, "the consolidation")
    train_s = time.perf_counter() - t0
    hold = kept.holdout(settings.holdout_size)
    floor = budget(settings, first).exact_floor
    acc, problem = validate(model, ds, hold, floor, exact=True)
    if problem:
        log.error("consolidation rejected, the served version stays: %s", problem)
        now = utcnow()
        with transaction(conn.write) as s:  # auditors see the attempt: the requests stay approximate meanwhile
            append_entry(s, batch_id="consolidate", created_at=now.isoformat(),
                         payload={"event": "consolidate_failed", "reason": reason, "why": problem,
                                  "parent_model_sha256": head.sha256, "train_s": train_s,
                                  "device": describe(dev),
                                  "request_ids": sorted(covered)})
        return Result("failed", info={"why": problem, "train_s": train_s})
    splits = dataclasses.replace(kept, train=active)
    record = {"reason": reason, "n_train": len(active), "train_ids_sha256": ids_sha256(active), "train_s": train_s,
              "recipe": dataclasses.asdict(cfg), **start,
              "device": describe(dev), "data_placement": ds.placement,
              "holdout_acc_before": float(head.metrics.get("holdout_acc", float("nan"))), "holdout_acc_after": acc,
              "accuracy_floor": floor, "request_ids": covered, "replaces_chain_of": chain}
    sha, path = write_version(settings.models_dir, model=model, model_cfg=md.model_cfg,
                              meta={**inherited_meta(md.meta), "consolidation": record,
                                    "parent_weights_sha256": md.weights_sha256}, splits=splits)
    if settings.debug_commit_delay_s:
        time.sleep(settings.debug_commit_delay_s)
    return _commit(conn, head, sha, ledger_path(path), record)


def _commit(conn: LedgerConn, head: ModelVersion, sha: str, path: str, record: dict[str, Any]) -> Result:
    now = utcnow()
    payload = {"event": "consolidate", "parent_model_sha256": head.sha256, "model_sha256": sha, "exact": True,
               "method": "retrain", **{k: v for k, v in record.items() if k != "request_ids"},
               "request_ids": sorted(record["request_ids"])}
    metrics = {"holdout_acc": record["holdout_acc_after"], "n_train": record["n_train"], "exact": True,
               "method": "consolidate"}
    try:
        with transaction(conn.write) as s:
            if ledger.head(s) is None or ledger.head(s).id != head.id:  # type: ignore[union-attr]
                raise Conflict("the head moved while the consolidation trained")
            v = ledger.add_version(s, sha256=sha, parent_id=head.id, path=path, now=now, metrics=metrics)
            if not ledger.set_head(s, version_id=v.id, expected=head.id, now=now):
                raise Conflict("the head moved while the consolidation trained")
            append_entry(s, batch_id="consolidate", created_at=now.isoformat(), payload=payload)
            n_exact = ledger.mark_exact(s, request_ids=record["request_ids"], now=now)
            waiting = ledger.derived_waiting_among(s, request_ids=record["request_ids"])
    except (Conflict, IntegrityError) as e:  # IntegrityError: another version took the next seq first
        log.info("consolidation discarded (%s); it will be redone on the new head", e)
        return Result("released", info={"why": str(e)})
    log.info("consolidated: version %s retrained on %d samples; %s", v.id, record["n_train"],
             exact_words(n_exact, waiting))
    return Result("completed", v.id, {**record, "n_exact": n_exact, "n_waiting_derived": waiting})


def exact_words(n_exact: int, waiting: int) -> str:
    """What a consolidation did for its requests, in the words /requests/{id} uses."""
    out = f"{n_exact} request(s) are now exact"
    if waiting:
        out += (f"; {waiting} more are exact for the served model but wait for the verifier's reference models to "
                "be retrained without their shadow samples (`exact` turns true then)")
    return out
