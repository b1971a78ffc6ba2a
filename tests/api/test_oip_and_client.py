"""The Open Inference Protocol v2 routes through a client nobody here wrote (tritonclient), and app.client, against
one live service on SQLite (a worker, an embedded or the CI's Redis)."""

from __future__ import annotations

import asyncio
import http.server
import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as tc
from PIL import Image
from tritonclient.utils import InferenceServerException

from app.client import AsyncClient, Client, Retry
from app.errors import InvalidRequest, NotFound, Unauthorized, Unavailable, WaitTimedOut
from app.service.live import free_port
from app.service.store import open_store
from tests.service_harness import Service, db_url_for

pytestmark = pytest.mark.slow
NAME = "digits"


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory, digits_model_dir: Path, redis_url: str) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("oip")
    s = Service(tmp, digits_model_dir, db_url=db_url_for("sqlite", tmp / "home"), redis_url=redis_url,
                UNLEARND_MODEL_NAME=NAME)
    s.start_api()
    s.start_worker()
    yield s
    s.stop()


@pytest.fixture
def triton(svc: Service) -> Iterator[tc.InferenceServerClient]:
    client = tc.InferenceServerClient(url=svc.url.removeprefix("http://"))
    yield client
    client.close()


def _key(svc: Service) -> dict[str, str]:
    return {"X-API-Key": svc.key}


def _pixels(svc: Service, n: int) -> tuple[list[int], np.ndarray]:
    ids = svc.train_ids()[-n:]
    return ids, np.asarray(open_store(svc.settings.store_dir).x[ids], dtype=np.float32)


def test_server_and_model_metadata_and_health(svc: Service, triton: tc.InferenceServerClient) -> None:
    assert triton.is_server_live() and triton.is_server_ready()  # open: a gateway's probes carry no key
    server = triton.get_server_metadata()
    assert server["name"] == "unlearnd" and "binary_tensor_data" in server["extensions"]
    with svc.client() as c:
        served = c.get("/models/current").json()["serving"]
    meta = triton.get_model_metadata(NAME, headers=_key(svc))
    assert meta["name"] == NAME and meta["versions"] == [served]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 8, 8, 1]},
                              {"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert [(o["name"], o["datatype"], o["shape"]) for o in meta["outputs"]] == [
        ("probabilities", "FP32", [-1, 10]), ("label", "INT64", [-1]), ("class_name", "BYTES", [-1])]
    assert triton.is_model_ready(NAME, headers=_key(svc))
    assert triton.is_model_ready(NAME, model_version=served, headers=_key(svc))
    assert triton.get_model_metadata(NAME, model_version=served, headers=_key(svc))["versions"] == [served]
    with pytest.raises(InferenceServerException) as unknown:
        triton.get_model_metadata("resnet", headers=_key(svc))
    assert unknown.value.status() == "404" and "digits" in unknown.value.message()
    with pytest.raises(InferenceServerException) as anonymous:
        triton.get_model_metadata(NAME)
    assert anonymous.value.status() == "401"
    assert not triton.is_model_ready(NAME, model_version="0123456789abcdef", headers=_key(svc))  # 404


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_fp32_inference_equals_predict(svc: Service, triton: tc.InferenceServerClient, binary: bool) -> None:
    _, x = _pixels(svc, 3)
    inp = tc.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    outs = [tc.InferRequestedOutput(n, binary_data=binary) for n in ("probabilities", "label", "class_name")]
    res = triton.infer(NAME, [inp], outputs=outs, request_id="r-1", headers=_key(svc))
    with svc.client() as c:
        want = c.post("/predict", json={"instances": x.reshape(3, -1).tolist()}).json()
    probs = res.as_numpy("probabilities")
    assert probs.shape == (3, 10) and probs.dtype == np.float32
    assert res.as_numpy("label").tolist() == [p["label"] for p in want["predictions"]]
    names = [b.decode() if isinstance(b, bytes) else b for b in res.as_numpy("class_name")]
    assert names == [p["class_name"] for p in want["predictions"]]
    assert np.allclose(probs, [p["probabilities"] for p in want["predictions"]], atol=2e-6)
    response = res.get_response()
    assert response["model_version"] == want["model_version"] and response["id"] == "r-1"
    assert response["model_name"] == NAME


def test_bytes_image_inference_equals_image_predict(svc: Service, triton: tc.InferenceServerClient) -> None:
    _, x = _pixels(svc, 2)
    pngs = []
    for img in x:
        buf = io.BytesIO()
        Image.fromarray(np.rint(img[..., 0] * 255).astype(np.uint8), mode="L").save(buf, format="PNG")
        pngs.append(buf.getvalue())
    inp = tc.InferInput("image", [2], "BYTES")
    inp.set_data_from_numpy(np.asarray(pngs, dtype=np.object_))
    res = triton.infer(NAME, [inp], headers=_key(svc))  # every output, in binary: tritonclient's default
    with svc.client() as c:
        want = [c.post("/predict", content=p, headers={"content-type": "image/png"}).json() for p in pngs]
    assert res.as_numpy("label").tolist() == [w["predictions"][0]["label"] for w in want]
    assert np.allclose(res.as_numpy("probabilities"), [w["predictions"][0]["probabilities"] for w in want], atol=2e-6)
    assert res.get_response()["model_version"] == want[0]["model_version"]


