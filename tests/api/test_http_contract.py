"""The HTTP contract on one live server: bad input, the auth matrix, the audit chain, OpenAPI."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Query
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from app.api.threads import BackgroundRoute
from app.core.priority import BACKGROUND_NICE
from app.service.live import LiveService
from tests.service_harness import Service, running_sqlite_service


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory, digits_model_dir: Path, redis_url: str) -> Iterator[Service]:
    with running_sqlite_service(tmp_path_factory.mktemp("api"), digits_model_dir, redis_url) as s:
        yield s


def _count(svc: Service, table: str) -> int:
    engine = create_engine(svc.settings.db_url)
    with engine.connect() as c:
        n = int(c.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
    engine.dispose()
    return n


def _problem(r: httpx.Response, status: int) -> dict[str, object]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["status"] == status and body["type"].startswith("https://") and body["title"]
    return body  # type: ignore[no-any-return]


def _predict_count(metrics: str) -> float:
    line = next((ln for ln in metrics.splitlines() if ln.startswith("unlearnd_http_requests_total{")
                 and 'route="/predict"' in ln and '"200"' in ln), None)
    return float(line.rsplit(" ", 1)[1]) if line else 0.0


def test_predict_fast_lane_answers_like_the_routed_path(svc: Service) -> None:
    """POST /predict's happy path skips FastAPI (app.api.fastlane); GET /predict?x= is routed and shares
    the model code. Same input, same answer; both are counted; a bad POST still gets problem+json."""
    rows = [[float((7 * i + j) % 17) for j in range(64)] for i in range(3)]
    with svc.client() as c:
        before = _predict_count(c.get("/metrics").text)
        fast = c.post("/predict", json={"instances": rows})
        assert fast.status_code == 200 and fast.headers["content-type"] == "application/json"
        routed = [c.get("/predict", params={"x": ",".join(map(str, r))}).json() for r in rows]
        assert fast.json()["model_version"] == routed[0]["model_version"]
        # a batch of 3 and three batches of 1 sum in different orders: the same labels, probabilities to 1e-5
        for got, want in zip(fast.json()["predictions"], [r["predictions"][0] for r in routed], strict=True):
            assert got["label"] == want["label"] and got["class_name"] == want["class_name"]
            assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-5)
        assert _predict_count(c.get("/metrics").text) == before + 4
        _problem(c.post("/predict", json={"instances": [[1.0] * 63]}), 422)
        _problem(c.post("/predict", content=b'{"instances": [[1,', headers={"content-type": "application/json"}),
                 400)
    with svc.client(key=None) as anon:
        _problem(anon.post("/predict", json={"instances": rows}), 401)
    with svc.client(key="ulk_not_a_key_0123456789") as bad:
        _problem(bad.post("/predict", json={"instances": rows}), 401)


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux's")
def test_worker_runs_at_low_priority(svc: Service) -> None:
    """Deletions have seconds of slack, predictions milliseconds: the worker yields the CPU, but not
    wholly (under a saturating load a SCHED_IDLE worker never ran, and deletions stalled)."""
    pid = svc.workers[0].pid
    deadline = time.monotonic() + 60
    while os.sched_getscheduler(pid) != os.SCHED_BATCH and time.monotonic() < deadline:
        time.sleep(0.2)  # it lowers itself once started
    assert os.sched_getscheduler(pid) == os.SCHED_BATCH and os.getpriority(os.PRIO_PROCESS, pid) == 10
    assert os.sched_getscheduler(svc.api.pid) == os.SCHED_OTHER  # type: ignore[union-attr]


def _thread_nices(pid: int) -> dict[int, int]:
    return {int(t): os.getpriority(os.PRIO_PROCESS, int(t)) for t in os.listdir(f"/proc/{pid}/task")}


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread priority is Linux's")
def test_api_blocking_work_runs_below_the_event_loop(svc: Service) -> None:
    """The sync routes' pool thread and the reload threads at BACKGROUND_NICE, the event loop (the main
    thread) at the process's own: a POST /delete must not preempt the loop that answers predictions."""
    assert svc.api is not None
    with svc.client() as c:
        assert c.get("/models/current").status_code == 200  # a sync route: it ran on a pool thread
    nices = _thread_nices(svc.api.pid)
    assert nices[svc.api.pid] == 0
    # the poll and listen threads, and at least one pool thread
    assert sum(n == BACKGROUND_NICE for n in nices.values()) >= 3, nices


