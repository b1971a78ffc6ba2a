"""Model versions on disk: HOME/models/<id>/ written whole or not at all, loaded only if verified.

The ledger records a version's folder relative to the home (`models/<id>`), so a copied or restored home
is self-contained: it never reads, or purges, the folders of the home it was copied from. Ledgers that
recorded absolute paths are read the same way, by the folder's name under this home's models folder."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from app.core.config import Settings
from app.db.models import ModelVersion
from app.errors import ModelLoadError
from app.ml.data.dataset import Dataset, Splits
from app.ml.forgetting.policy import Budget
from app.ml.models.checkpoint import ModelDir, check_finite, load_model_dir, no_pause, save_model_dir
from app.ml.models.factory import ModelConfig
from app.ml.models.meta import ModelMeta
from app.ml.sharding.store import save_shards
from app.ml.sharding.train import Sharded
from app.ml.training.metrics import predict_logits


def write_version(models_dir: Path, *, model: nn.Module, model_cfg: ModelConfig, meta: ModelMeta,
                  splits: Splits, sharded: Sharded | None = None) -> tuple[str, Path]:
    """Write into a temp folder, then rename it: a reader never sees a half-written version. SHARDED: a sharded
    model's plan and slice checkpoints go in with its weights."""
    models_dir.mkdir(parents=True, exist_ok=True)
    tmp = models_dir / f".tmp-{uuid.uuid4().hex}"
    sha = save_model_dir(tmp, model=model, model_cfg=model_cfg, meta=meta, splits=splits)
    if sharded is not None:
        save_shards(tmp, sharded)
    final = models_dir / sha[:16]
    if final.exists():  # the same weights, written by an attempt that died before its commit
        shutil.rmtree(tmp)
        os.utime(final)  # fresh again: the orphan sweep spares folders younger than a lease
    else:
        os.replace(tmp, final)
        fd = os.open(models_dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return sha, final


MODELS = "models"


def ledger_path(folder: Path) -> str:
    """What the ledger records for a version folder written by write_version."""
    return f"{MODELS}/{folder.name}"


def version_dir(home: Path, version: ModelVersion | str) -> Path:
    """A version's folder under HOME, whatever form (relative, or an older ledger's absolute path) was recorded."""
    path = version if isinstance(version, str) else version.path
    return Path(home) / MODELS / Path(path).name


def load_version(version: ModelVersion, *, home: Path, probe: Dataset | None = None,
                 device: torch.device | str | None = None, pause: Callable[[], None] = no_pause) -> ModelDir:
    """Load, check the sha256 the ledger recorded, and (given PROBE) run a finite forward pass
    on a few of the version's held-out samples. PAUSE runs between steps (see load_model_dir)."""
    if not version.weights_present:
        raise ModelLoadError(f"weights of version {version.id} were purged")
    md = load_model_dir(version_dir(home, version), device=device, pause=pause)
    if md.weights_sha256 != version.sha256:
        raise ModelLoadError(f"version {version.id}: weights on disk do not match the ledger's sha256")
    check_finite(md.model)
    pause()
    if probe is not None and len(md.splits.test) and \
            not torch.isfinite(predict_logits(md.model, probe, holdout_ids(md.splits, 64))).all():
        raise ModelLoadError(f"version {version.id} gives non-finite outputs")
    return md


def holdout_ids(splits: Splits, size: int, forgotten: np.ndarray | None = None) -> np.ndarray:
    """The held-out ids a version is validated on, less deleted test samples (their rows are zeroed)."""
    return (splits if forgotten is None else splits.without(forgotten)).holdout(size)


def accuracy_budget(settings: Settings, first: dict[str, Any] | None) -> Budget:
    """The floors every version of the service is held to: the first version's held-out accuracy (in FIRST, its
    metrics) less the allowed drops, or the operator's absolute floor (FIRST may then be None); an exact
    retrain's allows for the recipe's seed-to-seed spread its verifier measured. The worker, consolidation and
    /ui use this one."""
    metrics = first or {}
    return Budget.below(float(metrics.get("holdout_acc") or 0.0), max_drop=settings.max_accuracy_drop,
                        exact_max_drop=settings.exact_max_accuracy_drop, absolute=settings.accuracy_floor,
                        spread=(metrics.get("verifier") or {}).get("recipe_spread"))
