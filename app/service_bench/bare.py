"""The baseline: a bare ASGI app on uvicorn that answers POST /predict with the same model and
the same input handling, and nothing else (no auth, no ledger, no metrics, no validation layer).

    BARE_MODEL_DIR=... BARE_STORE_DIR=... uvicorn app.service_bench.bare:app
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.ml.models.checkpoint import load_model_dir
from app.service.store import open_store, raw_to_features

torch.set_num_threads(1)
_md = load_model_dir(Path(os.environ["BARE_MODEL_DIR"]))
_store = open_store(Path(os.environ["BARE_STORE_DIR"]))


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    x = raw_to_features(_store, np.asarray(json.loads(body)["instances"], dtype=np.float64))
    with torch.inference_mode():
        probs = torch.softmax(_md.model(x), 1)
    out = json.dumps({"predictions": [{"label": int(p.argmax()), "probabilities": p.tolist()} for p in probs]}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]})
    await send({"type": "http.response.body", "body": out})
