"""Failures and races against live processes: a killed worker, Redis down, concurrent deletes,
predictions while versions swap, weights that fail validation."""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import create_engine, text

from app.core.embedded_redis import EmbeddedRedis
from tests.service_harness import PG_URL, Service, db_url_for, free_port

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.skipif(not PG_URL, reason="no test PostgreSQL"))]


def _ledger(svc: Service, sql: str) -> list[tuple[object, ...]]:
    engine = create_engine(svc.settings.db_url)
    with engine.connect() as c:
        rows = [tuple(r) for r in c.execute(text(sql))]
    engine.dispose()
    return rows


def _assert_forgotten_once(svc: Service, ids: list[int]) -> None:
    rows = _ledger(svc, "SELECT id, state, forgotten_in FROM samples WHERE state = 'forgotten'")
    assert sorted(int(r[0]) for r in rows) == sorted(ids)
    entries = [json.loads(str(p)) for (p,) in _ledger(svc, "SELECT payload FROM audit_entries ORDER BY seq")]
    unlearn = [e for e in entries if e["event"] == "unlearn"]
    assert sum(e["n_forget"] for e in unlearn) == len(ids)  # no sample counted in two batches
    chain = _ledger(svc, "SELECT id, parent_id FROM model_versions ORDER BY seq")
    assert len(chain) == len(unlearn) + 1
    assert all(child[1] == parent[0] for parent, child in itertools.pairwise(chain))
    assert svc.cli("audit", "verify").returncode == 0


def test_worker_killed_mid_batch_loses_nothing(tmp_path: Path, digits_model_dir: Path, redis_url: str) -> None:
    svc = Service(tmp_path, digits_model_dir, db_url=db_url_for("sqlite", tmp_path / "home"), redis_url=redis_url)
    try:
        svc.start_api()
        slow = svc.start_worker(UNLEARND_DEBUG_COMMIT_DELAY_S=30)  # weights written, commit 30 s away
        ids = svc.train_ids()[:4]
        with svc.client() as c:
            v1 = c.get("/models/current").json()["id"]
            rid = c.post("/delete", json={"sample_ids": ids}).json()["id"]
            before = set(svc.settings.models_dir.iterdir())
            deadline = time.monotonic() + 60
            while set(svc.settings.models_dir.iterdir()) == before:  # the new version's folder appears
                assert time.monotonic() < deadline
                time.sleep(0.1)
            slow.send_signal(signal.SIGKILL)
            slow.wait()
            assert c.get(f"/requests/{rid}").json()["state"] == "processing"
            assert c.get("/models/current").json()["serving"] == v1  # written but uncommitted: never loaded
            svc.start_worker()  # the sweep re-queues the batch once its lease (6 s) expires
            done = svc.wait_request(rid)
            assert done["state"] == "completed" and done["attempts"] == 2
            svc.wait_serving(done["model_version"])
            assert "unlearnd_model_failed_loads_total 0.0" in c.get("/metrics").text
        _assert_forgotten_once(svc, ids)
    finally:
        svc.stop()


def test_redis_down_when_request_arrives(tmp_path: Path, digits_model_dir: Path) -> None:
    redis = EmbeddedRedis(free_port(), tmp_path / "redis").start()
    svc = Service(tmp_path, digits_model_dir, db_url=db_url_for("sqlite", tmp_path / "home"), redis_url=redis.url)
    try:
        svc.start_api()
        svc.start_worker()
        redis.stop()
        with svc.client() as c:
            r = c.post("/delete", json={"sample_ids": svc.train_ids()[:2]})
            assert r.status_code == 202  # accepted = a committed ledger row, Redis or not
            time.sleep(3)
            assert c.get(f"/requests/{r.json()['id']}").json()["state"] == "pending"
            assert c.get("/readyz").status_code == 503
            redis.start()
            assert svc.wait_request(r.json()["id"], timeout_s=60)["state"] == "completed"
        _assert_forgotten_once(svc, svc.train_ids()[:2])
    finally:
        svc.stop()
        redis.stop()


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_overlapping_deletes(backend: str, tmp_path: Path, digits_model_dir: Path,
                                        redis_url: str) -> None:
    svc = Service(tmp_path, digits_model_dir, db_url=db_url_for(backend, tmp_path / "home"), redis_url=redis_url,
                  UNLEARND_BATCH_MAX_SAMPLES=8)  # several batches, so workers race for the head
    try:
        svc.start_api()
        svc.start_worker()
        svc.start_worker()
        pool = svc.train_ids()[:30]
        sets = [pool[i : i + 6] for i in range(0, 24, 3)]  # 8 requests, each overlapping its neighbours
        with ThreadPoolExecutor(8) as ex, svc.client() as c:
            responses = list(ex.map(lambda ids: c.post("/delete", json={"sample_ids": ids}), sets))
            assert all(r.status_code == 202 for r in responses)
            done = [svc.wait_request(r.json()["id"], timeout_s=180) for r in responses]
        assert all(d["state"] == "completed" for d in done), [(d["state"], d["reason"]) for d in done]
        _assert_forgotten_once(svc, sorted({i for s in sets for i in s}))
    finally:
        svc.stop()


