"""The verifier's test, shared by every design: scores → calibrated p-values → set-level test.

Score s(x) for a model: a per-sample statistic that grows with membership (for LiRA, the
true-class logit minus its mean under reference models that never saw x, in units of their
spread). Everything after the score is design-independent:

- *per sample*: a conformal p-value against held-out non-members scored by the same model,
  so "flagged at FPR q" (p ≤ q) means "more member-like than a fraction 1 − q of real
  non-members", and a non-member's p-value is uniform whatever the model;
- *per set*: a Mann-Whitney test of D_f's scores against those non-members' (AUC + CI);
- *power*: members against a second, disjoint set of non-members, and from that AUC the
  smallest batch the set-level test would catch (p < 0.01, 80% power).

Test ids are split once (seeded) into calibration and evaluation non-members; they are used
for nothing else (no model trains or stops early on them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from app.errors import ForgetSetError, VerifierError
from app.ml.data.dataset import Dataset, Splits
from app.ml.models.factory import ModelConfig
from app.ml.training.distributed import SINGLE, World
from app.ml.training.fit import TrainConfig
from app.ml.verify import stats
from app.ml.verify.verdicts import FPRS, Verdict

SET_ALPHA = 0.01  # the set-level test's significance, and the minimum detectable batch's
DETECT_POWER = 0.8
MIN_NONMEMBERS = 5  # per half of the test split; p-values cannot go below 1/(1 + calibration size)


@dataclass(frozen=True)
class VerifierConfig:
    n_refs: int = 4  # K reference models
    ref_frac: float = 0.5  # each reference trains on this random share of the shadow split
    calib_frac: float = 0.5  # of the test split: calibration non-members; the rest measure power
    # average the score over a horizontal flip: LiRA's augmentation queries pay off for models trained with
    # flips; ours train without, and on CIFAR-10 LeNet5 the flip lowered AUC 0.596 → 0.565 (docs/verifier.md)
    flip: bool = False
    power_sample: int = 2000  # members drawn to measure power at publication
    seed: int = 0


@dataclass
class BuildInputs:
    """What building a verifier needs: the published model and how it was made."""

    model: nn.Module
    ds: Dataset
    splits: Splits
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    epochs: int  # the target's training length; references train this long
    world: World = SINGLE  # a torchrun job's ranks: the references are shared out, one model per rank
    # how one reference trains on its ids, when not as one model of model_cfg: a sharded model's are sharded
    # too (app/ml/sharding/references.py), so that a reference answers as the target does
    fit_ref: Callable[[Dataset, np.ndarray, TrainConfig], nn.Module] | None = None


@dataclass
class Verifier:
    name: str
    config: VerifierConfig
    member_ids: np.ndarray  # training ids at build time: the ids the verifier can be asked about
    calib_ids: np.ndarray
    eval_ids: np.ndarray
    ref_ids: np.ndarray  # sorted ids with a reference statistic (members + test)
    out_mean: np.ndarray  # per ref_id: mean score under the references (0 for a reference-free design)
    out_std: float  # global spread of reference scores (1 for a reference-free design)
    flip: bool
    info: dict[str, Any] = field(default_factory=dict)
    ref_states: list[dict[str, torch.Tensor]] = field(default_factory=list)
    power: dict[str, Any] | None = None

    def without(self, ids: np.ndarray) -> Verifier:
        """A copy that never scores IDS: deleted samples, whose rows the store may already have erased. Their
        ids stay in member_ids (a deleted training sample can still be asked about)."""
        ids = np.asarray(ids, dtype=np.int64)
        keep = ~np.isin(self.ref_ids, ids)
        return replace(self, ref_ids=self.ref_ids[keep], out_mean=self.out_mean[keep],
                       calib_ids=np.setdiff1d(self.calib_ids, ids), eval_ids=np.setdiff1d(self.eval_ids, ids))

    # --- scores
    def out_mean_of(self, ids: np.ndarray) -> np.ndarray:
        """The references' mean true-class logit for each id: what a non-member's looks like."""
        pos = np.searchsorted(self.ref_ids, ids)
        ok = (pos < len(self.ref_ids)) & (self.ref_ids[np.minimum(pos, len(self.ref_ids) - 1)] == ids)
        if not ok.all():
            raise VerifierError(f"the verifier has no reference statistics for ids {ids[~ok][:10].tolist()}")
        return self.out_mean[pos]

    def scores(self, model: nn.Module, ds: Dataset, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        return (true_class_logit(model, ds, ids, flip=self.flip) - self.out_mean_of(ids)) / self.out_std

    def check_ids(self, ids: np.ndarray) -> np.ndarray:
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        if len(ids) == 0:
            raise ForgetSetError("no ids to verify")
        outside = np.setdiff1d(ids, self.member_ids)
        if len(outside):
            raise ForgetSetError(f"{len(outside)} ids are not training samples of this model "
                                 f"(first: {outside[:10].tolist()})", outside.tolist())
        return ids

    # --- tests
    def assess(self, model: nn.Module, ds: Dataset, ids: np.ndarray) -> dict[str, Any]:
        """IDS against the calibration non-members, both scored by MODEL."""
        return self.assess_with_pvalues(model, ds, ids)[0]

    def assess_with_pvalues(self, model: nn.Module, ds: Dataset,
                            ids: np.ndarray) -> tuple[dict[str, Any], np.ndarray]:
        s, cal = self.scores(model, ds, ids), self.scores(model, ds, self.calib_ids)
        p = stats.conformal_pvalues(s, cal)
        # the p-values' histogram (10 bins): uniform for non-members, piled up near 0 for members
        hist = np.histogram(p, bins=10, range=(0.0, 1.0))[0].tolist() if len(p) else [0] * 10
        return ({"n": len(s), "set": stats.rank_test(s, cal).to_dict(),
                 **{f"flagged@{q:g}": stats.rate(p <= q) for q in FPRS}, **stats.ks_distance(s, cal),
                 "pvalue_hist": hist}, p)

    def pvalues(self, model: nn.Module, ds: Dataset, ids: np.ndarray) -> np.ndarray:
        return self.assess_with_pvalues(model, ds, ids)[1]

    def measure_power(self, model: nn.Module, ds: Dataset) -> dict[str, Any]:
        """Members against evaluation non-members: AUC, TPR/FPR at each FPR, minimum detectable batch."""
        members = self.power_members()
        return power_from_scores(self.scores(model, ds, members), self.scores(model, ds, self.eval_ids),
                                 self.scores(model, ds, self.calib_ids))

    def power_members(self) -> np.ndarray:
        rng = np.random.default_rng(self.config.seed)
        n = min(self.config.power_sample, len(self.member_ids))
        return np.sort(rng.choice(self.member_ids, n, replace=False))


def power_from_scores(s_mem: np.ndarray, s_eval: np.ndarray, s_cal: np.ndarray) -> dict[str, Any]:
    """Any member score's power: p-values against S_CAL, TPR on members and FPR on S_EVAL, rank AUC."""
    p_mem, p_eval = stats.conformal_pvalues(s_mem, s_cal), stats.conformal_pvalues(s_eval, s_cal)
    test = stats.rank_test(s_mem, s_eval)
    out: dict[str, Any] = {"auc": test.auc, "auc_ci": [test.ci_low, test.ci_high], "n_members": len(s_mem),
                           "n_eval_nonmembers": len(s_eval), "n_calibration": len(s_cal)}
    for q in FPRS:
        out[f"tpr@{q:g}"] = stats.rate(p_mem <= q)
        out[f"fpr@{q:g}"] = stats.rate(p_eval <= q)
    out["nonmember_ks"] = stats.ks_distance(s_eval, s_cal)
    out["min_detectable_batch"] = stats.min_detectable_batch(test.auc, len(s_cal), alpha=SET_ALPHA,
                                                             power=DETECT_POWER)
    # the conformal p-values hold the FPR at q by construction: TPR must clear q beyond its own noise
    q = FPRS[-1]
    out["per_sample_measurable"] = bool(out[f"tpr@{q:g}"]["ci_low"] > q and test.ci_low > 0.5)
    out["measurable"] = (
        "per sample" if out["per_sample_measurable"]
        else f"sets of {out['min_detectable_batch']} or more" if out["min_detectable_batch"]
        else "membership not measurable")
    return out


