"""The API's blocking work (sync routes in the threadpool, the version reload) runs on threads at a
lower CPU priority than the event loop that answers predictions (app/core/priority.py).

At equal priority a POST /delete's ~2 ms of Python in a pool thread cost /predict 7-10 ms at its
p99: each time the event loop released the GIL for a syscall, the freshly woken pool thread
preempted it and took the GIL, and the loop waited out a switch interval to get it back, several
times per request. A lower-priority thread does not preempt the loop on wake-up, so it runs in the
loop's idle time. The ledger work of the deletion endpoints goes further, out of this process
(app/service/ledger_pool.py): a thread still shares the GIL, which is handed over fairly
whatever the threads' priorities.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from fastapi.routing import APIRoute

from app.core.priority import lower_this_thread


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
