"""Keyword-only ledger functions for background jobs that fail outside any request (the derived models'
rebuild, the exact consolidation): failures in a row, the last error, and when the next try may run, so that
every process (the API's /readyz, /metrics and /ui; the CLI's retry) sees what the worker's log says."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db.models import DeletionRequest, JobHealth
from app.db.session import as_utc

REBUILD = "rebuild_derived"
CONSOLIDATE = "consolidate"
# SQLite: the checkpoint that takes an erasure's page images out of the ledger's WAL file, refused while a reader
# holds a snapshot (worker/housekeeping.py)
WAL = "wal_checkpoint"
JOBS = (REBUILD, CONSOLIDATE, WAL)
RETRY_NOW = {REBUILD: "unlearnd requests retry --rebuild", CONSOLIDATE: "unlearnd consolidate"}  # what /ui offers
BACKOFF_BASE_S = 60.0
BACKOFF_MAX_S = 3600.0


def backoff_s(failures: int) -> float:
    """60 s after the first failure, doubling, at most an hour."""
    return min(BACKOFF_BASE_S * 2 ** max(failures - 1, 0), BACKOFF_MAX_S)


def _row(session: Session, name: str) -> JobHealth:
    row = session.get(JobHealth, name)
    if row is None:
        row = JobHealth(name=name, failures=0, total_failures=0)
        session.add(row)
    return row


def failed(session: Session, *, name: str, error: str, now: datetime, wait_s: float | None = None) -> JobHealth:
    """One more failure in a row; the next try after WAIT_S (None: backoff_s of the failures so far)."""
    row = _row(session, name)
    if not row.failures:
        row.first_failed_at = now
    row.failures = (row.failures or 0) + 1
    row.total_failures = (row.total_failures or 0) + 1
    row.last_error = error[:2000]
    row.next_try_at = now + timedelta(seconds=backoff_s(row.failures) if wait_s is None else wait_s)
    session.flush()
    return row


def succeeded(session: Session, *, name: str) -> None:
    row = session.get(JobHealth, name)
    if row is not None and row.failures:
        row.failures, row.first_failed_at, row.last_error, row.next_try_at = 0, None, None, None


def failures(session: Session, *, name: str) -> int:
    """Failures in a row so far (0: none, or the last run succeeded)."""
    row = session.get(JobHealth, name)
    return int(row.failures or 0) if row is not None else 0


def may_run(session: Session, *, name: str, now: datetime) -> bool:
    row = session.get(JobHealth, name)
    return row is None or row.next_try_at is None or _utc(row.next_try_at) <= now


def next_try(session: Session, *, name: str) -> datetime | None:
    """When the job may run again after its failures (None: now)."""
    row = session.get(JobHealth, name)
    return None if row is None or row.next_try_at is None else _utc(row.next_try_at)


def retry_now(session: Session, *, name: str) -> bool:
    """Operator action: the next loop of a worker tries the job again. False when it was not failing."""
    row = session.get(JobHealth, name)
    if row is None or not row.failures:
        return False
    row.next_try_at = None
    return True


def health(session: Session) -> list[JobHealth]:
    return list(session.scalars(select(JobHealth).order_by(JobHealth.name)))


def stuck(session: Session, *, min_failures: int) -> list[JobHealth]:
    return list(session.scalars(select(JobHealth).where(JobHealth.failures >= min_failures)
                                .order_by(JobHealth.name)))


def mark_derived_error(session: Session, *, error: str | None) -> int:
    """The requests waiting on the rebuild say why it keeps failing (None: clear it)."""
    res = session.execute(update(DeletionRequest).where(DeletionRequest.derived_pending.is_(True))
                          .values(derived_error=error))
    return int(res.rowcount)  # type: ignore[attr-defined]


def _utc(t: datetime) -> datetime:
    out = as_utc(t)
    assert out is not None
    return out
