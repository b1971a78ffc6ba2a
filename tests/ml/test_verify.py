"""The membership verifier: power where the model memorises, calibrated where it does not, never a no-op."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from app.errors import ForgetSetError, UnknownNameError, VerifierError
from app.ml.data.dataset import Dataset, Splits
from app.ml.models.factory import ModelConfig
from app.ml.training.fit import TrainConfig, fit
from app.ml.verify import base, stats
from app.ml.verify.base import BuildInputs, Verifier, VerifierConfig
from app.ml.verify.build import VERIFIERS, build_verifier
from app.ml.verify.store import load_verifier, save_verifier

EPOCHS = 60


@dataclass
class Setting:
    verifier: Verifier
    target: object
    members: np.ndarray
    ds: Dataset


def _setting(digits: Dataset, digit_splits: Splits, n_train: int, seed: int = 1) -> Setting:
    """An MLP trained far past early stopping on N_TRAIN random digits, and its LiRA verifier (K=3)."""
    members = np.sort(np.random.default_rng(seed).choice(digit_splits.train, n_train, replace=False))
    splits = Splits(train=members, val=digit_splits.val, test=digit_splits.test, shadow=digit_splits.shadow)
    cfg, tcfg = ModelConfig("mlp", digits.in_shape, 10), TrainConfig(max_epochs=EPOCHS, seed=0)
    target = fit(cfg, digits, members, None, tcfg, progress=False).model
    v = build_verifier("lira", BuildInputs(target, digits, splits, cfg, tcfg, EPOCHS), VerifierConfig(n_refs=3))
    v.power = v.measure_power(target, digits)
    return Setting(v, target, members, digits)


@pytest.fixture(scope="module")
def overfit(digits: Dataset, digit_splits: Splits) -> Setting:
    return _setting(digits, digit_splits, 150)


@pytest.fixture(scope="module")
def mild(digits: Dataset, digit_splits: Splits) -> Setting:
    return _setting(digits, digit_splits, 500)


@pytest.fixture(scope="module")
def forgotten_half(overfit: Setting) -> tuple[np.ndarray, object]:
    """Half the members as D_f, and a model retrained from scratch on the other half."""
    perm = np.random.default_rng(2).permutation(overfit.members)
    forget, retain = np.sort(perm[: len(perm) // 2]), np.sort(perm[len(perm) // 2 :])
    cfg = ModelConfig("mlp", overfit.ds.in_shape, 10)
    retrained = fit(cfg, overfit.ds, retain, None, TrainConfig(max_epochs=EPOCHS, seed=0), progress=False).model
    return forget, retrained


def test_power_on_a_memorising_model(overfit: Setting) -> None:
    p = overfit.verifier.power
    assert p["tpr@0.05"]["ci_low"] > 0.05, p["tpr@0.05"]  # clearly above the FPR
    assert p["auc"] > 0.6 and p["per_sample_measurable"] and p["min_detectable_batch"] <= 60, p


def test_nonmembers_are_flagged_at_the_fpr(overfit: Setting) -> None:
    for q in base.FPRS:
        fpr = overfit.verifier.power[f"fpr@{q:g}"]
        assert fpr["ci_low"] <= q <= fpr["ci_high"], (q, fpr)


def test_nonmember_pvalues_are_uniform(overfit: Setting) -> None:
    v, ds = overfit.verifier, overfit.ds
    assert v.power["nonmember_ks"]["ks_p"] > 0.01
    # and the p-values themselves are conformal: (1 + #cal ≥ s) / (1 + |cal|), so never 0 and at most 1
    p = v.pvalues(overfit.target, ds, v.eval_ids)
    assert p.min() >= 1 / (1 + len(v.calib_ids)) and p.max() <= 1


def test_retraining_without_df_removes_the_signal(overfit: Setting, forgotten_half) -> None:
    forget, retrained = forgotten_half
    v, ds = overfit.verifier, overfit.ds
    before, after = v.assess(overfit.target, ds, forget), v.assess(retrained, ds, forget)
    assert before["set"]["p_member"] < 1e-3 and before["flagged@0.05"]["rate"] > 0.05, before
    assert after["set"]["p_member"] > 0.01, after["set"]
    assert after["flagged@0.05"]["ci_low"] <= 0.05 <= after["flagged@0.05"]["ci_high"], after
    assert base.verdict(before, v.power)["verdict"] == "partial"
    assert base.verdict(after, v.power)["verdict"] == "forgotten"


def test_a_large_set_is_told_apart_where_single_samples_are_not(mild: Setting) -> None:
    p = mild.verifier.power
    assert not p["per_sample_measurable"], p["tpr@0.05"]  # per sample: within noise of the FPR
    assessed = mild.verifier.assess(mild.target, mild.ds, mild.members)
    assert assessed["set"]["p_member"] < 0.01, assessed["set"]
    assert p["min_detectable_batch"] is not None and p["min_detectable_batch"] <= len(mild.members)


def test_random_scores_have_no_power(overfit: Setting, forgotten_half, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks above fail on a verifier whose scores carry no membership signal."""
    rng = np.random.default_rng(0)
    monkeypatch.setattr(Verifier, "scores", lambda self, model, ds, ids: rng.normal(size=len(ids)))
    v = overfit.verifier
    p = v.measure_power(overfit.target, overfit.ds)
    assert not p["tpr@0.05"]["ci_low"] > 0.05 and not p["per_sample_measurable"], p["tpr@0.05"]
    forget, _ = forgotten_half
    assert v.assess(overfit.target, overfit.ds, forget)["set"]["p_member"] > 1e-3


