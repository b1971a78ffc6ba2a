"""A stream of deletion requests replayed through the service's own code on a simulated clock.

The ledger, the batch claim and `worker.batch.process` (the fast update and its verifier), the housekeeping
after each version (purge, gradient cache), the consolidation schedule (`worker.consolidate.due`) and
`consolidate` itself run as in the worker; only time is simulated (app/db/session.py: simulated_clock). The
worker is serial: between two events the clock jumps, and each event's real seconds move it on, so a retrain
that takes a minute delays what comes after it by a minute. Every event's real seconds are its compute.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from app.core.config import Settings
from app.db import jobs, ledger
from app.db.migrate import upgrade
from app.db.models import DeletionRequest, ModelVersion
from app.db.session import as_utc, simulated_clock, transaction
from app.service.bootstrap import publish_initial
from app.service.deletions import LedgerContext, accept_deletion
from app.service.ledger_conn import LedgerConn
from app.service.schedule import exact_by
from worker.batch import abandon, claim, process
from worker.consolidate import chain_length, consolidate, due
from worker.housekeeping import purge_forgotten, refresh_cache

MAX_EVENTS = 5000  # a replay that does not settle (a batch released forever) stops with an error


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Replay:
    events: list[dict[str, Any]] = field(default_factory=list)  # {kind, at_s, seconds, …}
    requests: list[dict[str, Any]] = field(default_factory=list)
    versions: list[dict[str, Any]] = field(default_factory=list)


def replay(settings: Settings, model_dir: Path, stream: list[tuple[float, list[int]]], *, start: datetime,
           until_s: float) -> Replay:
    """STREAM: (seconds after START, sample ids) per request, in order. Runs until UNTIL_S, or later while
    a request is not yet exact and its due date has not passed."""
    clock = Clock(start)
    out = Replay()
    with simulated_clock(clock):
        settings.home.mkdir(parents=True, exist_ok=True)
        upgrade(settings.db_url)
        conn = LedgerConn.open(settings)
        try:
            publish_initial(settings, conn, model_dir=model_dir, progress=False)
            ctx = LedgerContext(settings, conn, None)
            for at_s, ids in stream:
                _run_until(settings, conn, clock, start + timedelta(seconds=at_s), out, start)
                clock.now = max(clock.now, start + timedelta(seconds=at_s))
                accept_deletion(ctx, sample_ids=list(ids), subject_id=None, idempotency_key=None, api_key_id=None)
            end = start + timedelta(seconds=until_s)
            _run_until(settings, conn, clock, end, out, start)
            _run_until(settings, conn, clock, end + timedelta(days=settings.retention_days), out, start,
                       only_while_open=True)
            _read_ledger(conn, out, start)
        finally:
            conn.close()
    return out


def _run_until(settings: Settings, conn: LedgerConn, clock: Clock, until: datetime, out: Replay, start: datetime,
               *, only_while_open: bool = False) -> None:
    for _ in range(MAX_EVENTS):
        kind, when = _next_event(settings, conn, clock.now)
        if kind is None or when is None or when > until:
            return
        if only_while_open and kind != "batch" and _all_exact(conn):
            return
        clock.now = max(clock.now, when)
        t0 = time.perf_counter()
        info = _batch(settings, conn) if kind == "batch" else _consolidate(settings, conn, clock.now)
        seconds = time.perf_counter() - t0
        if info["state"] in ("nothing", "not due"):  # the schedule moved meanwhile: look again a minute on
            clock.now += timedelta(minutes=1)
            continue
        out.events.append({"kind": kind, "at_s": (clock.now - start).total_seconds(), "seconds": seconds, **info})
        clock.now += timedelta(seconds=seconds)
    raise RuntimeError(f"the replay did not settle within {MAX_EVENTS} events")


def _next_event(settings: Settings, conn: LedgerConn, now: datetime) -> tuple[str | None, datetime | None]:
    """The worker's next work: a batch when the window of the oldest pending request closes, a consolidation
    when the first approximate request's exact-by time comes (or the chain is long), whichever is first."""
    with transaction(conn.read) as s:
        n, rows, oldest = ledger.pending_summary(s)
        approx = ledger.approximate_requests(s)
        chain = chain_length(s)
        retry = jobs.next_try(s, name=jobs.CONSOLIDATE)
    batch_at = None
    if n and oldest is not None:
        batch_at = now if rows >= settings.batch_max_samples else \
            as_utc(oldest) + timedelta(seconds=settings.batch_max_wait_s)  # type: ignore[operator]
    cons_at = None
    if approx:
        cons_at = now if chain >= settings.consolidate_after else min(
            exact_by(settings, due_at=as_utc(r.due_at), completed_at=as_utc(r.completed_at),  # type: ignore[arg-type]
                     verdict=r.verdict) for r in approx)
        if retry is not None:
            cons_at = max(cons_at, retry)
    options = [(t, k) for t, k in ((batch_at, "batch"), (cons_at, "consolidate")) if t is not None]
    if not options:
        return None, None
    when, kind = min(options, key=lambda o: (o[0], o[1] != "batch"))
    return kind, max(when, now)


