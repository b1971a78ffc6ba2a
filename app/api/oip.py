"""The Open Inference Protocol v2 (kserve/open-inference-protocol, inference_rest.md): its JSON shapes, and
tensors in and out of an inference request, with Triton's binary tensor data extension (what tritonclient
sends by default: a JSON header of `Inference-Header-Content-Length` bytes, then each binary tensor's bytes).

Inputs (one per request): `input`, FP32 (or FP64) `[N, *layout]` in the data's own scale, the layout
/predict takes (a table's feature rows, or an image's pixels); or, for image data, `image`, BYTES `[N]`,
encoded PNG/JPEG (raw in binary data, base64 strings in JSON), converted as image /predict converts them.
Outputs: `probabilities` FP32 `[N, C]`, `label` INT64 `[N]`, `class_name` BYTES `[N]`.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from app.errors import InvalidRequest, MalformedRequest

HEADER_LENGTH = "inference-header-content-length"
OUTPUTS = ("probabilities", "label", "class_name")
NUMERIC = {"FP32": "<f4", "FP64": "<f8"}  # what `input` takes: the model's scale is a float's
UINT64_MAX = 2**64 - 1


class OipError(BaseModel):
    error: str


class MetadataTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str] = Field(description="the versions that may be named: the served one, and older ones "
                                            "that hold no forgotten sample")
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class RequestInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


def inlined_schema(model: type[BaseModel]) -> dict[str, Any]:
    """MODEL's JSON schema with its $defs inlined: a request body given by openapi_extra cannot point into them."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            return walk(defs[ref.rsplit("/", 1)[-1]]) if ref.startswith("#/$defs/") else \
                {k: walk(v) for k, v in node.items()}
        return [walk(v) for v in node] if isinstance(node, list) else node

    return walk(schema)  # type: ignore[no-any-return]


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for the v2 routes: errors in the protocol's `{"error": "…"}` shape."""
    return {c: {"description": "Error", "model": OipError} for c in codes}


@dataclass(frozen=True)
class Decoded:
    """An inference request, read: its one input, and which outputs to answer in binary."""

    request_id: str | None
    name: str  # "input" or "image"
    rows: np.ndarray | None  # float64 [N, prod(layout)] for `input`
    images: list[bytes] | None  # encoded images for `image`
    outputs: list[tuple[str, bool]]  # (name, binary), in the order asked


