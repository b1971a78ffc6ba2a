"""Training with the GR loss and a recipe (optimiser, schedule, weight decay, augmentation), early stopping on
validation accuracy. The recipe is recorded in meta.json and reused by every retrain (app/ml/recipe.py)."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from app.ml.data import LAST_BATCH, Dataset, minibatches
from app.ml.gates import FrozenGates
from app.ml.gr import GR_GRADS, GR_NORMS, gr_fd_loss_and_grads, gr_loss_and_grads
from app.ml.metrics import accuracy
from app.ml.models import ModelConfig, create_model

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


def seeded_model(cfg: ModelConfig, seed: int, device: torch.device | str | None = None) -> nn.Module:
    """A model to train: seeded, then given the init's weights when the model has one."""
    torch.manual_seed(seed)
    model = create_model(cfg)
    if cfg.init is not None:
        from app.ml.pretrained import apply_init

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
                cfg: TrainConfig, rng: np.random.Generator) -> float:
    """One pass over IDS in a seeded random order; returns the mean GR loss."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    order = rng.permutation(ids)
    total = torch.zeros((), dtype=torch.float64, device=ds.device)  # read once at the end, not per step
    gates = FrozenGates(model) if cfg.alpha and cfg.gr_grad == "fd" else None  # hooked once per epoch
    # drawn only when used: a recipe without augmentation keeps the batch order it always had
    gen = torch.Generator().manual_seed(int(rng.integers(2**62))) if cfg.augment != "none" else None
    try:
        for batch in minibatches(order, cfg.batch_size, cfg.last_batch):
            x, y = ds.features(batch), ds.labels(batch)
            if gen is not None and x.ndim == 4:
                x = augment(x, gen)
            if gates is not None:
                loss, grads = gr_fd_loss_and_grads(model, x, y, alpha=cfg.alpha, norm=cfg.gr_norm,
                                                   fd_eps=cfg.fd_eps, gates=gates)
            else:
                loss, grads = gr_loss_and_grads(model, x, y, alpha=cfg.alpha, norm=cfg.gr_norm, method=cfg.gr_grad)
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
    return float(total) / max(len(order), 1)


def fit(model_cfg: ModelConfig, ds: Dataset, train_ids: np.ndarray, val_ids: np.ndarray | None,
        cfg: TrainConfig, *, progress: bool = True) -> TrainResult:
    """Train from a seeded init; keep the weights of the best validation epoch.

    With no validation ids, train exactly cfg.max_epochs and keep the last weights. Runs on ds.device.
    """
    model = seeded_model(model_cfg, cfg.seed, ds.device)
    opt = make_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.max_epochs) if cfg.schedule == "cosine" else None
    rng = np.random.default_rng(cfg.seed)
    best_acc, best_epoch = -1.0, 0
    best_state: dict[str, torch.Tensor] | None = copy.deepcopy(model.state_dict())
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    bar = tqdm(range(1, cfg.max_epochs + 1), desc=f"train α={cfg.alpha}", disable=not progress, leave=False)
    for epoch in bar:
        e0 = time.perf_counter()
        loss = train_epoch(model, opt, ds, train_ids, cfg, rng)
        if sched is not None:
            sched.step()
        epoch_s = time.perf_counter() - e0
        val_acc = accuracy(model, ds, val_ids) if val_ids is not None else float(epoch)
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

