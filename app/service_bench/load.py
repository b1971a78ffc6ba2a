"""A closed-loop HTTP load generator: N client threads, each with a keep-alive connection."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies_ms: np.ndarray
    versions: set[str]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if len(self.latencies_ms) else float("nan")


def run_load(url: str, *, body: dict[str, Any], headers: dict[str, str], clients: int, seconds: float) -> LoadResult:
    lat: list[list[float]] = [[] for _ in range(clients)]
    errs = [0] * clients
    versions: list[set[str]] = [set() for _ in range(clients)]
    stop = time.perf_counter() + seconds

    def client(k: int) -> None:
        with httpx.Client(headers=headers, timeout=30) as c:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    r = c.post(url, json=body)
                    ok = r.status_code == 200
                    if ok and "model_version" in r.text:
                        versions[k].add(r.json()["model_version"])
                except httpx.HTTPError:
                    ok = False
                lat[k].append(1000 * (time.perf_counter() - t0))
                errs[k] += not ok

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    all_lat = np.asarray([v for per in lat for v in per])
    return LoadResult(len(all_lat), sum(errs), time.perf_counter() - t0, all_lat, set().union(*versions))