def test_background_route_lowers_sync_endpoints_only() -> None:
    """In-process: a sync endpoint runs lowered and still gets its typed parameters; an async one,
    on the event loop, is left alone."""
    router = APIRouter(route_class=BackgroundRoute)

    @router.get("/sync")
    def sync_nice(x: Annotated[int, Query()]) -> dict[str, int]:
        return {"x": x, "nice": os.getpriority(os.PRIO_PROCESS, threading.get_native_id())}

    @router.get("/async")
    async def async_nice() -> dict[str, int]:
        return {"nice": os.getpriority(os.PRIO_PROCESS, threading.get_native_id())}

    app = FastAPI()
    app.include_router(router)
    with TestClient(app) as c:
        assert c.get("/sync", params={"x": "7"}).json() == {"x": 7, "nice": BACKGROUND_NICE}
        assert c.get("/sync", params={"x": "seven"}).status_code == 422
        assert c.get("/async").json()["nice"] < BACKGROUND_NICE


def test_bad_delete_input_is_refused_and_writes_nothing(svc: Service) -> None:
    ids = svc.train_ids()
    before = (_count(svc, "deletion_requests"), _count(svc, "request_samples"))
    with svc.client() as c:
        body = _problem(c.post("/delete", json={"sample_ids": [ids[0], 10**9]}), 422)
        assert body["unknown_ids"] == [10**9]
        _problem(c.post("/delete", json={"sample_ids": []}), 422)
        _problem(c.post("/delete", json={"sample_ids": ids[:51]}), 422)  # UNLEARND_MAX_DELETE_IDS=50
        _problem(c.post("/delete", content=b'{"sample_ids": [1,', headers={"content-type": "application/json"}),
                 400)
        for bad in ({"sample_ids": "abc"}, {"sample_ids": [1.5]}, {"sample_ids": ["1"]}, {"subject_id": 3},
                    {"sample_ids": [ids[0]], "subject_id": "person-1"}, {}, {"ids": [ids[0]]}, [ids[0]]):
            _problem(c.post("/delete", json=bad), 422)
        _problem(c.get("/requests/no-such-request"), 404)
        _problem(c.get("/predict", params={"sample_id": 10**9}), 404)
        _problem(c.get("/predict", params={"x": "1,2,3"}), 422)
        _problem(c.get("/predict", params={"x": "a,b"}), 422)
        _problem(c.get("/predict"), 422)
        _problem(c.post("/predict", json={"instances": []}), 422)
        _problem(c.get("/no-such-route"), 404)
    assert (_count(svc, "deletion_requests"), _count(svc, "request_samples")) == before


ENDPOINTS = [  # (method, path, body, the scopes that may call it; admin may call everything)
    ("GET", "/predict?x=" + ",".join(["0.5"] * 64), None, {"predict"}),
    ("POST", "/predict", {"instances": [[0.5] * 64]}, {"predict"}),
    ("POST", "/delete", "ids", {"delete"}),
    ("GET", "/requests/{rid}", None, {"delete", "audit"}),
    ("GET", "/audit", None, {"audit"}),
    ("GET", "/models", None, {"predict", "audit"}),
    ("GET", "/models/current", None, {"predict", "audit"}),
]


def test_auth_matrix(svc: Service) -> None:
    keys = {}
    for scope in ("predict", "delete", "audit", "admin"):
        out = svc.cli("keys", "create", "--scopes", scope)
        assert out.returncode == 0, out.stderr
        keys[scope] = out.stdout.strip()
    with svc.client() as c:
        rid = c.post("/delete", json={"sample_ids": [svc.train_ids()[-1]]}).json()["id"]
    ids = svc.train_ids()
    for method, path, body, allowed in ENDPOINTS:
        path = path.replace("{rid}", rid)
        for who in (None, "ulk_not_a_real_key_000000", *keys):
            key = keys.get(who or "", who)
            payload = {"sample_ids": [ids.pop()]} if body == "ids" else body
            r = httpx.request(method, svc.url + path, json=payload, headers={"X-API-Key": key} if key else {})
            if who is None or who not in keys:
                _problem(r, 401)
            elif who == "admin" or who in allowed:
                assert r.status_code in (200, 202), (method, path, who, r.text)
            else:
                _problem(r, 403)
    for open_path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert httpx.get(svc.url + open_path).status_code == 200
    bearer = httpx.get(svc.url + "/audit", headers={"Authorization": f"Bearer {keys['audit']}"})
    assert bearer.status_code == 200
    assert svc.cli("keys", "create", "--scopes", "root").returncode == 2


