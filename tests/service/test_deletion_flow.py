"""The whole deletion flow against a live server, on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from app.ml.models.checkpoint import load_model_dir
from app.service.live import free_port
from app.service.store import open_store, raw_to_features
from tests.service_harness import PG_URL, Service, db_url_for

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.skipif(not PG_URL, reason="no test PostgreSQL"))]


@pytest.fixture(params=BACKENDS)
def live(request: pytest.FixtureRequest, tmp_path: Path, digits_model_dir: Path, redis_url: str) -> Iterator[Service]:
    svc = Service(tmp_path, digits_model_dir, db_url=db_url_for(request.param, tmp_path / "home"),
                  redis_url=redis_url)
    svc.start_api()
    svc.metrics_port = free_port()  # type: ignore[attr-defined]
    svc.start_worker(UNLEARND_WORKER_METRICS_PORT=svc.metrics_port)  # type: ignore[attr-defined]
    yield svc
    svc.stop()


def test_delete_flow_end_to_end(live: Service) -> None:
    ids = sorted(live.train_ids())[:3]
    x = open_store(live.settings.store_dir).x[ids[0]].reshape(-1).tolist()
    with live.client() as c:
        v1 = c.get("/models/current").json()["id"]
        assert c.get("/predict", params={"sample_id": ids[0]}).json()["model_version"] == v1
        r = c.post("/delete", json={"sample_ids": ids})
        assert r.status_code == 202, r.text
        acc = r.json()
        assert acc["state"] == "pending" and acc["n_samples"] == 3 and acc["status_url"].endswith(acc["id"])
        assert acc["due_at"][:10] > acc["received_at"][:10]
        done = live.wait_request(acc["id"])
        assert done["state"] == "completed", done
        v2 = done["model_version"]
        assert v2 and v2 != v1 and done["audit_entry"] is not None
        live.wait_serving(v2)
        p = c.post("/predict", json={"instances": [x]})
        assert p.status_code == 200 and p.json()["model_version"] == v2
        _retired_version_answers_410(c, live, v1, v2, acc["id"], x)
        gone = c.get("/predict", params={"sample_id": ids[0]})
        assert gone.status_code == 410 and gone.headers["content-type"] == "application/problem+json"
        again = c.post("/delete", json={"sample_ids": [ids[0]]})
        assert again.status_code == 202 and again.json()["already_forgotten"] == [ids[0]]
        assert live.wait_request(again.json()["id"])["model_version"] == v2  # nothing new to unlearn
        audit = c.get("/audit").json()
        entry = next(e for e in audit["items"] if e["seq"] == done["audit_entry"])
        assert acc["id"] in entry["payload"]["request_ids"] and entry["payload"]["n_forget"] == 3
        assert entry["payload"]["attempts"][0]["path"] == "fast"  # the gradient cache matched the served weights
        # the verifier judged the 3 samples: this model's minimum detectable batch is far above 3 (or none)
        ver = entry["payload"]["verification"]
        assert ver["after"]["n"] == 3 and ver["before"]["n"] == 3 and "ue_estimate" not in entry["payload"]
        assert done["forgetting"]["verdict"] == ver["verdict"] == "not measurable", ver
        assert ver["power"]["K"] == 4 and ver["seconds"] < 1.0
        publish = audit["items"][0]["payload"]
        assert publish["event"] == "publish" and publish["verifier"]["K"] == 4
        assert 0 <= publish["verifier"]["power"]["tpr@0.05"]["rate"] <= 1
        versions = {m["id"]: m for m in c.get("/models").json()}
    _worker_metrics_moved(live, method=done["forgetting"]["method"])
    verify = live.cli("audit", "verify")
    assert verify.returncode == 0 and "OK" in verify.stdout
    # the forgotten features are purged from the store, and v1's weights (which contain them) deleted
    store = open_store(live.settings.store_dir)
    assert not np.asarray(store.x[ids]).any()
    assert not versions[v1]["weights_present"] and not (live.settings.models_dir / v1).exists()
    # the answer came from v2's weights, computed here from the file
    md = load_model_dir(live.settings.models_dir / v2)
    want = torch.softmax(md.model(raw_to_features(store, np.asarray([x]))), 1)[0]
    assert np.allclose(p.json()["predictions"][0]["probabilities"], want.detach().numpy(), atol=1e-5)


def _retired_version_answers_410(c: httpx.Client, live: Service, v1: str, v2: str, request_id: str,
                                 x: list[float]) -> None:
    """Issue 35: a version trained before a completed deletion never answers again, by any route."""
    for r in (c.get("/predict", params={"x": ",".join(map(str, x)), "version": v1}),
              c.post("/predict", params={"version": v1}, json={"instances": [x]})):
        assert r.status_code == 410 and r.json()["retired_by"] == request_id and r.json()["retired_in"] == v2, r.text
    assert c.post("/predict", params={"version": v2}, json={"instances": [x]}).json()["model_version"] == v2
    name = live.model_dir.name  # the model folder's name, as no UNLEARND_MODEL_NAME is set
    row = {"name": "input", "shape": [1, 8, 8, 1], "datatype": "FP32", "data": x}
    gone = c.post(f"/v2/models/{name}/versions/{v1}/infer", json={"inputs": [row]})
    assert gone.status_code == 410 and request_id in gone.json()["error"], gone.text
    assert c.get(f"/v2/models/{name}/versions/{v1}").status_code == 410
    ok = c.post(f"/v2/models/{name}/versions/{v2}/infer", json={"inputs": [row]})
    assert ok.status_code == 200 and ok.json()["model_version"] == v2
    assert c.get(f"/v2/models/{name}").json()["versions"] == [v2]


def _worker_metrics_moved(live: Service, *, method: str) -> None:
    text = httpx.get(f"http://127.0.0.1:{live.metrics_port}/metrics", timeout=10).text  # type: ignore[attr-defined]
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("unlearnd_worker_batches_total", outcome="completed", method=method) >= 1, text
    assert value("unlearnd_worker_verdicts_total", verdict="not measurable") >= 1
    assert value("unlearnd_worker_requests_total", state="completed") >= 2  # the deletion and the repeat
    assert value("unlearnd_worker_batch_seconds_count", method=method) >= 1
    assert 0 < value("unlearnd_worker_batch_seconds_sum", method=method) < 60
    assert value("unlearnd_worker_request_age_seconds_count", at="completed") >= 2
    assert value("unlearnd_worker_verify_seconds_count") >= 1


def test_subject_delete_and_idempotency(live: Service) -> None:
    with live.client() as c:
        r1 = c.post("/delete", json={"subject_id": "person-7"}, headers={"Idempotency-Key": "k-1"})
        r2 = c.post("/delete", json={"subject_id": "person-7"}, headers={"Idempotency-Key": "k-1"})
        assert r1.status_code == r2.status_code == 202
        assert r1.json()["id"] == r2.json()["id"] and r2.headers["Idempotent-Replayed"] == "true"
        clash = c.post("/delete", json={"subject_id": "person-8"}, headers={"Idempotency-Key": "k-1"})
        assert clash.status_code == 409
        done = live.wait_request(r1.json()["id"])
        assert done["state"] == "completed"
        mine = sorted(i for i in live.train_ids() if i % 50 == 7)
        assert done["sample_ids"] == mine
        live.wait_serving(done["model_version"])
        for i in mine[:3]:
            assert c.get("/predict", params={"sample_id": i}).status_code == 410
        assert c.post("/delete", json={"subject_id": "nobody"}).status_code == 404


def test_a_worker_whose_metrics_port_is_taken_says_so_outside_its_log(live: Service) -> None:
    """A second worker asked for the first one's metrics port still processes deletions; /readyz, /metrics and
    /ui name it and the reason, not only its log."""
    import time

    second = live.start_worker(UNLEARND_WORKER_METRICS_PORT=live.metrics_port)  # type: ignore[attr-defined]
    try:
        with live.client() as c:
            deadline, worker = time.monotonic() + 90, ""
            while "serves no metrics" not in worker and time.monotonic() < deadline:
                time.sleep(0.5)
                worker = c.get("/readyz").json()["worker"]
            assert worker.startswith("ok: 2 live") and f"port {live.metrics_port}" in worker, worker  # type: ignore[attr-defined]
            gauges = {s.name: s.value for f in text_string_to_metric_families(c.get("/metrics").text)
                      for s in f.samples}
            assert gauges["unlearnd_live_workers_without_metrics"] == 1, gauges
            page = c.get("/ui").text
            assert 'id="worker-no-metrics"' in page and f"port {live.metrics_port}" in page  # type: ignore[attr-defined]
    finally:
        second.terminate()
        second.wait(30)
