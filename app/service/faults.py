"""Transient faults: a full disk, a database or Redis that is briefly away. They say nothing about the
request being processed, so the worker backs off and retries without spending the request's attempts, and
the API answers 503 (retry later) instead of 500. Anything else is the request's, or a bug."""

from __future__ import annotations

import errno
import sqlite3

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, OperationalError

TRANSIENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN, errno.EMFILE, errno.ENFILE, errno.EROFS}
_SQLITE_TRANSIENT = ("disk is full", "database is locked", "disk i/o error", "unable to open database")


def _one(e: BaseException) -> bool:
    if isinstance(e, OSError) and e.errno in TRANSIENT_ERRNOS:
        return True
    if isinstance(e, OperationalError | RedisConnectionError | RedisTimeoutError):
        return True
    if isinstance(e, DBAPIError) and e.connection_invalidated:
        return True
    return isinstance(e, sqlite3.OperationalError) and any(w in str(e).lower() for w in _SQLITE_TRANSIENT)


def is_transient(error: BaseException) -> bool:
    """True if ERROR, or what caused it, is a transient fault of the machine or a dependency."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        if _one(e):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False
