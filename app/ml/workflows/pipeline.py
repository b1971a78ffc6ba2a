"""The two jobs behind `unlearnd train` and `unlearnd unlearn`, on model directories."""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from app.errors import ConfigError, ForgetSetError, UnlearnFailed
from app.ml.common.device import resolve
from app.ml.common.provenance import provenance
from app.ml.data.dataset import Dataset, SplitConfig, Splits, describe_splits, make_splits
from app.ml.data.formats import load_dataset
from app.ml.data.ids import keys_of, rows_of
from app.ml.data.imagefolder import write_mapping
from app.ml.forgetting.calibrate import CalibrationConfig, calibrate
from app.ml.forgetting.gradcache import GradCache, build_cache, load_cache, save_cache
from app.ml.forgetting.job import forget_version
from app.ml.forgetting.methods.base import UnlearnTask, check_forget_ids
from app.ml.forgetting.policy import Budget, PolicyOptions, Setting
from app.ml.models.checkpoint import (
    META_FILE,
    ModelDir,
    dataset_for,
    load_model_dir,
    save_model_dir,
    set_meta_fields,
)
from app.ml.models.factory import ModelConfig, create_model
from app.ml.models.meta import ModelMeta
from app.ml.models.pretrained import load_strict, read_weights, store_init
from app.ml.sharding.plan import ShardSpec
from app.ml.sharding.references import sharded_references
from app.ml.sharding.store import save_shards
from app.ml.sharding.train import Sharded
from app.ml.training.distributed import SINGLE, World, leave
from app.ml.training.fit import TrainConfig, fit
from app.ml.training.metrics import accuracy
from app.ml.verify.base import BuildInputs, Verifier, VerifierConfig
from app.ml.verify.build import DEFAULT, build_verifier, check_verifier
from app.ml.verify.report import power_summary, recipe_spread
from app.ml.verify.store import FOLDER as VERIFIER_FOLDER
from app.ml.verify.store import load_verifier, save_verifier
from app.ml.workflows.sharded import train_sharded_fields, unlearn_sharded


@dataclass(frozen=True)
class Start:
    """Where training starts: starting weights (`--init`), frozen prefixes (`--freeze`), and where the recipe
    came from (app/ml/training/recipe.py)."""

    init: Path | None = None
    freeze: tuple[str, ...] = ()
    recipe: dict[str, Any] | None = None


def prepare_start(folder: Path, arch: str, ds: Dataset, start: Start) -> tuple[ModelConfig, dict[str, Any]]:
    """The model config (its init kept in FOLDER) and the meta fields that record the start; every bad --init or
    --freeze fails here, before any training."""
    bare = ModelConfig(arch=arch, in_shape=ds.in_shape, num_classes=ds.num_classes, freeze=start.freeze)
    probe = create_model(bare)  # a bad spec or freeze prefix fails before anything is written
    fields: dict[str, Any] = {"recipe": start.recipe or {"source": "default"}}
    if start.init is None:
        return bare, fields
    load_strict(probe, read_weights(start.init), str(start.init))
    record = store_init(start.init, folder)
    fields["init"] = record
    return replace(bare, init=folder / record["file"], init_sha256=record["weights_sha256"]), fields


def data_fields(ds: Dataset, dataset: str, data_path: Path | None, data_options: dict[str, Any]) -> dict[str, Any]:
    """What meta.json records of the data: where it is read from, and what the API needs to read inputs."""
    return {"dataset": dataset, "data_path": str(data_path.resolve()) if data_path else None,
            "data_options": {k: v for k, v in data_options.items() if v is not None},
            "class_names": list(ds.names), "feature_names": list(ds.feature_names) if ds.feature_names else None}


