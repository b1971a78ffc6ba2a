"""The ledger in-process: migrations on SQLite and PostgreSQL, claims, the audit chain, keys."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, update

from app.db import keys, ledger
from app.db.audit import append_entry, verify_chain
from app.db.migrate import check, upgrade
from app.db.models import AuditEntry, DeletionRequest
from app.db.session import make_engine, session_factory, transaction, utcnow
from app.errors import Conflict, InvalidRequest
from tests.service_harness import PG_URL, fresh_pg_database

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.skipif(not PG_URL, reason="no test PostgreSQL"))]


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    raw = fresh_pg_database() if request.param == "postgres" else f"sqlite:///{tmp_path / 'l.db'}"
    return raw.replace("postgresql://", "postgresql+psycopg://")


def test_migrations_from_empty_leave_no_drift(url: str) -> None:
    upgrade(url)
    check(url)  # `alembic check`: raises if the models and the migrated schema differ
    upgrade(url)  # idempotent


@pytest.fixture
def factory(url: str):  # type: ignore[no-untyped-def]
    upgrade(url)
    engine = make_engine(url)
    f = session_factory(engine)
    now = utcnow()
    with transaction(f) as s:
        ledger.add_samples(s, ids=list(range(20)), subjects={i: f"p{i % 4}" for i in range(20)})
        v = ledger.add_version(s, sha256="a" * 64, parent_id=None, path="/x", now=now, metrics={})
        ledger.set_head(s, version_id=v.id, expected=None, now=now)
    yield f
    engine.dispose()


def _request(f, ids):  # type: ignore[no-untyped-def]
    with transaction(f) as s:
        return ledger.create_request(s, sample_ids=ids, subject_id=None, idempotency_key=None, api_key_id=None,
                                     now=utcnow(), retention_days=30, max_ids=10).request.id


def test_claims_never_overlap_and_stale_claims_return(factory) -> None:  # type: ignore[no-untyped-def]
    rids = [_request(factory, [i, i + 1]) for i in range(0, 8, 2)]
    with transaction(factory) as s:
        a = ledger.claim_batch(s, batch_id="A", max_samples=4, now=utcnow())
    with transaction(factory) as s:
        b = ledger.claim_batch(s, batch_id="B", max_samples=100, now=utcnow())
    assert {r.id for r in a} | {r.id for r in b} == set(rids) and not {r.id for r in a} & {r.id for r in b}
    assert len(a) == 2  # oldest first, up to 4 sample rows
    with transaction(factory) as s:
        assert ledger.release_stale(s, now=utcnow(), lease_s=60) == 0
        assert ledger.release_stale(s, now=utcnow() + timedelta(seconds=61), lease_s=60) == 4
        assert ledger.pending_summary(s)[0] == 4


def test_a_batch_released_for_a_lost_race_does_not_count_an_attempt(factory) -> None:  # type: ignore[no-untyped-def]
    rid = _request(factory, [0, 1])

    def claim_and_release(*, count_attempt: bool) -> int:
        with transaction(factory) as s:
            [req] = ledger.claim_batch(s, batch_id="A", max_samples=10, now=utcnow())
            assert req.attempts >= 1
        with transaction(factory) as s:
            assert ledger.release_batch(s, batch_id="A", count_attempt=count_attempt) == 1
        with transaction(factory) as s:
            req = ledger.get_request(s, request_id=rid)
            assert req.state == "pending" and req.batch_id is None
            return int(req.attempts)

    assert claim_and_release(count_attempt=False) == 0  # the head moved: no fault of the request's
    assert claim_and_release(count_attempt=False) == 0
    assert claim_and_release(count_attempt=True) == 1  # an error: counted towards failing it
    assert claim_and_release(count_attempt=True) == 2


def _version(s, sha: str, parent: str | None):  # type: ignore[no-untyped-def]
    v = ledger.add_version(s, sha256=sha * 64, parent_id=parent, path=f"models/{sha}", now=utcnow(), metrics={})
    assert ledger.set_head(s, version_id=v.id, expected=parent, now=utcnow())
    return v.id


def test_a_version_retires_once_a_later_one_forgets_samples_it_saw(factory) -> None:  # type: ignore[no-untyped-def]
    """Issue 35: an older version answers by name only while it holds no forgotten sample."""
    with transaction(factory) as s:
        v1 = ledger.head(s).id
        v2 = _version(s, "b", v1)  # e.g. a consolidation: it forgot nothing
    rid = _request(factory, [3, 4])
    with transaction(factory) as s:
        assert ledger.answerable_versions(s) == [v2, v1]
        ledger.claim_batch(s, batch_id="A", max_samples=10, now=utcnow())
        v3 = _version(s, "c", v2)
        ledger.complete_batch(s, batch_id="A", request_ids=[rid], version_id=v3, forget_ids=[3, 4], audit_seq=None,
                              now=utcnow(), already={}, subject_key=b"k" * 32)
    with transaction(factory) as s:
        versions = {v.id: v for v in ledger.versions(s)}
        for old in (v1, v2):
            assert ledger.retirement(s, version=versions[old]) == ledger.Retirement(
                v3, rid, ledger.get_request(s, request_id=rid).completed_at)
        assert ledger.retirement(s, version=versions[v3]) is None
        v4 = _version(s, "d", v3)
    with transaction(factory) as s:
        assert ledger.answerable_versions(s) == [v4, v3]
        assert ledger.retirement(s, version=s.get(ledger.ModelVersion, v3)) is None


def test_head_compare_and_set_serialises_commits(factory) -> None:  # type: ignore[no-untyped-def]
    with transaction(factory) as s:
        head = ledger.head(s)
        assert head is not None
        v2 = ledger.add_version(s, sha256="b" * 64, parent_id=head.id, path="/y", now=utcnow(), metrics={})
        assert ledger.set_head(s, version_id=v2.id, expected=head.id, now=utcnow())
    with transaction(factory) as s:
        v3 = ledger.add_version(s, sha256="c" * 64, parent_id=head.id, path="/z", now=utcnow(), metrics={})
        assert not ledger.set_head(s, version_id=v3.id, expected=head.id, now=utcnow())  # lost the race


def test_completing_an_already_forgotten_sample_conflicts(factory) -> None:  # type: ignore[no-untyped-def]
    r1, r2 = _request(factory, [1, 2]), _request(factory, [2, 3])
    with transaction(factory) as s:
        ledger.claim_batch(s, batch_id="A", max_samples=2, now=utcnow())
    with transaction(factory) as s:
        ledger.claim_batch(s, batch_id="B", max_samples=2, now=utcnow())
    with transaction(factory) as s:
        head = ledger.head(s)
        ledger.complete_batch(s, batch_id="A", request_ids=[r1], version_id=head.id, forget_ids=[1, 2],  # type: ignore[union-attr]
                              audit_seq=None, now=utcnow(), already={}, subject_key=b"k" * 32)
    with pytest.raises(Conflict), transaction(factory) as s:
        ledger.complete_batch(s, batch_id="B", request_ids=[r2], version_id=head.id, forget_ids=[2, 3],  # type: ignore[union-attr]
                              audit_seq=None, now=utcnow(), already={}, subject_key=b"k" * 32)
    with transaction(factory) as s:
        assert s.get(DeletionRequest, r2).state == "processing"  # rolled back whole
        assert ledger.sample_state(s, sample_id=3) == "active"


def test_request_validation(factory) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidRequest, match="unknown"):
        _request(factory, [1, 999])
    with pytest.raises(InvalidRequest, match="at most"):
        _request(factory, list(range(11)))
    with transaction(factory) as s:
        new = ledger.create_request(s, sample_ids=None, subject_id="p1", idempotency_key="k", api_key_id=None,
                                    now=utcnow(), retention_days=30, max_ids=10)
        assert ledger.request_sample_ids(s, request_ids=[new.request.id])[new.request.id] == [1, 5, 9, 13, 17]
        assert (new.request.due_at - new.request.received_at).days == 30


def test_audit_chain_detects_edit_removal_and_reordering(factory) -> None:  # type: ignore[no-untyped-def]
    with transaction(factory) as s:
        for k in range(4):  # the first entry publishes the fixture's version, as a service's does
            append_entry(s, batch_id=f"b{k}", created_at=f"2026-01-0{k + 1}T00:00:00",
                         payload={"k": k, **({"model_sha256": "a" * 64} if k == 0 else {})})
    with transaction(factory) as s:
        assert verify_chain(s).ok and verify_chain(s).entries == 4
    with transaction(factory) as s:
        s.execute(update(AuditEntry).where(AuditEntry.seq == 2).values(payload='{"k":7}'))
        r = verify_chain(s)
        assert not r.ok and r.first_bad_seq == 2
        s.rollback()
    with transaction(factory) as s:
        s.execute(delete(AuditEntry).where(AuditEntry.seq == 3))
        r = verify_chain(s)
        assert not r.ok and r.first_bad_seq == 4
        s.rollback()
    with transaction(factory) as s:  # swap the content of entries 2 and 3 (a reordering)
        e2, e3 = s.get(AuditEntry, 2), s.get(AuditEntry, 3)
        fields = ("created_at", "batch_id", "payload", "prev_hash", "hash")
        a, b = ({f: getattr(e, f) for f in fields} for e in (e2, e3))
        s.execute(delete(AuditEntry).where(AuditEntry.seq.in_([2, 3])))
        s.add_all([AuditEntry(seq=2, **b), AuditEntry(seq=3, **a)])
        s.flush()
        r = verify_chain(s)
        assert not r.ok and r.first_bad_seq == 2
        s.rollback()


def test_the_ledger_anchors_the_chain(factory) -> None:  # type: ignore[no-untyped-def]
    with transaction(factory) as s:
        r = verify_chain(s)
        assert not r.ok and "model version 1 has no audit entry" in (r.reason or "")
        append_entry(s, batch_id="publish", created_at="2026-01-01T00:00:00", payload={"model_sha256": "a" * 64})
    rid = _request(factory, [1, 2])
    with transaction(factory) as s:
        assert verify_chain(s).ok
        s.execute(update(ledger.DeletionRequest).where(ledger.DeletionRequest.id == rid).values(audit_seq=1))
        assert verify_chain(s).ok
        assert verify_chain(s, expect_head=(1, s.get(AuditEntry, 1).hash)).ok  # type: ignore[union-attr]
        r = verify_chain(s, expect_head=(2, "0" * 64))
        assert not r.ok and "truncated" in (r.reason or "")


def test_keys_are_hashed_and_scoped(factory) -> None:  # type: ignore[no-untyped-def]
    with transaction(factory) as s:
        k = keys.create_key(s, scopes=["predict"])
    with transaction(factory) as s:
        p = keys.authenticate(s, key=k)
        assert p is not None and p.allows("predict") and not p.allows("delete")
        assert keys.authenticate(s, key=k[:-1] + ("A" if k[-1] != "A" else "B")) is None
        assert all(row.key_sha256 != k for row in keys.list_keys(s))
        keys.revoke_key(s, key_id=p.key_id)
    with transaction(factory) as s:
        assert keys.authenticate(s, key=k) is None
    with pytest.raises(InvalidRequest):
        keys.parse_scopes("predict,root")


def test_key_ids_are_random_and_not_part_of_the_secret(factory) -> None:  # type: ignore[no-untyped-def]
    with transaction(factory) as s:
        k1, k2 = keys.create_key(s, scopes=["audit"]), keys.create_key(s, scopes=["audit"])
        ids = [row.id for row in keys.list_keys(s)]
    assert len(set(ids)) == 2
    for key in (k1, k2):
        assert all(i not in key and key[:8] not in i for i in ids)
    with pytest.raises(InvalidRequest, match="at least 32"), transaction(factory) as s:
        keys.create_key(s, scopes=["audit"], key="x" * 31)
    with transaction(factory) as s:
        assert keys.authenticate(s, key="x" * 31) is None


@pytest.mark.parametrize("new", ["same_first_12_chars_" + "b" * 20, "an-unrelated-operator-key-" + "c" * 10])
def test_rotating_the_bootstrap_key_revokes_the_previous_one(factory, new: str) -> None:  # type: ignore[no-untyped-def]
    old = "same_first_12_chars_" + "a" * 20
    with transaction(factory) as s:
        assert keys.ensure_bootstrap_key(s, key=old) == "created"
    with transaction(factory) as s:
        assert keys.ensure_bootstrap_key(s, key=old) == "kept", "a restart with the same key changes nothing"
        assert keys.ensure_bootstrap_key(s, key=new) == "rotated"
    with transaction(factory) as s:
        assert keys.authenticate(s, key=new) is not None and keys.authenticate(s, key=new).allows("admin")
        assert keys.authenticate(s, key=old) is None
        live = [k for k in keys.list_keys(s) if k.name == "bootstrap" and k.revoked_at is None]
        assert len(live) == 1


def test_sweep_removes_only_old_unrecorded_version_folders(tmp_path: Path) -> None:
    import os

    from app.core.config import Settings
    from app.service.ledger_conn import LedgerConn
    from worker.housekeeping import remove_orphans

    settings = Settings(home=tmp_path, lease_s=60)
    upgrade(settings.db_url)
    conn = LedgerConn.open(settings)
    recorded, orphan, fresh = (settings.models_dir / n for n in ("aaaa", "bbbb", "cccc"))
    for d in (recorded, orphan, fresh):
        d.mkdir(parents=True)
    old = utcnow().timestamp() - 600
    for d in (recorded, orphan):
        os.utime(d, (old, old))
    with transaction(conn.write) as s:
        ledger.add_version(s, sha256="aaaa" + "0" * 60, parent_id=None, path=str(recorded), now=utcnow(), metrics={})
    assert remove_orphans(settings, conn) == 1
    assert recorded.exists() and not orphan.exists() and fresh.exists()  # fresh: maybe a batch about to commit
    conn.close()


def test_the_wal_checkpoint_never_waits_for_a_reader(tmp_path: Path) -> None:
    """The sweep's TRUNCATE checkpoint blocks every writer while it waits; under the 30 s busy timeout a reader
    holding a snapshot stalled the worker (no rebuild, no heartbeat) for 30 s per sweep."""
    import sqlite3
    import time

    from app.db.session import truncate_wal

    url = f"sqlite:///{tmp_path / 'l.db'}"
    upgrade(url)
    engine = make_engine(url)
    with transaction(session_factory(engine)) as s:
        keys.create_key(s, scopes=["admin"], name="k")
    reader = sqlite3.connect(tmp_path / "l.db", isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM api_keys").fetchone()  # a snapshot the checkpoint must not discard
    with transaction(session_factory(engine)) as s:
        keys.create_key(s, scopes=["admin"], name="k2")
    t0 = time.perf_counter()
    assert truncate_wal(engine) is False
    assert time.perf_counter() - t0 < 1.0
    with engine.connect() as c:  # the pooled connection keeps its busy timeout for ordinary writes
        assert c.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    reader.execute("COMMIT")
    assert truncate_wal(engine) is True and (tmp_path / "l.db-wal").stat().st_size == 0
    reader.close()
    engine.dispose()


def test_an_erasure_whose_wal_pages_a_reader_keeps_is_a_failing_job_until_a_sweep_empties_it(tmp_path: Path) -> None:
    """Pages from before an erasure stay in the WAL file while a reader holds a snapshot: that is seen on /readyz
    and /metrics (the `wal_checkpoint` job), counted once per backoff, and cleared by the sweep that empties it."""
    import sqlite3
    from types import SimpleNamespace

    from app.api.routes.health import _background, job_readings
    from app.core.config import Settings
    from app.db import jobs
    from app.db.models import JobHealth
    from app.service.ledger_conn import LedgerConn
    from worker.housekeeping import checkpoint

    settings = Settings(home=tmp_path)
    upgrade(settings.db_url)
    conn = LedgerConn.open(settings)
    state = SimpleNamespace(conn=conn, settings=settings)
    with transaction(conn.write) as s:
        keys.create_key(s, scopes=["admin"], name="k")
    db = settings.db_url.removeprefix("sqlite:///")
    reader = sqlite3.connect(db, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM api_keys").fetchone()
    with transaction(conn.write) as s:
        keys.create_key(s, scopes=["admin"], name="erased")  # stands for the erasure's write
    checkpoint(conn, after_erasure=True)
    assert _background(state)[jobs.WAL].startswith("failing: failed 1 time(s)"), _background(state)
    assert job_readings(state)[jobs.WAL].failures_in_a_row == 1
    checkpoint(conn, after_erasure=False)  # the next sweep, inside the backoff: tried, not counted again
    assert job_readings(state)[jobs.WAL].failures_in_a_row == 1
    with transaction(conn.write) as s:
        s.execute(update(JobHealth).where(JobHealth.name == jobs.WAL).values(next_try_at=None))
    checkpoint(conn, after_erasure=False)  # past the backoff: counted
    assert job_readings(state)[jobs.WAL].failures_in_a_row == 2
    reader.execute("COMMIT")
    reader.close()
    checkpoint(conn, after_erasure=False)
    assert _background(state)[jobs.WAL] == "ok" and job_readings(state)[jobs.WAL].failures_in_a_row == 0
    assert b"erased" not in Path(db + "-wal").read_bytes()  # only the job row's own write since
    conn.close()
