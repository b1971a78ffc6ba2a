"""The worker's Prometheus metrics, served on UNLEARND_WORKER_METRICS_PORT by the worker process itself.

Why a port of its own (and not the API's /metrics): a batch's and a retrain's seconds are observations only the
process that ran them sees; the ledger keeps outcomes, not histograms, and re-aggregating the whole history at
every scrape would cost every API process a scan per scrape. Prometheus's multiprocess mode would need a
directory shared by the API and the workers, which run on other hosts. Each worker process is one scrape target
(RQ's SimpleWorker runs jobs in that process); the counters restart at zero with it, which rate() handles.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from app.db.session import as_utc

log = logging.getLogger("unlearnd.worker")
REGISTRY = CollectorRegistry()
SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600)
AGES = (1, 5, 30, 60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400)

batches = Counter("unlearnd_worker_batches", "deletion batches a worker ended, by outcome (completed | failed | "
                  "released) and method", ["outcome", "method"], registry=REGISTRY)
verdicts = Counter("unlearnd_worker_verdicts", "the membership verifier's verdicts on completed batches",
                   ["verdict"], registry=REGISTRY)
exact_retrains = Counter("unlearnd_worker_exact_retrains", "exact retrains from scratch, by reason (partial_exposure "
                         "| due_date | chain | batch) and outcome (completed | failed)",
                         ["reason", "outcome"], registry=REGISTRY)
requests = Counter("unlearnd_worker_requests", "deletion requests a worker ended, by state (completed | failed)",
                   ["state"], registry=REGISTRY)
batch_seconds = Histogram("unlearnd_worker_batch_seconds", "a batch's seconds, claim to commit", ["method"],
                          buckets=SECONDS, registry=REGISTRY)
retrain_seconds = Histogram("unlearnd_worker_retrain_seconds", "an exact retrain's seconds", ["reason"],
                            buckets=SECONDS, registry=REGISTRY)
verify_seconds = Histogram("unlearnd_worker_verify_seconds", "the verifier's seconds on a batch", buckets=SECONDS,
                           registry=REGISTRY)
request_age = Histogram("unlearnd_worker_request_age_seconds", "a request's age (since it was received) when it "
                        "completed, and when it became exact", ["at"], buckets=AGES, registry=REGISTRY)


def serve(port: int | None, addr: str = "0.0.0.0") -> str | None:
    """Serve the metrics on PORT (None: not asked for); the reason when they cannot be, which the worker records in
    the ledger for /readyz, /metrics and /ui."""
    if port is None:
        return None
    try:
        start_http_server(port, addr=addr, registry=REGISTRY)
    except OSError as e:  # a port taken must not stop deletions from being processed
        log.error("worker metrics NOT served: port %d: %s (UNLEARND_WORKER_METRICS_PORT)", port, e)
        return f"port {port}: {e.strerror or e}"
    log.info("worker metrics on http://%s:%d/metrics", addr, port)
    return None


def ages(received: Iterable[datetime | None], now: datetime, *, at: str) -> None:
    for r in received:
        if r is not None:
            request_age.labels(at).observe(max(0.0, (now - as_utc(r)).total_seconds()))  # type: ignore[operator]


def batch_ended(*, outcome: str, method: str | None, seconds: float, verdict: str | None, exact: bool,
                verify_s: float | None, n_requests: int) -> None:
    m = method or "none"
    batches.labels(outcome, m).inc()
    if outcome == "released":
        return
    requests.labels(outcome).inc(n_requests)
    if outcome != "completed":
        return
    batch_seconds.labels(m).observe(seconds)
    if verdict is not None:
        verdicts.labels(verdict).inc()
    if verify_s is not None:
        verify_seconds.observe(verify_s)
    if exact and m == "retrain":  # the policy fell back to an exact retrain inside the batch
        exact_retrains.labels("batch", "completed").inc()


def retrain_ended(*, reason: str, outcome: str, seconds: float | None) -> None:
    exact_retrains.labels(reason, outcome).inc()
    if seconds is not None:
        retrain_seconds.labels(reason).observe(seconds)
