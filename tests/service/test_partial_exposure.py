"""UNLEARND_PARTIAL_EXPOSURE on the ledger, both databases: a partial batch waits for its exact retrain at most
the window, the partial batches inside it share one consolidation, due dates still win, and /requests/{id}
says when the retrain is scheduled."""

from __future__ import annotations

from datetime import datetime, timedelta

from app.db import ledger
from app.db.session import transaction, utcnow
from app.service.deletions import LedgerContext, request_status
from app.service.ledger_conn import LedgerConn
from app.service.schedule import exact_by
from tests.service.conftest import KEY
from tests.service.conftest import make_request as _request
from worker.consolidate import due


def _complete(c: LedgerConn, ids: list[int], verdict: str, batch: str) -> str:
    rid = _request(c, ids)
    with transaction(c.write) as s:
        head = ledger.head(s)
        assert head is not None
        ledger.claim_batch(s, batch_id=batch, max_samples=len(ids), now=utcnow())
        ledger.complete_batch(s, batch_id=batch, request_ids=[rid], version_id=head.id, forget_ids=ids,
                              audit_seq=None, now=utcnow(), already={}, subject_key=KEY, verdict=verdict)
    return rid


def test_partial_batches_wait_at_most_the_window_and_share_one_retrain(conn) -> None:  # type: ignore[no-untyped-def]
    settings, c = conn
    settings = settings.model_copy(update={"partial_exposure": timedelta(hours=6), "on_partial": "consolidate"})
    calm = _complete(c, [0, 1], "forgotten", "b0")
    now = utcnow()
    assert due(settings, c, now) is None  # a forgotten batch is due in 30 days, outside the 7-day margin
    first = _complete(c, [2, 3], "partial", "b1")
    second = _complete(c, [4], "partial", "b2")
    assert due(settings, c, now + timedelta(hours=5)) is None  # inside the window: no retrain yet
    why = due(settings, c, now + timedelta(hours=6, minutes=1))
    assert why is not None and first in why and "UNLEARND_PARTIAL_EXPOSURE" in why
    with transaction(c.read) as s:  # the one consolidation it triggers covers every approximate request
        assert {r.id for r in ledger.approximate_requests(s)} == {calm, first, second}
    ctx = LedgerContext(settings=settings, conn=c, redis=None)
    scheduled = request_status(ctx, request_id=first)["exact_scheduled_at"]
    done = request_status(ctx, request_id=first)["completed_at"]
    assert scheduled == done + timedelta(hours=6)
    calm_at = request_status(ctx, request_id=calm)["exact_scheduled_at"]
    assert calm_at == request_status(ctx, request_id=calm)["due_at"] - timedelta(days=7)
    at_once = settings.model_copy(update={"partial_exposure": timedelta(0)})
    assert due(at_once, c, now + timedelta(seconds=1)) is not None  # 0: a partial batch consolidates at once
    accept = settings.model_copy(update={"on_partial": "accept"})
    assert due(accept, c, now + timedelta(hours=7)) is None  # accepted partial batches wait for their due date


def test_a_due_date_wins_over_the_window() -> None:
    from app.core.config import Settings

    s = Settings(partial_exposure=timedelta(days=40), on_partial="consolidate", consolidate_margin_days=7)
    due_at = datetime(2027, 1, 31, tzinfo=datetime.now().astimezone().tzinfo)
    done = due_at - timedelta(days=30)
    assert exact_by(s, due_at=due_at, completed_at=done, verdict="partial") == due_at - timedelta(days=7)
    assert exact_by(s, due_at=due_at, completed_at=done, verdict="forgotten") == due_at - timedelta(days=7)


def test_the_window_reads_seconds_or_iso_8601_and_refuses_a_negative_one(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import pytest
    from pydantic import ValidationError

    from app.core.config import Settings

    for raw, want in (("21600", timedelta(hours=6)), ("PT30M", timedelta(minutes=30)), ("0", timedelta(0))):
        monkeypatch.setenv("UNLEARND_PARTIAL_EXPOSURE", raw)
        assert Settings().partial_exposure == want
    monkeypatch.setenv("UNLEARND_PARTIAL_EXPOSURE", "-5")
    with pytest.raises(ValidationError, match="duration ≥ 0"):
        Settings()
