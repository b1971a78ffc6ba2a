"""`unlearnd worker`: an RQ SimpleWorker on one queue; whenever it has been idle for a sweep
interval it returns, the sweep runs, and it listens again. A Redis outage is ridden out: the
ledger keeps the requests, the loop retries, and the sweep re-sends what was missed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
import uuid
from types import FrameType

from redis import Redis
from redis.exceptions import RedisError
from rq import SimpleWorker
from rq.exceptions import StopRequested
from rq.serializers import JSONSerializer

from app.core.config import Settings
from app.db import jobs, ledger, workers
from app.db.session import transaction, utcnow
from app.service.ledger_conn import LedgerConn
from app.service.queue import announce, connect, queue
from worker import metrics
from worker.consolidate import consolidate, due
from worker.derived import rebuild_derived
from worker.housekeeping import purge_forgotten, refresh_cache, sweep
from worker.jobs import process_pending  # noqa: F401  imported now, not inside the first deletion's latency

log = logging.getLogger("unlearnd.worker")


class _Stop:
    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def install(self) -> None:
        signal.signal(signal.SIGINT, self)
        signal.signal(signal.SIGTERM, self)


def _wait_for_head(conn: LedgerConn, stop: _Stop) -> None:
    while not stop.requested:
        with transaction(conn.read) as s:
            if ledger.head(s) is not None:
                return
        time.sleep(0.5)


def _lower_priority(priority: str) -> None:
    """Before torch starts its thread pool, so that every worker thread inherits it.

    low: SCHED_BATCH (never preempts the API on wake-up) at nice 10 (a ~10% share against a busy
    API, so deletions still progress under full load). idle: SCHED_IDLE, which runs only on CPU
    that nothing else wants: kindest to latency, but a saturated host starves deletions."""
    if priority == "low":
        with contextlib.suppress(AttributeError, OSError):  # not Linux
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        os.nice(10)
    elif priority == "idle":
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except (AttributeError, OSError):
            os.nice(19)


JOBS_PER_TURN = 10


def maybe_rebuild(settings: Settings, conn: LedgerConn) -> None:
    """Retrain the models derived from deleted shadow samples, here rather than in an RQ job: its timeout
    would interrupt a rebuild that takes minutes. A failure is recorded in the ledger (failures in a row, the
    error, the next try with backoff); after UNLEARND_REBUILD_MAX_FAILURES the waiting requests carry the
    error, and /readyz, /metrics and /ui show it. `unlearnd requests retry --rebuild` clears the backoff."""
    with transaction(conn.read) as s:
        if not jobs.may_run(s, name=jobs.REBUILD, now=utcnow()):
            return
    try:
        rebuild_derived(settings, conn)
    except Exception as e:  # retried until done: the ledger still names the samples the references hold
        error = f"{type(e).__name__}: {e}"
        with transaction(conn.write) as s:
            row = jobs.failed(s, name=jobs.REBUILD, error=error, now=utcnow())
            if row.failures >= settings.rebuild_max_failures:
                jobs.mark_derived_error(s, error=error)
            n, wait = row.failures, jobs.backoff_s(row.failures)
        log.exception("rebuilding the derived models failed (%d in a row); retrying in %.0f s", n, wait, exc_info=e)
        return
    with transaction(conn.write) as s:
        jobs.succeeded(s, name=jobs.REBUILD)


def maybe_consolidate(settings: Settings, conn: LedgerConn, redis: Redis) -> None:
    """Between bursts, not inside an RQ job: a retrain may outlast the job timeout. After a failure the ledger
    holds the next try (worker/consolidate.py: BACKOFF_S), so `unlearnd consolidate` and /readyz see it too."""
    now = utcnow()
    with transaction(conn.read) as s:
        if not jobs.may_run(s, name=jobs.CONSOLIDATE, now=now):
            return
    reason = due(settings, conn, now)
    if reason is None:
        return
    result = consolidate(settings, conn, reason=reason)
    if result.state in ("completed", "failed"):
        metrics.retrain_ended(reason=reason.kind, outcome=result.state,
                              seconds=(result.info or {}).get("train_s"))
    if result.state == "completed" and result.version_id:
        announce(settings, redis, version_id=result.version_id)
        purge_forgotten(settings, conn)
        refresh_cache(settings, conn)


class Heartbeat(threading.Thread):
    """Records in the ledger, every few seconds, that this worker is alive: a thread, so that a batch that
    runs for minutes (a retrain) still beats."""

    def __init__(self, settings: Settings, conn: LedgerConn) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.settings, self.conn, self.done = settings, conn, threading.Event()

    def run(self) -> None:
        st, wid = self.settings, self.settings.worker_id or ""
        while not self.done.wait(st.worker_heartbeat_s):
            try:
                with transaction(self.conn.write) as s:
                    now = utcnow()
                    if not workers.beat(s, worker_id=wid, now=now):  # declared dead while paused: alive again
                        workers.register(s, worker_id=wid, host=socket.gethostname(), pid=os.getpid(),
                                         device=st.device, now=now)
                    # from this thread, so that a dead or stopped worker's claims go back on time even while
                    # this worker is busy with a long batch
                    n = workers.release_dead(s, now=now, timeout_s=st.worker_timeout_s,
                                             max_deaths=st.max_worker_deaths)
                if n:
                    log.warning("released %d requests held by a worker silent for %.0f s", n, st.worker_timeout_s)
            except Exception as e:  # a ledger hiccup: the next beat retries well inside the timeout
                log.warning("heartbeat failed: %s", e)


def identify(settings: Settings) -> Settings:
    """This process's worker id, also in the environment: the RQ jobs build their settings from it."""
    worker_id = settings.worker_id or f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    os.environ["UNLEARND_WORKER_ID"] = worker_id
    return settings.model_copy(update={"worker_id": worker_id})


