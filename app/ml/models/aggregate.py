"""The served model of a sharded ensemble: the constituents' mean softmax (or their vote), as log-probabilities,
so that a softmax over the output gives the aggregate's probabilities and /predict's answer keeps its shape.

The K forwards run as one batched call (torch.func: the constituents' weights stacked, the model vmapped over
them) on CUDA, where kernel launches dominate a small model's forward; on the CPU they run one after the other,
which measured as fast or faster (digits LeNet5, K = 4, one thread: 443 against 448 µs at one row, 1.5 against
2.0 ms at 64; scripts/shard_predict_probe.py and docs/forgetting.md). The batched call on CUDA is not measured yet."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state

AGGREGATIONS = ("mean", "vote")
EPS = 1e-12  # a vote's zero share, kept finite in log space


class Aggregate(nn.Module):
    def __init__(self, constituents: list[nn.Module], how: str = "mean", *, batched: bool | None = None) -> None:
        """BATCHED None: on CUDA only (see above)."""
        super().__init__()
        if how not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}")
        self.constituents = nn.ModuleList(constituents)
        self.how = how
        if batched is None:
            batched = any(p.is_cuda for p in constituents[0].parameters())
        self.batched = batched and len(constituents) > 1
        if self.batched:
            params, buffers = stack_module_state(list(constituents))  # copies: the aggregate is rebuilt on change
            self._stacked = (params, buffers)
            self._base = [copy.deepcopy(constituents[0]).to("meta")]  # a list: not a submodule of the aggregate

    def _logits(self, x: torch.Tensor) -> torch.Tensor:  # (K, N, C)
        if not self.batched:
            return torch.stack([m(x) for m in self.constituents])
        base = self._base[0].train(self.training)  # a list item: .eval() on the aggregate does not reach it

        def one(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor]) -> torch.Tensor:
            return functional_call(base, (params, buffers), (x,))

        return torch.vmap(one)(*self._stacked)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: the constituents' input → (N, C) log-probabilities
        logits = self._logits(x)
        if self.how == "vote":
            votes = F.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype).mean(0)
            return torch.log(votes + EPS)
        return torch.log(F.softmax(logits, dim=-1).mean(0) + EPS)


CONSTITUENTS = "constituents."


def aggregate_from_state(make: Callable[[], nn.Module], state: dict[str, torch.Tensor], k: int,
                         how: str = "mean") -> Aggregate:
    """The aggregate of K constituents (each MAKE()) loaded strictly from an aggregate's state_dict: built after
    the load, since the batched forward stacks copies of the constituents' weights."""
    stray = [n for n in state if not n.startswith(CONSTITUENTS) or not n.split(".")[1].isdigit()
             or int(n.split(".")[1]) >= k]
    if stray:
        raise RuntimeError(f"keys outside the {k} constituents: {stray[:5]}")
    constituents = []
    for i in range(k):
        prefix = f"{CONSTITUENTS}{i}."
        m = make()
        m.load_state_dict({n[len(prefix):]: t for n, t in state.items() if n.startswith(prefix)}, strict=True)
        constituents.append(m)
    return Aggregate(constituents, how)