def verdict(after: dict[str, Any], power: dict[str, Any] | None) -> dict[str, Any]:
    """forgotten | partial | not measurable, for a batch assessed after unlearning."""
    n, p = after["n"], after["set"]["p_member"]
    need = power.get("min_detectable_batch") if power else None
    if p < SET_ALPHA:
        word = Verdict.PARTIAL  # a detection is evidence whatever the batch size: membership signal is left
    elif need is None or n < need:
        word = Verdict.NOT_MEASURABLE
    else:
        word = Verdict.FORGOTTEN
    return {"verdict": word, "over_forgotten": after["set"]["p_below"] < SET_ALPHA, "alpha": SET_ALPHA,
            "min_detectable_batch": need}


@torch.no_grad()
def true_class_logit(model: nn.Module, ds: Dataset, ids: np.ndarray, *, flip: bool = False,
                     chunk: int = 2048) -> np.ndarray:
    """φ(x) = log p_y − log(1 − p_y), computed from logits without rounding p_y to 1."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(ids), chunk):
        c = ids[start : start + chunk]
        x, y = ds.features(c), ds.labels(c)
        if bool((y < 0).any()):  # an erased row: scoring it would index class -1
            raise VerifierError(f"ids {c[(y < 0).cpu().numpy()][:10].tolist()} were erased from the data store: "
                                "a deleted sample cannot be scored")
        views = [x, x.flip(-1)] if flip else [x]
        phi = torch.stack([phi_from_logits(model(v), y) for v in views]).mean(0)
        out.append(phi)
    model.train(was_training)
    return torch.cat(out).double().cpu().numpy() if out else np.empty(0)


def phi_from_logits(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = logits.double()
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return true - torch.logsumexp(others, dim=1)


def split_nonmembers(test_ids: np.ndarray, cfg: VerifierConfig) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(cfg.seed).permutation(np.asarray(test_ids, dtype=np.int64))
    k = round(cfg.calib_frac * len(perm))
    if k < MIN_NONMEMBERS or len(perm) - k < MIN_NONMEMBERS:
        raise VerifierError(f"the test split ({len(perm)} ids) is too small to calibrate a verifier: it needs "
                            f"{MIN_NONMEMBERS} calibration and {MIN_NONMEMBERS} evaluation non-members")
    return np.sort(perm[:k]), np.sort(perm[k:])
