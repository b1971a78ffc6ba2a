"""Training with the GR loss and a recipe (optimiser, schedule, weight decay, augmentation), early stopping on
validation accuracy. The recipe is recorded in meta.json and reused by every retrain (app/ml/training/recipe.py)."""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from app.ml.data.dataset import LAST_BATCH, Dataset, minibatches
from app.ml.models.factory import ModelConfig, create_model
from app.ml.training.distributed import (
    SINGLE,
    World,
    all_reduce_grads,
    all_sum,
    average_buffers,
    from_leader,
    my_slice,
)
from app.ml.training.feature_cache import Cached, cached_features
from app.ml.training.gates import FrozenGates
from app.ml.training.gr import GR_GRADS, GR_NORMS, gr_fd_loss_and_grads, gr_loss_and_grads
from app.ml.training.metrics import accuracy

log = logging.getLogger("unlearnd.train")
OPTIMIZERS = ("adam", "sgd", "signsgd")
SCHEDULES = ("constant", "cosine")
AUGMENTS = ("none", "flip_crop")
KEEP = ("best", "last")


@dataclass(frozen=True)
class TrainConfig:
    alpha: float = 0.0  # GR strength; 0 is plain cross-entropy training
    gr_norm: str = "global"
    gr_grad: str = "exact"  # how the penalty's gradient is computed: exact | fd
    fd_eps: float = 1e-3
    lr: float = 1e-3  # Adam, batch 64: the authors' code
    batch_size: int = 64
    max_epochs: int = 100
    patience: int = 10  # epochs without a better validation accuracy
    seed: int = 0
    optimizer: str = "adam"  # adam | sgd | signsgd (sign of the gradient, step lr): for the paper's Fig. 3
    clip_norm: float | None = None  # clip each minibatch gradient to this global norm (Fig. 3)
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    schedule: str = "constant"  # constant | cosine (over max_epochs)
    augment: str = "none"  # none | flip_crop (images: horizontal flip, 4-pixel padded random crop)
    last_batch: str = "fold"  # fold: a last minibatch of one joins the one before (batch-norm needs 2) | keep
    keep: str = "best"  # best: the best validation epoch's weights | last: the last epoch's (small validation sets)

    def __post_init__(self) -> None:
        if self.gr_norm not in GR_NORMS:
            raise ValueError(f"gr_norm must be one of {GR_NORMS}")
        if self.gr_grad not in GR_GRADS:
            raise ValueError(f"gr_grad must be one of {GR_GRADS}")
        if self.alpha < 0:
            raise ValueError("alpha must be >= 0")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}")
        if self.augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {AUGMENTS}")
        if self.last_batch not in LAST_BATCH:
            raise ValueError(f"last_batch must be one of {LAST_BATCH}")
        if self.keep not in KEEP:
            raise ValueError(f"keep must be one of {KEEP}")
        if not (self.lr > 0 and self.batch_size > 0 and self.max_epochs > 0 and self.patience > 0):
            raise ValueError("lr, batch_size, max_epochs and patience must be > 0")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ValueError("weight_decay must be >= 0 and momentum in [0, 1)")


@dataclass
class TrainResult:
    model: nn.Module  # holds the best weights
    epochs_run: int
    best_epoch: int
    val_acc: float
    seconds: float
    epoch_seconds: list[float] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    # {"used": True, "cut", "shape", "rows", "bytes", "seconds"} or {"used": False, "why"}; None: nothing frozen
    feature_cache: dict[str, Any] | None = None


