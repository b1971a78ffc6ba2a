"""When an approximately-forgotten request's exact retrain is due: the one rule the worker consolidates by, and
that /requests/{id} and /ui show.

A request is made exact by a consolidation before its due date (less `UNLEARND_CONSOLIDATE_MARGIN_DAYS`). A batch
the verifier still detects (`partial`, under on_partial=consolidate) may stay approximate at most
`UNLEARND_PARTIAL_EXPOSURE` after it completed: every partial batch completed inside that window rides the one
consolidation its oldest triggers, instead of one retrain each. Due dates still win.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from app.core.config import Settings


def by_due_date(settings: Settings, due_at: datetime) -> datetime:
    """The latest a request's exact retrain may run: its due date less the margin."""
    return due_at - timedelta(days=settings.consolidate_margin_days)


def exact_by(settings: Settings, *, due_at: datetime, completed_at: datetime | None,
             verdict: str | None) -> datetime:
    by = by_due_date(settings, due_at)
    if verdict == "partial" and settings.on_partial == "consolidate" and completed_at is not None:
        by = min(by, completed_at + settings.partial_exposure)
    return by
