"""`unlearnd import`: a model trained elsewhere (without GR) becomes a model directory unlearnd can serve.

Its training ids are the data's training rows (every one: the weights saw them all); validation, shadow and
test samples come from the held-out rows (app.ml.data.dataset.member_splits). unlearnd then measures its held-out
accuracy and adds what serving needs: the gradient cache, the membership verifier (references trained with the
recipe, from the init when there is one) and the calibrated forgetting setting. Exact deletions retrain with the
recipe given here, else with unlearnd's default one, which meta.json and the start banner then say.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.errors import ConfigError
from app.ml.common.device import resolve
from app.ml.common.provenance import provenance
from app.ml.data.dataset import Dataset, SplitConfig, describe_splits, member_splits
from app.ml.data.formats import load_dataset
from app.ml.forgetting.calibrate import CalibrationConfig
from app.ml.models.checkpoint import check_finite
from app.ml.models.factory import ModelConfig, create_model
from app.ml.models.meta import ModelMeta
from app.ml.models.pretrained import file_sha256, frozen_state, load_strict, read_weights
from app.ml.training.distributed import SINGLE, World, leave
from app.ml.training.fit import TrainConfig, make_optimizer, seeded_model, train_epoch
from app.ml.training.metrics import accuracy
from app.ml.verify.base import BuildInputs, VerifierConfig
from app.ml.verify.build import build_verifier
from app.ml.workflows.pipeline import RefRecipe, Start, data_fields, finish_model_dir, prepare_start

TIMING_BATCHES = 8  # batches timed to price one epoch of the recipe


def require_new_dir(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} already exists and is not empty; import writes a new model directory (remove it, "
                          "or give another --out)")


def import_to_dir(*, weights: Path, arch: str, dataset: str, data_path: Path | None, out: Path,
                  train_cfg: TrainConfig, start: Start, data_dir: Path | None = None,
                  data_options: dict[str, Any] | None = None, verifier: str | None = "lira",
                  verifier_cfg: VerifierConfig | None = None, calibration: CalibrationConfig | None = None,
                  chunk_size: int = 1024, progress: bool = True, device: str = "cpu",
                  world: World = SINGLE) -> ModelMeta | None:
    """WORLD: the ranks of a torchrun job share out the verifier's reference models (the recipe's runs); rank 0
    alone then measures, calibrates and writes (the others return None). Every rank has checked OUT is new
    (require_new_dir) before the job's rendezvous, so none sees rank 0's files."""
    t0 = time.perf_counter()
    if world.leader:
        require_new_dir(out)
    with tempfile.TemporaryDirectory() as scratch:  # every rank reads the init; only rank 0's copy lands in OUT
        return _import(weights=weights, arch=arch, dataset=dataset, data_path=data_path,
                       out=out if world.leader else Path(scratch), train_cfg=train_cfg, start=start,
                       data_dir=data_dir, data_options=data_options, verifier=verifier,
                       verifier_cfg=verifier_cfg or VerifierConfig(seed=train_cfg.seed), calibration=calibration,
                       chunk_size=chunk_size, progress=progress, device=device, world=world, t0=t0)


def _import(*, weights: Path, arch: str, dataset: str, data_path: Path | None, out: Path, train_cfg: TrainConfig,
            start: Start, data_dir: Path | None, data_options: dict[str, Any] | None, verifier: str | None,
            verifier_cfg: VerifierConfig, calibration: CalibrationConfig | None, chunk_size: int, progress: bool,
            device: str, world: World, t0: float) -> ModelMeta | None:
    state = read_weights(weights)  # a bad file fails before the data is read
    dev = resolve(device)
    ds = load_dataset(dataset, path=data_path, data_dir=data_dir, device=dev, options=data_options)
    splits = member_splits(ds, SplitConfig(seed=train_cfg.seed))
    if not len(splits.train) or not len(splits.test):
        raise ConfigError(f"import needs training rows and held-out rows; the data gives {len(splits.train)} and "
                          f"{len(splits.test) + len(splits.val) + len(splits.shadow)}")
    bare = ModelConfig(arch=arch, in_shape=ds.in_shape, num_classes=ds.num_classes, freeze=start.freeze)
    model = create_model(bare)
    load_strict(model, state, str(weights))
    check_finite(model)
    if start.init is not None and start.freeze:  # checked before anything is written
        init = create_model(bare)
        load_strict(init, read_weights(start.init), str(start.init))
        _check_frozen_match(model, init, start.freeze, weights)
    model_cfg, start_fields = prepare_start(out, arch, ds, start)
    model = model.to(dev).eval()
    built = None
    if verifier is not None and world.distributed:
        built = build_verifier(verifier, BuildInputs(model=model, ds=ds, splits=splits, model_cfg=model_cfg,
                                                     train_cfg=train_cfg, epochs=train_cfg.max_epochs, world=world),
                               verifier_cfg)
    leave(world)  # nothing after the references is collective
    if not world.leader:
        return None
    per_epoch = _epoch_seconds(model_cfg, ds, splits.train, train_cfg)
    meta: dict[str, Any] = {
        **data_fields(ds, dataset, data_path, data_options or {}), **start_fields,
        "imported": {"weights": str(weights), "sha256": file_sha256(weights)},
        "alpha": 0.0, "gr_norm": train_cfg.gr_norm, "seed": train_cfg.seed, "train_config": asdict(train_cfg),
        "split_config": {**asdict(SplitConfig(seed=train_cfg.seed)), "members": "every training row"},
        # what a retrain costs, priced by timing the recipe: the weights' own training time is unknown
        "epochs": train_cfg.max_epochs, "best_epoch": train_cfg.max_epochs, "seconds_per_epoch": per_epoch,
        "seconds_per_epoch_estimated": True,
        "train_acc": accuracy(model, ds, splits.train), "val_acc": accuracy(model, ds, splits.val),
        "test_acc": accuracy(model, ds, splits.test), "n_train": len(splits.train),
        "split_origin": splits.origin, "distributed": world.record(), **provenance(dev, ds.placement),
    }
    if progress:
        print(f"splits: {describe_splits(splits)}", flush=True)
    return finish_model_dir(out, model=model, model_cfg=model_cfg, ds=ds, splits=splits, meta=meta,
                            refs=RefRecipe(train_cfg, train_cfg.max_epochs), t0=t0, with_cache=True,
                            chunk_size=chunk_size, verifier=verifier, verifier_cfg=verifier_cfg,
                            calibration=calibration, progress=progress, built=built)


def _check_frozen_match(model: torch.nn.Module, init: torch.nn.Module, prefixes: tuple[str, ...],
                        weights: Path) -> None:
    """The exact path re-fine-tunes from the init with these prefixes frozen, so the weights must hold the init's
    values there; otherwise a re-fine-tune could never give back the model that was served."""
    mine, theirs = frozen_state(model, prefixes), frozen_state(init, prefixes)
    moved = [k for k in mine if not torch.equal(mine[k], theirs[k].to(mine[k].dtype))]
    if moved:
        raise ConfigError(f"{weights}: frozen parameters differ from --init ({moved[:3]}, {len(moved)} in all): "
                          "they were trained, so --freeze does not describe how these weights were made")


def _epoch_seconds(model_cfg: Any, ds: Dataset, train_ids: np.ndarray, cfg: TrainConfig) -> float:
    """One epoch of the recipe, priced from a few timed batches on a throwaway model."""
    n = min(len(train_ids), TIMING_BATCHES * cfg.batch_size)
    model = seeded_model(model_cfg, cfg.seed, ds.device)
    opt = make_optimizer(model, cfg)
    rng = np.random.default_rng(cfg.seed)
    t0 = time.perf_counter()
    train_epoch(model, opt, ds, train_ids[:n], cfg, rng)
    return (time.perf_counter() - t0) * len(train_ids) / max(n, 1)
