"""The RQ job. Its argument is only a reason string (JSON-serialisable): the ledger says what to do,
so running it twice, or after the work was done, is harmless."""

from __future__ import annotations

import time
from typing import Any

from app.core.config import Settings
from app.db.session import utcnow
from app.service.ledger_conn import LedgerConn
from app.service.queue import announce, connect, job_started
from worker import metrics
from worker.batch import Claimed, Outcome, abandon, claim, process
from worker.housekeeping import purge_forgotten, refresh_cache, release_expired
from worker.window import wait_for_window

BACKOFF_S = (1.0, 60.0)
_backoff = {"until": 0.0, "next_s": BACKOFF_S[0]}  # this worker process's, across its jobs


def _wait_out_backoff() -> None:
    """After a transient fault the next job waits (doubling, up to a minute) instead of spinning on it."""
    left = _backoff["until"] - time.monotonic()
    if left > 0:
        time.sleep(left)


def _after(outcome_info: dict[str, Any]) -> bool:
    """Record a batch's end for the back-off; True if the job should stop and wait."""
    if outcome_info.get("transient"):
        _backoff["until"] = time.monotonic() + _backoff["next_s"]
        _backoff["next_s"] = min(2 * _backoff["next_s"], BACKOFF_S[1])
        return True
    _backoff["next_s"] = BACKOFF_S[0]
    return False


def _observe(c: Claimed, o: Outcome, seconds: float) -> None:
    info = o.info
    exact = bool(info.get("exact"))
    metrics.batch_ended(outcome=o.state, method=info.get("method"), seconds=seconds, verdict=info.get("verdict"),
                        exact=exact, verify_s=(info.get("verification") or {}).get("seconds"),
                        n_requests=len(c.requests))
    if o.state == "completed":
        now = utcnow()
        metrics.ages((r.received_at for r in c.requests), now, at="completed")
        if exact and not info.get("derived_pending"):
            metrics.ages((r.received_at for r in c.requests), now, at="exact")


def process_pending(reason: str) -> dict[str, Any]:
    _wait_out_backoff()
    settings = Settings()
    conn = LedgerConn.open(settings)
    redis = connect(settings.redis_url or "")
    outcomes = []
    job_started(settings, redis)
    try:
        release_expired(settings, conn)  # a busy queue may starve the idle-time sweep
        while wait_for_window(settings, conn):
            c = claim(settings, conn)
            if c is None:
                break
            t0 = time.perf_counter()
            try:
                o = process(settings, conn, c)
            except Exception as e:  # any failure must hand the batch back, never strand it in processing
                o = abandon(settings, conn, c, e)
            _observe(c, o, time.perf_counter() - t0)
            outcomes.append({"batch_id": o.batch_id, "state": o.state, "version": o.version_id,
                             "n_forget": o.n_forget})
            if _after(o.info):
                break  # the sweep re-sends the work; the next job starts after the back-off
            if o.state == "completed" and o.version_id and o.n_forget:
                announce(settings, redis, version_id=o.version_id)
                purge_forgotten(settings, conn)
                refresh_cache(settings, conn)
    finally:
        conn.close()
    return {"reason": reason, "batches": outcomes}
