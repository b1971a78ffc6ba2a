"""Deletion requests: accept (a committed ledger row, then a queue notification) and report. The
ledger and queue work runs in the ledger process (app/service/ledger_pool.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Request, Response

from app.api.deps import State, require
from app.api.problems import responses
from app.api.routes.predict import is_json
from app.api.schemas import PRINTABLE, DeleteAccepted, DeleteBody, RequestStatus
from app.api.threads import BackgroundRoute
from app.db.keys import Principal
from app.errors import UnsupportedMediaType
from app.service import deletions

router = APIRouter(route_class=BackgroundRoute, tags=["delete"])


def status_url(public_url: str | None, request_id: str) -> str:
    """Built on the configured public address, else relative: the Host header is the client's to choose, and
    reflecting it would hand out links to any host."""
    return f"{(public_url or '').rstrip('/')}/requests/{request_id}"


def json_only(request: Request) -> None:
    if not is_json(request.headers.get("content-type")):
        raise UnsupportedMediaType("POST /delete takes application/json")


@router.post("/delete", status_code=202, response_model=DeleteAccepted, dependencies=[Depends(json_only)],
             responses=responses(400, 401, 403, 404, 409, 415, 422, 503),
             summary="Ask to forget samples (by ids or by subject); poll the status URL")
async def delete(state: State, body: DeleteBody, request: Request, response: Response,
                 principal: Annotated[Principal, Depends(require("delete"))],
                 idempotency_key: Annotated[str | None, Header(max_length=200, pattern=PRINTABLE)] = None,
                 ) -> DeleteAccepted:
    out = await state.ledger_pool(deletions.accept_deletion, sample_ids=body.sample_ids, subject_id=body.subject_id,
                              idempotency_key=idempotency_key, api_key_id=principal.key_id)
    if out["created"]:
        state.metrics.deletes.inc()
        if not out["notified"]:  # accepted all the same: the ledger row is the request, the sweep enqueues it
            state.metrics.enqueue_failures.inc()
    else:
        response.headers["Idempotent-Replayed"] = "true"
    url = status_url(state.settings.public_url, out["id"])
    response.headers["Location"] = url
    return DeleteAccepted(id=out["id"], state=out["state"], status_url=url, received_at=out["received_at"],
                          due_at=out["due_at"], n_samples=out["n_samples"],
                          already_forgotten=out["already_forgotten"])


@router.get("/requests/{request_id}", name="request_status", response_model=RequestStatus,
            dependencies=[Depends(require("delete", "audit"))], responses=responses(401, 403, 404, 422, 503),
            summary="State of a deletion request")
async def request_status(state: State,
                         request_id: Annotated[str, Path(max_length=64, pattern=PRINTABLE)]) -> RequestStatus:
    return RequestStatus(**await state.ledger_pool(deletions.request_status, request_id=request_id))
