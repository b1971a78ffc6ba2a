"""A closed-loop HTTP load generator: N client threads, each with one keep-alive connection.

Raw sockets and a pre-built request, not an HTTP client library: the generator shares the host with
the server under test, so every microsecond it spends is one the server does not get. httpx costs
about 0.5 ms of CPU a request, which throttled the clients before the server.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np

_VERSION = re.compile(rb'"model_version":\s*"([^"]+)"')


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies_ms: np.ndarray
    versions: set[str]
    steal_s: float = 0.0  # CPU time the hypervisor took from this host's vCPUs meanwhile (noise, not ours)
    realtime: bool = False  # every client thread ran at SCHED_FIFO

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if len(self.latencies_ms) else float("nan")


class _Conn:
    """One keep-alive HTTP/1.1 connection that sends a fixed POST and reads Content-Length responses."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def roundtrip(self, request: bytes) -> tuple[int, bytes]:
        self.sock.sendall(request)
        while b"\r\n\r\n" not in self.buf:
            self._recv()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = next((int(v) for k, _, v in (ln.partition(b":") for ln in lines[1:])
                       if k.strip().lower() == b"content-length"), None)
        if length is None:
            raise OSError("response without Content-Length")
        while len(self.buf) < length:
            self._recv()
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, body

    def _recv(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise OSError("connection closed")
        self.buf += chunk

    def close(self) -> None:
        self.sock.close()


def _request(url: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[str, int, bytes]:
    u = urlsplit(url)
    payload = json.dumps(body).encode()
    lines = [f"POST {u.path or '/'} HTTP/1.1", f"Host: {u.netloc}", "Content-Type: application/json",
             f"Content-Length: {len(payload)}", *(f"{k}: {v}" for k, v in headers.items())]
    return u.hostname or "127.0.0.1", u.port or 80, ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


def _client_loop(host: str, port: int, request: bytes, schedule: Any, lat: list[float], versions: set[bytes]) -> int:
    """Sends at the times SCHEDULE yields (None: ends); latency counts from the scheduled time, so a
    stalled server is charged for the requests it delayed (no coordinated omission). Returns errors."""
    conn, errors = _Conn(host, port), 0
    try:
        for due in schedule:
            if (wait := due - time.perf_counter()) > 0:
                time.sleep(wait)
            try:
                status, text = conn.roundtrip(request)
                ok = status == 200
                if ok and (m := _VERSION.search(text)):
                    versions.add(m.group(1))
            except OSError:
                ok = False
                conn.close()
                conn = _Conn(host, port)
            lat.append(1000 * (time.perf_counter() - due))
            errors += not ok
    finally:
        conn.close()
    return errors


def _closed(seconds: float) -> Any:
    stop = time.perf_counter() + seconds
    while (now := time.perf_counter()) < stop:
        yield now


def _open(seconds: float, interval: float, offset: float) -> Any:
    start = time.perf_counter() + offset
    for k in range(int(seconds / interval)):
        yield start + k * interval


def host_steal_s() -> float:
    """The host's total steal time so far (Linux; 0 elsewhere)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return 0.0
    return int(fields[8]) / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0.0


def _realtime_thread() -> bool:
    """The calling thread to SCHED_FIFO 1, above every normal process (root, Linux); False if refused."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except (AttributeError, OSError):
        return False
    return True


def run_load(url: str, *, body: dict[str, Any], headers: dict[str, str], clients: int, seconds: float,
             rate: float | None = None, realtime: bool = False) -> LoadResult:
    """Closed loop (RATE None: each client sends as soon as its last answer came) or open loop (RATE
    requests/s in all, spread evenly over the clients, whatever the server does). REALTIME: the client
    threads ask for SCHED_FIFO, so that nothing else on their CPU delays a send or a receipt; the
    result says whether all got it."""
    host, port, request = _request(url, body, headers)
    lat: list[list[float]] = [[] for _ in range(clients)]
    versions: list[set[bytes]] = [set() for _ in range(clients)]
    errs = [0] * clients
    rt = [False] * clients
    interval = clients / rate if rate else 0.0

    def client(k: int) -> None:
        rt[k] = realtime and _realtime_thread()
        schedule = _open(seconds, interval, k * interval / clients) if rate else _closed(seconds)
        errs[k] = _client_loop(host, port, request, schedule, lat[k], versions[k])

    t0, steal0 = time.perf_counter(), host_steal_s()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    all_lat = np.asarray([v for per in lat for v in per])
    return LoadResult(len(all_lat), sum(errs), time.perf_counter() - t0, all_lat,
                      {v.decode() for per in versions for v in per}, host_steal_s() - steal0, all(rt))
