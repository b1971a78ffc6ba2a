"""The served model: one reference, swapped whole when a new version is published.

A request reads `holder.current` once and answers wholly from that (version, model) pair.
A background thread reloads on a Redis announcement or every poll interval; a failed load
(missing file, sha mismatch, non-finite output) leaves the current model in place.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from redis.exceptions import RedisError
from torch import nn

from app.core.config import Settings
from app.core.priority import lower_this_thread
from app.db import ledger
from app.db.models import ModelVersion
from app.db.session import transaction
from app.errors import UnlearndError
from app.ml.data.dataset import Dataset
from app.service.ledger_conn import LedgerConn
from app.service.queue import channel, connect
from app.service.versions import load_version

log = logging.getLogger("unlearnd.serving")
# Between the load's steps. Loading in one go held the GIL beside the event loop for ~4 ms of CPU, and
# the loop, losing up to a switch interval at each of its syscalls, fell behind: 8-27 ms stalls at each
# swap in an open-loop trace. In steps with a sleep between, the loop drains its queue between steps.
RELOAD_PAUSE_S = 0.002
NAMED_KEPT = 2


def _yield_to_requests() -> None:
    time.sleep(RELOAD_PAUSE_S)


@dataclass(frozen=True)
class Served:
    version_id: str
    seq: int
    model: nn.Module


class ModelHolder:
    def __init__(self, settings: Settings, conn: LedgerConn, store: Dataset) -> None:
        self.settings, self.conn, self.store = settings, conn, store
        self.current: Served | None = None
        self.swaps = 0
        self.failed_loads = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._named: OrderedDict[str, Served] = OrderedDict()  # older versions asked for by name
        self._named_lock = threading.Lock()

    def refresh(self) -> bool:
        """Load the ledger's head if it is not the one served; True on a swap."""
        with transaction(self.conn.read) as s:
            head = ledger.head(s)
        cur = self.current
        if head is None or (cur is not None and cur.version_id == head.id):
            return False
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            md = load_version(head, home=self.settings.home, probe=self.store, pause=_yield_to_requests)
        except (UnlearndError, OSError) as e:
            self.failed_loads += 1
            log.error("not swapping to version %s: %s", head.id, e)
            return False
        self.current = Served(head.id, head.seq, md.model)  # the one assignment readers see
        self.swaps += 1
        log.info("serving version %s (seq %d); loaded in %.1f ms (%.1f ms CPU)", head.id, head.seq,
                 1e3 * (time.perf_counter() - t0), 1e3 * (time.thread_time() - c0))
        return True

    def named(self, version: ModelVersion) -> Served:
        """VERSION's model: the served one, or an older one loaded on demand (the caller checked that it may
        answer: app/service/named_versions.py). A few stay loaded; a failed load raises ModelLoadError."""
        cur = self.current
        if cur is not None and cur.version_id == version.id:
            return cur
        with self._named_lock:
            if version.id in self._named:
                self._named.move_to_end(version.id)
                return self._named[version.id]
            md = load_version(version, home=self.settings.home, probe=self.store)
            out = self._named[version.id] = Served(version.id, version.seq, md.model)
            while len(self._named) > NAMED_KEPT:
                self._named.popitem(last=False)
            return out

    def drop(self, version_id: str) -> None:
        """Unload a named version (it was retired: its weights hold forgotten samples)."""
        with self._named_lock:
            self._named.pop(version_id, None)

    def _poll_loop(self) -> None:
        lower_this_thread()  # a load must not preempt the event loop
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception as e:  # a ledger hiccup must not kill the reload thread
                log.warning("reload check failed: %s", e)
            self._wake.wait(self.settings.poll_interval_s)
            self._wake.clear()

    def _listen_loop(self) -> None:
        lower_this_thread()
        while not self._stop.is_set() and self.settings.redis_url:
            try:
                pubsub = connect(self.settings.redis_url).pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(channel(self.settings))
                while not self._stop.is_set():
                    if pubsub.get_message(timeout=1.0) is not None:
                        self._wake.set()
            except RedisError:
                self._stop.wait(2.0)  # Redis away: the poll keeps us current meanwhile

    def start(self) -> None:
        self.refresh()
        for target in (self._poll_loop, self._listen_loop):
            t = threading.Thread(target=target, daemon=True, name=target.__name__)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
