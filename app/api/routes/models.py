"""Model versions: the lineage, and what is served."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.api.deps import State, require
from app.api.problems import responses
from app.api.schemas import CurrentModel, ModelInfo
from app.api.threads import BackgroundRoute
from app.db import ledger
from app.db.models import ModelVersion
from app.db.session import as_utc, transaction
from app.ml.errors import Unavailable

router = APIRouter(route_class=BackgroundRoute, tags=["models"],
                   dependencies=[Depends(require("predict", "audit", open_if_predict_open=True))])


def _info(v: ModelVersion) -> dict[str, object]:
    return {"id": v.id, "seq": v.seq, "sha256": v.sha256, "parent_id": v.parent_id,
            "created_at": as_utc(v.created_at), "weights_present": v.weights_present, "metrics": v.metrics}


@router.get("/models", response_model=list[ModelInfo], responses=responses(401, 403),
            summary="Every version, newest first")
def models(state: State) -> list[ModelInfo]:
    with transaction(state.conn.read) as s:
        return [ModelInfo(**_info(v)) for v in ledger.versions(s)]  # type: ignore[arg-type]


@router.get("/models/current", response_model=CurrentModel, responses=responses(401, 403, 503),
            summary="The ledger's head, and the version this process serves")
def current(state: State) -> CurrentModel:
    with transaction(state.conn.read) as s:
        head = ledger.head(s)
    if head is None:
        raise Unavailable("no version is published yet")
    served = state.holder.current
    x = state.store.x
    return CurrentModel(**_info(head), serving=served.version_id if served else None,  # type: ignore[arg-type]
                        input_layout=list(x.shape[1:]), input_dtype=str(x.dtype))
