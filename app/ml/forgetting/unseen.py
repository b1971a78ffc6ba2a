"""What a model that never saw D_f does on it: calibration's yardstick for forget-set accuracy and loss.

A retrain without D_f treats D_f like held-out data of the same difficulty. The verifier's reference models
never saw any training sample, so they measure that difficulty: for a forget set F and held-out ids H,

    predicted(F) = θ*(H) + mean_k [ref_k(F) − ref_k(H)]

for accuracy and for mean cross-entropy alike (θ*'s level, the references' per-set difficulty; the references
train on less data, so their own level is lower than a retrain's). An update's *gap closed* on F is how far it
moved F's accuracy (or loss) from θ*'s toward the prediction, pooled over the simulated sets by their sizes;
1 is the retrain's level, above 1 is past it (over-forgetting).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch.nn.functional as F
from torch import nn

from app.ml.data.dataset import Dataset
from app.ml.training.metrics import predict_logits
from app.ml.verify.base import Verifier

MIN_GAP = 1e-3  # pooled gaps smaller than this are nothing to close: no score from them


@dataclass(frozen=True)
class Fit:
    """A model on a set of ids: its accuracy and mean cross-entropy."""

    acc: float
    loss: float
    loss_sd: float = 0.0  # the per-sample losses' standard deviation: the mean's noise

    def to_dict(self) -> dict[str, float]:
        return {"acc": round(self.acc, 6), "loss": round(self.loss, 6)}

    @classmethod
    def from_dict(cls, d: dict[str, float]) -> Fit:
        return cls(float(d["acc"]), float(d["loss"]))


def fit_on(model: nn.Module, ds: Dataset, ids: np.ndarray) -> Fit:
    if len(ids) == 0:
        return Fit(0.0, 0.0)
    logits, y = predict_logits(model, ds, ids), ds.labels(np.asarray(ids))
    per = F.cross_entropy(logits.float(), y, reduction="none").double().cpu().numpy()
    return Fit(float((logits.argmax(1) == y).float().mean()), float(per.mean()),
               float(per.std(ddof=1)) if len(per) > 1 else 0.0)


def references(verifier: Verifier, like: nn.Module) -> list[nn.Module]:
    """The verifier's reference models, as copies of LIKE's architecture ([] when their weights do not fit it, e.g.
    a verifier loaded without them)."""
    out = []
    for state in verifier.ref_states:
        m = copy.deepcopy(like)
        try:
            m.load_state_dict(state, strict=True)
        except (RuntimeError, KeyError):
            return []
        out.append(m.eval())
    return out


def predictions(model: nn.Module, refs: list[nn.Module], ds: Dataset, sets: list[np.ndarray],
                hold: np.ndarray) -> list[dict[str, Any]] | None:
    """Per set: θ*'s fit on it and the predicted fit of a model that never saw it (None: no references)."""
    if not refs:
        return None
    base_h = fit_on(model, ds, hold)
    refs_h = [fit_on(r, ds, hold) for r in refs]
    out = []
    for f in sets:
        refs_f = [fit_on(r, ds, f) for r in refs]
        acc = base_h.acc + float(np.mean([a.acc - b.acc for a, b in zip(refs_f, refs_h, strict=True)]))
        loss = base_h.loss + float(np.mean([a.loss - b.loss for a, b in zip(refs_f, refs_h, strict=True)]))
        out.append({"before": fit_on(model, ds, f), "unseen": Fit(min(max(acc, 0.0), 1.0), max(loss, 0.0)),
                    "refs": Fit(float(np.mean([r.acc for r in refs_f])), float(np.mean([r.loss for r in refs_f])))})
    return out


def gaps_closed(preds: list[dict[str, Any]], after: list[Fit], sizes: list[int]) -> dict[str, float | None]:
    """The pooled share of the accuracy and loss gaps (θ* → never-saw) that AFTER closed, per measure (None: no
    gap to close on these sets), and each gap, size-weighted (`acc_gap`, `loss_gap`: the shares' denominators)."""
    out: dict[str, float | None] = {}
    for key, sign in (("acc", 1.0), ("loss", -1.0)):  # accuracy falls toward the target, loss rises
        moved = sum(n * sign * (getattr(p["before"], key) - getattr(a, key))
                    for p, a, n in zip(preds, after, sizes, strict=True))
        gap = sum(n * sign * (getattr(p["before"], key) - getattr(p["unseen"], key))
                  for p, n in zip(preds, sizes, strict=True))
        out[key] = float(moved / gap) if gap / max(sum(sizes), 1) > MIN_GAP else None
        out[f"{key}_gap"] = float(gap)
    return out


def closeness(g: float | None) -> float | None:
    """1 at the never-saw level, less on either side: overshooting it is over-forgetting."""
    return None if g is None else 1.0 - abs(1.0 - g)
