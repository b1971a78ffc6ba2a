"""What the service layers and the ML core both need and neither owns (so neither imports the other for it):
the project's root folder, the grammar of a device spec, and the forgetting policy's vocabularies."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, get_args

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEVICE_SPEC = re.compile(r"auto|cpu|cuda(:\d+)?")  # UNLEARND_DEVICE: auto | cpu | cuda | cuda:N

# what the forgetting policy does when the verifier still detects a batch after a fast update
OnPartial = Literal["consolidate", "retrain", "accept"]
# and when no fast setting keeps held-out accuracy: retrain exactly, or fail the batch
OnInvalid = Literal["retrain", "fail"]
ON_PARTIAL: tuple[str, ...] = get_args(OnPartial)
ON_INVALID: tuple[str, ...] = get_args(OnInvalid)
