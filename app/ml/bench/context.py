"""One seed's experimental setting, shared by the evaluation suites.

For a seed: splits, a random forget set, the plain model (α = 0: the baselines' θ*), the GR
model (IAU's θ*), the gold-standard retrain on D_r, and a membership attack trained on shadow
models over the disjoint shadow pool, with its accuracy on the plain model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from app.ml.bench.mia.shadow import MembershipAttack, MIAConfig, fit_attack
from app.ml.common.hashing import weights_sha256
from app.ml.data.dataset import Dataset, SplitConfig, Splits, make_splits
from app.ml.data.formats import load_dataset
from app.ml.forgetting.gradcache import GradCache, build_cache
from app.ml.forgetting.methods.base import UnlearnTask
from app.ml.forgetting.unseen import fit_on
from app.ml.models.factory import ModelConfig
from app.ml.training.fit import TrainConfig, TrainResult, fit
from app.ml.training.metrics import accuracy
from app.ml.verify.base import BuildInputs, Verifier, VerifierConfig, power_from_scores
from app.ml.verify.build import DEFAULT, build_verifier
from app.ml.verify.report import flagged


@dataclass(frozen=True)
class ExperimentConfig:
    dataset: str
    arch: str
    alpha: float = 0.01
    gr_norm: str = "global"
    forget_frac: float = 0.05
    max_epochs: int = 100
    patience: int = 10
    attack: str = "authors"
    forget: str = "random"  # random | outliers (IsolationForest on the inputs, paper Table V)
    extra_alphas: tuple[float, ...] = ()  # more GR models, for sweeps
    verifier: str = DEFAULT
    verify_refs: int = 4
    batch_size: int = 64
    gr_grad: str = "exact"  # fd: the finite-difference HVP, for large models on a GPU

    def train_cfg(self, seed: int, alpha: float) -> TrainConfig:
        return TrainConfig(alpha=alpha, gr_norm=self.gr_norm, gr_grad=self.gr_grad, max_epochs=self.max_epochs,
                           patience=self.patience, batch_size=self.batch_size, seed=seed)


@dataclass
class SeedContext:
    seed: int
    ds: Dataset
    splits: Splits
    forget: np.ndarray
    model_cfg: ModelConfig
    models: dict[float, TrainResult]  # α → trained θ*
    retrain: TrainResult
    retrain_seconds: float
    attack: MembershipAttack
    attack_eval: dict[str, float]
    cfg: ExperimentConfig
    verifier: Verifier
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def retain(self) -> np.ndarray:
        return np.setdiff1d(self.splits.train, self.forget)

    def task(self, alpha: float, *, with_cache: bool = True) -> UnlearnTask:
        """The unlearning task on the α model; its gradient cache is ready, as a service would keep it."""
        trained = self.models[alpha]
        model = trained.model
        return task_for(model, self.ds, self.splits.train, self.forget, cache=with_cache, seed=self.seed,
                        model_cfg=self.model_cfg, train_cfg=self.cfg.train_cfg(self.seed, alpha),
                        val_ids=self.splits.val, epochs_trained=trained.epochs_run)


def load_split(dataset: str, *, seed: int, data_path: Path | None, data_dir: Path | None,
               device: str = "cpu") -> tuple[Dataset, Splits, ModelConfig]:
    """A suite's data, its seeded splits, and the model config sized for it (ARCH is filled in by the caller)."""
    ds = load_dataset(dataset, path=data_path, data_dir=data_dir, device=device)
    return ds, make_splits(ds, SplitConfig(seed=seed)), ModelConfig("", ds.in_shape, ds.num_classes)


def task_for(model: nn.Module, ds: Dataset, train_ids: np.ndarray, forget_ids: np.ndarray, *,
             cache: GradCache | bool | None = None, **extra: Any) -> UnlearnTask:
    """The unlearning task on MODEL as the service would hold it: its weights hashed, and its gradient cache
    (CACHE=True: built here over TRAIN_IDS; a GradCache: that one; None: none). EXTRA: UnlearnTask's other fields."""
    built = build_cache(model, ds, train_ids) if cache is True else (cache or None)
    return UnlearnTask(model=model, ds=ds, train_ids=train_ids, forget_ids=forget_ids,
                       weights_sha256=weights_sha256(model.state_dict()), cache=built, **extra)


def choose_forget(ds: Dataset, train: np.ndarray, *, frac: float, how: str, seed: int) -> np.ndarray:
    """FRAC of the training ids: at random, or the most anomalous by an IsolationForest."""
    n = max(1, int(frac * len(train)))
    if how == "random":
        return np.sort(np.random.default_rng(seed).choice(train, size=n, replace=False))
    if how == "outliers":
        from sklearn.ensemble import IsolationForest

        x = ds.features(train).flatten(1).cpu().numpy()
        forest = IsolationForest(n_estimators=100, random_state=seed).fit(x)
        return np.sort(train[np.argsort(forest.score_samples(x))[:n]])  # lowest score = most anomalous
    raise ValueError(f"unknown forget selection {how!r}; valid: outliers, random")