def seeded_model(cfg: ModelConfig, seed: int, device: torch.device | str | None = None) -> nn.Module:
    """A model to train: seeded, then given the init's weights when the model has one."""
    torch.manual_seed(seed)
    model = create_model(cfg)
    if cfg.init is not None:
        from app.ml.models.pretrained import apply_init

        apply_init(model, cfg.init, cfg.init_sha256)
    return model if device is None else model.to(device)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]  # frozen ones never reach an optimiser
    if cfg.optimizer == "signsgd":  # plain SGD applied to sign(g), set in train_epoch
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Flip half the images, then crop each from a 4-pixel zero padding at a random offset: (N, C, H, W)."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(3), x)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    dy, dx = torch.randint(0, 9, (2, n), generator=gen).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def train_epoch(model: nn.Module, opt: torch.optim.Optimizer, ds: Dataset, ids: np.ndarray,
                cfg: TrainConfig, rng: np.random.Generator, world: World = SINGLE) -> float:
    """One pass over IDS in a seeded random order; returns the mean GR loss. In a WORLD of several ranks each
    takes its slice of every global minibatch and the gradients are averaged over all of them before the step."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    order = rng.permutation(ids)
    total = torch.zeros((), dtype=torch.float64, device=ds.device)  # read once at the end, not per step
    gates = FrozenGates(model) if cfg.alpha and cfg.gr_grad == "fd" else None  # hooked once per epoch
    # drawn only when used: a recipe without augmentation keeps the batch order it always had
    gen = torch.Generator().manual_seed(int(rng.integers(2**62))) if cfg.augment != "none" else None
    try:
        for whole in minibatches(order, cfg.batch_size, cfg.last_batch):
            batch = my_slice(whole, world)
            if len(batch):
                x, y = ds.features(batch), ds.labels(batch)
                if gen is not None and x.ndim == 4:
                    x = augment(x, gen)
                loss, grads = _loss_and_grads(model, x, y, cfg, gates)
            else:  # a global batch smaller than the world: this rank adds nothing to the step
                loss, grads = torch.zeros((), device=ds.device), [torch.zeros_like(p) for p in params]
            if world.distributed:
                grads = all_reduce_grads(grads, len(batch), len(whole), world)
            if cfg.clip_norm is not None:
                total_norm = torch.sqrt(sum((g * g).sum() for g in grads))
                scale = (cfg.clip_norm / (total_norm + 1e-12)).clamp(max=1.0)
                grads = [g * scale for g in grads]
            for p, g in zip(params, grads, strict=True):
                p.grad = g.sign() if cfg.optimizer == "signsgd" else g
            opt.step()
            total += loss * len(batch)
    finally:
        if gates is not None:
            gates.remove()
    average_buffers(model, world)
    return float(all_sum(total, world)) / max(len(order), 1)


def _loss_and_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
                    gates: FrozenGates | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    if gates is not None:
        return gr_fd_loss_and_grads(model, x, y, alpha=cfg.alpha, norm=cfg.gr_norm, fd_eps=cfg.fd_eps, gates=gates)
    return gr_loss_and_grads(model, x, y, alpha=cfg.alpha, norm=cfg.gr_norm, method=cfg.gr_grad)


def _validate(model: nn.Module, ds: Dataset, val_ids: np.ndarray | None, epoch: int, world: World) -> float:
    """Validation accuracy, measured on rank 0 and broadcast: every rank takes the same early-stopping step."""
    if val_ids is None:
        return float(epoch)
    if not world.distributed:
        return accuracy(model, ds, val_ids)
    return from_leader(accuracy(model, ds, val_ids) if world.leader else 0.0, world, ds.device)


def fit(model_cfg: ModelConfig, ds: Dataset, train_ids: np.ndarray, val_ids: np.ndarray | None,
        cfg: TrainConfig, *, progress: bool = True, world: World = SINGLE, feature_cache: bool = True) -> TrainResult:
    """Train from a seeded init; keep the weights of the best validation epoch.

    With no validation ids, train exactly cfg.max_epochs and keep the last weights. Runs on ds.device. WORLD:
    this process's rank in a torchrun job (app/ml/training/distributed.py); every rank returns the same model.
    FEATURE_CACHE: a model with frozen prefixes trains its head over its frozen features, computed once, where
    they can be cut out (app/ml/training/feature_cache.py); False: the whole model runs every epoch.
    """
    t0 = time.perf_counter()  # the features' pass counts towards the fit's seconds
    model = seeded_model(model_cfg, cfg.seed, ds.device)
    if not feature_cache:
        return _fit(model, model, ds, train_ids, val_ids, cfg, progress, world, t0)
    with cached_features(model, model_cfg.freeze, cfg.augment, ds, [train_ids, val_ids]) as cached:
        if not isinstance(cached, Cached):
            if cached is not None:
                log.info("frozen features not cached: %s", cached)
            res = _fit(model, model, ds, train_ids, val_ids, cfg, progress, world, t0)
            res.feature_cache = None if cached is None else {"used": False, "why": cached}
            return res
        res = _fit(model, cached.cut.head, cached.ds, np.searchsorted(cached.rows, train_ids), cached.ids(val_ids),
                   cfg, progress, world, t0)
        res.feature_cache = cached.record
        return res


def fit_from(model: nn.Module, ds: Dataset, train_ids: np.ndarray, cfg: TrainConfig, *,
             progress: bool = False) -> TrainResult:
    """Go on training MODEL (its weights as they are) for exactly cfg.max_epochs on TRAIN_IDS, keeping the last
    weights: a SISA slice, which resumes from the checkpoint of the slices before it. One process."""
    return _fit(model, model, ds, train_ids, None, replace(cfg, keep="last"), progress, SINGLE, time.perf_counter())


def _fit(model: nn.Module, trained: nn.Module, ds: Dataset, train_ids: np.ndarray, val_ids: np.ndarray | None,
         cfg: TrainConfig, progress: bool, world: World, t0: float) -> TrainResult:
    """The epochs: TRAINED is MODEL itself, or its head over cached frozen features (sharing its parameters)."""
    opt = make_optimizer(trained, cfg)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.max_epochs) if cfg.schedule == "cosine" else None
    rng = np.random.default_rng(cfg.seed)
    best_acc, best_epoch = -1.0, 0
    best_state: dict[str, torch.Tensor] | None = copy.deepcopy(model.state_dict())
    history: list[dict[str, float]] = []
    bar = tqdm(range(1, cfg.max_epochs + 1), desc=f"train α={cfg.alpha}", disable=not progress or not world.leader,
               leave=False)
    for epoch in bar:
        e0 = time.perf_counter()
        loss = train_epoch(trained, opt, ds, train_ids, cfg, rng, world)
        if sched is not None:
            sched.step()
        epoch_s = time.perf_counter() - e0
        val_acc = _validate(trained, ds, val_ids, epoch, world)
        history.append({"epoch": epoch, "loss": loss, "val_acc": val_acc, "seconds": epoch_s})
        bar.set_postfix(loss=f"{loss:.3f}", val_acc=f"{val_acc:.3f}")
        if cfg.keep == "last":  # every epoch of the recipe runs; no early stopping on a noisy validation set
            best_acc, best_epoch, best_state = val_acc, epoch, None
        elif val_acc > best_acc:
            best_acc, best_epoch, best_state = val_acc, epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= cfg.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    if val_ids is None:
        best_acc = float("nan")
    return TrainResult(model=model, epochs_run=len(history), best_epoch=best_epoch, val_acc=best_acc,
                       seconds=time.perf_counter() - t0, epoch_seconds=[h["seconds"] for h in history],
                       history=history)

