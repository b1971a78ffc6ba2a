"""The service benchmark's raw-socket load generator against a real HTTP server: it counts what it
sends, reads versions, counts errors, and charges a stalled server for the requests it delayed."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from app.service_bench.load import _realtime_thread, run_load


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the generator expects
    stall_s = 0.0
    status = 200

    def do_POST(self) -> None:
        n = int(self.headers["Content-Length"])
        body = json.loads(self.rfile.read(n))
        if _Handler.stall_s:
            stall, _Handler.stall_s = _Handler.stall_s, 0.0
            time.sleep(stall)
        out = json.dumps({"model_version": "v-7", "n": len(body["instances"])}).encode()
        self.send_response(_Handler.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def url() -> Iterator[str]:
    _Handler.stall_s, _Handler.status = 0.0, 200
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/predict"
    server.shutdown()


def test_closed_loop_counts_requests_and_versions(url: str) -> None:
    r = run_load(url, body={"instances": [[1.0, 2.0]]}, headers={"X-API-Key": "k"}, clients=2, seconds=0.5)
    assert r.requests > 20 and r.errors == 0 and r.versions == {"v-7"}
    assert len(r.latencies_ms) == r.requests and np.all(r.latencies_ms > 0)


def test_open_loop_keeps_its_rate(url: str) -> None:
    r = run_load(url, body={"instances": [[1.0]]}, headers={}, clients=2, seconds=1.0, rate=100)
    assert r.requests == 100 and r.errors == 0


def test_open_loop_charges_a_stall_to_the_delayed_requests(url: str) -> None:
    """One 300 ms stall at 50 req/s on one connection delays the ~15 requests due meanwhile; measured
    from their scheduled times (not from when they could be sent), they are all slow."""
    _Handler.stall_s = 0.3
    r = run_load(url, body={"instances": [[1.0]]}, headers={}, clients=1, seconds=1.0, rate=50)
    assert r.requests == 50
    assert (r.latencies_ms > 100).sum() >= 10


def test_non_200_answers_are_errors(url: str) -> None:
    _Handler.status = 503
    r = run_load(url, body={"instances": [[1.0]]}, headers={}, clients=1, seconds=0.3)
    assert r.requests > 0 and r.errors == r.requests and not r.versions


def _fifo_allowed() -> bool:
    out: list[bool] = []
    t = threading.Thread(target=lambda: out.append(_realtime_thread()))  # a throwaway thread: it dies with it
    t.start()
    t.join()
    return out[0]


@pytest.mark.skipif(not hasattr(os, "sched_setscheduler"), reason="no POSIX scheduling here")
def test_realtime_clients_run_at_sched_fifo_when_allowed(url: str) -> None:
    r = run_load(url, body={"instances": [[1.0]]}, headers={}, clients=2, seconds=0.5, rate=100, realtime=True)
    assert r.requests == 50 and r.errors == 0
    assert r.realtime == _fifo_allowed()
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the caller's own thread is left as it was
    assert not run_load(url, body={"instances": [[1.0]]}, headers={}, clients=1, seconds=0.2, rate=20).realtime
