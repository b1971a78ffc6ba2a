"""Deletion requests: accept (a committed ledger row, then a queue notification) and report."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request, Response

from app.api.deps import State, require
from app.api.problems import responses
from app.api.schemas import DeleteAccepted, DeleteBody, RequestStatus
from app.api.threads import BackgroundRoute
from app.db import ledger
from app.db.keys import Principal
from app.db.session import as_utc, transaction, utcnow
from worker.queue import notify

router = APIRouter(route_class=BackgroundRoute, tags=["delete"])


@router.post("/delete", status_code=202, response_model=DeleteAccepted,
             responses=responses(400, 401, 403, 404, 409, 422),
             summary="Ask to forget samples (by ids or by subject); poll the status URL")
def delete(state: State, body: DeleteBody, request: Request, response: Response,
           principal: Annotated[Principal, Depends(require("delete"))],
           idempotency_key: Annotated[str | None, Header(max_length=200)] = None) -> DeleteAccepted:
    s_ = state.settings
    with transaction(state.conn.write) as s:
        new = ledger.create_request(s, sample_ids=body.sample_ids, subject_id=body.subject_id,
                                    idempotency_key=idempotency_key, api_key_id=principal.key_id, now=utcnow(),
                                    retention_days=s_.retention_days, max_ids=s_.max_delete_ids)
        req = new.request
        n = len(ledger.request_sample_ids(s, request_ids=[req.id])[req.id])
    if new.created:
        state.metrics.deletes.inc()
        # after the commit: accepted means a ledger row, whether or not Redis is up
        if state.redis is None or not notify(s_, state.redis, reason=f"request {req.id}"):
            state.metrics.enqueue_failures.inc()
    else:
        response.headers["Idempotent-Replayed"] = "true"
    url = str(request.url_for("request_status", request_id=req.id))
    response.headers["Location"] = url
    return DeleteAccepted(id=req.id, state=req.state, status_url=url, received_at=as_utc(req.received_at),
                          due_at=as_utc(req.due_at), n_samples=n, already_forgotten=new.already_forgotten)


@router.get("/requests/{request_id}", name="request_status", response_model=RequestStatus,
            dependencies=[Depends(require("delete", "audit"))], responses=responses(401, 403, 404),
            summary="State of a deletion request")
def request_status(state: State, request_id: str) -> RequestStatus:
    with transaction(state.conn.read) as s:
        req = ledger.get_request(s, request_id=request_id)
        ids = ledger.request_sample_ids(s, request_ids=[req.id])[req.id]
    return RequestStatus(id=req.id, state=req.state, received_at=as_utc(req.received_at),
                         due_at=as_utc(req.due_at), completed_at=as_utc(req.completed_at), sample_ids=ids,
                         subject_id=req.subject_id, already_forgotten=list(req.already_forgotten or []),
                         model_version=req.model_version_id, audit_entry=req.audit_seq, reason=req.reason,
                         attempts=req.attempts)
