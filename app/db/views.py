"""Read-only queries behind the operator page: each bounded, none reads the whole log."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.models import AuditEntry, DeletionRequest, ModelVersion, RequestSample
from app.db.session import as_utc
from app.errors import public_reason

STATES = ("pending", "processing", "completed", "failed", "rejected")


@dataclass(frozen=True)
class RequestRow:
    id: str
    state: str
    received_at: datetime
    due_at: datetime
    completed_at: datetime | None
    subject_id: str | None
    n_samples: int
    method: str | None
    verdict: str | None
    exact_at: datetime | None
    audit_seq: int | None
    reason: str | None
    derived_pending: bool = False
    derived_error: str | None = None  # why the derived models' rebuild keeps failing


def request_counts(session: Session) -> dict[str, int]:
    rows = session.execute(select(DeletionRequest.state, func.count()).group_by(DeletionRequest.state))
    counts = {s: 0 for s in STATES}
    counts.update({str(k): int(n) for k, n in rows})
    return counts


def requests(session: Session, *, state: str | None, limit: int, offset: int = 0,
             subjects: Sequence[str] = ()) -> list[RequestRow]:
    """The open ones by due date (the most urgent first), else the most recent; SUBJECTS: only requests naming
    one of these (a raw subject id while pending, its digest once completed)."""
    q = select(DeletionRequest)
    if state:
        q = q.where(DeletionRequest.state == state)
    if subjects:
        q = q.where(DeletionRequest.subject_id.in_(list(subjects)))
    order = (DeletionRequest.due_at,) if state in ("pending", "processing") else (DeletionRequest.received_at.desc(),)
    reqs = list(session.scalars(q.order_by(*order, DeletionRequest.id).offset(offset).limit(limit)))
    return _rows(session, reqs)


def request_row(session: Session, *, request_id: str) -> RequestRow | None:
    req = session.get(DeletionRequest, request_id)
    return _rows(session, [req])[0] if req is not None else None


def _rows(session: Session, reqs: list[DeletionRequest]) -> list[RequestRow]:
    sizes = {rid: n for rid, n in session.execute(select(RequestSample.request_id, func.count())
                                                  .where(RequestSample.request_id.in_([r.id for r in reqs]))
                                                  .group_by(RequestSample.request_id))} if reqs else {}
    return [RequestRow(id=r.id, state=r.state, received_at=as_utc(r.received_at),  # type: ignore[arg-type]
                       due_at=as_utc(r.due_at), completed_at=as_utc(r.completed_at),  # type: ignore[arg-type]
                       subject_id=r.subject_id, n_samples=int(sizes.get(r.id, 0)), method=r.method,
                       verdict=r.verdict, exact_at=as_utc(r.exact_at), audit_seq=r.audit_seq,
                       reason=public_reason(r.reason) if r.reason else None, derived_pending=bool(r.derived_pending),
                       derived_error=public_reason(r.derived_error) if r.derived_error else None)
            for r in reqs]


def all_requests(session: Session, *, chunk: int = 1000) -> Iterator[RequestRow]:
    """Every request in request-id order (a keyset walk: no offset scans), read CHUNK at a time (the exports)."""
    after = ""
    while True:
        reqs = list(session.scalars(select(DeletionRequest).where(DeletionRequest.id > after)
                                    .order_by(DeletionRequest.id).limit(chunk)))
        if not reqs:
            return
        yield from _rows(session, reqs)
        after = reqs[-1].id


def all_audit_entries(session: Session, *, chunk: int = 1000) -> Iterator[dict[str, Any]]:
    after = 0
    while True:
        rows = list(session.scalars(select(AuditEntry).where(AuditEntry.seq > after).order_by(AuditEntry.seq)
                                    .limit(chunk)))
        if not rows:
            return
        yield from map(entry_dict, rows)
        after = rows[-1].seq


def versions(session: Session, *, limit: int) -> list[ModelVersion]:
    """The newest LIMIT versions, oldest first."""
    rows = list(session.scalars(select(ModelVersion).order_by(ModelVersion.seq.desc()).limit(limit)))
    return rows[::-1]


def audit_total(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(AuditEntry)) or 0)


def entry_dict(e: AuditEntry) -> dict[str, Any]:
    """An audit entry as the API, the operator page and the exports show it."""
    return {"seq": e.seq, "created_at": e.created_at, "batch_id": e.batch_id, "payload": json.loads(e.payload),
            "prev_hash": e.prev_hash, "hash": e.hash}


def audit_entries(session: Session, *, offset: int, limit: int) -> list[dict[str, Any]]:
    """Newest first: OFFSET counts back from the last entry."""
    rows = session.scalars(select(AuditEntry).order_by(AuditEntry.seq.desc()).offset(offset).limit(limit))
    return [entry_dict(e) for e in rows]


def audit_entry(session: Session, *, seq: int) -> dict[str, Any] | None:
    e = session.get(AuditEntry, seq)
    return None if e is None else entry_dict(e)


def backlog_events(session: Session, *, limit: int) -> list[tuple[datetime, datetime | None]]:
    """(received_at, left_queue_at) of the newest LIMIT requests: the backlog over time is their overlap."""
    rows = session.execute(select(DeletionRequest.received_at, DeletionRequest.completed_at)
                           .order_by(DeletionRequest.received_at.desc()).limit(limit))
    return [(as_utc(a), as_utc(b)) for a, b in rows]  # type: ignore[misc]