def _json(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise MalformedRequest("the inference request's JSON could not be parsed") from None
    if not isinstance(data, dict):
        raise InvalidRequest("the inference request must be a JSON object")
    return data


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    if not header_length.isdigit() or int(header_length) > len(body):
        raise InvalidRequest(f"Inference-Header-Content-Length {header_length!r} does not fit a {len(body)}-byte body")
    n = int(header_length)
    return body[:n], body[n:]


def _flag(params: dict[str, Any] | None, key: str, default: bool) -> bool:
    value = (params or {}).get(key, default)
    if not isinstance(value, bool):
        raise InvalidRequest(f"parameter {key} must be true or false")
    return value


def _outputs(req: InferenceRequest) -> list[tuple[str, bool]]:
    binary = _flag(req.parameters, "binary_data_output", False)
    if "classification" in (req.parameters or {}):
        raise InvalidRequest("the classification extension is not supported: ask for the label and class_name outputs")
    if req.outputs is None:
        return [(name, binary) for name in OUTPUTS]
    out = []
    for o in req.outputs:
        if o.name not in OUTPUTS:
            raise InvalidRequest(f"unknown output {o.name!r}; this model's outputs: {', '.join(OUTPUTS)}")
        if "classification" in (o.parameters or {}):
            raise InvalidRequest("the classification extension is not supported: ask for the label and class_name "
                                 "outputs")
        out.append((o.name, _flag(o.parameters, "binary_data", binary)))
    if len({n for n, _ in out}) != len(out):
        raise InvalidRequest("an output is asked for twice")
    return out


def _count(shape: list[int]) -> int:
    if any(d < 0 or d > UINT64_MAX for d in shape):
        raise InvalidRequest("shape dimensions must be unsigned 64-bit integers")
    return math.prod(shape)  # Python's integers: a product past 64 bits is refused below, not wrapped


def _bytes_elements(raw: bytes) -> list[bytes]:
    """BYTES in binary form: each element a 4-byte little-endian length, then its bytes."""
    out, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise InvalidRequest("BYTES tensor data is truncated")
        (n,) = struct.unpack_from("<I", raw, at)
        if at + 4 + n > len(raw):
            raise InvalidRequest("BYTES tensor data is truncated")
        out.append(raw[at + 4:at + 4 + n])
        at += 4 + n
    return out


def _tensor_bytes(inp: RequestInput, binary: bytes, at: int) -> tuple[bytes | None, int]:
    """The input's binary data (None: it is in JSON) and where the next tensor's starts."""
    size = (inp.parameters or {}).get("binary_data_size")
    if size is None:
        if inp.data is None:
            raise InvalidRequest(f"input {inp.name!r} has neither data nor binary_data_size")
        return None, at
    if not isinstance(size, int) or isinstance(size, bool) or size < 0 or at + size > len(binary):
        raise InvalidRequest(f"input {inp.name!r}: binary_data_size does not fit the binary data sent")
    return binary[at:at + size], at + size


def decode(body: bytes, header_length: str | None, *, layout: tuple[int, ...], images: bool,
           max_instances: int) -> Decoded:
    """An inference request's body → its input; every defect is a 4xx."""
    head, binary = _split(body, header_length)
    try:
        req = InferenceRequest.model_validate(_json(head))
    except ValueError as e:
        raise InvalidRequest(f"not an inference request: {str(e).splitlines()[0]}") from None
    names = ("input", "image") if images else ("input",)
    if len(req.inputs) != 1 or req.inputs[0].name not in names:
        raise InvalidRequest(f"send exactly one input, named {' or '.join(repr(n) for n in names)}")
    inp = req.inputs[0]
    raw, end = _tensor_bytes(inp, binary, 0)
    if end != len(binary):
        raise InvalidRequest("the body holds binary data no input claims")
    n = _count(inp.shape)
    if inp.name == "input":
        rows = _numeric(inp, raw, n, layout)
        if len(rows) > max_instances:
            raise InvalidRequest(f"at most {max_instances} instances per request")
        return Decoded(req.id, "input", rows, None, _outputs(req))
    blobs = _images(inp, raw, n)
    if len(blobs) > max_instances:
        raise InvalidRequest(f"at most {max_instances} instances per request")
    return Decoded(req.id, "image", None, blobs, _outputs(req))


def _numeric(inp: RequestInput, raw: bytes | None, n: int, layout: tuple[int, ...]) -> np.ndarray:
    if inp.datatype not in NUMERIC:
        raise InvalidRequest(f"input 'input' takes {' or '.join(NUMERIC)}, not {inp.datatype}")
    if len(inp.shape) != 1 + len(layout) or tuple(inp.shape[1:]) != layout or inp.shape[0] < 1:
        raise InvalidRequest(f"input 'input' has shape [N, {', '.join(map(str, layout))}] with N ≥ 1, not "
                             f"{inp.shape}")
    if raw is not None:
        if len(raw) != n * np.dtype(NUMERIC[inp.datatype]).itemsize:
            raise InvalidRequest(f"binary_data_size {len(raw)} does not match shape {inp.shape} of {inp.datatype}")
        flat = np.frombuffer(raw, dtype=NUMERIC[inp.datatype]).astype(np.float64)
    else:
        try:
            flat = np.asarray(inp.data, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise InvalidRequest("input 'input': data must be numbers (flat or nested lists)") from None
        if flat.size != n:
            raise InvalidRequest(f"input 'input': {flat.size} values for shape {inp.shape}")
    if not np.isfinite(flat).all():
        raise InvalidRequest("input 'input': values must be finite")
    return flat.reshape(inp.shape[0], -1)


def _images(inp: RequestInput, raw: bytes | None, n: int) -> list[bytes]:
    if inp.datatype != "BYTES":
        raise InvalidRequest(f"input 'image' takes BYTES (encoded PNG or JPEG), not {inp.datatype}")
    if raw is not None:
        blobs = _bytes_elements(raw)
    else:
        if not all(isinstance(d, str) for d in inp.data or []):
            raise InvalidRequest("input 'image' in JSON: each element is a base64 string")
        try:
            blobs = [base64.b64decode(d, validate=True) for d in inp.data or []]
        except (binascii.Error, ValueError):
            raise InvalidRequest("input 'image': an element is not valid base64") from None
    if len(blobs) != n or not n:
        raise InvalidRequest(f"input 'image': {len(blobs)} elements for shape {inp.shape} (at least one)")
    return blobs


def encode(*, model_name: str, model_version: str, request_id: str | None, probs: np.ndarray,
           names: tuple[str, ...], outputs: list[tuple[str, bool]]) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary tensors follow it."""
    labels = probs.argmax(axis=1).astype(np.int64)
    tensors: dict[str, tuple[str, list[int], np.ndarray | list[bytes]]] = {
        "probabilities": ("FP32", list(probs.shape), probs.astype("<f4")),
        "label": ("INT64", [len(labels)], labels.astype("<i8")),
        "class_name": ("BYTES", [len(labels)], [names[int(k)].encode() for k in labels]),
    }
    out, blobs = [], []
    for name, binary in outputs:
        datatype, shape, value = tensors[name]
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if binary:
            blob = b"".join(struct.pack("<I", len(b)) + b for b in value) if isinstance(value, list) \
                else value.tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif isinstance(value, list):
            entry["data"] = [b.decode() for b in value]
        else:
            entry["data"] = value.reshape(-1).tolist()
        out.append(entry)
    body: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": out}
    if request_id is not None:
        body["id"] = request_id
    head = json.dumps(body).encode()
    return (head + b"".join(blobs), len(head)) if blobs else (head, None)
