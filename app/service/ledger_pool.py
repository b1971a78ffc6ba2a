"""The API's ledger process: the deletion endpoints' ledger and queue work (app/service/deletions.py)
runs in a child process of the API, not in the process whose event loop answers predictions.

In a thread of the API process, a POST /delete's ~3.5 ms of SQLAlchemy and RQ work shared the GIL
with the event loop. The GIL is handed over fairly whatever the threads' CPU priorities, so for those
milliseconds the loop ran at about half speed, and the predictions that arrived meanwhile waited:
at 3 deletions a second that was the /predict p99. A child process shares no GIL, and runs lowered
(app/core/priority.py). With `ledger_processes=0` the work runs on lowered threads instead.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from app.core.config import Settings
from app.core.priority import lower_this_thread
from app.errors import Unavailable
from app.service.deletions import LedgerContext, ping
from app.service.faults import is_transient
from app.service.ledger_conn import LedgerConn
from app.service.queue import connect

log = logging.getLogger("unlearnd.ledger_pool")
T = TypeVar("T")
Op = Callable[..., T]
START_TIMEOUT_S = 120.0  # a spawned process imports SQLAlchemy and RQ, then opens the ledger: seconds
INLINE_THREADS = 4

# The one context of a ledger process, made by its initializer: a pool process runs plain functions,
# so its state cannot be an argument. The API process itself never sets it.
_ctx: LedgerContext | None = None


def _exit_with_parent(parent: int) -> None:
    """A killed API process cannot stop its pool: the pool's processes notice and go themselves."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _init(settings: Settings) -> None:
    global _ctx
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the API, and the API stops this process
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), name="parent-watch", daemon=True).start()
    lower_this_thread()
    _ctx = LedgerContext(settings, LedgerConn.open(settings), connect(settings.redis_url) if settings.redis_url
                          else None)


def guarded(op: Op[T], ctx: LedgerContext, kwargs: dict[str, Any]) -> T:
    """OP, with a transient fault (full disk, database or Redis away) turned into a 503 the client retries: it
    says nothing wrong about the request."""
    try:
        return op(ctx, **kwargs)
    except Exception as e:
        if is_transient(e):
            log.warning("transient fault in %s: %s", getattr(op, "__name__", op), e)
            raise Unavailable("the ledger is unavailable for a moment (disk or database): retry the request, "
                              "with the same Idempotency-Key") from None
        raise


def _call(op: Op[T], kwargs: dict[str, Any]) -> T:
    assert _ctx is not None, "not a ledger process"
    return guarded(op, _ctx, kwargs)


class LedgerPool:
    """`await runner(op, **kwargs)` runs OP(ctx, **kwargs) in a ledger process, or with PROCESSES=0 on a
    lowered thread of this process with this process's ledger connection and Redis client."""

    def __init__(self, settings: Settings, *, inline: LedgerContext, processes: int) -> None:
        self.settings, self.inline, self.processes = settings, inline, processes
        self._pool: Executor | None = None
        self._lock = threading.Lock()  # the event loop and threadpool threads may both replace a dead pool

    def _new_pool(self) -> Executor:
        if self.processes == 0:
            return ThreadPoolExecutor(INLINE_THREADS, thread_name_prefix="ledger", initializer=lower_this_thread)
        return ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init, initargs=(self.settings,))

    def start(self) -> None:
        """Start the pool and wait until it answers from the ledger (a bad database URL fails here)."""
        self._pool = self._new_pool()
        self._submit(ping, {}).result(timeout=START_TIMEOUT_S)

    def _submit(self, op: Op[T], kwargs: dict[str, Any]) -> Any:
        assert self._pool is not None, "LedgerPool.start() first"
        if self.processes == 0:
            return self._pool.submit(guarded, op, self.inline, kwargs)
        return self._pool.submit(_call, op, kwargs)

    async def __call__(self, op: Op[T], /, **kwargs: Any) -> T:
        pool = self._pool
        try:
            return await asyncio.wrap_future(self._submit(op, kwargs))  # type: ignore[no-any-return]
        except BrokenProcessPool as e:
            raise self._replace(pool) from e

    def call(self, op: Op[T], /, timeout_s: float | None = None, **kwargs: Any) -> T:
        """The same, blocking the calling thread (not the event loop's)."""
        pool = self._pool
        try:
            return self._submit(op, kwargs).result(timeout=timeout_s)  # type: ignore[no-any-return]
        except BrokenProcessPool as e:
            raise self._replace(pool) from e

    def _replace(self, pool: Executor | None) -> Unavailable:
        """A new pool for one whose process died (killed, out of memory). Whether an unanswered write
        committed is unknown, so it is not retried here: the client retries, with its Idempotency-Key."""
        with self._lock:
            if self._pool is pool and pool is not None:  # the first of the calls that failed together
                self._pool = self._new_pool()
                pool.shutdown(wait=False, cancel_futures=True)
        return Unavailable("the ledger process stopped and was restarted: retry the request")

    def stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
