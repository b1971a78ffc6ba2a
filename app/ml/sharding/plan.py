"""Which shard and slice holds each training sample: by subject when the data has subjects (a subject's samples all
live in one shard, so erasing a person retrains one constituent), else by a seeded draw; recorded per sample id."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from app.errors import ConfigError


@dataclass(frozen=True)
class ShardSpec:
    """`--shards K --slices R --aggregate HOW`: 1 and 1 is today's single model."""

    k: int = 1
    r: int = 1
    how: str = "mean"

    @property
    def sharded(self) -> bool:
        return self.k > 1 or self.r > 1


@dataclass(frozen=True)
class ShardPlan:
    k: int  # shards
    r: int  # slices per shard
    seed: int
    ids: np.ndarray  # the training ids, sorted
    shard: np.ndarray  # shard of ids[i]
    slice: np.ndarray  # slice of ids[i] within its shard

    def members(self, k: int, upto: int | None = None) -> np.ndarray:
        """Shard K's ids in slices 0..UPTO-1 (all slices when None), sorted."""
        inside = self.shard == k
        if upto is not None:
            inside &= self.slice < upto
        return self.ids[inside]

    def where(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard, slice) of each of IDS; every id must be a training id of the plan."""
        at = np.searchsorted(self.ids, ids)
        if np.any(at >= len(self.ids)) or np.any(self.ids[np.minimum(at, len(self.ids) - 1)] != ids):
            raise ConfigError("some ids are not training samples of this sharded model")
        return self.shard[at], self.slice[at]

    def without(self, ids: np.ndarray) -> ShardPlan:
        keep = ~np.isin(self.ids, ids)
        return ShardPlan(self.k, self.r, self.seed, self.ids[keep], self.shard[keep], self.slice[keep])

    def to_json(self) -> dict[str, object]:
        return {"k": self.k, "r": self.r, "seed": self.seed, "ids": self.ids.tolist(), "shard": self.shard.tolist(),
                "slice": self.slice.tolist()}

    @classmethod
    def from_json(cls, d: Mapping[str, object]) -> ShardPlan:
        return cls(int(d["k"]), int(d["r"]), int(d["seed"]),  # type: ignore[call-overload]
                   np.asarray(d["ids"], dtype=np.int64), np.asarray(d["shard"], dtype=np.int64),
                   np.asarray(d["slice"], dtype=np.int64))


def make_plan(train_ids: np.ndarray, *, k: int, r: int, seed: int, subjects: Mapping[int, str] | None = None,
              ) -> ShardPlan:
    """Subjects (or, without them, single samples) dealt to K shards, largest first, each to the emptiest shard
    (ties in a seeded order), so the shards' sizes differ by at most one subject's; each shard's samples then split
    into R slices in a seeded order."""
    if k < 1 or r < 1:
        raise ConfigError(f"shards and slices must be at least 1 (got {k} and {r})")
    ids = np.sort(np.asarray(train_ids, dtype=np.int64))
    if len(ids) < k * r:
        raise ConfigError(f"{len(ids)} training samples cannot fill {k} shards of {r} slices")
    rng = np.random.default_rng(seed)
    owner = np.array([subjects.get(int(i), f"#{int(i)}") for i in ids]) if subjects else ids.astype(str)
    units, unit_of = np.unique(owner, return_inverse=True)
    sizes = np.bincount(unit_of)
    order = rng.permutation(len(units))
    order = order[np.argsort(-sizes[order], kind="stable")]  # largest first, ties in the seeded order
    shard_of_unit = np.empty(len(units), dtype=np.int64)
    load = np.zeros(k, dtype=np.int64)
    for u in order:  # each to the emptiest shard: sizes end within one subject of each other
        shard_of_unit[u] = int(np.argmin(load))
        load[shard_of_unit[u]] += sizes[u]
    shard = shard_of_unit[unit_of]
    slices = np.empty(len(ids), dtype=np.int64)
    for s in range(k):
        mine = np.flatnonzero(shard == s)
        if len(mine) < r:
            raise ConfigError(f"shard {s} holds {len(mine)} samples, fewer than its {r} slices")
        slices[rng.permutation(mine)] = np.arange(len(mine)) * r // len(mine)
    return ShardPlan(k, r, seed, ids, shard, slices)