def train_to_dir(*, dataset: str, arch: str, out: Path, train_cfg: TrainConfig, split_cfg: SplitConfig,
                 data_path: Path | None = None, data_dir: Path | None = None, progress: bool = True,
                 with_cache: bool = True, chunk_size: int = 1024, verifier: str | None = DEFAULT,
                 verifier_cfg: VerifierConfig | None = None,
                 calibration: CalibrationConfig | None = None, device: str = "cpu",
                 start: Start | None = None, data_options: dict[str, Any] | None = None,
                 world: World = SINGLE, shards: ShardSpec | None = None) -> ModelMeta | None:
    """Train ARCH on DATASET with the GR loss and write a model directory to OUT (with its membership
    verifier under OUT/verifier unless VERIFIER is None, and the forgetting setting calibrated for it in
    meta.json unless CALIBRATION is None). DEVICE: auto | cpu | cuda | cuda:N. START: init, freeze, recipe.
    WORLD: the ranks of a torchrun job train together and share out the verifier's reference models (one per
    rank at a time); rank 0 alone then measures the verifier, calibrates and writes (the others return None)."""
    t0 = time.perf_counter()
    vcfg = verifier_cfg or VerifierConfig(seed=train_cfg.seed)
    if verifier is not None:
        check_verifier(verifier, vcfg)
    dev = resolve(device)
    ds = load_dataset(dataset, path=data_path, data_dir=data_dir, device=dev, options=data_options)
    splits = make_splits(ds, split_cfg)
    if shards is not None and shards.sharded:
        model_cfg, start_fields = prepare_start(out, arch, ds, start or Start())
        sh, fields = train_sharded_fields(model_cfg, ds, splits, train_cfg, split_cfg, shards, progress=progress)
        meta = {**data_fields(ds, dataset, data_path, data_options or {}), **start_fields, **fields,
                **provenance(dev, ds.placement)}
        return finish_model_dir(out, model=sh.aggregate(), model_cfg=model_cfg, ds=ds, splits=splits, meta=meta,
                                refs=RefRecipe(train_cfg, train_cfg.max_epochs), t0=t0, with_cache=False,
                                chunk_size=chunk_size, verifier=verifier, verifier_cfg=vcfg, calibration=None,
                                progress=progress, sharded=sh)
    with tempfile.TemporaryDirectory() as scratch:  # every rank reads the init; only rank 0's copy lands in OUT
        model_cfg, start_fields = prepare_start(out if world.leader else Path(scratch), arch, ds, start or Start())
        result = fit(model_cfg, ds, splits.train, splits.val, train_cfg, progress=progress, world=world)
    built = None
    if verifier is not None and world.distributed:
        built = build_verifier(verifier, BuildInputs(model=result.model, ds=ds, splits=splits, model_cfg=model_cfg,
                                                     train_cfg=train_cfg, epochs=result.best_epoch, world=world), vcfg)
    leave(world)  # nothing after the references is collective
    if not world.leader:
        return None
    model = result.model
    meta: dict[str, Any] = {
        **data_fields(ds, dataset, data_path, data_options or {}), **start_fields,
        "alpha": train_cfg.alpha, "gr_norm": train_cfg.gr_norm, "seed": train_cfg.seed,
        "train_config": asdict(train_cfg), "split_config": asdict(split_cfg),
        "epochs": result.epochs_run, "best_epoch": result.best_epoch,
        "seconds_per_epoch": float(np.mean(result.epoch_seconds)),
        "train_acc": accuracy(model, ds, splits.train), "val_acc": result.val_acc,
        "test_acc": accuracy(model, ds, splits.test),
        "n_train": len(splits.train), "split_origin": splits.origin, "distributed": world.record(),
        "feature_cache": result.feature_cache,
        **provenance(dev, ds.placement),
    }
    if progress:
        print(f"splits: {describe_splits(splits)}", flush=True)
    return finish_model_dir(out, model=model, model_cfg=model_cfg, ds=ds, splits=splits, meta=meta,
                            refs=RefRecipe(train_cfg, result.best_epoch), t0=t0, with_cache=with_cache,
                            chunk_size=chunk_size, verifier=verifier, verifier_cfg=vcfg, calibration=calibration,
                            progress=progress, built=built)


@dataclass(frozen=True)
class RefRecipe:
    """How the verifier's reference models are trained: the model's recipe, for EPOCHS epochs."""

    train_cfg: TrainConfig
    epochs: int


