"""Engines and sessions. SQLite gets WAL, foreign keys and a busy timeout on every connection."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str, *, read_only: bool = False) -> Engine:
    """READ_ONLY engines (the API's lookups) skip SQLite's write lock; writes must not use them."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(conn: Any, _record: Any) -> None:
            conn.isolation_level = None  # we issue BEGIN ourselves (below) so writers queue, not fail
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA secure_delete=ON")  # erased rows (subject links) are zeroed, not left in free pages
            cur.close()

        if not read_only:
            @event.listens_for(engine, "begin")
            def _begin(conn: Any) -> None:
                # IMMEDIATE takes the write lock up front: no deadlock when a reader upgrades to writer
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def truncate_wal(engine: Engine) -> bool:
    """SQLite: copy the WAL into the database and empty it, so page images from before an erasure leave the
    disk. False while a reader still needs them (the next sweep tries again); True on PostgreSQL, which
    does not keep them in our home."""
    if engine.dialect.name != "sqlite":
        return True
    raw = engine.raw_connection()  # outside any transaction: the engine's BEGIN IMMEDIATE would block it
    cur = raw.cursor()
    (wait_ms,) = cur.execute("PRAGMA busy_timeout").fetchone()
    try:
        # never wait: a TRUNCATE checkpoint blocks every writer (heartbeats, deletions) while it waits for a
        # reader, and with the busy timeout that was 30 s of a stalled worker per sweep
        cur.execute("PRAGMA busy_timeout=0")
        busy, _, _ = cur.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    except sqlite3.OperationalError:  # a writer holds the lock right now
        return False
    finally:
        cur.execute(f"PRAGMA busy_timeout={int(wait_ms)}")  # the connection goes back to the pool
        cur.close()
        raw.close()
    return not busy


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: committed if the block returns, rolled back if it raises."""
    with factory() as session, session.begin():
        yield session


_clock: Callable[[], datetime] | None = None


def utcnow() -> datetime:
    return datetime.now(UTC) if _clock is None else _clock()


@contextmanager
def simulated_clock(clock: Callable[[], datetime]) -> Iterator[None]:
    """Every ledger timestamp from CLOCK inside the block: a replay of weeks of deletions in minutes (the
    `compliance` bench, app/service_bench/compliance.py). The service itself never sets it."""
    global _clock
    before, _clock = _clock, clock
    try:
        yield
    finally:
        _clock = before


def as_utc(dt: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; they were stored as UTC."""
    if dt is None or dt.tzinfo is not None:
        return dt
    return dt.replace(tzinfo=UTC)
