"""What callers report about forgetting: a forget set before and after, a verdict, and UE against retrain."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from torch import nn

from app.ml.data.dataset import Dataset
from app.ml.verify.base import FPRS, Verifier, verdict
from app.ml.verify.verdicts import PRIMARY_FPR


def power_summary(v: Verifier) -> dict[str, Any]:
    """The verifier's identity and power at publication, compact enough for every audit entry."""
    p = v.power or {}
    keep = ("auc", "auc_ci", "min_detectable_batch", "measurable", "n_members", "n_calibration")
    return {"verifier": v.name, "K": v.info.get("K"), "ref_train_seconds": v.info.get("ref_train_seconds"),
            **{k: p.get(k) for k in keep},
            **{f"tpr@{q:g}": p.get(f"tpr@{q:g}") for q in FPRS}, "recipe_spread": recipe_spread(v.info)}


def recipe_spread(info: dict[str, Any]) -> float | None:
    """The standard deviation of the reference models' held-out accuracy: how far two runs of the model's recipe
    (other seeds, other data) land apart. None for a verifier built before it was measured."""
    accs = [float(a) for a in info.get("ref_acc") or []]
    return float(np.std(accs, ddof=1)) if len(accs) >= 2 else None


def verify_forgetting(v: Verifier, ds: Dataset, forget: np.ndarray, *, before: nn.Module | None,
                      after: nn.Module) -> dict[str, Any]:
    """D_f under the model before and after unlearning, the verdict, and what it cost."""
    t0 = time.perf_counter()
    forget = np.asarray(forget, dtype=np.int64)
    out: dict[str, Any] = {}
    if before is not None:
        out["before"] = v.assess(before, ds, forget)
    out["after"] = v.assess(after, ds, forget)
    out.update(verdict(out["after"], v.power))
    if before is not None:
        out["gap_closed"] = gap_closed(out["before"], out["after"])
    out["power"] = power_summary(v)
    out["seconds"] = time.perf_counter() - t0
    return out


def flagged(assessed: dict[str, Any]) -> float:
    return float(assessed[f"flagged@{PRIMARY_FPR:g}"]["rate"])


def gap_closed(before: dict[str, Any], after: dict[str, Any]) -> float | None:
    """Share of D_f's excess set-level AUC (over 0.5, non-member level) that unlearning removed."""
    excess = before["set"]["auc"] - 0.5
    if excess <= 0:
        return None
    return float((before["set"]["auc"] - after["set"]["auc"]) / excess)


def ue_lira(method: dict[str, Any], retrain: dict[str, Any]) -> float:
    """|flagged(D_f, method) − flagged(D_f, retrain)| in points, at the primary FPR."""
    return 100 * abs(flagged(method) - flagged(retrain))