def test_stored_keys_are_hashed(svc: Service) -> None:
    engine = create_engine(svc.settings.db_url)
    with engine.connect() as c:
        rows = list(c.execute(text("SELECT id, key_sha256 FROM api_keys")))
    engine.dispose()
    assert rows and all(svc.key != h and svc.key[12:] not in h for _, h in rows)


def test_tampered_audit_row_is_detected(svc: Service) -> None:
    with svc.client() as c:
        rid = c.post("/delete", json={"sample_ids": [svc.train_ids()[5]]}).json()["id"]
        seq = svc.wait_request(rid)["audit_entry"]
    # no clean `audit verify` first: the last one, on the restored row, shows the chain was whole before
    engine = create_engine(svc.settings.db_url)
    with engine.begin() as c:
        payload = c.execute(text("SELECT payload FROM audit_entries WHERE seq = :s"), {"s": seq}).scalar_one()
        forged = payload.replace('"event":"unlearn"', '"event":"relearn"')
        assert forged != payload
        c.execute(text("UPDATE audit_entries SET payload = :p WHERE seq = :s"), {"p": forged, "s": seq})
    out = svc.cli("audit", "verify")
    assert out.returncode == 1 and f"entry {seq}" in out.stdout and "edited" in out.stdout
    with engine.begin() as c:
        c.execute(text("UPDATE audit_entries SET payload = :p WHERE seq = :s"), {"p": payload, "s": seq})
    assert svc.cli("audit", "verify").returncode == 0
    engine.dispose()


def test_audit_is_paginated(svc: Service) -> None:
    with svc.client() as c:
        page = c.get("/audit", params={"limit": 1}).json()
        assert len(page["items"]) == 1 and page["total"] >= 2 and page["next"]
        nxt = c.get(page["next"]).json()
        assert nxt["items"][0]["seq"] == page["items"][0]["seq"] + 1
        assert nxt["items"][0]["prev_hash"] == page["items"][0]["hash"]


def test_openapi_is_complete(svc: Service) -> None:
    spec = httpx.get(svc.url + "/openapi.json").json()
    paths = set(spec["paths"])
    assert {"/predict", "/delete", "/requests/{request_id}", "/audit", "/models", "/models/current", "/healthz",
            "/readyz", "/metrics"} <= paths
    assert "Problem" in spec["components"]["schemas"]
    assert "410" in spec["paths"]["/predict"]["get"]["responses"]
    assert "202" in spec["paths"]["/delete"]["post"]["responses"]


def test_ledger_work_in_threads_answers_like_the_ledger_process(svc: Service) -> None:
    """`ledger_processes=0` (the ledger work on threads of the API) and the default ledger process
    give the same answers, on the same ledger: a second API with 0 beside the module's."""
    keep = ("UNLEARND_QUEUE_NAME", "UNLEARND_SUBJECTS_FILE", "UNLEARND_MAX_DELETE_IDS", "UNLEARND_POLL_INTERVAL_S")
    inline = LiveService(svc.home, svc.model_dir, db_url=svc.settings.db_url, redis_url=svc.env["REDIS_URL"],
                         key=svc.key, UNLEARND_LEDGER_PROCESSES=0, **{k: svc.env[k] for k in keep})
    try:
        inline.start_api()
        assert svc.ledger_pids() and not inline.ledger_pids()
        ids = svc.train_ids()
        with svc.client() as a, inline.client() as b:
            rid = b.post("/delete", json={"sample_ids": ids[-3:]}).json()["id"]  # accepted by the threads
            done = svc.wait_request(rid)  # completed by the worker, seen through the ledger process
            assert done["state"] == "completed" and done["sample_ids"] == sorted(ids[-3:])
            replay = a.post("/delete", json={"sample_ids": ids[-2:]})
            assert replay.json()["already_forgotten"] == sorted(ids[-2:])
            for path in (f"/requests/{rid}", f"/requests/{replay.json()['id']}", "/models",
                         "/audit?offset=1&limit=2", "/requests/no-such-request"):
                ra, rb = a.get(path), b.get(path)
                assert ra.status_code == rb.status_code
                body_a, body_b = ra.json(), rb.json()
                if isinstance(body_a, dict) and body_a.get("next"):  # a link to each server's own port
                    body_a["next"], body_b["next"] = (x.split("/", 3)[3] for x in (body_a["next"], body_b["next"]))
                assert body_a == body_b, path
    finally:
        inline.stop()
