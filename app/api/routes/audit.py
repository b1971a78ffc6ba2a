"""The audit log, for operators and auditors."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import func, select

from app.api.deps import State, require
from app.api.problems import responses
from app.api.schemas import AuditItem, AuditPage
from app.api.threads import BackgroundRoute
from app.db.models import AuditEntry
from app.db.session import transaction

router = APIRouter(route_class=BackgroundRoute, tags=["audit"])


@router.get("/audit", response_model=AuditPage, dependencies=[Depends(require("audit"))],
            responses=responses(401, 403, 422), summary="Audit entries, oldest first, paginated")
def audit(state: State, request: Request, offset: Annotated[int, Query(ge=0)] = 0,
          limit: Annotated[int, Query(ge=1)] = 50) -> AuditPage:
    limit = min(limit, state.settings.audit_page_max)
    with transaction(state.conn.read) as s:
        total = s.scalar(select(func.count()).select_from(AuditEntry)) or 0
        rows = list(s.scalars(select(AuditEntry).order_by(AuditEntry.seq).offset(offset).limit(limit)))
    items = [AuditItem(seq=e.seq, created_at=e.created_at, batch_id=e.batch_id, payload=json.loads(e.payload),
                       prev_hash=e.prev_hash, hash=e.hash) for e in rows]
    nxt = str(request.url.include_query_params(offset=offset + limit, limit=limit)) \
        if offset + limit < total else None
    return AuditPage(items=items, total=total, offset=offset, limit=limit, next=nxt)
