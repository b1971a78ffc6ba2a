"""Which qualifying setting calibration prefers, and how far its score can be trusted.

A score is a measurement on a few simulated deletions: the share of the membership gap closed (the verifier's
rank test gives its DeLong standard error) or, where membership cannot be measured, the held-out accuracy cost
(a binomial standard error over the held-out rows). The noise is recorded beside the choice's score and time
(meta.json's calibration `chosen`), and it decides when cost counts: a setting SLOWER times costlier than another
qualifier must beat it by more than their scores' 95% noise, else the cheaper one leads (docs/forgetting.md,
"Time and noise in calibration's choice"). Cost is work (samples through the model, app/ml/common/work.py) where
both sides counted it, so that the same model and seed give the same order on a busy host; wall time otherwise.
"""

from __future__ import annotations

import math
from typing import Any

Z95 = 1.959964  # the verifier's rank-test intervals are 95% DeLong intervals
SLOWER = 3.0  # this many times slower, a setting must win beyond noise


def gap_se(before: dict[str, Any], after: dict[str, Any]) -> float | None:
    """The standard error of one trial's gap closed: the after-AUC's DeLong error over θ*'s excess AUC."""
    excess = before["set"]["auc"] - 0.5
    if excess <= 0:
        return None
    return float((after["set"]["ci_high"] - after["set"]["ci_low"]) / (2 * Z95) / excess)


def score_noise(gap_ses: list[float], holdout_acc: float, n_holdout: int) -> float:
    """The standard error of a candidate's score: the mean of its trials' gaps closed, or (no measurable size)
    its held-out accuracy cost."""
    if gap_ses:
        return float(math.sqrt(sum(s * s for s in gap_ses)) / len(gap_ses))
    p = min(max(holdout_acc, 0.0), 1.0)
    return float(math.sqrt(p * (1 - p) / max(n_holdout, 1)))


def ordered(summary: list[dict[str, Any]], regime: str, rank_by: str) -> list[dict[str, Any]]:
    """Qualifiers in REGIME (and in RANK_BY), best first by their score in RANK_BY. Small batches cannot be
    measured: they are ranked by how well a setting forgets where it can be, and must then hold along the
    chain; with no measurable size at all, by the smallest accuracy cost."""
    ok = [x for x in summary if x[regime] and x[regime]["qualifies"] and x[rank_by] and x[rank_by]["qualifies"]]
    # equal scores: the cheaper (by work, or by a tenth of a second or more), else the grid's order (sorted is
    # stable), so that timing noise between 0.001 s and 0.004 s does not pick a different method on each run
    by_work = all(x[rank_by].get("work") is not None for x in ok)
    rest = sorted(ok, key=lambda x: (-x[rank_by]["score"],
                                     x[rank_by]["work"] if by_work else round(x[rank_by]["time_s"], 1)))
    out = []
    while rest:
        head = _faster_tie(rest, rank_by)
        out.append(head)
        rest = [x for x in rest if x is not head]
    return out


def _faster_tie(by_score: list[dict[str, Any]], rank_by: str) -> dict[str, Any]:
    """The best-scoring of BY_SCORE, unless a setting SLOWER times cheaper is within the two scores' noise of it:
    then the best of those (and so on, while a still cheaper one ties)."""
    head = by_score[0]
    while True:
        h = head[rank_by]
        ties = [x for x in by_score if costs_times(h, x[rank_by], SLOWER)
                and h["score"] - x[rank_by]["score"] <= Z95 * math.hypot(h.get("noise") or 0.0,
                                                                          x[rank_by].get("noise") or 0.0)]
        if not ties:
            return head
        head = ties[0]  # by_score is best first


def costs_times(a: dict[str, Any], b: dict[str, Any], k: float) -> bool:
    """Does A cost at least K times what B costs: by work where both counted it, else by wall time."""
    if a.get("work") is not None and b.get("work") is not None:
        return bool(b["work"] * k <= a["work"])
    return bool(b["time_s"] * k <= a["time_s"])
