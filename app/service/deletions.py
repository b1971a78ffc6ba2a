"""The deletion endpoints' work: functions of (LedgerContext, keyword arguments) → plain data.

Plain data (dicts of str, int, datetime) because they run in the API's ledger process
(app/service/ledger_pool.py), and their answers and errors cross a process boundary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from redis import Redis
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from app.core.config import Settings
from app.core.secrets import subject_key
from app.db import ledger
from app.db.models import AuditEntry, DeletionRequest, ModelVersion
from app.db.session import as_utc, transaction, utcnow
from app.db.views import entry_dict
from app.errors import public_reason
from app.ids import PublicId
from app.ml.forgetting.record import ForgettingRecord
from app.service.ledger_conn import LedgerConn
from app.service.queue import notify
from app.service.schedule import exact_by


@dataclass
class LedgerContext:
    settings: Settings
    conn: LedgerConn
    redis: Redis | None


def ping(ctx: LedgerContext) -> bool:
    with transaction(ctx.conn.read) as s:
        s.scalar(select(func.count()).select_from(ModelVersion))
    return True


def accept_deletion(ctx: LedgerContext, *, sample_ids: list[PublicId] | None, subject_id: str | None,
                    idempotency_key: str | None, api_key_id: str | None) -> dict[str, Any]:
    """Commit a deletion request (or find the one this Idempotency-Key made), then tell the queue.
    `notified` is False when Redis was unreachable: the request is accepted all the same (the
    sweep enqueues it later), as it is a ledger row."""
    st = ctx.settings
    for race in (False, True):
        try:
            with transaction(ctx.conn.write) as s:
                new = ledger.create_request(s, sample_ids=sample_ids, subject_id=subject_id,
                                            idempotency_key=idempotency_key, api_key_id=api_key_id, now=utcnow(),
                                            retention_days=st.retention_days, max_ids=st.max_delete_ids,
                                            subject_key=subject_key(st))
                req = new.request
                n = len(ledger.request_sample_ids(s, request_ids=[req.id])[req.id])
            break
        except IntegrityError:
            # the same Idempotency-Key committed by another API process between our lookup and our insert: the
            # second pass finds that request and answers it as a replay
            if race or idempotency_key is None:
                raise
    notified = new.created and ctx.redis is not None and notify(st, ctx.redis, reason=f"request {req.id}")
    return {"id": req.id, "state": req.state, "received_at": as_utc(req.received_at), "due_at": as_utc(req.due_at),
            "n_samples": n, "already_forgotten": new.already_forgotten, "created": new.created,
            "notified": notified}


def request_status(ctx: LedgerContext, *, request_id: str) -> dict[str, Any]:
    with transaction(ctx.conn.read) as s:
        req = ledger.get_request(s, request_id=request_id)
        ids = ledger.request_sample_keys(s, request_id=req.id)
        entry = s.scalar(select(AuditEntry).where(AuditEntry.seq == req.audit_seq)) if req.audit_seq else None
    # how the batch that served the request forgot: method, the verifier's verdict and its evidence
    how = ForgettingRecord.from_payload(json.loads(entry.payload)).summary() if entry is not None else None
    if how is not None:
        how["exact_at"] = as_utc(req.exact_at)
        how["exact"] = req.exact_at is not None
        how["model_exact_at"] = as_utc(req.model_exact_at)
        how["derived_pending"] = bool(req.derived_pending)
        how["derived_error"] = public_reason(req.derived_error) if req.derived_error else None
    return {"forgetting": how,
            "id": req.id, "state": req.state, "received_at": as_utc(req.received_at), "due_at": as_utc(req.due_at),
            "completed_at": as_utc(req.completed_at), "sample_ids": ids, "subject_id": req.subject_id,
            "already_forgotten": list(req.already_forgotten or []), "model_version": req.model_version_id,
            "audit_entry": req.audit_seq, "reason": public_reason(req.reason) if req.reason else None,
            "attempts": req.attempts, "exact_scheduled_at": _scheduled(ctx, req)}


def _scheduled(ctx: LedgerContext, req: DeletionRequest) -> datetime | None:
    """When the exact retrain of a completed request the served model may still hold is due (else None)."""
    if req.state != "completed" or req.model_exact_at is not None:
        return None
    return exact_by(ctx.settings, due_at=as_utc(req.due_at), completed_at=as_utc(req.completed_at),  # type: ignore[arg-type]
                    verdict=req.verdict)


def audit_page(ctx: LedgerContext, *, offset: int, limit: int) -> dict[str, Any]:
    with transaction(ctx.conn.read) as s:
        total = s.scalar(select(func.count()).select_from(AuditEntry)) or 0
        rows = list(s.scalars(select(AuditEntry).order_by(AuditEntry.seq).offset(offset).limit(limit)))
    return {"items": [entry_dict(e) for e in rows], "total": total}


def version_info(v: ModelVersion) -> dict[str, Any]:
    return {"id": v.id, "seq": v.seq, "sha256": v.sha256, "parent_id": v.parent_id,
            "created_at": as_utc(v.created_at), "weights_present": v.weights_present, "metrics": v.metrics}


def versions(ctx: LedgerContext) -> list[dict[str, Any]]:
    with transaction(ctx.conn.read) as s:
        return [version_info(v) for v in ledger.versions(s)]
