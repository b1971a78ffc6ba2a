"""The statistics behind the verifier: rank tests, confidence intervals, power.

All of them are standard and closed-form, so a verdict can be re-derived from the numbers
an audit entry stores: Mann-Whitney U as an AUC with DeLong's variance, Wilson intervals for
rates, conformal p-values against held-out non-members, and the Mann-Whitney power
(Hanley-McNeil variance under the alternative) for the minimum detectable batch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

Z99 = float(stats.norm.ppf(0.99))


@dataclass(frozen=True)
class RankTest:
    """D_f's scores against non-members': AUC = P(member-like score > non-member's)."""

    auc: float
    ci_low: float
    ci_high: float
    p_member: float  # one-sided: D_f scores higher than non-members (membership remains)
    p_below: float  # one-sided: D_f scores lower (pushed past non-member level)
    n: int
    n_ref: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def rank_test(scores: np.ndarray, reference: np.ndarray, *, level: float = 0.95) -> RankTest:
    """Mann-Whitney U of SCORES against REFERENCE, reported as an AUC with a DeLong CI."""
    x, y = np.asarray(scores, float), np.asarray(reference, float)
    n, m = len(x), len(y)
    if n == 0 or m == 0:
        raise ValueError("a rank test needs both sets non-empty")
    ranks = stats.rankdata(np.r_[x, y])
    v10 = (ranks[:n] - stats.rankdata(x)) / m  # per member: share of non-members below it (ties ½)
    v01 = 1.0 - (ranks[n:] - stats.rankdata(y)) / n  # per non-member: share of members above it
    auc = float(v10.mean())
    var = (v10.var(ddof=1) / n if n > 1 else 0.0) + (v01.var(ddof=1) / m if m > 1 else 0.0)
    half = float(stats.norm.ppf(0.5 + level / 2)) * math.sqrt(max(var, 0.0))
    greater = stats.mannwhitneyu(x, y, alternative="greater", method="asymptotic").pvalue
    less = stats.mannwhitneyu(x, y, alternative="less", method="asymptotic").pvalue
    return RankTest(auc=auc, ci_low=max(0.0, auc - half), ci_high=min(1.0, auc + half),
                    p_member=float(greater), p_below=float(less), n=n, n_ref=m)


def wilson(k: int, n: int, *, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial rate k/n."""
    if n == 0:
        return (float("nan"), float("nan"))
    z = float(stats.norm.ppf(0.5 + level / 2))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def rate(flags: np.ndarray) -> dict[str, float | int]:
    k, n = int(np.sum(flags)), len(flags)
    low, high = wilson(k, n)
    return {"rate": k / n if n else float("nan"), "ci_low": low, "ci_high": high, "k": k, "n": n}


def conformal_pvalues(scores: np.ndarray, calibration: np.ndarray) -> np.ndarray:
    """p(x) = (1 + #{c : c ≥ s(x)}) / (1 + |C|): valid (super-uniform) for an exchangeable non-member."""
    cal = np.sort(np.asarray(calibration, float))
    at_least = len(cal) - np.searchsorted(cal, np.asarray(scores, float), side="left")
    return (1.0 + at_least) / (1.0 + len(cal))


def ks_distance(scores: np.ndarray, calibration: np.ndarray) -> dict[str, float]:
    """Two-sided KS distance of a set's p-values from uniform, i.e. of its scores from the non-members'.

    The conformal p-values of one set share the calibration sample, so they are not independent and a
    one-sample KS against U(0, 1) would reject too often; the two-sample test of the scores behind them
    (the same distance) accounts for both sample sizes. Under- and over-forgetting both move it.
    """
    if len(scores) == 0:
        return {"ks": float("nan"), "ks_p": float("nan")}
    res = stats.ks_2samp(np.asarray(scores, float), np.asarray(calibration, float))
    return {"ks": float(res.statistic), "ks_p": float(res.pvalue)}


def rank_test_power(auc: float, n: int, m: int, *, alpha: float = 0.01) -> float:
    """Probability that a one-sided Mann-Whitney test of n members against m non-members rejects at ALPHA."""
    if n < 1 or m < 1:
        return 0.0
    a = min(max(auc, 1e-9), 1 - 1e-9)
    se0 = math.sqrt((n + m + 1) / (12.0 * n * m))
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    se1 = math.sqrt(max(a * (1 - a) + (n - 1) * (q1 - a * a) + (m - 1) * (q2 - a * a), 1e-12) / (n * m))
    z_alpha = float(stats.norm.ppf(1 - alpha))
    return float(stats.norm.cdf((a - 0.5 - z_alpha * se0) / se1))


def min_detectable_batch(auc: float, m: int, *, alpha: float = 0.01, power: float = 0.8,
                         limit: int = 10**7) -> int | None:
    """Smallest |D_f| the rank test tells apart from M non-members at ALPHA with POWER; None if none."""
    if not auc > 0.5 or rank_test_power(auc, limit, m, alpha=alpha) < power:
        return None
    lo, hi = 1, limit
    while lo < hi:  # power grows with n
        mid = (lo + hi) // 2
        if rank_test_power(auc, mid, m, alpha=alpha) >= power:
            hi = mid
        else:
            lo = mid + 1
    return lo
