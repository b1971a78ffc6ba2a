"""Model directories: model.safetensors + meta.json + splits.json (+ grad_cache.safetensors).

Weights are a safetensors state_dict (never a pickle), loaded strictly into the architecture
that meta.json names, and checked against the sha256 recorded there. They are written from
the CPU and mapped onto the caller's device on load, so any device reads any checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from app.errors import DataError, ModelLoadError
from app.ml.common.fsutil import atomic_replace, atomic_write_text
from app.ml.common.hashing import weights_sha256
from app.ml.data.dataset import Dataset, Splits
from app.ml.data.formats import load_dataset
from app.ml.models.aggregate import aggregate_from_state
from app.ml.models.factory import ModelConfig, create_model, model_device
from app.ml.models.meta import ModelMeta
from app.ml.models.pretrained import carry_init

MODEL_FILE = "model.safetensors"
META_FILE = "meta.json"
SPLITS_FILE = "splits.json"


@dataclass
class ModelDir:
    path: Path
    model: nn.Module
    model_cfg: ModelConfig
    meta: ModelMeta
    splits: Splits
    weights_sha256: str


def model_config_from_meta(meta: ModelMeta, folder: Path) -> ModelConfig:
    """The model META describes; its init (when it has one) is the copy kept in FOLDER."""
    init = meta.init
    try:
        cfg = ModelConfig(arch=meta.arch, in_shape=meta.in_shape, num_classes=meta.num_classes,
                          init=folder / init["file"] if init else None,
                          init_sha256=init["weights_sha256"] if init else None, freeze=meta.freeze)
    except (KeyError, TypeError) as e:
        raise ModelLoadError(f"meta.json's init is not a valid description ({e})") from e
    if cfg.init is not None and not cfg.init.is_file():
        raise ModelLoadError(f"{folder} names an init but {cfg.init.name} is missing beside its weights")
    return cfg


def save_model_dir(path: Path, *, model: nn.Module, model_cfg: ModelConfig, meta: ModelMeta | dict[str, Any],
                   splits: Splits) -> str:
    """Write all three files atomically; returns the weights' sha256 (also put in meta). META: a ModelMeta, or
    the fields of a new one (the model's own come from MODEL_CFG)."""
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    sha = weights_sha256(state)
    own = {"arch": model_cfg.arch, "in_shape": model_cfg.in_shape, "num_classes": model_cfg.num_classes,
           "freeze": model_cfg.freeze, "weights_sha256": sha}
    full_meta = meta.with_(**own) if isinstance(meta, ModelMeta) else ModelMeta.from_json({**meta, **own})
    carry_init(model_cfg.init, path)
    with atomic_replace(path / MODEL_FILE) as tmp:
        save_file(state, str(tmp), metadata={"weights_sha256": sha})
    atomic_write_text(path / SPLITS_FILE, json.dumps(splits.to_json()))
    atomic_write_text(path / META_FILE, full_meta.dumps())
    return sha


def set_meta_fields(path: Path, **changes: Any) -> None:
    """Change fields of a model directory's meta.json; the weights and their sha256 stay as they are."""
    atomic_write_text(path / META_FILE, ModelMeta.read(path / META_FILE).with_(**changes).dumps())


def no_pause() -> None:
    pass


def load_model_dir(path: Path, *, device: torch.device | str | None = None,
                   pause: Callable[[], None] = no_pause) -> ModelDir:
    """Load and verify a model directory. PAUSE runs between its steps (each well under a millisecond
    of CPU for small models): a serving process loading a new version beside live traffic passes a
    short sleep, so its event loop never waits behind the whole load for the GIL."""
    for name in (MODEL_FILE, META_FILE, SPLITS_FILE):
        if not (path / name).is_file():
            raise ModelLoadError(f"{path} is not a model directory: {name} is missing")
    meta = ModelMeta.read(path / META_FILE)
    cfg = model_config_from_meta(meta, path)
    pause()
    model = create_model(cfg, device) if not meta.shards else None
    pause()
    try:
        state = load_file(str(path / MODEL_FILE), device=str(device or "cpu"))
    except (SafetensorError, OSError) as e:
        raise ModelLoadError(f"{path / MODEL_FILE} is not a readable safetensors file ({e})") from e
    try:
        if model is None:  # a sharded model's weights are its constituents'; it answers as their aggregate
            model = aggregate_from_state(lambda: create_model(cfg, device), state, meta.n_shards,
                                         str(meta.shards.get("how", "mean")))  # type: ignore[union-attr]
        else:
            model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelLoadError(f"{path / MODEL_FILE} does not fit arch {cfg.arch!r} {cfg.in_shape}: {e}") from e
    pause()
    sha = weights_sha256(model.state_dict())
    if meta.weights_sha256 != sha:
        raise ModelLoadError(f"{path / MODEL_FILE} does not match its meta.json (sha256 {sha[:12]} vs "
                             f"{meta.weights_sha256[:12]})")
    model.eval()
    pause()
    splits = Splits.load(path / SPLITS_FILE)
    return ModelDir(path=path, model=model, model_cfg=cfg, meta=meta, splits=splits, weights_sha256=sha)


def check_finite(model: nn.Module) -> None:
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ModelLoadError(f"weights are not finite in {bad[:5]}")


def dataset_for(md: ModelDir, *, data_path: Path | None, data_dir: Path | None) -> Dataset:
    """The dataset a model was trained on, checked against the model's input shape and ids; on the model's
    device."""
    stored = md.meta.data_path
    path = data_path or (Path(stored) if stored else None)
    if md.meta.dataset is None:
        raise DataError(f"{md.path}'s meta.json names no dataset")
    ds = load_dataset(md.meta.dataset, path=path, data_dir=data_dir, device=model_device(md.model),
                      options=md.meta.data_options)
    names = md.meta.class_names
    if names and ds.class_names and names != ds.class_names:
        ds = _align_classes(ds, names)
    if tuple(ds.in_shape) != tuple(md.model_cfg.in_shape):
        raise DataError(f"dataset input shape {ds.in_shape} differs from the model's {md.model_cfg.in_shape}")
    top = max(int(md.splits.train.max(initial=-1)), int(md.splits.test.max(initial=-1)))
    if top >= len(ds):
        raise DataError(f"model's splits name id {top}, dataset has only {len(ds)} samples")
    return ds


def _align_classes(ds: Dataset, names: tuple[str, ...]) -> Dataset:
    """Label k means the model's class k even when the data now lacks a class (every sample of it erased)."""
    assert ds.class_names is not None
    unknown = sorted(set(ds.class_names) - set(names))
    if unknown:
        raise DataError(f"the data has classes {unknown[:3]} the model was not trained on (its classes: "
                        f"{list(names)[:8]})")
    index = np.asarray([names.index(n) for n in ds.class_names], dtype=np.int64)
    y = np.where(ds.y >= 0, index[np.maximum(ds.y, 0)], -1)
    return replace(ds, y=y, class_names=names, num_classes=len(names))
