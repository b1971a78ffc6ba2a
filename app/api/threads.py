"""The API's blocking work (sync routes in the threadpool, the version reload) runs on threads at a
lower CPU priority than the event loop that answers predictions.

At equal priority a POST /delete's ~2 ms of Python in a pool thread cost /predict 7-10 ms at its
p99: each time the event loop released the GIL for a syscall, the freshly woken pool thread
preempted it and took the GIL, and the loop waited out a switch interval to get it back, several
times per request. A lower-priority thread does not preempt the loop on wake-up, so it runs in the
loop's idle time. Nice 10 is the worker's (`UNLEARND_WORKER_PRIORITY=low`): lower, a co-located
worker preempts a pool thread that holds the GIL, and the loop waits for both (nice 19 beside a
nice-10 worker on one CPU took the p99 to 46-214 ms).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

from fastapi.routing import APIRoute

BACKGROUND_NICE = 10
_lowered = threading.local()


def lower_this_thread(nice: int = BACKGROUND_NICE) -> None:
    """Lower the calling thread (not its process) to NICE, once. Linux only: elsewhere the
    PRIO_PROCESS argument names a process, and lowering it would slow the event loop too."""
    if sys.platform != "linux" or getattr(_lowered, "nice", None) == nice:
        return
    with contextlib.suppress(OSError):  # a thread already lower than NICE may not raise itself
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    _lowered.nice = nice


class BackgroundRoute(APIRoute):
    """A route whose sync endpoint (run in the threadpool) lowers its thread before it runs."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        if not inspect.iscoroutinefunction(endpoint):
            endpoint = _lowered_endpoint(endpoint)
        super().__init__(path, endpoint, **kwargs)


def _lowered_endpoint(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(endpoint)  # FastAPI reads the signature and annotations through __wrapped__
    def run(*args: Any, **kwargs: Any) -> Any:
        lower_this_thread()
        return endpoint(*args, **kwargs)

    return run
