"""The batch window: wait until the oldest pending request is MAX_WAIT old or enough samples wait."""

from __future__ import annotations

import time

from app.core.config import Settings
from app.db import ledger
from app.db.session import transaction, utcnow
from app.service.ledger_conn import LedgerConn


def wait_for_window(settings: Settings, conn: LedgerConn, *, poll_s: float = 0.25) -> bool:
    """True when a batch should start now; False when nothing is pending."""
    while True:
        with transaction(conn.read) as s:
            n, rows, oldest = ledger.pending_summary(s)
        if n == 0 or oldest is None:
            return False
        age = (utcnow() - oldest).total_seconds()
        if rows >= settings.batch_max_samples or age >= settings.batch_max_wait_s:
            return True
        time.sleep(min(poll_s, settings.batch_max_wait_s - age))
