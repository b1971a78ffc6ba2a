"""After a commit (and on every sweep, so a crash in between is healed): purge what was forgotten.

- the features of forgotten samples in the data store (overwritten with zeros),
- the weights (and gradient caches) of every version but the head: each contains samples
  forgotten since, and so does the imported initial model folder,
- the deleted samples' statistics in the verifier (its reference models are retrained by
  worker/derived.py in the worker's loop, not here: this runs inside an RQ job, under its timeout),
- a gradient cache for the head, so the next batch takes the fast path,
- version folders that no ledger row names (a batch that lost the race for the head).
Also: re-queue batches whose worker died (lease expired), and re-send lost notifications.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
from redis import Redis
from sqlalchemy import select, update

from app.core.config import Settings
from app.db import jobs, ledger, workers
from app.db.models import ModelVersion
from app.db.session import transaction, truncate_wal, utcnow
from app.ml.common.device import resolve
from app.ml.data.imagefolder import drop_from_mapping
from app.ml.forgetting.gradcache import build_cache, cache_matches, load_cache, save_cache
from app.ml.models.checkpoint import META_FILE
from app.ml.models.meta import ModelMeta
from app.service.ledger_conn import LedgerConn
from app.service.queue import notify
from app.service.store import erase_source, open_store, purge, sample_keys, source_folder, store_on
from app.service.versions import load_version, version_dir
from worker.derived import drop_statistics

log = logging.getLogger("unlearnd.housekeeping")


def purge_forgotten(settings: Settings, conn: LedgerConn) -> None:
    with transaction(conn.read) as s:
        gone = ledger.forgotten_ids(s)
        head = ledger.head(s)
        stale = list(s.scalars(select(ModelVersion).where(ModelVersion.weights_present.is_(True))))
    if head is None or not gone:
        return
    purge(open_store(settings.store_dir, writable=True), gone)
    erased = erase_source(settings.store_dir, ModelMeta.read(version_dir(settings.home, head) / META_FILE),
                          gone)
    if erased:
        log.info("erased %d forgotten samples in the source data too", erased)
    drop_statistics(settings, np.asarray(gone, dtype=np.int64))  # the references: rebuild_derived, outside jobs
    unlinked = _drop_links(settings, gone)
    if unlinked:
        log.info("removed %d forgotten samples' rows from the model folders' samples.csv", unlinked)
    checkpoint(conn, after_erasure=True)
    initial = settings.home / "initial-model"
    if initial.exists():
        shutil.rmtree(initial)
    for v in stale:
        # only versions older than the head we read: the list may have been read after another worker moved
        # the head on (SQLite reads outside an explicit transaction), and the newer head must keep its weights
        if v.seq >= head.seq:
            continue
        shutil.rmtree(version_dir(settings.home, v), ignore_errors=True)
        with transaction(conn.write) as s:
            s.execute(update(ModelVersion).where(ModelVersion.id == v.id).values(weights_present=False))
        log.info("purged the weights of version %s", v.id)


WAL_HELD = "a reader holds a snapshot of the ledger: its WAL file keeps page images from before an erasure"


def checkpoint(conn: LedgerConn, *, after_erasure: bool) -> None:
    """Empty the ledger's WAL. While pages from before an erasure are in it (AFTER_ERASURE, or an earlier refused
    try), a refusal is the `wal_checkpoint` job's failure, seen on /readyz, /metrics and /ui, and a success clears
    it. Every sweep tries, and never waits; a failure counts only once its backoff is over, so that `stuck`
    (rebuild_max_failures in a row) means minutes of a held snapshot, not a busy second. Only SQLite keeps a
    WAL in our home: on another engine there is nothing to read or write."""
    if conn.engine.dialect.name != "sqlite":
        return
    if not after_erasure:
        with transaction(conn.read) as s:
            if not jobs.failures(s, name=jobs.WAL):
                truncate_wal(conn.engine)
                return
    done = truncate_wal(conn.engine)
    with transaction(conn.write) as s:
        if done:
            jobs.succeeded(s, name=jobs.WAL)
        elif jobs.may_run(s, name=jobs.WAL, now=utcnow()):  # the first refusal, or one past its backoff
            jobs.failed(s, name=jobs.WAL, error=WAL_HELD, now=utcnow())
    if not done:
        log.info("the ledger's WAL is still read; its pre-erasure pages go at a later sweep")


def _drop_links(settings: Settings, gone: list[int]) -> int:
    """The id → path/subject rows of forgotten samples leave every samples.csv the service knows of: the
    folder it published from (the operator's), and its own model folders."""
    source = source_folder(settings.store_dir)
    folders = [source] if source is not None else []
    if settings.models_dir.is_dir():
        folders += [d for d in settings.models_dir.iterdir() if d.is_dir()]
    keys = {str(k) for k in sample_keys(settings.store_dir, np.asarray(gone, dtype=np.int64))}
    return sum(drop_from_mapping(f, keys) for f in folders if f.is_dir())


def remove_orphans(settings: Settings, conn: LedgerConn) -> int:
    """Version folders no ledger row names (a batch that lost the head race, or died before its commit)
    are derived from weights that contain forgotten samples: delete them once older than a lease."""
    with transaction(conn.read) as s:
        known = {Path(p).name for p in s.scalars(select(ModelVersion.path))}
    if not settings.models_dir.is_dir():
        return 0
    cutoff, n = time.time() - settings.lease_s, 0
    for d in settings.models_dir.iterdir():
        if d.is_dir() and d.name not in known and d.stat().st_mtime < cutoff:
            shutil.rmtree(d, ignore_errors=True)
            n += 1
    return n


def refresh_cache(settings: Settings, conn: LedgerConn) -> bool:
    """Build the head's gradient cache if it is missing or stale; True if one was built."""
    with transaction(conn.read) as s:
        head = ledger.head(s)
        active = np.asarray(ledger.active_ids(s), dtype=np.int64)
    if head is None:
        return False
    folder = version_dir(settings.home, head)
    if ModelMeta.read(folder / META_FILE).shards:  # no fast update ever runs on a sharded model
        return False
    if cache_matches(load_cache(folder), weights=head.sha256, ids=active):
        return False
    dev = resolve(settings.device)
    md = load_version(head, device=dev, home=settings.home)
    save_cache(build_cache(md.model, store_on(settings.store_dir, dev), active, chunk_size=settings.chunk_size),
               version_dir(settings.home, head))
    log.info("gradient cache built for version %s (%d samples)", head.id, len(active))
    return True


def release_expired(settings: Settings, conn: LedgerConn) -> int:
    """Claims of dead workers (by heartbeat) and of batches past their lease go back to pending."""
    now = utcnow()
    with transaction(conn.write) as s:
        orphaned = workers.release_dead(s, now=now, timeout_s=settings.worker_timeout_s,
                                        max_deaths=settings.max_worker_deaths)
        released = ledger.release_stale(s, now=now, lease_s=settings.lease_s)
    if orphaned:
        log.warning("re-queued %d requests claimed by a worker that died", orphaned)
    if released:
        log.warning("re-queued %d requests whose batch outlived its lease", released)
    return orphaned + released


def sweep(settings: Settings, conn: LedgerConn, redis: Redis) -> int:
    """Release expired claims and, if anything is pending, notify; returns the pending count."""
    release_expired(settings, conn)
    remove_orphans(settings, conn)
    checkpoint(conn, after_erasure=False)  # a checkpoint a reader blocked after the last erasure
    with transaction(conn.read) as s:
        pending = ledger.pending_summary(s)[0]
    if pending:
        notify(settings, redis, reason="sweep", force=True)
    return pending
