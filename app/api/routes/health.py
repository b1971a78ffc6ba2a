"""Liveness, readiness, metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError
from sqlalchemy import text

from app.api.deps import State
from app.api.problems import problem, responses
from app.api.threads import BackgroundRoute
from app.service import control

router = APIRouter(route_class=BackgroundRoute, tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers (checks no dependency)")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses=responses(503),
            summary="Readiness: ledger, Redis, the control process and a loaded model")
def readyz(state: State, request: Request) -> Response:
    checks: dict[str, str] = {}
    try:
        with state.conn.read_engine.connect() as c:
            c.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as e:
        checks["database"] = f"error: {type(e).__name__}"
    try:
        checks["redis"] = "ok" if state.redis is not None and state.redis.ping() else "not configured"
    except RedisError as e:
        checks["redis"] = f"error: {type(e).__name__}"
    try:
        state.control.call(control.ping, timeout_s=5.0)
        checks["control"] = "ok"
    except Exception as e:
        checks["control"] = f"error: {type(e).__name__}"
    served = state.holder.current
    checks["model"] = f"ok: {served.version_id}" if served else "not loaded"
    if all(v.startswith("ok") for v in checks.values()):
        return JSONResponse({"status": "ready", "checks": checks})
    return problem(503, "not-ready", "Not ready", "a dependency is not ready", request.url.path, checks=checks)


@router.get("/metrics", summary="Prometheus metrics")
def metrics(state: State) -> Response:
    m = state.metrics
    served = state.holder.current
    if served is not None:
        m.model_seq.set(served.seq)
    m.swaps.set(state.holder.swaps)
    m.failed_loads.set(state.holder.failed_loads)
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