def test_predictions_during_repeated_swaps(tmp_path: Path, digits_model_dir: Path, redis_url: str) -> None:
    svc = Service(tmp_path, digits_model_dir, db_url=db_url_for("sqlite", tmp_path / "home"), redis_url=redis_url,
                  UNLEARND_POLL_INTERVAL_S=0.05)
    try:
        svc.start_api()
        svc.start_worker()
        from app.service.store import open_store

        store = open_store(svc.settings.store_dir)
        ids = svc.train_ids()
        x = [np.asarray(store.x[i]).reshape(-1).tolist() for i in ids[-4:]]
        seen: list[tuple[int, str, tuple[float, ...]]] = []
        stop = threading.Event()

        def hammer() -> None:
            with httpx.Client(base_url=svc.url, headers={"X-API-Key": svc.key}, timeout=30) as c:
                while not stop.is_set():
                    r = c.post("/predict", json={"instances": x})
                    body = r.json()
                    seen.append((r.status_code, body.get("model_version", ""),
                                 tuple(p for q in body.get("predictions", []) for p in q["probabilities"])))

        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for t in threads:
            t.start()
        with svc.client() as c:
            for k in range(4):
                rid = c.post("/delete", json={"sample_ids": ids[3 * k : 3 * k + 3]}).json()["id"]
                svc.wait_serving(svc.wait_request(rid)["model_version"])
        stop.set()
        for t in threads:
            t.join()
        assert seen and all(code == 200 for code, _, _ in seen)
        by_version: dict[str, set[tuple[float, ...]]] = defaultdict(set)
        for _, v, probs in seen:
            by_version[v].add(probs)
        assert len(by_version) >= 3  # the hammer really saw swaps
        ledger_versions = {r[0] for r in _ledger(svc, "SELECT id FROM model_versions")}
        assert set(by_version) <= ledger_versions
        # one answer per version: a response mixing two versions' outputs would add a second vector
        assert all(len(vecs) == 1 for vecs in by_version.values()), {v: len(s) for v, s in by_version.items()}
    finally:
        svc.stop()


def test_weights_below_floor_fail_loudly(tmp_path: Path, digits_model_dir: Path, redis_url: str) -> None:
    svc = Service(tmp_path, digits_model_dir, db_url=db_url_for("sqlite", tmp_path / "home"), redis_url=redis_url,
                  UNLEARND_ACCURACY_FLOOR=0.999)
    try:
        svc.start_api()
        svc.start_worker()
        with svc.client() as c:
            v1 = c.get("/models/current").json()["id"]
            rid = c.post("/delete", json={"sample_ids": svc.train_ids()[:2]}).json()["id"]
            done = svc.wait_request(rid)
            assert done["state"] == "failed" and "below the floor" in done["reason"]
            assert c.get("/models/current").json()["id"] == v1
            assert c.get("/predict", params={"sample_id": svc.train_ids()[0]}).status_code == 200
    finally:
        svc.stop()