def prepare(cfg: ExperimentConfig, ds: Dataset, seed: int, *, progress: bool = True) -> SeedContext:
    splits = make_splits(ds, SplitConfig(seed=seed))
    forget = choose_forget(ds, splits.train, frac=cfg.forget_frac, how=cfg.forget, seed=seed)
    model_cfg = ModelConfig(arch=cfg.arch, in_shape=ds.in_shape, num_classes=ds.num_classes)
    models = {a: fit(model_cfg, ds, splits.train, splits.val, cfg.train_cfg(seed, a), progress=progress)
              for a in dict.fromkeys((0.0, cfg.alpha, *cfg.extra_alphas))}
    retain = np.setdiff1d(splits.train, forget)
    t0 = time.perf_counter()
    retrain = fit(model_cfg, ds, retain, splits.val, cfg.train_cfg(seed, 0.0), progress=progress)
    retrain_seconds = time.perf_counter() - t0
    plain = models[0.0]
    attack = fit_attack(ds, splits.shadow, model_cfg, cfg.train_cfg(seed, 0.0), epochs=plain.best_epoch,
                        cfg=MIAConfig(attack=cfg.attack, seed=seed))
    attack_eval = attack.evaluate(plain.model, ds, retain, splits.test, seed=seed)
    # one verifier for every row: references with the plain recipe (the retrain's and the baselines')
    verifier = build_verifier(cfg.verifier, BuildInputs(plain.model, ds, splits, model_cfg, cfg.train_cfg(seed, 0.0),
                                                        epochs=plain.best_epoch),
                              VerifierConfig(n_refs=cfg.verify_refs, seed=seed))
    power = {f"θ* (α={a})": verifier.measure_power(t.model, ds) for a, t in models.items()}
    verifier.power = power["θ* (α=0.0)"]  # the plain θ*, the verifier's own target
    power["shokri on θ* (α=0.0)"] = shokri_power(attack, verifier, plain.model, ds)
    return SeedContext(seed=seed, ds=ds, splits=splits, forget=forget, model_cfg=model_cfg, models=models,
                       retrain=retrain, retrain_seconds=retrain_seconds, attack=attack, attack_eval=attack_eval,
                       cfg=cfg, verifier=verifier, info={"attack": attack.info, "verifier": verifier.info,
                                                         "power": power})


def shokri_power(attack: MembershipAttack, v: Verifier, model: nn.Module, ds: Dataset) -> dict[str, Any]:
    """The Shokri attack's member probability as a score, on exactly the verifier's samples and FPRs."""
    return power_from_scores(*(attack.member_prob(model, ds, ids) for ids in (v.power_members(), v.eval_ids,
                                                                              v.calib_ids)))


def evaluate_model(ctx: SeedContext, model: nn.Module, *, ids: str = "test") -> dict[str, float]:
    """Accuracies in points (0–100) and the attack's member rate on D_f, in points."""
    evaluated = {"retain": ctx.retain, ids: getattr(ctx.splits, ids)}
    forget = fit_on(model, ctx.ds, ctx.forget)  # accuracy and mean cross-entropy (what a retrain raises) in one pass
    out = {"forget_acc": 100 * forget.acc, "forget_loss": forget.loss,
           **{f"{k}_acc": 100 * accuracy(model, ctx.ds, v) for k, v in evaluated.items()}}
    out["mia_forget"] = 100 * ctx.attack.member_rate(model, ctx.ds, ctx.forget)
    assessed = ctx.verifier.assess(model, ctx.ds, ctx.forget)
    out.update(lira_flagged=100 * flagged(assessed), lira_auc=assessed["set"]["auc"],
               lira_p=assessed["set"]["p_member"], lira_ks=assessed["ks"])
    return out


@dataclass
class Memorised:
    """A model trained far past early stopping on a small random subset of the train split, so single samples
    are memorised (the verifier suite's and the small-deletions suite's target)."""

    splits: Splits  # train = the subset; val, test and shadow as the seed's full splits
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    trained: TrainResult
    ref_frac: float  # the references' share of the shadow pool: as many samples as the subset

    def verifier(self, ds: Dataset, name: str, *, refs: int, seed: int) -> Verifier:
        """The NAME verifier on this model, its power measured."""
        v = build_verifier(name, BuildInputs(self.trained.model, ds, self.splits, self.model_cfg, self.train_cfg,
                                             self.train_cfg.max_epochs),
                           VerifierConfig(n_refs=refs, ref_frac=self.ref_frac, seed=seed))
        v.power = v.measure_power(self.trained.model, ds)
        return v


def memorise(ds: Dataset, seed: int, *, arch: str, n_train: int, epochs: int) -> Memorised:
    full = make_splits(ds, SplitConfig(seed=seed))
    members = np.sort(np.random.default_rng(seed).choice(full.train, min(n_train, len(full.train)), replace=False))
    splits = Splits(train=members, val=full.val, test=full.test, shadow=full.shadow)
    mcfg, tcfg = ModelConfig(arch, ds.in_shape, ds.num_classes), TrainConfig(max_epochs=epochs, seed=seed)
    return Memorised(splits, mcfg, tcfg, fit(mcfg, ds, members, None, tcfg, progress=False),
                     min(1.0, len(members) / len(full.shadow)))

