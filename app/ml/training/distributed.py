"""Training across processes with torch.distributed, launched by torchrun (`torch.distributed.run`).

One process per rank; torchrun sets `RANK`, `WORLD_SIZE` and `LOCAL_RANK`, locally (`--nproc N`) or across hosts
(`--nnodes M --rdzv-backend c10d --rdzv-endpoint HOST:PORT`). The backend is gloo on the CPU and nccl on CUDA,
one device per local rank.

The recipe's batch size is the global batch: each minibatch of the epoch's seeded permutation is cut into
WORLD_SIZE contiguous slices, one per rank, so every active sample is seen exactly once per epoch at any N and a
step's gradient is the whole global batch's. GR's double backprop makes gradients with `autograd.grad`, which DDP
does not see, so they are all-reduced here: flattened into one bucket, weighted by each rank's sample count and
divided by the global batch (for plain cross-entropy that is exactly the one-process gradient; GR's penalty is
each slice's). Batch-norm running statistics are averaged at each epoch's end; validation and early stopping
are decided on rank 0 and broadcast. A world of one never touches torch.distributed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from app.errors import ConfigError
from app.ml.common.device import resolve

RANK_TIMEOUT = timedelta(minutes=10)  # a rank that dies or hangs fails the whole job after this long


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: one process, no process group

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def record(self) -> dict[str, object]:
        """What meta.json keeps of how the model was trained."""
        return {"world_size": self.size, "backend": self.backend or "none"}


SINGLE = World()


def join(device: str = "cpu") -> World:
    """This process's place in the job torchrun started (the one-process world outside torchrun), with the
    process group initialised: gloo on the CPU, nccl on CUDA (each local rank on its own GPU). DEVICE: the
    UNLEARND_DEVICE spec (auto | cpu | cuda | cuda:N)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return SINGLE
    try:
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    except (KeyError, ValueError) as e:
        raise ConfigError(f"WORLD_SIZE={size} but RANK is not set as torchrun sets it ({e})") from e
    cuda = resolve(device).type == "cuda"
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=RANK_TIMEOUT)
    return World(rank=rank, size=size, local_rank=local, backend=backend)


def leave(world: World) -> None:
    """Every rank waits for the others before the group goes: with gloo, a rank that tears its connections down
    while a peer still reads the last broadcast from it makes that peer abort ("terminate called without an active
    exception", seen once in CI on `train --nproc 2`)."""
    if world.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def my_slice(batch: np.ndarray, world: World) -> np.ndarray:
    """This rank's contiguous part of a global minibatch (sizes differ by at most one)."""
    return batch if not world.distributed else np.array_split(batch, world.size)[world.rank]


def all_reduce_grads(grads: list[torch.Tensor], n_mine: int, n_global: int, world: World) -> list[torch.Tensor]:
    """The global batch's mean gradient from each rank's mean over its N_MINE samples, in one bucket."""
    flat = torch.cat([g.reshape(-1) for g in grads]) * n_mine
    dist.all_reduce(flat)
    flat /= max(n_global, 1)
    out, at = [], 0
    for g in grads:
        out.append(flat[at:at + g.numel()].view_as(g))
        at += g.numel()
    return out


def all_sum(value: torch.Tensor, world: World) -> torch.Tensor:
    if world.distributed:
        value = value.clone()
        dist.all_reduce(value)
    return value


def average_buffers(model: nn.Module, world: World) -> None:
    """Batch-norm running statistics averaged over ranks (each saw its own slices)."""
    if not world.distributed:
        return
    for b in model.buffers():
        if b.is_floating_point():
            dist.all_reduce(b)
            b /= world.size


def owner(item: int, world: World) -> int:
    """The rank that computes independent work item ITEM (the verifier's k-th reference model): round robin."""
    return item % world.size


def share(tensors: list[torch.Tensor], src: int, world: World) -> None:
    """TENSORS as rank SRC holds them, on every rank (in place; same shapes and dtypes everywhere)."""
    if world.distributed:
        for t in tensors:
            dist.broadcast(t, src=src)


def from_leader(value: float, world: World, device: torch.device) -> float:
    """Rank 0's VALUE on every rank (its validation accuracy: one decision for all)."""
    if not world.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return float(t.item())
