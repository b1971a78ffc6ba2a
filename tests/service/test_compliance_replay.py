"""The compliance bench's replay (worker/replay.py): a stream of requests through the real ledger, worker and
consolidation on a simulated clock. Per strategy, what the ledger says afterwards must be what the strategy
means: a retrain per batch is exact at once, waiting for the due date makes one retrain late in the month, the
policy's fast updates are made exact by a consolidation before the due dates."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import create_engine, text

from app.core.config import Settings
from app.ml.data.dataset import Splits
from tests.service_harness import TEST_MAX_ACCURACY_DROP
from worker.compliance import START, summarise
from worker.replay import poisson_stream, replay

DAY = 86400.0


def _settings(home: Path, **kw: object) -> Settings:
    return Settings(home=home, database_url=None, redis_url=None, max_accuracy_drop=TEST_MAX_ACCURACY_DROP,
                    **{"batch_max_wait_s": 3600.0, **kw})


def test_a_month_replayed_per_strategy(tmp_path: Path, digits_model_dir: Path) -> None:
    train = Splits.load(digits_model_dir / "splits.json").train
    stream = poisson_stream(np.random.default_rng(3), train, days=4, per_day=1.5, per_subject=3)
    assert 3 <= len(stream) <= 12 and len({i for _, ids in stream for i in ids}) == 3 * len(stream)

    per_batch = replay(_settings(tmp_path / "a", unlearn_method="retrain"), digits_model_dir, stream, start=START,
                       until_s=4 * DAY)
    a = summarise(per_batch)
    received = [q["received_s"] for q in per_batch.requests]
    assert np.allclose(received, [t for t, _ in stream], atol=1.0)  # the ledger ran on the simulated clock
    assert a["requests"] == a["honoured"] == len(stream) and a["past_due"] == 0
    assert a["fast_updates"] == 0 and a["exact_retrains"] == len(
        [e for e in per_batch.events if e["kind"] == "batch"]) >= 1
    assert all(q["exact_s"] == q["completed_s"] for q in per_batch.requests)  # exact the moment it completes
    assert a["max_to_exact_days"] < 4 / 24  # the hour's window plus a retrain

    two = _settings(tmp_path / "e", unlearn_method="retrain", exact_nproc=2)  # the batch's retrain on torchrun
    on_two = replay(two, digits_model_dir, stream[:1], start=START, until_s=DAY)
    assert summarise(on_two)["honoured"] == 1 and on_two.requests[0]["method"] == "retrain"
    with create_engine(two.db_url).connect() as conn:
        entries = [json.loads(str(r[0])) for r in conn.execute(text("SELECT payload FROM audit_entries"))]
    ran = [a for e in entries if e["event"] == "unlearn" for a in e["attempts"]]
    assert [a["distributed"]["world_size"] for a in ran] == [2] and ran[0]["epochs"] >= 1, ran

    wait = (30 - 7) * DAY  # the due date less the consolidation margin
    late = summarise(replay(_settings(tmp_path / "b", unlearn_method="retrain", batch_max_wait_s=wait),
                            digits_model_dir, stream, start=START, until_s=4 * DAY))
    assert late["exact_retrains"] == 1 and late["fast_updates"] == 0 and late["past_due"] == 0
    assert 23 <= late["max_to_exact_days"] < 24 and late["max_approximate_days"] == 0

    policy = replay(_settings(tmp_path / "d", unlearn_method="iau", partial_exposure=timedelta(hours=6)),
                    digits_model_dir, stream, start=START, until_s=4 * DAY)
    d = summarise(policy)
    assert d["fast_updates"] >= 1 and d["past_due"] == 0 and d["honoured"] == len(stream)
    assert d["exact_retrains"] >= 1  # the fast updates were made exact before their due dates
    assert max(e["at_s"] for e in policy.events) > 4 * DAY  # a consolidation after the stream, on simulated time
    assert all(q["exact_s"] <= q["due_s"] for q in policy.requests)


def test_the_scaling_suite_times_the_workers_retrain_at_each_n(tmp_path: Path) -> None:
    from worker.scaling import _QUICK, run

    results = run(_QUICK, out=tmp_path, seeds=1, data_dir=None, data_path=None)
    rows = results["rows"]
    assert [(r["nproc"], r["world_size"]) for r in rows] == [(1, 1), (2, 2)] and rows[1]["backend"] == "gloo"
    assert all(r["wall_s"] > 0 and r["test_acc"] > 0.15 and r["epochs"] == _QUICK.epochs for r in rows), rows
    assert "| 2 |" in (tmp_path / "results.md").read_text() and (tmp_path / "scaling.png").stat().st_size > 0
