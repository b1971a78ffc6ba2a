"""Worker heartbeats in the ledger: who is alive, and the claims of those that are not.

Each worker process registers under an id, beats every few seconds, and marks itself stopped on
a clean exit. A request claimed by a worker that stopped, or whose last beat is older than the
timeout, goes back to pending at once: no wait for the lease, which only bounds a live but stuck
batch. Whoever detects the death first (the supervising `serve`, another worker's sweep) does it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from app.db.models import DeletionRequest, Worker
from app.db.session import as_utc


@dataclass(frozen=True)
class WorkerStatus:
    id: str
    host: str
    pid: int
    device: str
    heartbeat_age_s: float
    stopped: bool
    metrics_error: str | None = None  # why its Prometheus endpoint is not served

    def alive(self, timeout_s: float) -> bool:
        return not self.stopped and self.heartbeat_age_s <= timeout_s

    def dark(self, timeout_s: float) -> bool:
        """Alive, processing deletions, and serving no metrics: Prometheus cannot see it."""
        return self.alive(timeout_s) and self.metrics_error is not None


def register(session: Session, *, worker_id: str, host: str, pid: int, device: str, now: datetime) -> None:
    row = session.get(Worker, worker_id)
    if row is None:
        session.add(Worker(id=worker_id, host=host, pid=pid, device=device, started_at=now, heartbeat_at=now))
    else:  # a restart under the same id (the supervisor's)
        row.host, row.pid, row.device, row.started_at, row.heartbeat_at, row.stopped_at = (
            host, pid, device, now, now, None)
        row.metrics_error = None
    session.flush()


def metrics_not_served(session: Session, *, worker_id: str, error: str) -> None:
    session.execute(update(Worker).where(Worker.id == worker_id).values(metrics_error=error[:500]))


def beat(session: Session, *, worker_id: str, now: datetime) -> bool:
    res = session.execute(update(Worker).where(Worker.id == worker_id, Worker.stopped_at.is_(None))
                          .values(heartbeat_at=now))
    return res.rowcount == 1  # type: ignore[attr-defined]


def stop(session: Session, *, worker_id: str, now: datetime, max_deaths: int) -> int:
    """Mark WORKER_ID stopped (a clean exit, or a death someone saw) and release its claims."""
    session.execute(update(Worker).where(Worker.id == worker_id, Worker.stopped_at.is_(None)).values(stopped_at=now))
    return _release(session, [worker_id], now=now, max_deaths=max_deaths)


def release_dead(session: Session, *, now: datetime, timeout_s: float, max_deaths: int) -> int:
    """Release the claims of every worker that stopped or went silent for TIMEOUT_S; marks the silent stopped."""
    cutoff = now - timedelta(seconds=timeout_s)
    dead = list(session.scalars(select(Worker.id).where(or_(Worker.stopped_at.is_not(None),
                                                             Worker.heartbeat_at < cutoff))))
    if not dead:
        return 0
    session.execute(update(Worker).where(Worker.id.in_(dead), Worker.stopped_at.is_(None)).values(stopped_at=now))
    return _release(session, dead, now=now, max_deaths=max_deaths)


def died_reason(attempts: int) -> str:
    return (f"its worker died {attempts} times while processing it (killed, or out of memory): failed so that it "
            "stops taking workers down; an operator can retry it (`unlearnd requests retry`)")


def _release(session: Session, worker_ids: list[str], *, now: datetime, max_deaths: int) -> int:
    # the claim's attempt stays counted: the batch may be what killed its worker (out of memory, say), and one
    # that has done so MAX_DEATHS times fails instead of going round forever
    held = DeletionRequest.state == "processing", DeletionRequest.claimed_by.in_(worker_ids)
    for req in session.scalars(select(DeletionRequest).where(*held, DeletionRequest.attempts >= max_deaths)):
        req.state, req.reason, req.completed_at = "failed", died_reason(req.attempts), now
    session.flush()
    res = session.execute(update(DeletionRequest)
                          .where(DeletionRequest.state == "processing", DeletionRequest.claimed_by.in_(worker_ids))
                          .values(state="pending", batch_id=None, claimed_at=None, claimed_by=None))
    return int(res.rowcount)  # type: ignore[attr-defined]


def statuses(session: Session, *, now: datetime) -> list[WorkerStatus]:
    rows = session.scalars(select(Worker).order_by(Worker.heartbeat_at.desc()).limit(100))
    return [WorkerStatus(id=w.id, host=w.host, pid=w.pid, device=w.device, stopped=w.stopped_at is not None,
                         heartbeat_age_s=max(0.0, (now - as_utc(w.heartbeat_at)).total_seconds()),  # type: ignore[operator]
                         metrics_error=w.metrics_error)
            for w in rows]