def test_references_never_saw_a_member(overfit: Setting) -> None:
    v = overfit.verifier
    assert v.info["K"] == 3 and len(v.ref_states) == 3
    assert np.intersect1d(v.calib_ids, v.eval_ids).size == 0
    assert np.intersect1d(np.r_[v.calib_ids, v.eval_ids], v.member_ids).size == 0


def test_save_and_load_round_trip(overfit: Setting, tmp_path) -> None:
    v = overfit.verifier
    folder = save_verifier(v, tmp_path / "verifier")
    loaded = load_verifier(folder, with_refs=True)
    assert loaded.name == "lira" and loaded.power == v.power and len(loaded.ref_states) == 3
    ids = overfit.members[:20]
    assert np.allclose(loaded.scores(overfit.target, overfit.ds, ids), v.scores(overfit.target, overfit.ds, ids))
    (folder / "ref-2.safetensors").unlink()
    with pytest.raises(VerifierError, match="lacks reference models"):
        load_verifier(folder)


def test_ids_outside_the_members_and_too_few_refs_fail(overfit: Setting, digit_splits: Splits) -> None:
    with pytest.raises(ForgetSetError, match="not training samples"):
        overfit.verifier.check_ids(digit_splits.test[:3])
    with pytest.raises(ForgetSetError, match="no ids"):
        overfit.verifier.check_ids(np.array([], dtype=np.int64))
    with pytest.raises(VerifierError, match="at least 2 reference models"):
        build_verifier("lira", None, VerifierConfig(n_refs=1))  # type: ignore[arg-type]
    with pytest.raises(UnknownNameError, match="valid: lira, loss"):
        VERIFIERS.get("shokri")


# --- the statistics


def test_rank_test_is_the_auc_with_a_calibrated_pvalue() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(0.5, 1, 300), rng.normal(0, 1, 400)
    t = stats.rank_test(x, y)
    assert t.auc == pytest.approx(roc_auc_score(np.r_[np.ones(300), np.zeros(400)], np.r_[x, y]))
    assert t.ci_low < t.auc < t.ci_high and t.p_member < 1e-6 and t.p_below > 0.99
    # under the null, the one-sided p-value rejects at 1% about 1% of the time
    rejections = [stats.rank_test(rng.normal(size=50), rng.normal(size=80)).p_member < 0.01 for _ in range(400)]
    assert np.mean(rejections) < 0.03


def test_conformal_pvalues_are_uniform_for_exchangeable_scores() -> None:
    rng = np.random.default_rng(0)
    p = np.concatenate([stats.conformal_pvalues(rng.normal(size=20), rng.normal(size=200)) for _ in range(200)])
    assert sps.kstest(p, "uniform").pvalue > 0.01
    assert abs(np.mean(p <= 0.05) - 0.05) < 0.01


def test_wilson_interval() -> None:
    low, high = stats.wilson(5, 100)
    assert low == pytest.approx(0.0215, abs=1e-3) and high == pytest.approx(0.1118, abs=1e-3)


def test_minimum_detectable_batch_has_the_power_it_claims() -> None:
    auc, m = 0.65, 500
    n = stats.min_detectable_batch(auc, m)
    assert n is not None and stats.min_detectable_batch(0.75, m) < n  # a stronger signal needs fewer
    assert stats.min_detectable_batch(0.5, m) is None
    # simulate: normal scores with that AUC; the real test at n rejects ~80% of the time, at n/2 far less
    shift = np.sqrt(2) * sps.norm.ppf(auc)
    rng = np.random.default_rng(0)

    def power(k: int) -> float:
        return float(np.mean([stats.rank_test(rng.normal(shift, 1, k), rng.normal(0, 1, m)).p_member < 0.01
                              for _ in range(300)]))

    assert 0.7 < power(n) < 0.92 and power(n // 2) < 0.6
