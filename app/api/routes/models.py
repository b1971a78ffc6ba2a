"""Model versions: the lineage, and what is served."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.api.deps import State, require
from app.api.problems import responses
from app.api.schemas import CurrentModel, ModelInfo
from app.api.threads import BackgroundRoute
from app.db import ledger
from app.db.session import transaction
from app.errors import Unavailable
from app.service import deletions

router = APIRouter(route_class=BackgroundRoute, tags=["models"],
                   dependencies=[Depends(require("predict", "audit", open_if_predict_open=True))])


@router.get("/models", response_model=list[ModelInfo], responses=responses(401, 403, 503),
            summary="Every version, newest first")
async def models(state: State) -> list[ModelInfo]:
    return [ModelInfo(**v) for v in await state.ledger_pool(deletions.versions)]


@router.get("/models/current", response_model=CurrentModel, responses=responses(401, 403, 503),
            summary="The ledger's head, and the version this process serves")
def current(state: State) -> CurrentModel:
    with transaction(state.conn.read) as s:
        head = ledger.head(s)
    if head is None:
        raise Unavailable("no version is published yet")
    served = state.holder.current
    x = state.store.x
    return CurrentModel(**deletions.version_info(head), serving=served.version_id if served else None,
                        input_layout=list(x.shape[1:]), input_dtype=str(x.dtype))
