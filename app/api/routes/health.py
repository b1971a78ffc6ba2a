"""Liveness, readiness, metrics."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError
from sqlalchemy import text

from app.api.deps import AppState, State
from app.api.metrics import JobReading
from app.api.problems import problem, responses
from app.api.threads import BackgroundRoute
from app.db import jobs, ledger, workers
from app.db.models import JobHealth
from app.db.session import as_utc, transaction, utcnow
from app.errors import public_reason
from app.ml.verify.verdicts import Verdict
from app.service import deletions

router = APIRouter(route_class=BackgroundRoute, tags=["health"])
VERDICTS = tuple(v.value for v in Verdict)  # always exported, 0 when none


@router.get("/healthz", summary="Liveness: the process answers (checks no dependency)")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses=responses(503),
            summary="Readiness of this API process: ledger, Redis, the ledger process and a loaded model. The "
                    "workers' state is reported beside them (`worker`) and does not make an API unready: it still "
                    "predicts and accepts deletions, which wait in the ledger; /healthz/worker alerts on it")
def readyz(state: State, request: Request) -> Response:
    checks: dict[str, str] = {"database": database_check(state)}
    try:
        checks["redis"] = "ok" if state.redis is not None and state.redis.ping() else "not configured"
    except RedisError as e:
        checks["redis"] = f"error: {type(e).__name__}"
    try:
        state.ledger_pool.call(deletions.ping, timeout_s=5.0)
        checks["ledger_process"] = "ok"
    except Exception as e:
        checks["ledger_process"] = f"error: {type(e).__name__}"
    served = state.holder.current
    checks["model"] = f"ok: {served.version_id}" if served else "not loaded"
    try:
        worker = _worker_check(state)
    except Exception as e:
        worker = f"error: {type(e).__name__}"
    try:
        background = _background(state)
    except Exception as e:
        background = {"ledger": f"error: {type(e).__name__}"}
    stuck = [f"{k} {v}" for k, v in background.items() if v.startswith("stuck")]
    if stuck and not worker.startswith("error"):
        worker = f"error: {'; '.join(stuck)} (worker {worker})"
    if all(v.startswith("ok") for v in checks.values()):
        return JSONResponse({"status": "ready", "checks": checks, "worker": worker, "background": background})
    return problem(503, "not-ready", "Not ready", "a dependency is not ready", request.url.path, checks=checks,
                   worker=worker, background=background)


def database_check(state: AppState) -> str:
    """"ok" when the ledger answers a query, else "error: <exception class>"."""
    try:
        with state.conn.read_engine.connect() as c:
            c.execute(text("SELECT 1"))
        return "ok"
    except Exception as e:
        return f"error: {type(e).__name__}"


def _jobs(state: State) -> tuple[datetime, int, list[JobHealth]]:
    """Now, the stuck threshold, and every background job's row, read once for /readyz or /metrics."""
    with transaction(state.conn.read) as s:
        return utcnow(), state.settings.rebuild_max_failures, jobs.health(s)


def _background(state: State) -> dict[str, str]:
    """Each background job in words: ok, failing (retried), or stuck (failed N times in a row)."""
    now, n, rows = _jobs(state)
    out = dict.fromkeys(jobs.JOBS, "ok")
    for r in rows:
        if not r.failures:
            out[r.name] = "ok"
            continue
        since = as_utc(r.first_failed_at)
        nxt = as_utc(r.next_try_at)
        words = (f"failed {r.failures} time(s) in a row since {since.isoformat() if since else '?'}; last error: "
                 f"{public_reason(r.last_error or '?')}; next try "
                 f"{'now' if nxt is None or nxt <= now else nxt.isoformat()}")
        out[r.name] = ("stuck: " if r.failures >= n else "failing: ") + words
    return out


def job_readings(state: State) -> dict[str, JobReading]:
    now, n, rows = _jobs(state)
    out = {name: JobReading(0, 0, 0.0) for name in jobs.JOBS}
    for r in rows:
        since = as_utc(r.first_failed_at)
        age = (now - since).total_seconds() if since is not None and r.failures >= n else 0.0
        out[r.name] = JobReading(r.total_failures or 0, r.failures or 0, age)
    return out


@router.get("/healthz/worker", responses=responses(503),
            summary="Whether some worker is alive (heartbeat within UNLEARND_WORKER_TIMEOUT_S): what to alert on "
                    "when deletions are accepted but nothing would process them")
def worker_health(state: State, request: Request) -> Response:
    status = _worker_check(state)
    if status.startswith("ok"):
        return JSONResponse({"status": status})
    return problem(503, "no-worker", "No live worker", status, request.url.path)


def _workers(state: State) -> list[workers.WorkerStatus]:
    with transaction(state.conn.read) as s:
        return workers.statuses(s, now=utcnow())


def _worker_check(state: State) -> str:
    """Ready while some worker beats; also before any worker started (an API may come up first). Not ready
    when every worker that ran is gone: deletions would be accepted and never processed."""
    ws = _workers(state)
    live = [w for w in ws if w.alive(state.settings.worker_timeout_s)]
    if live:
        dark = "".join(f"; {w.id} serves no metrics ({w.metrics_error})" for w in ws
                       if w.dark(state.settings.worker_timeout_s))
        return f"ok: {len(live)} live, freshest heartbeat {min(w.heartbeat_age_s for w in live):.1f} s ago{dark}"
    if not ws:
        return "ok: no worker has started yet"
    return f"error: no live worker, last heartbeat {min(w.heartbeat_age_s for w in ws):.0f} s ago"


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"description": "Prometheus text exposition format",
                             "content": {"text/plain": {"schema": {"type": "string"}}}}})
def metrics(state: State) -> Response:
    m = state.metrics
    served = state.holder.current
    if served is not None:
        m.model_seq.set(served.seq)
    with transaction(state.conn.read) as s:
        backlog = ledger.backlog(s, now=utcnow())
        approximate = ledger.approximate_by_verdict(s)
    m.pending.set(backlog["pending"])
    m.oldest_pending.set(backlog["oldest_pending_age_s"])
    m.to_due.set(backlog["seconds_to_nearest_due"])
    m.failed_batches.set(backlog["failed_batches"])
    ws = _workers(state)
    m.live_workers.set(sum(w.alive(state.settings.worker_timeout_s) for w in ws))
    m.dark_workers.set(sum(w.dark(state.settings.worker_timeout_s) for w in ws))
    m.heartbeat_age.set(min((w.heartbeat_age_s for w in ws if not w.stopped), default=float("nan")))
    m.holder.swaps, m.holder.failed_loads = state.holder.swaps, state.holder.failed_loads
    m.to_exact_due.set(backlog["seconds_to_nearest_approximate_due"])
    for verdict in (*VERDICTS, *approximate):
        m.approximate.labels(verdict).set(approximate.get(verdict, 0))
    m.jobs.readings = job_readings(state)
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
