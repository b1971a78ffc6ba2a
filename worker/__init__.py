"""The deletion worker: RQ jobs that turn pending deletion requests into a new model version.

One concept per module: `queue` (Redis connection, notify, announce), `window` (batch
window), `batch` (claim → unlearn → validate → write → commit), `housekeeping` (purge,
cache refresh, sweep), `jobs` (the RQ entry point), `main` (the worker process loop).
"""
