"""Content hashes: of weights (names, dtypes, shapes, values) and of a set of sample ids."""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """A hash of names, dtypes, shapes and values: equal iff the weights are equal."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def ids_sha256(ids: np.ndarray) -> str:
    return hashlib.sha256(np.sort(np.asarray(ids, dtype=np.int64)).tobytes()).hexdigest()
