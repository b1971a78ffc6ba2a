"""CPU priority of the API's background work (its threads, its ledger process): below the event
loop that answers predictions, so that this work runs in the loop's idle time.

Nice 10 is the worker's (`UNLEARND_WORKER_PRIORITY=low`): lower, a co-located worker preempts a
pool thread that holds the GIL, and the loop waits for both (nice 19 beside a nice-10 worker on one
CPU took /predict's p99 to 46-214 ms).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

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
