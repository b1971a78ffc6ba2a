"""`unlearnd bench --suite service-digits | service-cifar10`: the deletion service's targets,
measured on live processes (API, worker, embedded Redis, SQLite) in one run.

Registered into the ML core's suite registry from here, so the core imports nothing of HTTP.
"""

from __future__ import annotations

from dataclasses import replace

from app.ml.bench.suites import SUITES, Suite, bind
from app.service_bench.suite import ServiceBenchConfig, run_service_bench

_DIGITS = ServiceBenchConfig(name="service-digits", dataset="digits", n_deletes=20, train_epochs=100)
_CIFAR = ServiceBenchConfig(name="service-cifar10", dataset="cifar10", n_deletes=10, train_epochs=10)

SUITES.register("service-digits")(Suite(
    "deletion → serving latency, /predict throughput vs bare uvicorn+torch, p99 during swaps (digits LeNet5)",
    bind(run_service_bench, _DIGITS, fixed_seeds=True)))
SUITES.register("service-cifar10")(Suite(
    "the service targets on CIFAR-10 LeNet5 (GR α=0.1, 35k training samples)",
    bind(run_service_bench, _CIFAR, fixed_seeds=True)))
# The same, with the scheduler placing every process (on a 2-vCPU host the server then has about
# two CPUs, and the clients share them): for comparison with the pinned one-CPU server above.
for _cfg in (_DIGITS, _CIFAR):
    SUITES.register(f"{_cfg.name}-unpinned")(Suite(
        f"{_cfg.name}, processes not pinned to CPUs",
        bind(run_service_bench, replace(_cfg, name=f"{_cfg.name}-unpinned", pin_cpus=False), fixed_seeds=True)))
