"""Exact consolidation: approximate unlearning is fast evidence, not erasure.

A retrain from scratch on the ledger's active samples, with the served model's own recipe and seed,
validated and swapped in like any version (head compare-and-set, one transaction with its audit entry
and the covered requests' `exact_at`). It runs when

- a completed request is still approximate and due within `consolidate_margin_days`,
- a batch's verdict was `partial`, on_partial is `consolidate` and its exposure window ended
  (`UNLEARND_PARTIAL_EXPOSURE`: the partial batches inside it share this one retrain),
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
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from torch import nn

from app.core.config import Settings
from app.db import jobs, ledger
from app.db.audit import append_entry
from app.db.models import ModelVersion
from app.db.session import as_utc, transaction, utcnow
from app.errors import Conflict, ExactJobFailed
from app.ml.common.device import describe, resolve
from app.ml.common.hashing import ids_sha256
from app.ml.data.dataset import Dataset
from app.ml.forgetting.policy import validate
from app.ml.models.checkpoint import META_FILE, ModelDir
from app.ml.models.meta import ModelMeta
from app.ml.models.pretrained import start_evidence
from app.ml.training.fit import TrainConfig
from app.ml.training.recipe import train_config_from_meta
from app.service.ledger_conn import LedgerConn
from app.service.schedule import by_due_date, exact_by
from app.service.store import erased_rows, store_on
from app.service.versions import ledger_path, load_version, version_dir, write_version
from worker import metrics
from worker.batch import budget
from worker.exact import exact_fit

log = logging.getLogger("unlearnd.consolidate")
BACKOFF_S = 600.0  # after a failure the worker waits this long: a failed retrain is minutes of CPU


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


class Reason(str):
    """Why a consolidation runs: due()'s words, with their kind (partial_exposure | due_date | chain) for the
    worker's metrics."""

    kind: str

    def __new__(cls, words: str, kind: str) -> Reason:
        out = super().__new__(cls, words)
        out.kind = kind
        return out


def due(settings: Settings, conn: LedgerConn, now: datetime) -> Reason | None:
    """Why a consolidation should run now, or None."""
    with transaction(conn.read) as s:
        approx = ledger.approximate_requests(s)
        chain = chain_length(s)
    if not approx:
        return None
    when = {r.id: exact_by(settings, due_at=as_utc(r.due_at), completed_at=as_utc(r.completed_at),  # type: ignore[arg-type]
                           verdict=r.verdict) for r in approx}
    first = min(approx, key=lambda r: when[r.id])
    if when[first.id] <= now:
        if when[first.id] < by_due_date(settings, as_utc(first.due_at)):  # type: ignore[arg-type]  # the window
            return Reason(f"request {first.id}'s batch was partial and its exposure window "
                          f"(UNLEARND_PARTIAL_EXPOSURE, {settings.partial_exposure}) ended", "partial_exposure")
        return Reason(f"request {first.id} is due at {as_utc(first.due_at).isoformat()}",  # type: ignore[union-attr]
                      "due_date")
    if chain >= settings.consolidate_after:
        return Reason(f"{chain} approximate versions in a row", "chain")
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
    if ModelMeta.read(version_dir(settings.home, head) / META_FILE).shards:
        return Result("nothing", info={"why": "a sharded model: every deletion retrained its shards exactly"})
    log.info("consolidating (%s): retraining on %d samples, %d requests to make exact", reason, len(active),
             len(covered))
    t0 = time.perf_counter()
    dev = resolve(settings.device)
    ds = store_on(settings.store_dir, dev)
    md = load_version(head, device=dev, home=settings.home)
    recipe = train_config_from_meta(md.meta) or TrainConfig()
    erased = erased_rows(ds)
    if np.isin(active, erased).any():  # the ledger and the store disagree: the store's erasure wins
        log.error("%d samples the ledger calls active were erased from the store; they are left out",
                  int(np.isin(active, erased).sum()))
        active = np.setdiff1d(active, erased)
    kept = md.splits.without(np.union1d(forgotten, erased))  # a deleted validation sample must not steer training
    hold = kept.holdout(settings.holdout_size)
    floors = budget(settings, first)
    floor = floors.exact_floor
    with transaction(conn.read) as s:  # a retry after a refused retrain starts from seeds not tried yet
        offset = jobs.failures(s, name=jobs.CONSOLIDATE) * settings.exact_tries
    try:
        model, run, cfg, retrains = _retrain(settings, md, ds, active, kept.val, recipe, seed_offset=offset,
                                             hold=hold, floor=floor, spread=floors.exact_spread)
    except ExactJobFailed as e:
        return _failed(conn, head, reason, str(e), time.perf_counter() - t0, describe(dev), covered)
    problem = retrains[-1]["rejected"]
    train_s = time.perf_counter() - t0
    if problem:
        seeds = ", ".join(str(r["seed"]) for r in retrains)
        return _failed(conn, head, reason, f"{problem} (retrains from seeds {seeds})", train_s, describe(dev),
                       covered)
    start = start_evidence(md.model, model, md.model_cfg.init_sha256, md.model_cfg.freeze, "the consolidation")
    splits = dataclasses.replace(kept, train=active)
    record = {"reason": reason, "n_train": len(active), "train_ids_sha256": ids_sha256(active), "train_s": train_s,
              "recipe": dataclasses.asdict(cfg), "retrains": retrains, **start,
              "device": describe(dev), "data_placement": ds.placement,
              "distributed": {k: v for k, v in run.items() if k not in ("feature_cache", "epochs")},
              "epochs": run.get("epochs"),
              "feature_cache": run["feature_cache"],
              "holdout_acc_before": float(head.metrics.get("holdout_acc", float("nan"))),
              "holdout_acc_after": retrains[-1]["holdout_acc"],
              "accuracy_floor": floor, "recipe_spread": floors.exact_spread, "request_ids": covered,
              "replaces_chain_of": chain}
    sha, path = write_version(settings.models_dir, model=model, model_cfg=md.model_cfg,
                              meta=md.meta.inherited(consolidation={**record,
                                                                    "parent_weights_sha256": md.weights_sha256}),
                              splits=splits)
    if settings.debug_commit_delay_s:
        time.sleep(settings.debug_commit_delay_s)
    return _commit(conn, head, sha, ledger_path(path), record)


