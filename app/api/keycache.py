"""API keys, cached: /predict checks a key on every request, and the ledger must not be asked each time.

A known key's entry is refreshed in the background when it expires, and served meanwhile: a lookup
on the event loop (where /predict's fast lane authorises) waits on the ledger, and on CIFAR-10 the
ledger shares a disk with the worker writing weights and gradient caches. A key first seen, or one
whose entry is over twice the TTL old (the refresh keeps failing), is looked up at once.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from app.core.priority import lower_this_thread
from app.db.keys import Principal

log = logging.getLogger("unlearnd.keys")
KEY_CACHE_S = 5.0  # a revoked key stops working within this many seconds (and the refresh's duration)
MAX_ENTRIES = 10_000


class KeyCache:
    def __init__(self, lookup: Callable[[str], Principal | None], ttl_s: float = KEY_CACHE_S) -> None:
        self.lookup, self.ttl_s = lookup, ttl_s
        self._entries: dict[str, tuple[float, Principal | None]] = {}  # sha256 of the key → (fetched at, who)
        self._refreshing: set[str] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="keys", initializer=lower_this_thread)

    def get(self, key: str) -> Principal | None:
        digest = hashlib.sha256(key.encode()).hexdigest()
        hit = self._entries.get(digest)
        now = time.monotonic()
        if hit is not None:
            age = now - hit[0]
            if age < self.ttl_s:
                return hit[1]
            if hit[1] is not None and age < 2 * self.ttl_s:
                self._refresh_later(key, digest)
                return hit[1]
        return self._fetch(key, digest)

    def _fetch(self, key: str, digest: str) -> Principal | None:
        p = self.lookup(key)
        with self._lock:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[digest] = (time.monotonic(), p)
        return p

    def _refresh_later(self, key: str, digest: str) -> None:
        with self._lock:
            if digest in self._refreshing:
                return
            self._refreshing.add(digest)
        self._pool.submit(self._refresh, key, digest)

    def _refresh(self, key: str, digest: str) -> None:
        try:
            self._fetch(key, digest)
        except Exception as e:  # the entry stays stale: the next request retries, and after 2 TTLs looks up itself
            log.warning("could not refresh an API key: %s", e)
        finally:
            with self._lock:
                self._refreshing.discard(digest)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
