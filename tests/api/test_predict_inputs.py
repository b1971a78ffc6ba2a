"""Issue 24, part 6: raw inputs at /predict. A PNG or JPEG body, or base64 images in `instances`, converted to the
model's channels and size with the stored preprocessing; answers carry class names; bad images are 4xx."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.service_harness import Service, running_sqlite_service


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory, digits_model_dir: Path, redis_url: str) -> Iterator[Service]:
    with running_sqlite_service(tmp_path_factory.mktemp("inputs"), digits_model_dir, redis_url, worker=False) as s:
        yield s


def _png(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def _sample_png(svc: Service, i: int, scale: int = 1) -> bytes:
    x = np.load(svc.settings.store_dir / "x.npy", mmap_mode="r")[i]  # (8, 8, 1) floats in [0, 1]
    pixels = np.rint(np.asarray(x)[..., 0] * 255).astype(np.uint8)
    return _png(np.kron(pixels, np.ones((scale, scale), dtype=np.uint8)))


def test_a_png_gets_the_answer_of_its_stored_sample(svc: Service) -> None:
    headers = {"X-API-Key": svc.key}
    for i in svc.train_ids()[:8]:
        stored = httpx.get(svc.url + "/predict", params={"sample_id": i}, headers=headers).json()["predictions"][0]
        r = httpx.post(svc.url + "/predict", content=_sample_png(svc, i), headers={**headers,
                                                                                  "content-type": "image/png"})
        assert r.status_code == 200, r.text
        got = r.json()["predictions"][0]
        assert got["label"] == stored["label"] and got["class_name"] == stored["class_name"] == str(got["label"])
        # the PNG holds the stored pixels rounded to 8 bits: the same answer, to that rounding
        assert np.allclose(got["probabilities"], stored["probabilities"], atol=0.02)


def test_base64_images_and_resizing(svc: Service) -> None:
    headers = {"X-API-Key": svc.key}
    ids = svc.train_ids()[:3]
    body = {"instances": [base64.b64encode(_sample_png(svc, i)).decode() for i in ids]}
    r = httpx.post(svc.url + "/predict", json=body, headers=headers)
    assert r.status_code == 200 and len(r.json()["predictions"]) == 3
    # a 32×32 upload of the same digit is resized to the model's 8×8, RGB is converted to its one channel
    big = Image.open(io.BytesIO(_sample_png(svc, ids[0], scale=4))).convert("RGB")
    buf = io.BytesIO()
    big.save(buf, format="JPEG", quality=95)
    r = httpx.post(svc.url + "/predict", content=buf.getvalue(), headers={**headers, "content-type": "image/jpeg"})
    assert r.status_code == 200 and r.json()["predictions"][0]["label"] == \
        httpx.get(svc.url + "/predict", params={"sample_id": ids[0]}, headers=headers).json()["predictions"][0]["label"]


def test_bad_images_are_4xx(svc: Service) -> None:
    headers = {"X-API-Key": svc.key}
    good = _sample_png(svc, svc.train_ids()[0])
    bomb = _png(np.zeros((2100, 2100), dtype=np.uint8))  # 4.4 M pixels, a few kB compressed
    gif = _png(np.zeros((8, 8), dtype=np.uint8), fmt="GIF")
    cases = [(b"not an image at all", "image/png", 422), (good[: len(good) // 2], "image/png", 422),
             (bomb, "image/png", 422), (gif, "image/png", 415), (good, "image/gif", 415), (b"", "image/jpeg", 422)]
    for body, ctype, status in cases:
        r = httpx.post(svc.url + "/predict", content=body, headers={**headers, "content-type": ctype})
        assert r.status_code == status, (ctype, len(body), r.status_code, r.text)
        assert r.headers["content-type"] == "application/problem+json"
    r = httpx.post(svc.url + "/predict", json={"instances": ["not base64!"]}, headers=headers)
    assert r.status_code == 422 and "base64" in r.json()["detail"]
    r = httpx.post(svc.url + "/predict", json={"instances": [base64.b64encode(good).decode(), [1.0] * 64]},
                   headers=headers)
    assert r.status_code == 422
