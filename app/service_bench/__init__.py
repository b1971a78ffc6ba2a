"""`unlearnd bench --suite service-digits | service-cifar10`: the deletion service's targets,
measured on live processes (API, worker, embedded Redis, SQLite) in one run.

Registered into the ML core's suite registry from here, so the core imports nothing of HTTP.
"""

from __future__ import annotations

from app.ml.bench import SUITES, Suite
from app.service_bench.suite import ServiceBenchConfig, make_suite

SUITES.register("service-digits")(Suite(
    "deletion → serving latency, /predict throughput vs bare uvicorn+torch, p99 during swaps (digits LeNet5)",
    make_suite(ServiceBenchConfig(name="service-digits", dataset="digits", n_deletes=20, train_epochs=100))))
SUITES.register("service-cifar10")(Suite(
    "the service targets on CIFAR-10 LeNet5 (GR α=0.1, 35k training samples)",
    make_suite(ServiceBenchConfig(name="service-cifar10", dataset="cifar10", n_deletes=10, train_epochs=10))))
