"""MIA-efficacy as SalUn and ℓ1-sparse report it (OPTML-Group, evaluation/SVC_MIA.py), for comparison with papers.

An SVC (RBF, C = 3, gamma "auto") on one feature, the model's softmax confidence in the true label, is fitted
on the *unlearned model's own* outputs: retained training samples as members, test samples as non-members
(as many of each). MIA-efficacy is the share of D_f it then calls non-members (higher: more forgotten). It
is a weak attack: no reference models, no per-sample calibration, one confidence feature. We report it only
beside the LiRA verifier, and label it so.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from app.ml.data.dataset import Dataset

MAX_FIT = 5000  # per class of the SVC: its fit is quadratic in the samples


@torch.no_grad()
def confidence(model: nn.Module, ds: Dataset, ids: np.ndarray, chunk: int = 2048) -> np.ndarray:
    model.eval()
    out = []
    for start in range(0, len(ids), chunk):
        b = ids[start:start + chunk]
        p = torch.softmax(model(ds.features(b)).float(), dim=1)
        out.append(p.gather(1, ds.labels(b)[:, None]).squeeze(1).cpu().numpy())
    # a diverged model's NaN outputs read as no confidence at all (the row says the weights are not finite)
    return np.nan_to_num(np.concatenate(out), nan=0.0) if out else np.empty(0)


def mia_efficacy(model: nn.Module, ds: Dataset, *, retain: np.ndarray, test: np.ndarray, forget: np.ndarray,
                 seed: int) -> float:
    """Share of FORGET the confidence SVC calls non-members, fitted on MODEL's retain (members) and test."""
    from sklearn.svm import SVC

    rng = np.random.default_rng(seed)
    n = min(len(test), len(retain), MAX_FIT)
    members, nonmembers = rng.choice(retain, n, replace=False), rng.choice(test, n, replace=False)
    x = np.concatenate([confidence(model, ds, members), confidence(model, ds, nonmembers)])[:, None]
    y = np.concatenate([np.ones(n), np.zeros(n)])
    clf = SVC(C=3, gamma="auto", kernel="rbf").fit(x, y)
    return float(1 - clf.predict(confidence(model, ds, forget)[:, None]).mean())
