"""Prometheus metrics, in a registry owned by the app (not the process-global default)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


@dataclass
class JobReading:
    """One background job's state as the ledger says it (app/db/jobs.py), read at each scrape."""

    failures_total: int
    failures_in_a_row: int
    stuck_seconds: float  # since its first failure in a row, once that run reached the stuck threshold; else 0


class BackgroundJobs(Collector):
    """The worker's background jobs' failures, which only the ledger knows (the worker is another process): a
    counter of every failure and gauges of the current run of them, per job."""

    def __init__(self) -> None:
        self.readings: dict[str, JobReading] = {}

    def collect(self) -> Iterator[Metric]:
        total = CounterMetricFamily("unlearnd_background_job_failures", "failures of a background job (the "
                                    "derived models' rebuild), all time", labels=["job"])
        row = GaugeMetricFamily("unlearnd_background_job_failures_in_a_row", "failures since its last success",
                                labels=["job"])
        stuck = GaugeMetricFamily("unlearnd_background_job_stuck_seconds", "how long the job has been stuck "
                                  "(failed UNLEARND_REBUILD_MAX_FAILURES times or more in a row); 0 when not",
                                  labels=["job"])
        for name, r in sorted(self.readings.items()):
            total.add_metric([name], r.failures_total)
            row.add_metric([name], r.failures_in_a_row)
            stuck.add_metric([name], r.stuck_seconds)
        yield from (total, row, stuck)


class HolderCounts(Collector):
    """This process's version swaps and refused loads: counts that only grow, read from the holder at scrape."""

    def __init__(self) -> None:
        self.swaps = 0
        self.failed_loads = 0

    def collect(self) -> Iterator[Metric]:
        swaps = CounterMetricFamily("unlearnd_model_swaps", "versions swapped in by this process")
        swaps.add_metric([], self.swaps)
        failed = CounterMetricFamily("unlearnd_model_failed_loads", "versions this process refused to load")
        failed.add_metric([], self.failed_loads)
        yield from (swaps, failed)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.jobs = BackgroundJobs()
        r.register(self.jobs)
        self.http = Counter("unlearnd_http_requests_total", "HTTP requests", ["route", "status"], registry=r)
        self.latency = Histogram("unlearnd_http_request_seconds", "HTTP latency", ["route"], registry=r,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        self.deletes = Counter("unlearnd_deletion_requests_total", "deletion requests accepted", registry=r)
        self.enqueue_failures = Counter("unlearnd_enqueue_failures_total",
                                        "deletion requests accepted while Redis was unreachable", registry=r)
        self.model_seq = Gauge("unlearnd_model_version_seq", "sequence number of the served version", registry=r)
        self.holder = HolderCounts()
        r.register(self.holder)
        # read from the ledger at each scrape: every API process reports the same service-wide numbers
        self.pending = Gauge("unlearnd_pending_requests", "deletion requests waiting for a worker", registry=r)
        self.oldest_pending = Gauge("unlearnd_oldest_pending_age_seconds", "age of the oldest pending request",
                                    registry=r)
        self.to_due = Gauge("unlearnd_seconds_to_nearest_due", "seconds until the nearest due_at of an open "
                                                                "request (negative: overdue; NaN: none open)",
                            registry=r)
        self.failed_batches = Gauge("unlearnd_failed_batches", "batches whose requests failed", registry=r)
        self.approximate = Gauge("unlearnd_approximate_requests", "completed requests the served model may still "
                                 "hold (not exact yet), by the batch's verdict", ["verdict"], registry=r)
        self.to_exact_due = Gauge("unlearnd_seconds_to_nearest_approximate_due", "seconds until the nearest due_at "
                                  "of a completed request that is not exact yet (negative: overdue; NaN: none)",
                                  registry=r)
        self.live_workers = Gauge("unlearnd_live_workers", "workers with a recent heartbeat", registry=r)
        self.dark_workers = Gauge("unlearnd_live_workers_without_metrics", "live workers whose own metrics "
                                  "endpoint (UNLEARND_WORKER_METRICS_PORT) could not be served", registry=r)
        self.heartbeat_age = Gauge("unlearnd_worker_heartbeat_age_seconds",
                                   "age of the freshest worker heartbeat (NaN: no worker ever started)", registry=r)