def test_bad_inference_requests_answer_the_protocols_error(svc: Service) -> None:
    url = f"/v2/models/{NAME}/infer"
    row = {"name": "input", "shape": [1, 8, 8, 1], "datatype": "FP32", "data": [0.0] * 64}
    cases = [({"inputs": [row], "outputs": [{"name": "logits"}]}, "unknown output"),
             ({"inputs": [row], "outputs": [{"name": "label", "parameters": {"classification": 3}}]}, "classification"),
             ({"inputs": [{**row, "shape": [1, 64]}]}, "shape"),
             ({"inputs": [{**row, "shape": [0, 8, 8, 1], "data": []}]}, "N ≥ 1"),
             ({"inputs": [{**row, "shape": [2**70, 8, 8, 1]}]}, "unsigned 64-bit"),
             ({"inputs": [{**row, "datatype": "INT8"}]}, "FP32"),
             ({"inputs": [{**row, "data": [0.0] * 63}]}, "63 values"),
             ({"inputs": [{**row, "name": "pixels"}]}, "exactly one input"),
             ({"inputs": [row, row]}, "exactly one input")]
    with svc.client() as c:
        for body, words in cases:
            r = c.post(url, json=body)
            assert r.status_code == 400 and set(r.json()) == {"error"} and words in r.json()["error"], (body, r.text)
        assert c.post(url, content=b"{", headers={"content-type": "application/json"}).status_code == 400
        assert c.post(f"/v2/models/{NAME}/versions/0123456789abcdef/infer", json={"inputs": [row]}).status_code == 404
        assert set(c.get("/v2/models/nope").json()) == {"error"}
    assert httpx.post(svc.url + url, json={"inputs": [row]}).status_code == 401


def test_client_delete_wait_survives_a_worker_kill(svc: Service) -> None:
    ids = svc.train_ids()[:2]
    svc.stop_workers()
    slow = svc.start_worker(UNLEARND_DEBUG_COMMIT_DELAY_S=60)  # holds the batch until it is killed
    with Client(svc.url, api_key=svc.key) as c:
        r = c.delete(sample_ids=ids, idempotency_key="kill-1")
        assert c.delete(sample_ids=ids, idempotency_key="kill-1").id == r.id  # the key makes a retry harmless
        deadline = time.monotonic() + 90
        while r.refresh()["state"] != "processing":
            assert time.monotonic() < deadline, r.status
            time.sleep(0.1)
        with pytest.raises(WaitTimedOut) as waited:
            r.wait(timeout=0.5, poll_s=0.1)
        assert waited.value.request["state"] == "processing"
        slow.kill()
        svc.workers = []
        svc.start_worker()
        done = r.wait(timeout=180, poll_s=0.2)
    assert done["state"] == "completed" and done["model_version"], done
    assert done["attempts"] >= 1


def test_client_errors_are_typed_and_4xx_never_retried(svc: Service) -> None:
    sent: list[str] = []

    class Counting(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            sent.append(request.url.path)
            return super().handle_request(request)

    with Client(svc.url, api_key=svc.key, transport=Counting()) as c:
        with pytest.raises(NotFound):
            c.request("00000000-0000-0000-0000-000000000000")
        with pytest.raises(InvalidRequest) as bad:
            c.predict([[1.0, 2.0]])
        assert "64 numbers" in bad.value.detail
        assert c.predict(_pixels(svc, 1)[1].reshape(1, -1))["predictions"][0]["label"] in range(10)
    assert len(sent) == 3
    with Client(svc.url, api_key="ulk_nobody") as c, pytest.raises(Unauthorized):
        c.request("x")
    dead = Client(f"http://127.0.0.1:{free_port()}", retry=Retry(tries=3, backoff_s=0.01), transport=Counting())
    with dead, pytest.raises(Unavailable, match="after 3 tries"):
        dead.request("x")
    assert len(sent) == 3 + 3


def test_client_retries_503_then_answers() -> None:
    """The retry policy on real HTTP: a server that is unavailable twice (Retry-After: 0), then answers."""
    seen: list[int] = []

    class Flaky(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(1)
            unavailable = len(seen) <= 2
            body = json.dumps({"type": "https://unlearnd.dev/problems/unavailable", "status": 503, "detail": "x"}
                              if unavailable else {"id": "r", "state": "pending"}).encode()
            self.send_response(503 if unavailable else 200)
            self.send_header("content-type", "application/json")
            self.send_header("retry-after", "0")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with Client(f"http://127.0.0.1:{server.server_port}", retry=Retry(tries=3)) as c:
            assert c.request("r") == {"id": "r", "state": "pending"}
        assert len(seen) == 3
        seen.clear()
        with Client(f"http://127.0.0.1:{server.server_port}", retry=Retry(tries=2)) as c, \
                pytest.raises(Unavailable):
            c.request("r")
    finally:
        server.shutdown()


def test_async_client_deletes_and_waits(svc: Service) -> None:
    async def go() -> dict[str, object]:
        async with AsyncClient(svc.url, api_key=svc.key) as c:
            r = await c.delete(sample_ids=svc.train_ids()[2:3])
            return await r.wait(timeout=180, poll_s=0.2)

    assert asyncio.run(go())["state"] == "completed"