def _retrain(settings: Settings, md: ModelDir, ds: Dataset, active: np.ndarray, val: np.ndarray,
             recipe: TrainConfig, *, seed_offset: int, hold: np.ndarray, floor: float, spread: float,
             ) -> tuple[nn.Module, dict[str, Any], TrainConfig, list[dict[str, Any]]]:
    """The exact retrain, from the recipe's seed + SEED_OFFSET and then the next seeds while the floor refuses it
    (UNLEARND_EXACT_TRIES): the last model, how it ran, its recipe, and every retrain's seed and verdict."""
    retrains: list[dict[str, Any]] = []
    for k in range(settings.exact_tries):
        cfg = dataclasses.replace(recipe, seed=recipe.seed + seed_offset + k)
        model, run = exact_fit(settings, md, ds, active, val, cfg)
        model.eval()
        acc, problem = validate(model, ds, hold, floor, exact=True, spread=spread)
        retrains.append({"seed": cfg.seed, "holdout_acc": acc, "rejected": problem})
        if not problem:
            break
    return model, run, cfg, retrains


def _failed(conn: LedgerConn, head: ModelVersion, reason: str, why: str, train_s: float, device: str,
            covered: list[str]) -> Result:
    """The served version stays; auditors see the attempt, /readyz, /metrics and /ui see the failures in a row
    (app/db/jobs.py), and the requests stay approximate meanwhile."""
    log.error("consolidation failed, the served version stays: %s", why)
    now = utcnow()
    with transaction(conn.write) as s:
        append_entry(s, batch_id="consolidate", created_at=now.isoformat(),
                     payload={"event": "consolidate_failed", "reason": reason, "why": why,
                              "parent_model_sha256": head.sha256, "train_s": train_s, "device": device,
                              "request_ids": sorted(covered)})
        jobs.failed(s, name=jobs.CONSOLIDATE, error=why, now=now, wait_s=BACKOFF_S)
    return Result("failed", info={"why": why, "train_s": train_s})


def _commit(conn: LedgerConn, head: ModelVersion, sha: str, path: str, record: dict[str, Any]) -> Result:
    now = utcnow()
    payload = {"event": "consolidate", "parent_model_sha256": head.sha256, "model_sha256": sha, "exact": True,
               "method": "retrain", **{k: v for k, v in record.items() if k != "request_ids"},
               "request_ids": sorted(record["request_ids"])}
    version_metrics = {"holdout_acc": record["holdout_acc_after"], "n_train": record["n_train"], "exact": True,
                       "method": "consolidate"}
    try:
        with transaction(conn.write) as s:
            if ledger.head(s) is None or ledger.head(s).id != head.id:  # type: ignore[union-attr]
                raise Conflict("the head moved while the consolidation trained")
            v = ledger.add_version(s, sha256=sha, parent_id=head.id, path=path, now=now, metrics=version_metrics)
            if not ledger.set_head(s, version_id=v.id, expected=head.id, now=now):
                raise Conflict("the head moved while the consolidation trained")
            append_entry(s, batch_id="consolidate", created_at=now.isoformat(), payload=payload)
            n_exact = ledger.mark_exact(s, request_ids=record["request_ids"], now=now)
            exact_received = ledger.exact_received(s, request_ids=record["request_ids"])
            jobs.succeeded(s, name=jobs.CONSOLIDATE)
            waiting = ledger.derived_waiting_among(s, request_ids=record["request_ids"])
    except (Conflict, IntegrityError) as e:  # IntegrityError: another version took the next seq first
        log.info("consolidation discarded (%s); it will be redone on the new head", e)
        return Result("released", info={"why": str(e)})
    log.info("consolidated: version %s retrained on %d samples; %s", v.id, record["n_train"],
             exact_words(n_exact, waiting))
    metrics.ages(exact_received, now, at="exact")
    return Result("completed", v.id, {**record, "n_exact": n_exact, "n_waiting_derived": waiting})


def exact_words(n_exact: int, waiting: int) -> str:
    """What a consolidation did for its requests, in the words /requests/{id} uses."""
    out = f"{n_exact} request(s) are now exact"
    if waiting:
        out += (f"; {waiting} more are exact for the served model but wait for the verifier's reference models to "
                "be retrained without their shadow samples (`exact` turns true then)")
    return out