def finish_model_dir(out: Path, *, model: nn.Module, model_cfg: ModelConfig, ds: Dataset, splits: Splits,
                     meta: dict[str, Any], refs: RefRecipe, t0: float, with_cache: bool, chunk_size: int,
                     verifier: str | None, verifier_cfg: VerifierConfig, calibration: CalibrationConfig | None,
                     progress: bool, built: Verifier | None = None, sharded: Sharded | None = None) -> ModelMeta:
    """Write MODEL's directory: weights, META's fields, splits, the id mapping, the gradient cache, the membership
    verifier and the calibrated forgetting setting; its meta as written. Shared by `train` and `import`."""
    save_model_dir(out, model=model, model_cfg=model_cfg, meta={**meta, "wall_time_s": time.perf_counter() - t0},
                   splits=splits)
    if sharded is not None:
        save_shards(out, sharded)
    write_mapping(ds, out)
    cache = build_cache(model, ds, splits.train, chunk_size=chunk_size) if with_cache else None
    if cache is not None:
        save_cache(cache, out)
    if verifier is not None:
        inputs = BuildInputs(model=model, ds=ds, splits=splits, model_cfg=model_cfg, train_cfg=refs.train_cfg,
                             epochs=refs.epochs, fit_ref=sharded_references(model_cfg, meta.get("shards")))
        power = attach_verifier(out, inputs, verifier, verifier_cfg, progress=progress, built=built)
        cal = None
        if calibration is not None:
            md = load_model_dir(out, device=ds.device)
            cal = calibrate_model(md, ds, load_verifier(out / VERIFIER_FOLDER, with_refs=True), cache, calibration,
                                  progress=progress)
        wall = time.perf_counter() - t0
        if progress and cal is not None:
            cal_s = float(cal.get("seconds", 0.0))
            print(f"calibration took {cal_s:.0f} s of {wall:.0f} s in all ({100 * cal_s / max(wall, 1e-9):.0f}%)",
                  flush=True)
        set_meta_fields(out, verifier=power, calibration=cal, wall_time_s=wall)
    return ModelMeta.read(out / META_FILE)


def calibrate_model(md: ModelDir, ds: Dataset, verifier: Verifier | None, cache: GradCache | None,
                    cfg: CalibrationConfig, *, holdout_size: int = 10000, progress: bool = True) -> dict[str, Any]:
    """Choose the forgetting setting for MD by simulated deletions (app.ml.forgetting.calibrate); its record."""
    if progress:
        print("calibrating the forgetting update (simulated deletions, every candidate setting)", flush=True)
    base = replace(UnlearnTask.from_model_dir(md, ds, forget_ids=np.empty(0, np.int64), cache=cache,
                                              verifier=verifier), seed=cfg.seed)
    out = calibrate(base, md.splits.holdout(holdout_size), md.meta.training_seconds, cfg, progress=progress)
    out["holdout_size"] = holdout_size
    return out


def attach_verifier(folder: Path, inputs: BuildInputs, name: str, cfg: VerifierConfig, *,
                    progress: bool = True, built: Verifier | None = None) -> dict[str, Any]:
    """Build a verifier for the model in INPUTS (BUILT: its references already trained across a job's ranks),
    measure its power, save it to FOLDER/verifier."""
    if progress and built is None:
        print(f"training the membership verifier ({name}, K={cfg.n_refs} reference models)", flush=True)
    t0 = time.perf_counter()
    v = built or build_verifier(name, inputs, cfg)
    v.power = v.measure_power(inputs.model, inputs.ds)
    save_verifier(v, folder / VERIFIER_FOLDER)
    return {**power_summary(v), "build_seconds": time.perf_counter() - t0, "power": v.power}


