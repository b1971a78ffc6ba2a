"""The FastAPI application factory (`uvicorn app.api.main:create_app --factory`)."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import torch
from fastapi import FastAPI
from sqlalchemy.exc import IntegrityError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import __version__
from app.api import problems
from app.api.deps import AppState
from app.api.fastlane import PredictFastLane
from app.api.guard import Guard
from app.api.metrics import Metrics
from app.api.routes import audit, deletes, health, models, oip, predict, ui
from app.api.serving import ModelHolder
from app.core.config import Settings
from app.db.keys import ensure_bootstrap_key
from app.db.session import transaction
from app.service.deletions import LedgerContext
from app.service.ledger_conn import LedgerConn
from app.service.ledger_pool import LedgerPool
from app.service.queue import connect
from app.service.store import open_store, source_folder
from app.service.supervisor import SERVE_PID_ENV, die_with_parent

log = logging.getLogger("unlearnd.api")
GIL_SWITCH_S = 0.0005


class MetricsMiddleware:
    """Counts and times requests by route template (a pure ASGI middleware: cheap on the hot path)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0, status = time.perf_counter(), [500]

        async def send_wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapped)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.http.labels(route, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - t0)


def _die_with_serve() -> None:
    """`serve --workers N` runs N API processes: each dies with `serve`, even a SIGKILLed one, as its worker and
    Redis do (else they keep the port and accept deletions nobody will process)."""
    serve_pid = os.environ.get(SERVE_PID_ENV)
    if not serve_pid or int(serve_pid) == os.getpid():
        return
    die_with_parent()
    if os.getppid() != int(serve_pid):  # serve died before the line above took effect
        os._exit(0)


def create_app(settings: Settings | None = None) -> FastAPI:
    _die_with_serve()
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        torch.set_num_threads(settings.serve_threads)
        # A prediction takes about a millisecond; a background thread (a version load, a ledger query in
        # the threadpool) may otherwise hold the GIL for the default 5 ms while the event loop waits.
        sys.setswitchinterval(GIL_SWITCH_S)
        conn = LedgerConn.open(settings)
        if settings.bootstrap_admin_key:
            with contextlib.suppress(IntegrityError), transaction(conn.write) as s:  # another API process did it
                ensure_bootstrap_key(s, key=settings.bootstrap_admin_key)
        store = open_store(settings.store_dir)
        holder = ModelHolder(settings, conn, store)
        holder.start()
        redis = connect(settings.redis_url) if settings.redis_url else None
        pool = LedgerPool(settings, inline=LedgerContext(settings, conn, redis), processes=settings.ledger_processes)
        pool.start()
        source = source_folder(settings.store_dir)
        app.state.unlearnd = AppState(settings=settings, conn=conn, store=store, holder=holder, redis=redis,
                                      metrics=metrics, ledger_pool=pool,
                                      model_name=settings.model_name or (source.name if source else "unlearnd"))
        # ~260k long-lived objects (torch, SQLAlchemy, the app) make a full collection a ~100 ms pause,
        # and the objects a version swap leaves behind trigger one. Frozen, they are never scanned again.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            app.state.unlearnd.keys.close()
            pool.stop()
            holder.stop()
            conn.close()

    app = FastAPI(title="unlearnd", version=__version__, lifespan=lifespan,
                  description="Predictions from a classifier, and GDPR-style deletion of its training samples "
                              "by IAU machine unlearning. Errors are RFC 9457 problem+json.")
    problems.install(app)
    for r in (predict.router, deletes.router, audit.router, models.router, health.router, oip.router, ui.router):
        app.include_router(r)
    app.add_middleware(PredictFastLane)  # type: ignore[arg-type]
    app.add_middleware(Guard)  # type: ignore[arg-type]  # before any body is read: the key, the size limit
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # type: ignore[arg-type]  # outermost: counts both
    return app


def openapi_schema(settings: Settings | None = None) -> dict[str, Any]:
    return create_app(settings).openapi()
