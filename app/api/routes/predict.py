"""Predictions: by stored sample id, by an input in the query, or by a batch of inputs."""

from __future__ import annotations

import json
import re
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from app.api.deps import AppState, State, authorize, require
from app.api.inputs import IMAGE_TYPES, base64_images, image_rows, media_type
from app.api.problems import responses
from app.api.schemas import INT64_MAX, PredictBody, PredictResponse
from app.api.serving import Served
from app.api.threads import BackgroundRoute
from app.api.versions import model_for, served_model
from app.db import ledger
from app.db.session import transaction
from app.errors import Gone, InvalidRequest, MalformedRequest, NotFound, UnsupportedMediaType
from app.ids import PublicId, public, text
from app.service.store import raw_to_features

router = APIRouter(route_class=BackgroundRoute, tags=["predict"])
SAMPLE_ID = r"^[^\x00-\x1f\x7f]{1,200}$"  # the data's own id: digits, or any printable string
INTEGER_ID = re.compile(r"[0-9]{1,19}", re.ASCII)
NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", re.ASCII)
auth = Depends(require("predict", open_if_predict_open=True))
VERSION = Query(pattern=r"^[0-9a-f]{16}$", description="answer from this model version (its id) instead of the "
                "served one; a version trained before a completed deletion answers 410")


def payload(served: Served, x: torch.Tensor, names: tuple[str, ...], sample_id: PublicId | None = None) -> bytes:
    """Inline on the event loop (a small model's forward is shorter than a thread hop), and
    serialised by hand: this is the hot path, and its shape is PredictResponse."""
    probs = probabilities(served, x)
    preds = [{"label": int(p.argmax()), "class_name": names[int(p.argmax())],
              "probabilities": np.round(p.astype(np.float64), 6).tolist()} for p in probs]
    body = {"model_version": served.version_id, "sample_id": sample_id, "predictions": preds}
    return json.dumps(body).encode()


