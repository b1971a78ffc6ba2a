"""The Open Inference Protocol v2 REST routes (app/api/oip.py has the shapes), beside unlearnd's own.

The same keys and scopes as /predict guard the model's routes; the server's metadata and health are open, as a
gateway's probes carry no key. Errors are the protocol's `{"error": "…"}` (app/api/problems.py renders every
error under /v2 that way). A version named in the path answers only while it holds no forgotten sample
(app/api/versions.py): a retired one is a 410.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.responses import JSONResponse

from app import __version__
from app.api import oip
from app.api.deps import AppState, State, authorize, require
from app.api.inputs import image_rows
from app.api.oip import error_responses
from app.api.routes.health import database_check
from app.api.routes.predict import from_rows, probabilities
from app.api.threads import BackgroundRoute
from app.api.versions import model_for
from app.db import ledger
from app.db.session import transaction
from app.errors import NotFound

router = APIRouter(route_class=BackgroundRoute, tags=["oip-v2"])
guarded = [Depends(require("predict", open_if_predict_open=True))]
NAME = Path(description="the model's name (GET /v2/models/… lists it in the metadata)")
VERSION = Path(description="a model version's id")
EXTENSIONS = ["binary_tensor_data"]
PLATFORM = "pytorch"


@router.get("/v2", response_model=oip.ServerMetadata, summary="OIP v2: server metadata")
async def server_metadata() -> oip.ServerMetadata:
    return oip.ServerMetadata(name="unlearnd", version=__version__, extensions=EXTENSIONS)


@router.get("/v2/health/live", response_model=oip.ServerLive, summary="OIP v2: the server answers")
async def live() -> oip.ServerLive:
    return oip.ServerLive(live=True)


@router.get("/v2/health/ready", response_model=oip.ServerReady,
            responses={503: {"description": "Not ready", "model": oip.ServerReady}},
            summary="OIP v2: the model is loaded and the ledger is reachable")
def ready(state: State) -> Response:
    ok = state.holder.current is not None and database_check(state) == "ok"
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


def _check_name(state: AppState, name: str) -> None:
    if name != state.model_name:
        raise NotFound(f"unknown model {name!r}; this server serves {state.model_name!r}")


def _versions(state: AppState) -> list[str]:
    with transaction(state.conn.read) as s:
        return ledger.answerable_versions(s)


def _metadata(state: AppState) -> oip.ModelMetadata:
    layout = [int(d) for d in state.store.x.shape[1:]]
    inputs = [oip.MetadataTensor(name="input", datatype="FP32", shape=[-1, *layout])]
    if state.store.is_image:
        inputs.append(oip.MetadataTensor(name="image", datatype="BYTES", shape=[-1]))
    outputs = [oip.MetadataTensor(name="probabilities", datatype="FP32", shape=[-1, state.store.num_classes]),
               oip.MetadataTensor(name="label", datatype="INT64", shape=[-1]),
               oip.MetadataTensor(name="class_name", datatype="BYTES", shape=[-1])]
    return oip.ModelMetadata(name=state.model_name, versions=_versions(state), platform=PLATFORM, inputs=inputs,
                             outputs=outputs)


@router.get("/v2/models/{name}", response_model=oip.ModelMetadata, dependencies=guarded,
            responses=error_responses(401, 403, 404, 503), summary="OIP v2: model metadata (the served version)")
async def model_metadata(state: State, name: Annotated[str, NAME]) -> oip.ModelMetadata:
    _check_name(state, name)
    await model_for(state, None)  # 503 until a version is loaded
    return _metadata(state)


@router.get("/v2/models/{name}/versions/{version}", response_model=oip.ModelMetadata, dependencies=guarded,
            responses=error_responses(401, 403, 404, 410, 503), summary="OIP v2: model metadata (a named version)")
async def version_metadata(state: State, name: Annotated[str, NAME],
                           version: Annotated[str, VERSION]) -> oip.ModelMetadata:
    _check_name(state, name)
    await model_for(state, version)
    return _metadata(state)


@router.get("/v2/models/{name}/ready", response_model=oip.ModelReady, dependencies=guarded,
            responses=error_responses(401, 403, 404, 503), summary="OIP v2: the model can answer")
async def model_ready(state: State, name: Annotated[str, NAME]) -> oip.ModelReady:
    _check_name(state, name)
    await model_for(state, None)
    return oip.ModelReady(name=name, ready=True)


@router.get("/v2/models/{name}/versions/{version}/ready", response_model=oip.ModelReady, dependencies=guarded,
            responses=error_responses(401, 403, 404, 410, 503), summary="OIP v2: a named version can answer")
async def version_ready(state: State, name: Annotated[str, NAME], version: Annotated[str, VERSION]) -> oip.ModelReady:
    _check_name(state, name)
    await model_for(state, version)
    return oip.ModelReady(name=name, ready=True)


INFER_DOC = dict(
    response_model=oip.InferenceResponse, responses=error_responses(400, 401, 403, 404, 410, 413, 415, 503),
    description="One input: `input`, FP32 `[N, *layout]` in the data's own scale (the rows /predict takes), or, "
                "for image data, `image`, BYTES `[N]` (encoded PNG/JPEG; base64 strings in JSON). Outputs: "
                "`probabilities` FP32 `[N, C]`, `label` INT64 `[N]`, `class_name` BYTES `[N]`. Triton's binary "
                "tensor data extension is honoured (`Inference-Header-Content-Length`, `binary_data_size`, "
                "`binary_data`, `binary_data_output`); the classification extension is refused (400).",
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": oip.inlined_schema(oip.InferenceRequest)}}}})


async def _infer(request: Request, name: str, version: str | None) -> Response:
    state: AppState = request.app.state.unlearnd
    h = request.headers
    authorize(state, authorization=h.get("authorization"), x_api_key=h.get("x-api-key"), scopes=("predict",),
              open_if_predict_open=True)
    _check_name(state, name)
    served = await model_for(state, version)
    s = state.settings
    d = oip.decode(await request.body(), h.get(oip.HEADER_LENGTH), layout=tuple(state.store.x.shape[1:]),
                   images=state.store.is_image, max_instances=s.max_predict_instances)
    rows = d.rows if d.rows is not None else image_rows(state.store, d.images or [], max_pixels=s.max_image_pixels)
    probs = probabilities(served, from_rows(state, np.asarray(rows)))
    body, head = oip.encode(model_name=name, model_version=served.version_id, request_id=d.request_id, probs=probs,
                            names=state.store.names, outputs=d.outputs)
    if head is None:
        return Response(body, media_type="application/json")
    return Response(body, media_type="application/octet-stream", headers={"Inference-Header-Content-Length": str(head)})


@router.post("/v2/models/{name}/infer", summary="OIP v2: inference (the served version)", **INFER_DOC)  # type: ignore[arg-type]
async def infer(request: Request, name: Annotated[str, NAME]) -> Response:
    return await _infer(request, name, None)


@router.post("/v2/models/{name}/versions/{version}/infer", summary="OIP v2: inference (a named version)",
             **INFER_DOC)  # type: ignore[arg-type]
async def infer_version(request: Request, name: Annotated[str, NAME], version: Annotated[str, VERSION]) -> Response:
    return await _infer(request, name, version)
