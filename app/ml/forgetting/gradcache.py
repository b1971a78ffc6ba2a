"""The fast path's gradient cache: Σ_{z∈D} ∇ℓ(z, θ) at exactly one set of weights.

Stored as DIR/grad_cache.safetensors with the weights' sha256 and the training ids' sha256
in its header. A cache whose keys differ from the model's is refused: the caller then takes
the slow path instead of subtracting from a stale sum.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from app.errors import CacheMismatchError
from app.ml.common.fsutil import atomic_replace
from app.ml.common.hashing import ids_sha256, weights_sha256
from app.ml.data.dataset import Dataset
from app.ml.training.grads import GradSums, grad_sum

CACHE_FILE = "grad_cache.safetensors"


@dataclass
class GradCache:
    weights_sha256: str
    ids_sha256: str
    n: int
    sums: GradSums

    def check(self, *, weights: str, ids: np.ndarray) -> None:
        if self.weights_sha256 != weights:
            raise CacheMismatchError(
                f"gradient cache is for weights {self.weights_sha256[:12]}, model is {weights[:12]}")
        if self.n != len(ids) or self.ids_sha256 != ids_sha256(ids):
            raise CacheMismatchError("gradient cache was computed over a different set of training ids")


def cache_matches(cache: GradCache | None, *, weights: str, ids: np.ndarray) -> bool:
    if cache is None:
        return False
    try:
        cache.check(weights=weights, ids=ids)
    except CacheMismatchError:
        return False
    return True


def build_cache(model: nn.Module, ds: Dataset, train_ids: np.ndarray, *, chunk_size: int = 1024) -> GradCache:
    return GradCache(
        weights_sha256=weights_sha256(model.state_dict()),
        ids_sha256=ids_sha256(train_ids),
        n=len(train_ids),
        sums=grad_sum(model, ds, train_ids, chunk_size=chunk_size),
    )


def save_cache(cache: GradCache, model_dir: Path) -> Path:
    path = model_dir / CACHE_FILE
    meta = {"weights_sha256": cache.weights_sha256, "ids_sha256": cache.ids_sha256, "n": str(cache.n)}
    with atomic_replace(path) as tmp:
        save_file({k: v.cpu().contiguous() for k, v in cache.sums.items()}, str(tmp), metadata=meta)
    return path


def load_cache(model_dir: Path, device: torch.device | str | None = None) -> GradCache | None:
    path = model_dir / CACHE_FILE
    if not path.exists():
        return None
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if not {"weights_sha256", "ids_sha256", "n"} <= meta.keys():
        raise CacheMismatchError(f"{path}: header lacks its keys")
    return GradCache(weights_sha256=meta["weights_sha256"], ids_sha256=meta["ids_sha256"],
                     n=int(meta["n"]), sums=load_file(str(path), device=str(device or "cpu")))
