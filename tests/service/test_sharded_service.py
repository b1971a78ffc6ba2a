"""Issue 36: a SISA model (K = 4 shards, R = 2 slices) behind the deletion API. It trains through the CLI, is served
as the aggregate of its constituents, and deletes a subject exactly at once by retraining the one shard that held
them: the other constituents stay bit-identical, the request is `exact` at completion, and no slice checkpoint that
saw the subject survives in the home. A worker killed mid-batch changes nothing that is served, and the retrain is
redone by the next worker."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from app.cli import main
from app.ml.models.checkpoint import dataset_for, load_model_dir, set_meta_fields
from app.service.live import LiveService
from tests.service.test_own_table_journey import make_customers
from tests.service_harness import PG_URL, db_url_for, wait_until

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.skipif(not PG_URL, reason="no test PostgreSQL"))]
K, R = 4, 2


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("sharded")
    table = root / "customers.csv"
    frame = make_customers(table)
    model = root / "customers"
    assert main(["train", "--model", "tests.models_for_tests:mlp_bn", "--data", f"csv:{table}", "--max-epochs", "8",
                 "--verify-refs", "2", "--shards", str(K), "--slices", str(R), "--quiet", "--out", str(model)]) == 0
    return model, frame


def test_a_sharded_model_forgets_only_by_retraining_its_shards(sharded: tuple[Path, pd.DataFrame], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    model, frame = sharded
    ids = tmp_path / "ids.txt"
    ids.write_text(frame.sample_id[json.loads((model / "splits.json").read_text())["train"][0]] + "\n")
    try:
        code = main(["unlearn", "--model", str(model), "--forget-ids", str(ids), "--method", "iau", "--out",
                     str(tmp_path / "out")])
    except SystemExit as e:
        code = int(e.code or 0)
    assert code == 2
    assert "retraining the shards" in capsys.readouterr().err and not (tmp_path / "out").exists()


def _own_copy(model: Path, frame: pd.DataFrame, tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    """The trained folder and its table, copied: a service erases a deleted subject at the source too."""
    table = tmp_path / "customers.csv"
    shutil.copy(Path(json.loads((model / "meta.json").read_text())["data_path"]), table)
    mine = tmp_path / "customers"
    shutil.copytree(model, mine)
    set_meta_fields(mine, data_path=str(table))
    return mine, frame


def _constituents(path: Path) -> dict[int, dict[str, torch.Tensor]]:
    state = load_file(str(path / "model.safetensors"))
    out: dict[int, dict[str, torch.Tensor]] = {}
    for name, t in state.items():
        _, k, rest = name.split(".", 2)
        out.setdefault(int(k), {})[rest] = t
    return out


def _plans(home: Path) -> dict[Path, set[int]]:
    """Every slice-checkpoint folder under HOME → the training ids its plan says its slices saw."""
    return {p.parent: set(json.loads(p.read_text())["ids"]) for p in home.rglob("shards/plan.json")}


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_sharded_model_serves_its_aggregate_and_deletes_a_subject_exactly(
        sharded: tuple[Path, pd.DataFrame], tmp_path: Path, backend: str, redis_url: str) -> None:
    model, frame = _own_copy(*sharded, tmp_path)
    plan = json.loads((model / "shards" / "plan.json").read_text())
    shard_of = dict(zip(plan["ids"], plan["shard"], strict=True))
    rows = frame.groupby("subject_id").apply(lambda g: list(g.index), include_groups=False)
    person, victims = next((p, ids) for p, ids in rows.items() if len(ids) == 2 and all(i in shard_of for i in ids))
    assert len({shard_of[i] for i in victims}) == 1  # a subject lives in one shard
    hit = shard_of[victims[0]]
    keep = next(i for i in plan["ids"] if shard_of[i] != hit)
    sids = list(frame.sample_id)

    home = tmp_path / "svc"
    svc = LiveService(home, model, db_url=db_url_for(backend, home), redis_url=redis_url, UNLEARND_THREADS=1,
                      UNLEARND_BATCH_MAX_WAIT_S=0.2, UNLEARND_POLL_INTERVAL_S=0.3, UNLEARND_SWEEP_INTERVAL_S=1,
                      UNLEARND_WORKER_TIMEOUT_S=4, UNLEARND_WORKER_HEARTBEAT_S=0.5)
    try:
        svc.start_api()
        with svc.client() as c:
            first = c.get("/predict", params={"sample_id": sids[keep]}).json()
            _answers_as_the_aggregate(model, first, keep)
            slow = svc.start_worker(UNLEARND_DEBUG_COMMIT_DELAY_S=60)  # holds its batch until it is killed
            posted = c.post("/delete", json={"subject_id": person})
            assert posted.status_code == 202, posted.text
            rid = posted.json()["id"]
            assert wait_until(lambda: c.get(f"/requests/{rid}").json()["state"] == "processing", timeout=120)
            slow.kill()
            svc.workers = []
            assert c.get("/predict", params={"sample_id": sids[keep]}).json()["model_version"] == \
                first["model_version"]  # nothing half-done is served
            svc.start_worker()
            done = svc.wait_request(rid, timeout_s=180)
            assert done["state"] == "completed" and sorted(done["sample_ids"]) == sorted(sids[i] for i in victims)
            assert done["attempts"] >= 1 and done["forgetting"]["exact"], done  # exact at completion
            assert done["forgetting"]["method"] == "shard_retrain"
            entries = [e["payload"] for e in c.get("/audit", params={"limit": 50}).json()["items"]
                       if e["payload"].get("event") == "unlearn"]
            assert len(entries) == 1, entries  # the killed worker's batch was redone, not committed twice
            entry = entries[0]
            retrained = entry["params"]["shards_retrained"]
            assert [r["shard"] for r in retrained] == [hit] and retrained[0]["seconds"] > 0, entry
            assert entry["exact"] and entry["verification"]["verdict"], entry
            svc.wait_serving(done["model_version"])
            for v in victims:
                assert c.get("/predict", params={"sample_id": sids[v]}).status_code == 410
            head = c.get("/predict", params={"sample_id": sids[keep]}).json()["model_version"]
            assert head != first["model_version"]
            assert c.get("/readyz").status_code == 200
            page = c.get("/ui").text
            assert "shard_retrain" in page and "Traceback" not in page
            assert 'unlearnd_approximate_requests{verdict="partial"} 0.0' in c.get("/metrics").text
        new = _constituents(home / "models" / head)
        old = _constituents(model)
        for k in range(K):
            same = all(torch.equal(old[k][n], new[k][n]) for n in old[k])
            assert same == (k != hit), k  # only the subject's shard changed, the others bit for bit
        # the versions that saw the subject go, slice checkpoints included; what stays never saw them
        assert wait_until(lambda: not [f for f, ids in _plans(home).items() if ids & set(victims)], timeout=60), \
            {str(f): sorted(ids & set(victims)) for f, ids in _plans(home).items()}
        assert _plans(home)  # the served version keeps its own
    finally:
        svc.stop()


def _answers_as_the_aggregate(model: Path, answer: dict, row: int) -> None:
    """/predict's probabilities are the constituents' mean softmax."""
    md = load_model_dir(model)
    x = dataset_for(md, data_path=None, data_dir=None).features(np.asarray([row]))
    with torch.no_grad():
        want = torch.stack([torch.softmax(m(x), -1) for m in md.model.constituents]).mean(0)[0]
    got = answer["predictions"][0]["probabilities"]
    assert np.allclose(got, want.numpy(), atol=1e-5), (got, want)
