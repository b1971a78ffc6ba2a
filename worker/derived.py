"""What the service derived from samples that are now deleted: the verifier's statistics and reference models.

Two steps, both driven by the ledger, so a crash, a kill or a lost job only delays them:

- `drop_statistics`, after every erasure (cheap): deleted ids leave the verifier's per-sample statistics
  and its calibration and evaluation non-members.
- `rebuild_derived`, in the worker's own loop between jobs (never under an RQ job's timeout, which would
  interrupt it and lose the work): while forgotten shadow samples are missing from the verifier's
  `shadow_excluded`, its reference models, trained on the shadow split, are retrained on the active shadow
  samples, swapped in atomically, audited as `rebuild_derived`, and the requests that waited on it settle
  (`exact` once the served model is exact too). Killed half-way, nothing is swapped and the next loop starts
  it again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from app.core.config import Settings
from app.db import ledger
from app.db.audit import append_entry
from app.db.session import transaction, utcnow
from app.ml.common.device import describe, resolve
from app.ml.common.hashing import ids_sha256
from app.ml.training.fit import TrainConfig
from app.ml.training.recipe import train_config_from_meta
from app.ml.verify.base import Verifier
from app.ml.verify.store import FOLDER as VERIFIER_FOLDER
from app.ml.verify.store import load_verifier, save_statistics, save_verifier
from app.service.ledger_conn import LedgerConn
from app.service.store import erased_rows, store_on
from app.service.versions import load_version
from worker import metrics
from worker.exact import exact_references

log = logging.getLogger("unlearnd.worker")


def verifier_folder(settings: Settings) -> Path:
    return settings.home / VERIFIER_FOLDER


def has_references(settings: Settings) -> bool:
    """Whether the service keeps models trained on the shadow split (a reference-based verifier's)."""
    try:
        meta = json.loads((verifier_folder(settings) / "verifier.json").read_text())
    except (OSError, ValueError):
        return False
    return int(meta.get("n_refs", 0)) > 0


def drop_statistics(settings: Settings, forgotten: np.ndarray) -> bool:
    """Per-sample statistics of deleted ids leave the verifier on disk; True if anything changed."""
    folder = verifier_folder(settings)
    if not len(forgotten) or not (folder / "verifier.json").is_file():
        return False
    v = load_verifier(folder)
    slim = v.without(forgotten)
    if len(slim.ref_ids) == len(v.ref_ids) and len(slim.calib_ids) == len(v.calib_ids) \
            and len(slim.eval_ids) == len(v.eval_ids):
        return False
    save_statistics(slim, folder)
    return True


def pending_shadow(settings: Settings, conn: LedgerConn) -> tuple[np.ndarray, np.ndarray]:
    """(every forgotten shadow id, those the reference models were not yet rebuilt without)."""
    with transaction(conn.read) as s:
        gone = np.asarray(ledger.forgotten_ids(s, split="shadow"), dtype=np.int64)
    if not has_references(settings):
        return gone, np.empty(0, np.int64)
    v = load_verifier(verifier_folder(settings))
    return gone, np.setdiff1d(gone, np.asarray(v.info.get("shadow_excluded", []), dtype=np.int64))


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[bool]:
    """A non-blocking lock between the workers sharing this home: one rebuild at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def rebuild_derived(settings: Settings, conn: LedgerConn) -> dict[str, Any] | None:
    """Retrain the reference models if forgotten shadow samples are still in them; settle the requests that
    waited. None when there was nothing to do (or another worker is doing it)."""
    gone, missing = pending_shadow(settings, conn)
    if not len(missing):
        _settle(conn, gone, None)  # heals a crash between the swap and the ledger update
        return None
    with _exclusive(settings.home / ".verifier.lock") as mine:
        if not mine:
            return None
        gone, missing = pending_shadow(settings, conn)  # the previous holder may have just done it
        if not len(missing):
            return None
        log.info("retraining the verifier's reference models without %d deleted shadow samples", len(missing))
        t0 = time.perf_counter()
        v = _retrain(settings, conn, gone)
        seconds = time.perf_counter() - t0
        _settle(conn, gone, {"event": "rebuild_derived", "why": "samples of the shadow split were deleted",
                             "verifier": "rebuilt", "n_shadow_excluded": len(gone),
                             "n_newly_excluded": len(missing), "shadow_excluded_sha256": ids_sha256(gone),
                             "time_s": seconds, "device": describe(resolve(settings.device)),
                             "n_refs": len(v.ref_states)})
    log.info("retrained the verifier's %d reference models without %d deleted shadow samples in %.1f s",
             len(v.ref_states), len(missing), seconds)
    return {"excluded": len(gone), "time_s": seconds}


def _retrain(settings: Settings, conn: LedgerConn, gone: np.ndarray) -> Verifier:
    with transaction(conn.read) as s:
        head = ledger.head(s)
        forgotten = np.asarray(ledger.forgotten_ids(s), dtype=np.int64)
    assert head is not None
    dev = resolve(settings.device)
    md, ds = load_version(head, device=dev, home=settings.home), store_on(settings.store_dir, dev)
    splits = md.splits.without(np.union1d(forgotten, erased_rows(ds)))  # erased rows are never training data
    recipe = train_config_from_meta(md.meta) or TrainConfig()
    epochs = md.meta.retrain_epochs
    old = load_verifier(verifier_folder(settings))
    new = exact_references(settings, md, ds, splits, recipe, epochs, old.name, old.config)
    new.power = new.measure_power(md.model, ds)
    new.member_ids = np.union1d(new.member_ids, old.member_ids)  # ids forgotten earlier stay askable
    new.info = {**new.info, "shadow_excluded": gone.tolist()}
    if settings.debug_rebuild_delay_s:
        time.sleep(settings.debug_rebuild_delay_s)
    with transaction(conn.read) as s:  # samples deleted while it trained leave its statistics too
        forgotten = np.asarray(ledger.forgotten_ids(s), dtype=np.int64)
    new = new.without(forgotten)
    save_verifier(new, verifier_folder(settings))
    return new


def _settle(conn: LedgerConn, gone: np.ndarray, entry: dict[str, Any] | None) -> None:
    if entry is None:  # the sweep's check: a write transaction (SQLite's write lock) only when a request waits
        with transaction(conn.read) as s:
            if not ledger.derived_waiting(s):
                return
    now = utcnow()
    with transaction(conn.write) as s:
        settled = ledger.settle_derived(s, excluded=gone.tolist(), now=now)
        metrics.ages(ledger.exact_received(s, request_ids=settled), now, at="exact")
        if entry is not None or settled:
            payload = {**(entry or {"event": "rebuild_derived", "verifier": "already rebuilt"}),
                       "settled_request_ids": sorted(settled)}
            append_entry(s, batch_id="derived", created_at=now.isoformat(), payload=payload)
