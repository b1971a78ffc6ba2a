"""The API-key cache: a known key's expired entry is served while a background thread refreshes it
(the event loop never waits on the ledger for it); a new key, or a very stale entry, is looked up at once."""

from __future__ import annotations

import threading
import time

from app.api.keycache import KeyCache
from app.db.keys import Principal

TTL = 0.1
ALICE = Principal(key_id="k1", scopes=frozenset({"predict"}))


class _Ledger:
    def __init__(self) -> None:
        self.answer: Principal | None = ALICE
        self.calls: list[int] = []  # the thread of each lookup
        self.gate = threading.Event()
        self.gate.set()

    def lookup(self, key: str) -> Principal | None:
        self.calls.append(threading.get_ident())
        assert self.gate.wait(5)
        return self.answer


def test_a_known_key_is_refreshed_in_the_background_and_revocation_lands() -> None:
    ledger = _Ledger()
    cache = KeyCache(ledger.lookup, ttl_s=TTL)
    try:
        assert cache.get("key") == ALICE and ledger.calls == [threading.get_ident()]  # first sight: at once
        assert cache.get("key") == ALICE and len(ledger.calls) == 1  # cached
        time.sleep(TTL * 1.2)
        ledger.answer, ledger.gate = None, threading.Event()  # revoked; the ledger is slow to say so
        t0 = time.perf_counter()
        assert cache.get("key") == ALICE  # stale, served without waiting for the ledger
        assert time.perf_counter() - t0 < 0.05
        deadline = time.monotonic() + 5
        while len(ledger.calls) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert ledger.calls[1] != threading.get_ident()  # the refresh ran on another thread
        assert cache.get("key") == ALICE and len(ledger.calls) == 2  # one refresh in flight, not one a request
        ledger.gate.set()
        while cache.get("key") is not None:  # the refresh lands: the revoked key stops working
            assert time.monotonic() < deadline
            time.sleep(0.005)
    finally:
        cache.close()


def test_unknown_and_very_stale_entries_are_looked_up_at_once() -> None:
    ledger = _Ledger()
    cache = KeyCache(ledger.lookup, ttl_s=TTL)
    try:
        ledger.answer = None
        assert cache.get("nobody") is None
        time.sleep(TTL * 1.2)
        ledger.answer = ALICE  # a key created since: not kept waiting for a background refresh
        assert cache.get("nobody") == ALICE and ledger.calls[-1] == threading.get_ident()
        time.sleep(TTL * 2.2)  # over twice the TTL: too stale to serve
        ledger.answer = None
        assert cache.get("nobody") is None and ledger.calls[-1] == threading.get_ident()
    finally:
        cache.close()
