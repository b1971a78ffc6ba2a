"""The job notification against a real Redis: one queued job stands for every request behind it."""

from __future__ import annotations

import uuid
from pathlib import Path

from app.core.config import Settings
from app.service.queue import connect, job_started, notify, queue


def _settings(tmp_path: Path, redis_url: str) -> Settings:
    return Settings(home=tmp_path, redis_url=redis_url, queue_name=f"q-{uuid.uuid4().hex[:8]}")


def test_requests_behind_a_queued_job_enqueue_nothing(tmp_path: Path, redis_url: str) -> None:
    s = _settings(tmp_path, redis_url)
    r = connect(redis_url)
    q = queue(s, r)
    assert all(notify(s, r, reason=f"request {k}") for k in range(5))
    assert q.count == 1  # the queued job has not read the ledger yet: it will see all five
    job_started(s, r)  # it has now; the next request needs a job of its own
    assert notify(s, r, reason="request 5")
    assert q.count == 2
    assert notify(s, r, reason="sweep", force=True)  # a job may be lost with its flag set
    assert q.count == 3

