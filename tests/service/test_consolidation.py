"""Exact consolidation against live processes: approximately-forgotten requests become exact before they are
due, on demand or by the worker, and a consolidation killed mid-way loses nothing and is redone."""

from __future__ import annotations

import json
import re
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.service.live import free_port
from tests.service.test_kills_and_races import _ledger
from tests.service_harness import PG_URL, Service, db_url_for

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


DYING_RANK = Path(__file__).parent / "dying_rank.py"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_two_process_retrain_consolidates_and_a_dead_rank_changes_nothing(backend: str, tmp_path: Path,
                                                                              digits_model_dir: Path,
                                                                              redis_url: str) -> None:
    svc = Service(tmp_path, digits_model_dir, db_url=db_url_for(backend, tmp_path / "home"), redis_url=redis_url)
    try:
        svc.start_api()
        svc.start_worker()
        with svc.client() as c:
            rid = c.post("/delete", json={"sample_ids": svc.train_ids()[:3]}).json()["id"]
            svc.wait_request(rid)
            svc.stop_workers()
            v2 = c.get("/models/current").json()["id"]
            if backend == "sqlite":  # a rank's death is the job's, not the ledger's: one backend shows it
                dying = (f"{{python}} -m torch.distributed.run --standalone --nproc-per-node={{nproc}} "
                         f"{DYING_RANK} {{job}}")
                failed = svc.cli("consolidate", UNLEARND_EXACT_NPROC="2", UNLEARND_EXACT_LAUNCH=dying)
                assert failed.returncode == 1 and "failed" in failed.stdout, failed.stdout + failed.stderr
                assert c.get("/models/current").json()["id"] == v2 and not _is_exact(c, rid)  # nothing changed
                assert not list((svc.home / "jobs").iterdir())  # the dead job's folder is gone too
                ready = c.get("/readyz").json()["background"]  # seen outside the log: /readyz and /metrics
                assert ready["consolidate"].startswith("failing: failed 1 time(s)") and "exit" in ready["consolidate"]
                assert 'unlearnd_background_job_failures_in_a_row{job="consolidate"} 1.0' in c.get("/metrics").text
            assert svc.cli("consolidate", "--nproc", "0").returncode == 2  # one line, nothing done
            proc = svc.cli("consolidate", "--nproc", "2")
            assert proc.returncode == 0 and "1 request(s) are now exact" in proc.stdout, proc.stdout + proc.stderr
            _wait_exact(c, rid)
            assert c.get("/readyz").json()["background"]["consolidate"] == "ok"  # a success clears it
        *failed_entries, entry = _consolidations(svc, events=("consolidate_failed", "consolidate"))
        for failed_entry in failed_entries:
            assert "exact retrain job failed" in failed_entry["why"] and failed_entry["request_ids"] == [rid]
        assert len(failed_entries) == (backend == "sqlite")
        assert entry["distributed"] == {"world_size": 2, "backend": "gloo"} and entry["request_ids"] == [rid]
        assert svc.cli("audit", "verify").returncode == 0
    finally:
        svc.stop()


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
            # an operator's floor it cannot meet: two retrains, from the recipe's seed and the next
            refused = svc.cli("consolidate", UNLEARND_ACCURACY_FLOOR="0.999", UNLEARND_EXACT_TRIES="2")
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
        seeds = [int(x) for x in re.search(r"retrains from seeds (\d+), (\d+)\)", failed["why"]).groups()]  # type: ignore[union-attr]
        assert seeds[1] == seeds[0] + 1, failed["why"]
        # after one failure in a row the retry starts past the seeds a failed run may have tried (3 by default)
        assert [r["seed"] for r in entry["retrains"]] == [seeds[0] + 3] and entry["recipe"]["seed"] == seeds[0] + 3
        kept = entry["retrains"][0]
        assert kept["rejected"] is None and entry["holdout_acc_after"] == kept["holdout_acc"]
        assert entry["request_ids"] == [rid] and entry["exact"] and entry["reason"].startswith("on demand")
        assert entry["n_train"] == len(svc.train_ids()) - 3 and entry["replaces_chain_of"] == 1
        assert 0 < entry["recipe_spread"] < 0.2  # measured at publication from the verifier's references
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
            port = free_port()
            svc.start_worker(UNLEARND_WORKER_METRICS_PORT=port)
            for rid in (first, second):
                body = _wait_exact(c, rid)
                assert datetime.fromisoformat(body["forgetting"]["exact_at"]) < datetime.fromisoformat(body["due_at"])
        # issue 35: the worker that consolidated counts the retrain, its seconds and the requests' age at exactness
        scraped = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert 'unlearnd_worker_exact_retrains_total{outcome="completed",reason="due_date"}' in scraped, scraped
        assert 'unlearnd_worker_retrain_seconds_count{reason="due_date"}' in scraped
        ages = [s.value for f in text_string_to_metric_families(scraped) for s in f.samples
                if s.name == "unlearnd_worker_request_age_seconds_count" and s.labels == {"at": "exact"}]
        assert ages and ages[0] >= 1, scraped
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


def test_the_verifiers_references_rebuild_on_two_processes_as_on_one(tmp_path: Path, digits_model_dir: Path) -> None:
    """The derived models' rebuild (worker/derived.py) with UNLEARND_EXACT_NPROC=2: one reference per rank, the
    same models one process trains (the ranks' one thread each against two here: float rounding only)."""
    import numpy as np
    import torch

    from app.core.config import Settings
    from app.ml.models.checkpoint import dataset_for, load_model_dir
    from app.ml.training.recipe import train_config_from_meta
    from app.ml.verify.store import load_verifier
    from app.service.store import create_store, store_on
    from worker.exact import exact_references

    md = load_model_dir(digits_model_dir)
    settings = Settings(home=tmp_path / "home", database_url=None, redis_url=None)
    create_store(settings.store_dir, dataset_for(md, data_path=None, data_dir=None))
    ds = store_on(settings.store_dir, torch.device("cpu"))
    old = load_verifier(digits_model_dir / "verifier")
    splits = md.splits.without(md.splits.shadow[:5])  # five deleted shadow samples
    recipe = train_config_from_meta(md.meta)
    assert recipe is not None
    one = exact_references(settings, md, ds, splits, recipe, md.meta.retrain_epochs, old.name, old.config)
    two = exact_references(settings.model_copy(update={"exact_nproc": 2}), md, ds, splits, recipe,
                           md.meta.retrain_epochs, old.name, old.config)
    assert (one.info["ranks"], two.info["ranks"]) == (1, 2) and len(two.ref_states) == len(one.ref_states) >= 2
    np.testing.assert_allclose(two.out_mean, one.out_mean, rtol=1e-4, atol=1e-5)
    for mine, theirs in zip(one.ref_states, two.ref_states, strict=True):
        for k in mine:
            torch.testing.assert_close(theirs[k], mine[k], rtol=1e-3, atol=1e-4)
    assert not list((settings.home / "jobs").iterdir())  # the job folder is gone
