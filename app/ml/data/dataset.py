"""In-memory datasets with stable integer ids, and deterministic splits.

A sample's id is its row in the dataset: ids [0, n_pool) come from the official train
split (or the whole set when there is none), the rest from the official test split.
Images stay uint8 in memory and are converted per batch, so a chunked gradient pass
never holds a float copy of the whole set.

A dataset also says where its batches go: `ds.on(device)` is the same data whose `features`
and `labels` are tensors on DEVICE, and every ML function puts its models on `ds.device`.
On a GPU the normalised set is copied there once when it takes at most RESIDENT_SHARE of the
free memory (CIFAR-10: 737 MB) and indexed on the device; otherwise each batch is converted on
the CPU and copied (`placement` says which).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

SPLIT_NAMES = ("train", "val", "test", "shadow")
LAST_BATCH = ("fold", "keep")
RESIDENT_SHARE = 0.25  # the rest of the GPU is for activations, double backprop and several models


@dataclass
class Dataset:
    name: str
    x: np.ndarray  # images (N, H, W, C) uint8 or float in [0, 1]; tabular (N, F) float32
    y: np.ndarray  # (N,) int64
    num_classes: int
    n_pool: int  # ids below this come from the official train split
    mean: np.ndarray | None = None  # per-channel, images only
    std: np.ndarray | None = None
    class_names: tuple[str, ...] | None = None  # label k's name; None: "0", "1", …
    # from the data itself (app/ml/data/imagefolder.py, app/ml/data/tables.py); every one optional
    subjects: np.ndarray | None = None  # (N,) str: the person a row is about ("" = none named)
    given_split: np.ndarray | None = None  # (N,) str: train | val | test | shadow, "" = chosen by make_splits
    feature_names: tuple[str, ...] | None = None  # tabular: the columns, in the order the model reads them
    sources: tuple[str, ...] | None = None  # where each row came from (an image's path), for the id mapping
    keys: np.ndarray | None = None  # (N,) str: each row's id as the data names it; None: the row is the id (ids.py)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    _resident: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.y = np.asarray(self.y, dtype=np.int64)
        if len(self.x) != len(self.y):
            raise ValueError(f"{self.name}: {len(self.x)} inputs but {len(self.y)} labels")
        if self.is_image and self.mean is None:
            # a strided sample: files are often sorted by class
            step = max(1, self.n_pool // 10_000)
            sample = self._unit(self.x[: self.n_pool : step][self.y[: self.n_pool : step] >= 0])
            self.mean = sample.mean(axis=(0, 1, 2)).astype(np.float32)
            self.std = np.maximum(sample.std(axis=(0, 1, 2)), 1e-6).astype(np.float32)

    @property
    def names(self) -> tuple[str, ...]:
        return self.class_names or tuple(str(k) for k in range(self.num_classes))

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

    @property
    def placement(self) -> str:
        """cpu | resident (the whole set on the device) | streamed (batch by batch to the device)."""
        if self.device.type == "cpu":
            return "cpu"
        return "resident" if self._resident is not None else "streamed"

    def on(self, device: torch.device | str) -> Dataset:
        """This dataset with its batches on DEVICE (the arrays are shared, not copied)."""
        dev = torch.device(device)
        out = replace(self, device=dev)
        if dev.type == "cuda":
            free, _ = torch.cuda.mem_get_info(dev)
            need = int(np.prod(self.x.shape)) * 4 + len(self) * 8
            if need <= RESIDENT_SHARE * free:
                chunks = [self._cpu_features(np.arange(i, min(i + 8192, len(self))))
                          for i in range(0, len(self), 8192)]
                out._resident = (torch.cat(chunks).to(dev), torch.from_numpy(self.y).to(dev))
        return out

    def features(self, ids: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Model input for these ids, on self.device: (n, C, H, W) normalised, or (n, F)."""
        if self._resident is not None:
            return self._resident[0][self._index(ids)]
        x = self._cpu_features(ids)
        return x if self.device.type == "cpu" else x.to(self.device, non_blocking=True)

    def labels(self, ids: np.ndarray | torch.Tensor) -> torch.Tensor:
        if self._resident is not None:
            return self._resident[1][self._index(ids)]
        y = torch.from_numpy(self.y[np.asarray(ids)])
        return y if self.device.type == "cpu" else y.to(self.device, non_blocking=True)

    def _index(self, ids: np.ndarray | torch.Tensor) -> torch.Tensor:
        if isinstance(ids, torch.Tensor):
            return ids.to(self.device)
        return torch.from_numpy(np.asarray(ids, dtype=np.int64)).to(self.device)

    def _cpu_features(self, ids: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = self._unit(self.x[np.asarray(ids)])
        if self.is_image:
            assert self.mean is not None and self.std is not None
            x = (x - self.mean) / self.std
            return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        return torch.from_numpy(x)


def minibatches(order: np.ndarray, size: int, last: str = "fold") -> list[np.ndarray]:
    """ORDER cut into minibatches of SIZE. A last batch of one sample is folded into the one before ("fold"):
    batch-norm cannot train on a batch of one, and every sample is still seen once per epoch. Every training
    loop (fit, retrain, consolidation, references, the methods' own loops) cuts its batches here."""
    cuts = list(range(size, len(order), size))
    if last == "fold" and cuts and len(order) - cuts[-1] == 1:
        cuts.pop()
    return np.split(np.asarray(order), cuts) if len(order) else []


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
    # where each split came from (publication only): {split: {"count": n, "from": {source: rows}}}
    origin: dict[str, Any] | None = field(default=None, compare=False)

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

    def without(self, ids: np.ndarray) -> Splits:
        """Every split less IDS: what validation, verification and retraining may still use after deletions."""
        return Splits(**{n: np.setdiff1d(getattr(self, n), ids) for n in SPLIT_NAMES})

    def holdout(self, size: int) -> np.ndarray:
        """The held-out ids every validation of a model's descendants uses: the same ones each time."""
        return np.sort(self.test)[:size]


def make_splits(ds: Dataset, cfg: SplitConfig) -> Splits:
    """Deterministic from cfg.seed alone; every present id lands in exactly one split. Rows the data marks as
    absent or erased (label −1) land in none; a split the data names for a row (`given_split`) is kept, and
    a missing split is carved from unassigned rows, else from the held-out side, never from named train rows."""
    rng = np.random.default_rng(cfg.seed)
    all_ids = np.flatnonzero(ds.y >= 0).astype(np.int64)
    if ds.given_split is not None and (ds.given_split[all_ids] != "").any():
        return _given_splits(ds, all_ids, cfg, rng, unassigned="split")
    out = _carve_pool(ds, all_ids, cfg, rng)
    return _with_origin(out, {n: {"carved from the data's train pool" if n != "test" or ds.n_pool >= len(ds)
                                  else "the data's test split": len(getattr(out, n))} for n in SPLIT_NAMES})


def _carve_pool(ds: Dataset, ids: np.ndarray, cfg: SplitConfig, rng: np.random.Generator) -> Splits:
    """The split of data that names none: the official test split (or a seeded share), then validation and
    shadow samples from the rest."""
    if ds.n_pool < len(ds):
        pool, test = ids[ids < ds.n_pool], ids[ids >= ds.n_pool]
    else:
        perm = rng.permutation(ids)
        n_test = round(cfg.test_frac * len(ids))
        pool, test = perm[n_test:], perm[:n_test]
    pool = rng.permutation(pool)
    n_val = round(cfg.val_frac * len(pool))
    n_shadow = round(cfg.shadow_frac * len(pool))
    val, shadow, train = np.split(pool, [n_val, n_val + n_shadow])
    return Splits(train=np.sort(train), val=np.sort(val), test=np.sort(test), shadow=np.sort(shadow))


HELD_OUT_SHARES = {"val": 0.2, "shadow": 0.4}  # of the held-out rows, when the data names no val/shadow rows


def _given_splits(ds: Dataset, ids: np.ndarray, cfg: SplitConfig, rng: np.random.Generator, *,
                  unassigned: str) -> Splits:
    """The data names some splits. Named rows stay where they are. Unassigned rows are split as usual
    (UNASSIGNED="split") or are training rows (="train": a model trained elsewhere on them). A split still
    missing is carved from the held-out (test) rows; only data that names no held-out row at all gives up
    training rows, and the origin says so."""
    assert ds.given_split is not None
    named = {n: ids[ds.given_split[ids] == n] for n in SPLIT_NAMES}
    origin: dict[str, dict[str, int]] = {n: {"named by the data": len(named[n])} for n in SPLIT_NAMES}
    free = ids[ds.given_split[ids] == ""]
    if len(free) and unassigned == "train":
        named["train"] = np.union1d(named["train"], free)
        origin["train"]["unassigned rows (the imported weights' training rows)"] = len(free)
    elif len(free):
        sub = _carve_pool(replace(ds, n_pool=len(ds)), free, cfg, rng)
        for n in SPLIT_NAMES:
            named[n] = np.union1d(named[n], getattr(sub, n))
            origin[n]["carved from unassigned rows"] = len(getattr(sub, n))
    missing = [n for n in ("val", "shadow") if not len(named[n])]
    if missing and not len(named["test"]):  # nothing held out at all: the only place left is train
        sub = _carve_pool(replace(ds, n_pool=len(ds)), named["train"], cfg, rng)
        why = "carved from train (the data names no held-out rows)"
        for n in ("test", *missing):
            named[n] = getattr(sub, n)
            origin[n][why] = len(named[n])
        given = np.concatenate([named[n] for n in ("test", *missing)])
        named["train"] = np.setdiff1d(named["train"], given)
        origin["train"]["of which given to " + " and ".join(("test", *missing))] = len(given)
    elif missing:
        held = rng.permutation(named["test"])
        cut = 0
        for n in missing:
            k = round(HELD_OUT_SHARES[n] * len(held))
            named[n], cut = held[cut:cut + k], cut + k
            origin[n]["carved from test"] = k
        named["test"] = held[cut:]
        origin["test"]["of which given to " + " and ".join(missing)] = cut
    out = Splits(**{n: np.sort(named[n]).astype(np.int64) for n in SPLIT_NAMES})
    return _with_origin(out, {n: {k: v for k, v in o.items() if v} for n, o in origin.items()})


def _with_origin(splits: Splits, origin: dict[str, dict[str, int]]) -> Splits:
    return replace(splits, origin={n: {"count": len(getattr(splits, n)), "from": origin[n]} for n in SPLIT_NAMES})


def member_splits(ds: Dataset, cfg: SplitConfig) -> Splits:
    """For a model trained elsewhere on every training row: train is exactly those rows (named train, or
    unassigned); validation, shadow and test samples come from the held-out rows (named ones kept, else
    20/40/40 of them, seeded)."""
    present = ds.y >= 0
    given = ds.given_split if ds.given_split is not None else np.where(np.arange(len(ds)) < ds.n_pool, "train", "test")
    rng = np.random.default_rng(cfg.seed)
    return _given_splits(replace(ds, given_split=given), np.flatnonzero(present).astype(np.int64), cfg, rng,
                         unassigned="train")


def describe_splits(splits: Splits) -> str:
    """One line for the CLI: each split's count and where it came from."""
    if splits.origin is None:
        return ", ".join(f"{n} {len(getattr(splits, n))}" for n in SPLIT_NAMES)
    return describe_origin(splits.origin)


def describe_origin(origin: dict[str, Any]) -> str:
    """`Splits.origin` (also meta.json's `split_origin`) in one line, in split order: `train 385 (385 named by
    the data), …`."""
    parts = []
    for n in sorted(origin, key=lambda n: SPLIT_NAMES.index(n) if n in SPLIT_NAMES else len(SPLIT_NAMES)):
        o = origin[n]
        src = "; ".join(f"{v} {k}" for k, v in o["from"].items())
        parts.append(f"{n} {o['count']}" + (f" ({src})" if src else ""))
    return ", ".join(parts)
