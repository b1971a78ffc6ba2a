"""The hostile corpus (issues 15 and 22) against live services on SQLite and on PostgreSQL: every hostile
request gets its documented 4xx as problem+json, never a 5xx, on both databases."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.service_harness import PG_URL, Service, db_url_for, strict_json

BIG = "9223372036854775808"  # 2^63: one past int64
ROW = ",".join(["1"] * 64)
JSON = "application/json"
NUL_SUBJECT = b'{"subject_id": "a\\u0000b"}'
CTRL_SUBJECT = b'{"subject_id": "a\\u001bb"}'

# (method, path, params, body bytes, content type, send the key, expected status)
CORPUS: list[tuple[str, str, dict[str, str] | None, bytes | None, str | None, bool, int]] = [
    ("POST", "/delete", None, b'{"sample_ids": [' + BIG.encode() + b"]}", JSON, True, 422),
    ("POST", "/delete", None, b'{"sample_ids": [-1]}', JSON, True, 422),
    ("POST", "/delete", None, b'{"sample_ids": [1]}', "text/plain", True, 415),
    ("POST", "/delete", None, b"[" * 100_000, JSON, True, 400),
    ("GET", "/predict", {"sample_id": BIG}, None, None, True, 422),
    ("GET", "/predict", {"sample_id": "99999999999999999999"}, None, None, True, 422),
    ("GET", "/predict", {"sample_id": "1_0"}, None, None, True, 422),
    ("GET", "/predict", {"sample_id": "\u0663"}, None, None, True, 422),  # an Arabic-Indic 3
    ("GET", "/predict", {"sample_id": "-1"}, None, None, True, 422),
    ("GET", "/predict", {"x": "\u0663," + ",".join(["1"] * 63)}, None, None, True, 422),
    ("GET", "/predict", {"x": "1_0," + ",".join(["1"] * 63)}, None, None, True, 422),
    ("GET", "/predict", {"x": "nan," + ",".join(["1"] * 63)}, None, None, True, 422),
    ("GET", "/predict", {"x": ROW.replace("1", "1e39")}, None, None, True, 422),
    ("GET", "/audit", {"offset": BIG}, None, None, True, 422),
    ("GET", "/audit", {"limit": BIG}, None, None, True, 422),
    ("POST", "/predict", None, b"[" * 100_000, JSON, True, 400),
    ("POST", "/predict", None, b'{"instances": [[' + b",".join([b"1e39"] * 64) + b"]]}", JSON, True, 422),
    ("POST", "/predict", None, b'{"instances": [[' + ROW.encode() + b"]]}", "text/plain", True, 415),
    ("POST", "/predict", None, b'{"instances": [[' + ROW.encode() + b"]]}", None, True, 415),
    # issue 22
    ("GET", "/requests/a%00b", None, None, None, True, 422),  # D4: NUL reached PostgreSQL's text type
    ("GET", "/requests/not-a-request-id", None, None, None, True, 404),
    ("GET", "/requests/" + "a" * 65, None, None, None, True, 422),
    ("POST", "/delete", None, NUL_SUBJECT, JSON, True, 422),  # D4
    ("POST", "/delete", None, CTRL_SUBJECT, JSON, True, 422),
    ("POST", "/delete", None, b'{"sample_ids": [' + b"1," * 600_000 + b"1]}", JSON, True, 413),  # D6
    ("POST", "/predict", None, b'{"instances": [[' + b"1," * 600_000 + b"1]]}", JSON, True, 413),
    ("POST", "/delete", None, b'{"sample_ids": [' + b"1," * 600_000 + b"1]}", JSON, False, 401),  # before the body
    ("POST", "/predict", None, b'{"instances": [[1]]}', JSON, False, 401),
    ("POST", "/ui/login", None, b"key=" + b"k" * 40_000, "application/x-www-form-urlencoded", False, 413),
    ("PUT", "/predict", None, None, None, True, 405),  # D11: Allow names GET and POST
    # issue 24: raw images
    ("POST", "/predict", None, b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "image/png", True, 422),  # a broken PNG
    ("POST", "/predict", None, b"GIF89a" + b"\x00" * 32, "image/png", True, 422),
    ("POST", "/predict", None, b"\xff\xd8\xff", "image/jpeg", True, 422),  # a truncated JPEG
    ("POST", "/predict", None, b"\x89PNG", "image/gif", True, 415),
    ("POST", "/predict", None, b'{"instances": ["%%%"]}', JSON, True, 422),
]


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def svc(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, digits_model_dir: Path,
        redis_url: str) -> Iterator[Service]:
    if request.param == "postgres" and not PG_URL:
        pytest.skip("no test PostgreSQL")
    tmp = tmp_path_factory.mktemp(f"corpus-{request.param}")
    s = Service(tmp, digits_model_dir, db_url=db_url_for(request.param, tmp / "home"), redis_url=redis_url,
                UNLEARND_VERIFY_REFS=0)
    try:
        s.start_api()
        yield s
    finally:
        s.stop()


@pytest.mark.parametrize(("method", "path", "params", "body", "ctype", "keyed", "status"), CORPUS)
def test_hostile_corpus(svc: Service, method: str, path: str, params: dict[str, str] | None, body: bytes | None,
                        ctype: str | None, keyed: bool, status: int) -> None:
    headers = {**({"X-API-Key": svc.key} if keyed else {}), **({"content-type": ctype} if ctype else {})}
    r = httpx.request(method, svc.url + path, params=params, content=body, headers=headers, timeout=30)
    assert r.status_code == status, r.text[:500]
    assert r.headers["content-type"] == "application/problem+json"
    assert strict_json(r.text)
    if status == 405:
        assert r.headers["allow"] == ("GET, POST" if path == "/predict" else "POST")


def test_405_names_the_allowed_methods(svc: Service) -> None:
    r = httpx.put(svc.url + "/delete", headers={"X-API-Key": svc.key})
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.headers["content-type"] == "application/problem+json"


def test_the_http_defects_of_issue_22(svc: Service) -> None:
    """D10 and D11 on each database: no framing, no foreign-origin login, no Host reflected, idempotency keys per
    API key."""
    page = httpx.get(svc.url + "/ui", headers={"X-API-Key": svc.key})
    assert page.headers["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in page.headers[
        "content-security-policy"]
    evil = httpx.post(svc.url + "/ui/login", data={"key": svc.key}, headers={"Origin": "https://evil.example"})
    assert evil.status_code == 403 and "set-cookie" not in evil.headers
    other = svc.cli("keys", "create", "--scopes", "delete").stdout.strip()
    first = None
    for key in (svc.key, svc.key, other):
        r = httpx.post(svc.url + "/delete", json={"sample_ids": svc.train_ids()[:1]}, timeout=30,
                       headers={"X-API-Key": key, "Idempotency-Key": "corpus-1", "Host": "evil.example"})
        assert r.status_code == 202, r.text
        assert "evil.example" not in r.headers["location"] + r.json()["status_url"]
        if key == svc.key and first is None:
            first = r.json()["id"]
        elif key == svc.key:
            assert r.json()["id"] == first and r.headers["idempotent-replayed"] == "true"
        else:
            assert r.json()["id"] != first and "idempotent-replayed" not in r.headers
