"""The served model of a sharded ensemble: the constituents' mean softmax (or their vote), as log-probabilities,
so that a softmax over the output gives the aggregate's probabilities and /predict's answer keeps its shape."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

AGGREGATIONS = ("mean", "vote")
EPS = 1e-12  # a vote's zero share, kept finite in log space


class Aggregate(nn.Module):
    def __init__(self, constituents: list[nn.Module], how: str = "mean") -> None:
        super().__init__()
        if how not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}")
        self.constituents = nn.ModuleList(constituents)
        self.how = how

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: the constituents' input → (N, C) log-probabilities
        logits = torch.stack([m(x) for m in self.constituents])  # (K, N, C)
        if self.how == "vote":
            votes = F.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype).mean(0)
            return torch.log(votes + EPS)
        return torch.log(F.softmax(logits, dim=-1).mean(0) + EPS)