def run_worker(settings: Settings) -> int:
    if not settings.redis_url:
        raise SystemExit("unlearnd worker needs REDIS_URL (`unlearnd serve` starts an embedded Redis)")
    stop = _Stop()
    stop.install()
    _lower_priority(settings.worker_priority)
    settings = identify(settings)
    conn = LedgerConn.open(settings)
    with transaction(conn.write) as s:
        workers.register(s, worker_id=settings.worker_id or "", host=socket.gethostname(), pid=os.getpid(),
                         device=settings.device, now=utcnow())
    if (why := metrics.serve(settings.worker_metrics_port)) is not None:
        with transaction(conn.write) as s:
            workers.metrics_not_served(s, worker_id=settings.worker_id or "", error=why)
    heartbeat = Heartbeat(settings, conn)
    heartbeat.start()
    try:
        return _serve_queue(settings, conn, stop)
    finally:
        heartbeat.done.set()
        with transaction(conn.write) as s:  # a clean exit: whatever it still held is released now
            workers.stop(s, worker_id=settings.worker_id or "", now=utcnow(), max_deaths=settings.max_worker_deaths)
        conn.close()
        log.info("worker %s stopped", settings.worker_id)


def _serve_queue(settings: Settings, conn: LedgerConn, stop: _Stop) -> int:
    assert settings.redis_url
    redis = connect(settings.redis_url)
    _wait_for_head(conn, stop)
    purge_forgotten(settings, conn)  # heal a crash between a commit and its clean-up
    refresh_cache(settings, conn)
    log.info("worker listening on queue %r", settings.queue_name)
    next_sweep = 0.0
    while not stop.requested:
        try:
            if time.monotonic() >= next_sweep:
                sweep(settings, conn, redis)
                maybe_rebuild(settings, conn)
                maybe_consolidate(settings, conn, redis)
                next_sweep = time.monotonic() + settings.sweep_interval_s
            w = SimpleWorker([queue(settings, redis)], connection=redis, serializer=JSONSerializer)
            try:  # blocks on the queue; returns when idle for a sweep interval
                # max_jobs: under a steady stream of jobs the sweep, rebuilds and consolidation still get a turn
                w.work(max_idle_time=max(1, round(settings.sweep_interval_s)), max_jobs=JOBS_PER_TURN,
                       logging_level="WARNING")
            except StopRequested:  # a signal during the burst's teardown
                break
            stop.install()  # RQ installed its own handlers for the burst
            if getattr(w, "_stop_requested", False) or getattr(w, "_shutdown_requested_date", None):
                break
        except RedisError as e:
            log.warning("Redis unavailable (%s); retrying", e)
            next_sweep = 0.0  # when it is back, re-send what was missed
            time.sleep(1.0)
    return 0
