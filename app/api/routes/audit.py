"""The audit log, for operators and auditors."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from app.api.deps import State, require
from app.api.problems import responses
from app.api.schemas import INT64_MAX, AuditItem, AuditPage
from app.api.threads import BackgroundRoute
from app.service import deletions

router = APIRouter(route_class=BackgroundRoute, tags=["audit"])


@router.get("/audit", response_model=AuditPage, dependencies=[Depends(require("audit"))],
            responses=responses(401, 403, 422, 503), summary="Audit entries, oldest first, paginated")
async def audit(state: State, request: Request, offset: Annotated[int, Query(ge=0, le=INT64_MAX)] = 0,
                limit: Annotated[int, Query(ge=1, le=INT64_MAX)] = 50) -> AuditPage:
    limit = min(limit, state.settings.audit_page_max)
    page = await state.ledger_pool(deletions.audit_page, offset=offset, limit=limit)
    total = page["total"]
    nxt = str(request.url.include_query_params(offset=offset + limit, limit=limit)) \
        if offset + limit < total else None
    return AuditPage(items=[AuditItem(**i) for i in page["items"]], total=total, offset=offset, limit=limit,
                     next=nxt)
