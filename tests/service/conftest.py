"""Fixtures of the service tests: a migrated ledger on each database, with ten training samples, four shadow
ones and a head version, and a helper that files a deletion request in it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.config import Settings
from app.db import ledger
from app.db.migrate import upgrade
from app.db.session import transaction, utcnow
from app.service.ledger_conn import LedgerConn
from tests.service_harness import PG_URL, fresh_pg_database

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.skipif(not PG_URL, reason="no test PostgreSQL"))]
KEY = b"k" * 32


@pytest.fixture(params=BACKENDS)
def conn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Settings, LedgerConn]]:
    url = fresh_pg_database() if request.param == "postgres" else None
    settings = Settings(home=tmp_path, database_url=url)
    upgrade(settings.db_url)
    c = LedgerConn.open(settings)
    now = utcnow()
    with transaction(c.write) as s:
        ledger.add_samples(s, ids=list(range(10)))
        ledger.add_samples(s, ids=list(range(10, 14)), split="shadow")
        v = ledger.add_version(s, sha256="a" * 64, parent_id=None, path="models/aaaa", now=now, metrics={})
        ledger.set_head(s, version_id=v.id, expected=None, now=now)
    yield settings, c
    c.close()


def make_request(c: LedgerConn, ids: list[int], **kw: object) -> str:
    with transaction(c.write) as s:
        return ledger.create_request(s, sample_ids=ids, subject_id=None, idempotency_key=kw.get("key"),  # type: ignore[arg-type]
                                     api_key_id=kw.get("api_key"), now=utcnow(), retention_days=30,  # type: ignore[arg-type]
                                     max_ids=10).request.id