def _all_exact(conn: LedgerConn) -> bool:
    with transaction(conn.read) as s:
        return not ledger.approximate_requests(s)


def _batch(settings: Settings, conn: LedgerConn) -> dict[str, Any]:
    c = claim(settings, conn)
    if c is None:
        return {"state": "nothing"}
    try:
        o = process(settings, conn, c)
    except Exception as e:  # as the worker's job: the batch goes back or fails, never strands
        o = abandon(settings, conn, c, e)
    if o.state == "completed" and o.n_forget:
        purge_forgotten(settings, conn)
        refresh_cache(settings, conn)
    info = o.info or {}
    return {"state": o.state, "n_forget": o.n_forget, "method": info.get("method"), "verdict": info.get("verdict"),
            "exact": info.get("exact"), "reason": info.get("reason")}


def _consolidate(settings: Settings, conn: LedgerConn, now: datetime) -> dict[str, Any]:
    reason = due(settings, conn, now)
    if reason is None:
        return {"state": "not due"}
    result = consolidate(settings, conn, reason=reason)
    if result.state == "completed":
        purge_forgotten(settings, conn)
        refresh_cache(settings, conn)
    return {"state": result.state, "reason": reason, "why": (result.info or {}).get("why")}


def _read_ledger(conn: LedgerConn, out: Replay, start: datetime) -> None:
    def rel(t: datetime | None) -> float | None:
        return None if t is None else (as_utc(t) - start).total_seconds()  # type: ignore[operator]

    with transaction(conn.read) as s:
        for r in s.scalars(select(DeletionRequest).order_by(DeletionRequest.received_at)):
            out.requests.append({"received_s": rel(r.received_at), "due_s": rel(r.due_at),
                                 "completed_s": rel(r.completed_at), "exact_s": rel(r.exact_at), "state": r.state,
                                 "method": r.method, "verdict": r.verdict})
        for v in s.scalars(select(ModelVersion).order_by(ModelVersion.seq)):
            m = v.metrics or {}
            out.versions.append({"at_s": rel(v.created_at), "holdout_acc": m.get("holdout_acc"),
                                 "exact": bool(m.get("exact", v.parent_id is None)), "method": m.get("method"),
                                 "verdict": m.get("verdict")})


def poisson_stream(rng: np.random.Generator, train_ids: np.ndarray, *, days: float, per_day: float,
                   per_subject: int) -> list[tuple[float, list[int]]]:
    """Requests at a steady rate (Poisson arrivals), each a subject's PER_SUBJECT training samples; no sample
    is asked for twice."""
    n = int(rng.poisson(per_day * days))
    n = min(n, len(train_ids) // per_subject)
    at = np.sort(rng.uniform(0, days * 86400, size=n))
    subjects = rng.permutation(train_ids)[: n * per_subject].reshape(n, per_subject)
    return [(float(t), sorted(int(i) for i in ids)) for t, ids in zip(at, subjects, strict=True)]
