"""Exact consolidation against live processes: approximately-forgotten requests become exact before they are
due, on demand or by the worker, and a consolidation killed mid-way loses nothing and is redone."""

from __future__ import annotations

import json
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service_harness import PG_URL, Service, db_url_for
from tests.test_service_faults import _ledger

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.skipif(not PG_URL, reason="no test PostgreSQL"))]


def _wait_exact(c: httpx.Client, rid: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = c.get(f"/requests/{rid}").json()
        if (body.get("forgetting") or {}).get("exact"):
            return body  # type: ignore[no-any-return]
        time.sleep(0.2)
    raise TimeoutError(f"request {rid} never became exact: {body}")


def _consolidations(svc: Service, events: tuple[str, ...] = ("consolidate",)) -> list[dict[str, Any]]:
    rows = _ledger(svc, "SELECT payload FROM audit_entries ORDER BY seq")
    return [p for p in (json.loads(str(r[0])) for r in rows) if p["event"] in events]


def _is_exact(c: httpx.Client, rid: str) -> bool:
    return bool(c.get(f"/requests/{rid}").json()["forgetting"]["exact"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_on_demand_consolidation_makes_requests_exact(backend: str, tmp_path: Path, digits_model_dir: Path,
                                                      redis_url: str) -> None:
    svc = Service(tmp_path, digits_model_dir, db_url=db_url_for(backend, tmp_path / "home"), redis_url=redis_url)
    try:
        svc.start_api()
        svc.start_worker()
        ids = svc.train_ids()[:3]
        with svc.client() as c:
            rid = c.post("/delete", json={"sample_ids": ids}).json()["id"]
            done = svc.wait_request(rid)
            how = done["forgetting"]
            assert how["method"] == "iau" and not how["exact"] and how["exact_at"] is None
            time.sleep(3)  # several sweeps: due in 30 days, outside the 7-day margin, one version in the chain
            assert not c.get(f"/requests/{rid}").json()["forgetting"]["exact"]
            assert _consolidations(svc) == []
            svc.stop_workers()
            v2 = c.get("/models/current").json()["id"]
            refused = svc.cli("consolidate", UNLEARND_ACCURACY_FLOOR="0.999")  # an operator's floor it cannot meet
            assert refused.returncode == 1 and "failed" in refused.stdout, refused.stdout + refused.stderr
            assert c.get("/models/current").json()["id"] == v2 and not _is_exact(c, rid)
            proc = svc.cli("consolidate")
            assert proc.returncode == 0 and "1 request(s) are now exact" in proc.stdout, proc.stdout + proc.stderr
            body = _wait_exact(c, rid)
            assert body["forgetting"]["exact_at"] < body["due_at"]
            head = c.get("/models/current").json()
            assert head["metrics"]["exact"] and head["metrics"]["n_train"] == len(svc.train_ids()) - 3
            again = svc.cli("consolidate")  # nothing approximate left, no chain: nothing to do
            assert again.returncode == 0 and "nothing" in again.stdout
        failed, entry = _consolidations(svc, events=("consolidate_failed", "consolidate"))
        assert failed["event"] == "consolidate_failed" and failed["request_ids"] == [rid] and "below" in failed["why"]
        assert entry["request_ids"] == [rid] and entry["exact"] and entry["reason"].startswith("on demand")
        assert entry["n_train"] == len(svc.train_ids()) - 3 and entry["replaces_chain_of"] == 1
        assert svc.cli("audit", "verify").returncode == 0
    finally:
        svc.stop()


def test_killed_consolidation_keeps_the_served_version_and_is_redone(tmp_path: Path, digits_model_dir: Path,
                                                                     redis_url: str) -> None:
    # due in 1 day: inside the default 7-day margin, so a worker consolidates as soon as a request completes
    svc = Service(tmp_path, digits_model_dir, db_url=db_url_for("sqlite", tmp_path / "home"), redis_url=redis_url,
                  UNLEARND_RETENTION_DAYS=1)
    try:
        svc.start_api()
        svc.start_worker(UNLEARND_CONSOLIDATE_MARGIN_DAYS=0)  # this one does not consolidate yet
        ids = svc.train_ids()
        with svc.client() as c:
            first = c.post("/delete", json={"sample_ids": ids[:3]}).json()["id"]
            v2 = svc.wait_request(first)["model_version"]
            svc.stop_workers()
            before = set(svc.settings.models_dir.iterdir())
            slow = svc.start_worker(UNLEARND_DEBUG_COMMIT_DELAY_S=60)  # retrains, writes, then waits to commit
            deadline = time.monotonic() + 120
            while set(svc.settings.models_dir.iterdir()) == before:
                assert time.monotonic() < deadline, "the consolidation never wrote its version"
                time.sleep(0.1)
            second = c.post("/delete", json={"sample_ids": ids[3:6]}).json()["id"]  # arrives mid-consolidation
            slow.send_signal(signal.SIGKILL)
            slow.wait()
            assert c.get("/models/current").json()["serving"] == v2  # written, never committed: never served
            assert not c.get(f"/requests/{first}").json()["forgetting"]["exact"]
            assert c.get(f"/requests/{second}").json()["state"] == "pending"
            svc.start_worker()
            for rid in (first, second):
                body = _wait_exact(c, rid)
                assert datetime.fromisoformat(body["forgetting"]["exact_at"]) < datetime.fromisoformat(body["due_at"])
        entries = _consolidations(svc)
        assert {r for e in entries for r in e["request_ids"]} == {first, second}
        assert entries[-1]["n_train"] == len(ids) - 6
        forgotten = _ledger(svc, "SELECT id FROM samples WHERE state = 'forgotten'")
        assert sorted(int(r[0]) for r in forgotten) == sorted(ids[:6])
        assert svc.cli("audit", "verify").returncode == 0
    finally:
        svc.stop()


def test_the_service_calibrates_at_publish_and_forgets_with_that_setting(tmp_path: Path, digits_model_dir: Path,
                                                                         redis_url: str) -> None:
    svc = Service(tmp_path, digits_model_dir, db_url=db_url_for("sqlite", tmp_path / "home"), redis_url=redis_url,
                  UNLEARND_UNLEARN_METHOD="", UNLEARND_UNLEARN_PARAMS="{}",  # no override: the calibrated setting
                  UNLEARND_MAX_ACCURACY_DROP=0.2)  # not the model directory's budget: publish calibrates anew
    try:
        svc.start_api()
        svc.start_worker()
        with svc.client() as c:
            publish = c.get("/audit", params={"offset": 0, "limit": 1}).json()["items"][0]["payload"]
            cal = publish["calibration"]
            assert cal["budget"]["max_accuracy_drop"] == 0.2 and cal["budget"]["n_holdout"] > 0
            rid = c.post("/delete", json={"sample_ids": svc.train_ids()[:10]}).json()["id"]
            done = svc.wait_request(rid)
            assert done["state"] == "completed", done
            entry = c.get("/audit", params={"offset": done["audit_entry"] - 1, "limit": 1}).json()["items"][0]
        p = entry["payload"]
        need = cal["min_detectable_batch"]
        chosen = cal["choice"] if cal["measurable"] and need is not None and need <= 10 else cal["choice_small"]
        expected = chosen["method"] if chosen else "retrain"
        assert p["method"] == expected and p["attempts"][0]["method"] == expected, (cal, p["attempts"])
        assert done["forgetting"]["method"] == expected and done["forgetting"]["verdict"] == p["verdict"]
    finally:
        svc.stop()
