"""A new team's journey with a table of its own (issue 31's walk-through): string ids, string labels, subjects, a
`split` column, a batch-norm MLP whose training split leaves one sample over a minibatch; delete a subject whose
rows sit in train and in the verifier's shadow split; the request turns exact once the references are rebuilt;
consolidation is accepted on a small validation set; the model folder forgets the subject. No flag or
environment variable bends a floor."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer

from app.cli import main
from app.core.config import Settings
from app.db import jobs
from app.db.session import transaction, utcnow
from app.service.ledger_conn import LedgerConn
from app.service.live import LiveService
from app.service.store import open_store
from tests.service_harness import PG_URL, db_url_for, wait_until

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.skipif(not PG_URL, reason="no test PostgreSQL"))]
N_TRAIN = 385  # 6 × 64 + 1: without folding, the last minibatch of every epoch holds one row


def make_customers(path: Path) -> pd.DataFrame:
    """569 rows of scikit-learn's breast-cancer set: ids `cust-…`, labels as words, two rows per person."""
    data = load_breast_cancer()
    rng = np.random.default_rng(7)
    order = rng.permutation(len(data.target))
    frame = pd.DataFrame(data.data[order], columns=[c.replace(" ", "_") for c in data.feature_names])
    frame.insert(0, "sample_id", [f"cust-{k:05d}-{rng.integers(16**6):06x}" for k in range(len(order))])
    frame["label"] = np.where(data.target[order] == 1, "benign", "malignant")
    frame["subject_id"] = [f"person-{k % (len(order) // 2):04d}" for k in range(len(order))]  # rows k, k + 284
    frame["split"] = ["train" if k < N_TRAIN else "test" for k in range(len(order))]
    frame.to_csv(path, index=False)
    return frame


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_table_journey_with_own_ids_ends_exact_consolidated_and_unlinked(tmp_path: Path, backend: str,
                                                                           redis_url: str) -> None:
    from worker.consolidate import consolidate

    table = tmp_path / "customers.csv"
    frame = make_customers(table)
    model = tmp_path / "models" / "customers"
    assert main(["train", "--model", "tests.models_for_tests:mlp_bn", "--data", f"csv:{table}", "--max-epochs", "8",
                 "--verify-refs", "2", "--quiet", "--out", str(model)]) == 0
    meta = json.loads((model / "meta.json").read_text())
    splits = json.loads((model / "splits.json").read_text())
    assert len(splits["train"]) == N_TRAIN  # every row the table calls train is trained on
    assert meta["split_origin"]["shadow"]["from"] == {"carved from test": len(splits["shadow"])}
    # a person with one row in train and one in the shadow split: deleting them reaches the references
    sid_of_row = dict(enumerate(frame.sample_id))
    shadow = {sid_of_row[i] for i in splits["shadow"]}
    train = {sid_of_row[i] for i in splits["train"]}
    pairs = frame.groupby("subject_id").sample_id.apply(list)
    person = next(p for p, ids in pairs.items() if set(ids) & train and set(ids) & shadow)
    victims = sorted(pairs[person])

    home = tmp_path / "svc"
    db = db_url_for(backend, home)
    svc = LiveService(home, model, db_url=db, redis_url=redis_url, UNLEARND_THREADS=1,
                      UNLEARND_BATCH_MAX_WAIT_S=0.2, UNLEARND_POLL_INTERVAL_S=0.3, UNLEARND_SWEEP_INTERVAL_S=1)
    try:
        svc.start_api()
        svc.start_worker()
        with svc.client() as c:
            keep = next(iter(sorted(train - set(victims))))
            got = c.get("/predict", params={"sample_id": keep}).json()
            assert got["sample_id"] == keep and got["predictions"][0]["class_name"] in ("benign", "malignant")
            _oip_answers_a_table_row_as_predict_does(c, svc, frame, keep)
            rid = c.post("/delete", json={"subject_id": person}).json()["id"]
            done = svc.wait_request(rid)
            assert done["state"] == "completed" and sorted(done["sample_ids"]) == victims, done.get("reason")
            rebuilt = wait_until(lambda: not c.get(f"/requests/{rid}").json()["forgetting"]["derived_pending"],
                                 timeout=300)  # the references retrained without the shadow row (batch norm)
            assert rebuilt and c.get(f"/requests/{rid}").json()["forgetting"]["derived_error"] is None
            for v in victims:
                assert c.get("/predict", params={"sample_id": v}).status_code == 410
            again = c.post("/delete", json={"subject_id": person})
            assert again.status_code == 409 and again.json()["request_id"] == rid
            assert "already forgotten" in again.json()["detail"]
            settings = Settings(home=home, database_url=db, redis_url=redis_url)
            conn = LedgerConn.open(settings)
            try:
                result = consolidate(settings, conn, reason="the journey asks for it")
            finally:
                conn.close()
            assert result.state in ("completed", "nothing", "released"), result.info  # the worker may run it first
            final = wait_until(lambda: c.get(f"/requests/{rid}").json()["forgetting"]["exact"] or None, timeout=300)
            assert final, c.get(f"/requests/{rid}").json()
            events = [e for e in c.get("/audit", params={"limit": 200}).json()["items"]]
            assert not [e for e in events if e["payload"].get("event") == "consolidate_failed"]  # never refused
            entry = next(e for e in events if e["payload"].get("event") == "consolidate")
            assert entry["payload"]["recipe"]["last_batch"] == "fold" and "frozen_check" in entry["payload"]
            assert 'id="job-stuck"' not in c.get("/ui").text  # a healthy rebuild raises no warning
            # a rebuild that failed three times in a row shows outside the log
            conn = LedgerConn.open(settings)
            try:
                for _ in range(3):
                    with transaction(conn.write) as s:
                        jobs.failed(s, name=jobs.REBUILD, error="ValueError: per channel", now=utcnow())
            finally:
                conn.close()
            ready = c.get("/readyz").json()
            assert ready["background"][jobs.REBUILD].startswith("stuck: failed 3 time(s)"), ready
            assert ready["worker"].startswith("error: rebuild_derived stuck"), ready
            scrape = c.get("/metrics").text
            assert 'unlearnd_background_job_failures_in_a_row{job="rebuild_derived"} 3.0' in scrape
            assert 'unlearnd_background_job_failures_total{job="rebuild_derived"} 3.0' in scrape
            page = c.get("/ui").text
            warn = page[page.index('id="job-stuck"'):].split("</p>", 1)[0]  # in words, with the error
            assert "<b>rebuild_derived</b> has failed 3 times" in warn and "ValueError: per channel" in warn, warn
            assert "unlearnd requests retry --rebuild" in warn
        linked = wait_until(lambda: not [r for r in csv.DictReader((model / "samples.csv").open())
                                         if r["sample_id"] in victims or r["subject_id"] == person], timeout=60)
        assert linked, "the model folder still links the erased subject"
        assert person not in table.read_text()  # erased at the source too
    finally:
        svc.stop()


def _oip_answers_a_table_row_as_predict_does(c: httpx.Client, svc: LiveService, frame: pd.DataFrame,
                                              sample_id: str) -> None:
    """Issue 35: a table's raw feature row through OIP v2 (FP32 [1, F], in the model's feature order) gets the
    answer /predict gives for the same row named by column."""
    names = list(open_store(svc.settings.store_dir).feature_names or ())
    row = frame.loc[frame.sample_id == sample_id, names].iloc[0]
    want = c.post("/predict", json={"instances": [{n: float(row[n]) for n in names}]}).json()
    meta = c.get("/v2/models/customers").json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, len(names)]}]
    got = c.post("/v2/models/customers/infer", json={"inputs": [
        {"name": "input", "shape": [1, len(names)], "datatype": "FP32", "data": [float(row[n]) for n in names]}]})
    assert got.status_code == 200, got.text
    out = {o["name"]: o["data"] for o in got.json()["outputs"]}
    assert out["label"] == [want["predictions"][0]["label"]] and got.json()["model_version"] == want["model_version"]
    assert out["class_name"] == [want["predictions"][0]["class_name"]]
    assert np.allclose(out["probabilities"], want["predictions"][0]["probabilities"], atol=1e-5)
