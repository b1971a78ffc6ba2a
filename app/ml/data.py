"""In-memory datasets with stable integer ids, and deterministic splits.

A sample's id is its row in the dataset: ids [0, n_pool) come from the official train
split (or the whole set when there is none), the rest from the official test split.
Images stay uint8 in memory and are converted per batch, so a chunked gradient pass
never holds a float copy of the whole set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

SPLIT_NAMES = ("train", "val", "test", "shadow")


@dataclass
class Dataset:
    name: str
    x: np.ndarray  # images (N, H, W, C) uint8 or float in [0, 1]; tabular (N, F) float32
    y: np.ndarray  # (N,) int64
    num_classes: int
    n_pool: int  # ids below this come from the official train split
    mean: np.ndarray | None = None  # per-channel, images only
    std: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.y = np.asarray(self.y, dtype=np.int64)
        if len(self.x) != len(self.y):
            raise ValueError(f"{self.name}: {len(self.x)} inputs but {len(self.y)} labels")
        if self.is_image and self.mean is None:
            # a strided sample: files are often sorted by class
            step = max(1, self.n_pool // 10_000)
            sample = self._unit(self.x[: self.n_pool : step])
            self.mean = sample.mean(axis=(0, 1, 2)).astype(np.float32)
            self.std = np.maximum(sample.std(axis=(0, 1, 2)), 1e-6).astype(np.float32)

    @property
    def is_image(self) -> bool:
        return self.x.ndim == 4

    @property
    def in_shape(self) -> tuple[int, ...]:
        if self.is_image:
            _, h, w, c = self.x.shape
            return (c, h, w)
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return len(self.y)

    @staticmethod
    def _unit(x: np.ndarray) -> np.ndarray:
        return x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)

    def features(self, ids: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Model input for these ids: (n, C, H, W) normalised, or (n, F)."""
        x = self._unit(self.x[np.asarray(ids)])
        if self.is_image:
            assert self.mean is not None and self.std is not None
            x = (x - self.mean) / self.std
            return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        return torch.from_numpy(x)

    def labels(self, ids: np.ndarray | torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.y[np.asarray(ids)])


@dataclass(frozen=True)
class SplitConfig:
    seed: int = 0
    val_frac: float = 0.1  # of the train pool
    shadow_frac: float = 0.2  # of the train pool, disjoint from train: for membership inference
    test_frac: float = 0.2  # of all data, only when the dataset has no official test split


@dataclass(frozen=True)
class Splits:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    shadow: np.ndarray

    def to_json(self) -> dict[str, list[int]]:
        return {name: [int(i) for i in getattr(self, name)] for name in SPLIT_NAMES}

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json()))

    @classmethod
    def load(cls, path: Path) -> Splits:
        raw = json.loads(path.read_text())
        return cls(**{n: np.asarray(raw[n], dtype=np.int64) for n in SPLIT_NAMES})

    def without_train(self, ids: np.ndarray) -> Splits:
        keep = np.setdiff1d(self.train, ids)
        return Splits(train=keep, val=self.val, test=self.test, shadow=self.shadow)

    def holdout(self, size: int) -> np.ndarray:
        """The held-out ids every validation of a model's descendants uses: the same ones each time."""
        return np.sort(self.test)[:size]


def make_splits(ds: Dataset, cfg: SplitConfig) -> Splits:
    """Deterministic from cfg.seed alone; every id lands in exactly one split."""
    rng = np.random.default_rng(cfg.seed)
    all_ids = np.arange(len(ds), dtype=np.int64)
    if ds.n_pool < len(ds):
        pool, test = all_ids[: ds.n_pool], all_ids[ds.n_pool :]
    else:
        perm = rng.permutation(all_ids)
        n_test = round(cfg.test_frac * len(ds))
        pool, test = perm[n_test:], perm[:n_test]
    pool = rng.permutation(pool)
    n_val = round(cfg.val_frac * len(pool))
    n_shadow = round(cfg.shadow_frac * len(pool))
    val, shadow, train = np.split(pool, [n_val, n_val + n_shadow])
    return Splits(train=np.sort(train), val=np.sort(val), test=np.sort(test), shadow=np.sort(shadow))