def probabilities(served: Served, x: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        probs = F.softmax(served.model(x), dim=1).numpy()
    if not np.isfinite(probs).all():  # json.dumps would write NaN: a 200 that is not JSON
        raise InvalidRequest("the model's output is not finite for these inputs (values too large?)")
    return probs


def _answer(state: State, served: Served, x: torch.Tensor, sample_id: PublicId | None = None) -> Response:
    return Response(payload(served, x, state.store.names, sample_id), media_type="application/json")


def _sample(state: State, key: str) -> tuple[int, str] | None:
    with transaction(state.conn.read) as s:
        return ledger.sample_by_key(s, key=key)


def from_rows(state: State, rows: np.ndarray) -> torch.Tensor:
    if len(rows) > state.settings.max_predict_instances:
        raise InvalidRequest(f"at most {state.settings.max_predict_instances} instances per request")
    try:
        return raw_to_features(state.store, rows)
    except ValueError as e:
        raise InvalidRequest(str(e)) from None


@router.get("/predict", response_model=PredictResponse, dependencies=[auth],
            responses=responses(401, 403, 404, 410, 422, 503),
            summary="Predict a stored training sample (`sample_id`) or one input (`x`, comma-separated)")
async def predict_get(state: State,
                      sample_id: Annotated[str | None, Query(pattern=SAMPLE_ID, description="a training sample's id "
                                                             "as the data names it")] = None,
                      x: Annotated[str | None, Query(description="flattened input, comma-separated numbers")] = None,
                      version: Annotated[str | None, VERSION] = None) -> Response:
    if (sample_id is None) == (x is None):
        raise InvalidRequest("give exactly one of sample_id or x")
    served = await model_for(state, version)
    if sample_id is not None:
        key = sample_key(state, sample_id)
        found = await run_in_threadpool(_sample, state, key)
        if found is None:
            raise NotFound(f"no training sample {sample_id}")
        row, st = found
        if st != "active":
            raise Gone(f"sample {sample_id} was forgotten; it can no longer be used")
        return _answer(state, served, state.store.features(np.asarray([row])), public(key))
    assert x is not None
    values = x.split(",")
    if not all(NUMBER.fullmatch(v) for v in values):  # float() would take "1_0", "٣", "nan" and " 1"
        raise InvalidRequest("x must be comma-separated decimal numbers (ASCII)")
    return _answer(state, served, from_rows(state, np.asarray([[float(v) for v in values]], dtype=np.float64)))


def sample_key(state: State, sample_id: str) -> str:
    """The ledger key of a query's sample_id. Data whose ids are its rows (no keys) has integer ids: anything
    else is malformed (422), as before string ids existed; data with ids of its own takes any printable id."""
    if state.store.keys is not None:
        return text(sample_id)
    if not INTEGER_ID.fullmatch(sample_id) or int(sample_id) > INT64_MAX:
        raise InvalidRequest(f"sample_id must be an integer id (ASCII digits, at most {INT64_MAX}): this data's "
                             "ids are integers")
    return str(int(sample_id))


def instances(state: AppState, raw: bytes, content_type: str | None) -> np.ndarray:
    """The body's inputs as rows in the store's scale: an image body, base64 images, or feature rows."""
    limit = state.settings.max_image_pixels
    if media_type(content_type) in IMAGE_TYPES:
        return image_rows(state.store, [raw], max_pixels=limit)
    if not is_json(content_type):
        raise UnsupportedMediaType("POST /predict takes application/json, image/png or image/jpeg")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
        raise MalformedRequest("the request body could not be parsed") from None
    if not isinstance(data, dict) or set(data) != {"instances"} or not isinstance(data["instances"], list):
        raise InvalidRequest('the body must be {"instances": [[number, ...], ...]} or {"instances": ["<base64 '
                             'image>", ...]}')
    if data["instances"] and all(isinstance(i, str) for i in data["instances"]):
        if len(data["instances"]) > state.settings.max_predict_instances:
            raise InvalidRequest(f"at most {state.settings.max_predict_instances} instances per request")
        return image_rows(state.store, base64_images(data["instances"]), max_pixels=limit)
    if data["instances"] and all(isinstance(i, dict) for i in data["instances"]):
        return named_rows(state.store.feature_names, data["instances"])
    try:
        rows = np.asarray(data["instances"])
    except ValueError:
        raise InvalidRequest("all instances need the same length") from None
    if rows.ndim != 2 or rows.dtype.kind not in "iuf" or not rows.size:
        raise InvalidRequest("instances must be a non-empty list of equally long lists of numbers")
    return rows.astype(np.float64)


def named_rows(names: tuple[str, ...] | None, items: list[dict[str, object]]) -> np.ndarray:
    """Objects keyed by the table's column names → rows in the order the model reads them."""
    if not names:
        raise InvalidRequest("this model's data has no named features: send each instance as a list of numbers")
    rows = []
    for k, item in enumerate(items):
        missing, unknown = [n for n in names if n not in item], sorted(set(item) - set(names))
        if missing or unknown:
            said = [f"missing {missing[:5]}" if missing else "", f"unknown {unknown[:5]}" if unknown else ""]
            raise InvalidRequest(f"instance {k}: {'; '.join(p for p in said if p)} (features: {list(names)[:20]})")
        values = [item[n] for n in names]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            raise InvalidRequest(f"instance {k}: every feature value must be a number")
        rows.append(values)
    return np.asarray(rows, dtype=np.float64)


def is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def answer_batch(state: AppState, *, authorization: str | None, x_api_key: str | None, body: bytes,
                 content_type: str | None, served: Served | None = None) -> bytes:
    """POST /predict's whole work, shared by the fast lane and this route (SERVED: a version named by the
    client, already resolved; else the served one)."""
    authorize(state, authorization=authorization, x_api_key=x_api_key, scopes=("predict",), open_if_predict_open=True)
    rows = instances(state, body, content_type)
    return payload(served or served_model(state), from_rows(state, rows), state.store.names)


# The happy path of this endpoint is answered by app.api.fastlane before routing; this route answers
# the rest (every error, as problem+json) and documents the endpoint. It reads its body and key by hand
# all the same, so that both take one code path.
@router.post("/predict", response_model=PredictResponse,
             responses=responses(400, 401, 403, 404, 410, 413, 415, 422, 503),
             summary="Predict a batch of inputs, or one image",
             description="JSON `{\"instances\": [[…], …]}` (feature rows or flattened images in the data's own "
                         "scale), `{\"instances\": [{\"height\": 1.8, …}, …]}` (a table's rows by column name, in "
                         "any order) or `{\"instances\": [\"<base64 PNG/JPEG>\", …]}`, or one PNG or JPEG image as "
                         "the body. Images are converted to the model's channels and resized to its input size. "
                         "Limits: UNLEARND_MAX_BODY_BYTES (1 MiB) per body (413), UNLEARND_MAX_IMAGE_PIXELS "
                         "(4,194,304) per image and UNLEARND_MAX_PREDICT_INSTANCES (256) per request (422); a "
                         "corrupt or truncated image is a 422.",
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": PredictBody.model_json_schema()},
                 "image/png": {"schema": {"type": "string", "format": "binary"}},
                 "image/jpeg": {"schema": {"type": "string", "format": "binary"}}}}})
async def predict_post(request: Request, version: Annotated[str | None, VERSION] = None) -> Response:
    h, state = request.headers, request.app.state.unlearnd
    key = {"authorization": h.get("authorization"), "x_api_key": h.get("x-api-key")}
    served = None
    if version is not None:
        authorize(state, **key, scopes=("predict",), open_if_predict_open=True)  # before a version is looked up
        served = await model_for(state, version)
    out = answer_batch(state, **key, body=await request.body(), content_type=h.get("content-type"), served=served)
    return Response(out, media_type="application/json")