def test_rejected_iau_step_falls_back_to_retraining(tmp_path: Path, digits_model_dir: Path, redis_url: str) -> None:
    svc = Service(tmp_path, digits_model_dir, db_url=db_url_for("sqlite", tmp_path / "home"), redis_url=redis_url,
                  UNLEARND_UNLEARN_PARAMS=json.dumps({"eta": 1.0, "reduction": "mean", "step": "sgd"}),
                  UNLEARND_ON_INVALID="retrain", UNLEARND_BACKTRACKS=0)  # this step wrecks the model
    try:
        svc.start_api()
        svc.start_worker()
        with svc.client() as c:
            rid = c.post("/delete", json={"sample_ids": svc.train_ids()[:2]}).json()["id"]
            done = svc.wait_request(rid, timeout_s=180)
            assert done["state"] == "completed", done
            entry = c.get("/audit", params={"offset": done["audit_entry"] - 1, "limit": 1}).json()["items"][0]
        p = entry["payload"]
        assert p["method"] == "retrain" and p["exact"] and p["attempts"][0]["rejected"]  # below the floor, or NaN
        assert [(a["method"], a["params"].get("eta")) for a in p["attempts"]] == [("iau", 1.0), ("retrain", None)]
        assert done["forgetting"]["exact"] and done["forgetting"]["exact_at"] == done["completed_at"]
        assert p["holdout_acc_after"] >= p["holdout_acc_before"] - 0.25
    finally:
        svc.stop()


def test_too_large_iau_step_is_halved_until_valid(tmp_path: Path, digits_model_dir: Path, redis_url: str) -> None:
    # on the fixture model one Adam step of 8e-3 leaves held-out ~0.26, 4e-3 ~0.47, 2e-3 ~0.87 (floor ~0.70)
    svc = Service(tmp_path, digits_model_dir, db_url=db_url_for("sqlite", tmp_path / "home"), redis_url=redis_url,
                  UNLEARND_UNLEARN_PARAMS=json.dumps({"eta": 8e-3, "reduction": "mean", "step": "adam"}))
    try:
        svc.start_api()
        svc.start_worker()
        with svc.client() as c:
            rid = c.post("/delete", json={"sample_ids": svc.train_ids()[:2]}).json()["id"]
            done = svc.wait_request(rid)
            assert done["state"] == "completed", done
            entry = c.get("/audit", params={"offset": done["audit_entry"] - 1, "limit": 1}).json()["items"][0]
        p = entry["payload"]
        assert p["method"] == "iau" and not p["exact"] and p["params"]["eta"] == pytest.approx(2e-3)
        assert [a["params"]["eta"] for a in p["attempts"]] == pytest.approx([8e-3, 4e-3, 2e-3])
        assert [bool(a["rejected"]) for a in p["attempts"]] == [True, True, False]
        assert p["holdout_acc_after"] >= p["holdout_acc_before"] - 0.25
    finally:
        svc.stop()


def test_ledger_process_killed_is_restarted_and_loses_nothing(tmp_path: Path, digits_model_dir: Path,
                                                              redis_url: str) -> None:
    """The deletion endpoints' ledger work runs in a child of the API. SIGKILLed, the request in its
    way gets a 503 problem (its outcome unknown: the client retries with its Idempotency-Key), the
    next is served by a new process, and every accepted request completes."""
    svc = Service(tmp_path, digits_model_dir, db_url=db_url_for("sqlite", tmp_path / "home"), redis_url=redis_url)
    try:
        svc.start_api()
        svc.start_worker()
        ids = svc.train_ids()
        with svc.client() as c:
            first = c.post("/delete", json={"sample_ids": ids[:2]}).json()["id"]
            [pid] = svc.ledger_pids()
            assert pid != svc.api.pid  # type: ignore[union-attr]
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while pid in svc.children():  # reaped by the pool once it sees the death
                assert time.monotonic() < deadline
                time.sleep(0.05)
            key = {"Idempotency-Key": "after-the-kill"}
            r = c.post("/delete", json={"sample_ids": ids[2:4]}, headers=key)
            assert r.status_code == 503 and r.headers["content-type"] == "application/problem+json", r.text
            retry = c.post("/delete", json={"sample_ids": ids[2:4]}, headers=key)
            assert retry.status_code == 202, retry.text
            [new_pid] = svc.ledger_pids()
            assert new_pid != pid
            for rid in (first, retry.json()["id"]):
                assert svc.wait_request(rid)["state"] == "completed"
            assert c.get("/audit").status_code == 200
            assert c.get("/readyz").json()["checks"]["ledger_process"] == "ok"
        _assert_forgotten_once(svc, ids[:4])
    finally:
        svc.stop()