def unlearn_to_dir(*, model_dir: Path, forget_ids: np.ndarray | list[str], out: Path, method: str | None = None,
                   params: dict[str, Any] | None = None, data_path: Path | None = None,
                   data_dir: Path | None = None, use_cache: bool = True, refresh_cache: bool = False,
                   chunk_size: int = 1024, max_accuracy_drop: float | None = None,
                   exact_max_accuracy_drop: float = 0.05, on_partial: str = "accept",
                   device: str = "cpu") -> ModelMeta:
    """Forget FORGET_IDS from the model in MODEL_DIR (app.ml.forgetting.job) and write the new model to OUT.
    METHOD None: the model's calibrated setting. Nothing is written when no setting (retrain included) keeps
    the held-out accuracy within MAX_ACCURACY_DROP (default: calibration's). FORGET_IDS: rows, or the data's own
    ids as text (a --forget-ids file)."""
    dev = resolve(device)
    md = load_model_dir(model_dir, device=dev)
    ds = dataset_for(md, data_path=data_path, data_dir=data_dir)
    forget_set = own_forget_ids(md.splits.train, ds, forget_ids)
    vdir = model_dir / VERIFIER_FOLDER
    verifier = load_verifier(vdir, with_refs=True) if vdir.is_dir() else None
    hold = md.splits.holdout(int((md.meta.calibration or {}).get("holdout_size", len(md.splits.test))))
    acc0 = accuracy(md.model, ds, hold)
    drop = max_accuracy_drop if max_accuracy_drop is not None else default_accuracy_drop(md.meta)
    budget = Budget.below(acc0, max_drop=drop, exact_max_drop=exact_max_accuracy_drop,
                          spread=recipe_spread(verifier.info) if verifier is not None else None)
    if md.meta.shards:
        if method and method != "retrain":
            raise ConfigError(f"a sharded model forgets by retraining the shards that held the samples; --method "
                              f"{method} does not apply")
        meta = unlearn_sharded(md, ds, forget_set, out, hold=hold, verifier=verifier, device=dev, budget=budget)
        if verifier is not None:
            save_verifier(verifier, out / VERIFIER_FOLDER)
        return meta
    task = UnlearnTask.from_model_dir(md, ds, forget_ids=forget_set, verifier=verifier, chunk_size=chunk_size,
                                      cache=load_cache(model_dir, dev) if use_cache else None)
    done = forget_version(task, md.meta.calibration, hold, budget,
                          Setting(method, dict(params or {})) if method else None,
                          options=PolicyOptions(on_partial=on_partial), holdout_acc_before=acc0)
    if done.model is None:
        raise UnlearnFailed(f"no setting kept held-out accuracy within {100 * drop:g} points of "
                            f"{acc0:.4f}: {done.record.problem}; nothing was written")
    done.record.device, done.record.data_placement = str(dev), ds.placement
    new_splits = md.splits.without_train(forget_set)
    record = {
        **done.record.to_payload(),
        "chosen_by": "caller" if method else ("calibration" if md.meta.calibration else "defaults"),
        "forget_acc_before": accuracy(md.model, ds, forget_set),
        "forget_acc_after": accuracy(done.model, ds, forget_set),
        "test_acc_before": accuracy(md.model, ds, md.splits.test),
        "test_acc_after": accuracy(done.model, ds, md.splits.test), "holdout_acc_before": acc0,
        "holdout_acc_after": done.record.holdout_acc_after, "time_s": done.record.time_s,
        "parent_weights_sha256": md.weights_sha256, "chunk_size": chunk_size,
    }
    meta = md.meta.inherited(**provenance(dev, ds.placement), n_train=len(new_splits.train),
                             test_acc=record["test_acc_after"], train_acc=accuracy(done.model, ds, new_splits.train),
                             unlearn=record)
    save_model_dir(out, model=done.model, model_cfg=md.model_cfg, meta=meta, splits=new_splits)
    if verifier is not None:  # the references never saw a training sample: they stay valid for every descendant
        save_verifier(verifier, out / VERIFIER_FOLDER)
    if refresh_cache:
        save_cache(build_cache(done.model, ds, new_splits.train, chunk_size=chunk_size), out)
    return meta


def own_forget_ids(train: np.ndarray, ds: Dataset, ids: np.ndarray | list[str]) -> np.ndarray:
    """The rows to forget, checked against the train split; errors name the data's own ids."""
    if isinstance(ids, np.ndarray):
        return check_forget_ids(train, ids)
    rows, unknown = rows_of(ds.keys, ids, n_rows=len(ds))
    held = keys_of(ds.keys, np.setdiff1d(rows, train))
    if not unknown and not held:
        return check_forget_ids(train, rows)
    parts = [f"{len(unknown)} name no sample of the data: {_shown(unknown)}"] if unknown else []
    if held:
        parts.append(f"{len(held)} are not in the train split (held out: validation, test or the verifier's "
                     f"non-members): {_shown(held)}")
    raise ForgetSetError(f"forget ids: {'; '.join(parts)}", bad_ids=[*unknown, *held])


def _shown(ids: list[str]) -> str:
    return ", ".join(ids[:20]) + (" …" if len(ids) > 20 else "")


def default_accuracy_drop(meta: ModelMeta) -> float:
    budget = (meta.calibration or {}).get("budget") or {}
    return float(budget.get("max_accuracy_drop", CalibrationConfig.max_accuracy_drop))
