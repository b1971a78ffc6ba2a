"""A consolidation's retrain job whose rank 1 dies mid-training (at its third gradient all-reduce), as a killed
or crashed process would: torchrun then fails the whole job (tests/service/test_consolidation.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import app.ml.training.fit as fit_module
from worker.exact import run_job

if os.environ.get("RANK") == "1":
    real, calls = fit_module.all_reduce_grads, [0]

    def dying(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls[0] += 1
        if calls[0] == 3:
            os._exit(1)
        return real(*args, **kwargs)

    fit_module.all_reduce_grads = dying  # type: ignore[assignment]

run_job(Path(sys.argv[1]))
