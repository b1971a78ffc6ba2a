"""The two jobs behind `unlearnd train` and `unlearnd unlearn`, on model directories."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from app.ml.checkpoint import ModelDir, load_model_dir, save_model_dir, set_meta_fields
from app.ml.data import Dataset, SplitConfig, make_splits
from app.ml.datasets import load_dataset
from app.ml.errors import DataError, ForgetSetError
from app.ml.gradcache import build_cache, load_cache, save_cache
from app.ml.metrics import accuracy
from app.ml.models import ModelConfig
from app.ml.provenance import provenance
from app.ml.train import TrainConfig, fit
from app.ml.unlearn import run_method
from app.ml.unlearn.base import UnlearnTask, check_forget_ids
from app.ml.verify import DEFAULT, build_verifier, check_verifier
from app.ml.verify.base import BuildInputs, VerifierConfig
from app.ml.verify.report import power_summary, verify_forgetting
from app.ml.verify.store import FOLDER as VERIFIER_FOLDER
from app.ml.verify.store import load_verifier, save_verifier


def train_to_dir(*, dataset: str, arch: str, out: Path, train_cfg: TrainConfig, split_cfg: SplitConfig,
                 data_path: Path | None = None, data_dir: Path | None = None, progress: bool = True,
                 with_cache: bool = True, chunk_size: int = 1024, verifier: str | None = DEFAULT,
                 verifier_cfg: VerifierConfig | None = None) -> dict[str, Any]:
    """Train ARCH on DATASET with the GR loss and write a model directory to OUT (with its membership
    verifier under OUT/verifier unless VERIFIER is None)."""
    t0 = time.perf_counter()
    vcfg = verifier_cfg or VerifierConfig(seed=train_cfg.seed)
    if verifier is not None:
        check_verifier(verifier, vcfg)
    ds = load_dataset(dataset, path=data_path, data_dir=data_dir)
    splits = make_splits(ds, split_cfg)
    model_cfg = ModelConfig(arch=arch, in_shape=ds.in_shape, num_classes=ds.num_classes)
    result = fit(model_cfg, ds, splits.train, splits.val, train_cfg, progress=progress)
    model = result.model
    meta: dict[str, Any] = {
        "dataset": dataset,
        "data_path": str(data_path.resolve()) if data_path else None,
        "alpha": train_cfg.alpha, "gr_norm": train_cfg.gr_norm, "seed": train_cfg.seed,
        "train_config": asdict(train_cfg), "split_config": asdict(split_cfg),
        "epochs": result.epochs_run, "best_epoch": result.best_epoch,
        "seconds_per_epoch": float(np.mean(result.epoch_seconds)),
        "train_acc": accuracy(model, ds, splits.train), "val_acc": result.val_acc,
        "test_acc": accuracy(model, ds, splits.test),
        "n_train": len(splits.train),
        **provenance(),
    }
    meta["wall_time_s"] = time.perf_counter() - t0
    save_model_dir(out, model=model, model_cfg=model_cfg, meta=meta, splits=splits)
    if with_cache:
        save_cache(build_cache(model, ds, splits.train, chunk_size=chunk_size), out)
    if verifier is not None:
        inputs = BuildInputs(model=model, ds=ds, splits=splits, model_cfg=model_cfg, train_cfg=train_cfg,
                             epochs=result.best_epoch)
        meta["verifier"] = attach_verifier(out, inputs, verifier, vcfg, progress=progress)
        meta["wall_time_s"] = time.perf_counter() - t0
        set_meta_fields(out, {"verifier": meta["verifier"], "wall_time_s": meta["wall_time_s"]})
    return meta


def attach_verifier(folder: Path, inputs: BuildInputs, name: str, cfg: VerifierConfig, *,
                    progress: bool = True) -> dict[str, Any]:
    """Build a verifier for the model in INPUTS, measure its power, save it to FOLDER/verifier."""
    if progress:
        print(f"training the membership verifier ({name}, K={cfg.n_refs} reference models)", flush=True)
    t0 = time.perf_counter()
    v = build_verifier(name, inputs, cfg)
    v.power = v.measure_power(inputs.model, inputs.ds)
    save_verifier(v, folder / VERIFIER_FOLDER)
    return {**power_summary(v), "build_seconds": time.perf_counter() - t0, "power": v.power}


def dataset_for(md: ModelDir, *, data_path: Path | None, data_dir: Path | None) -> Dataset:
    """The dataset a model was trained on, checked against the model's input shape and ids."""
    stored = md.meta.get("data_path")
    path = data_path or (Path(stored) if stored else None)
    ds = load_dataset(md.meta["dataset"], path=path, data_dir=data_dir)
    if tuple(ds.in_shape) != tuple(md.model_cfg.in_shape):
        raise DataError(f"dataset input shape {ds.in_shape} differs from the model's {md.model_cfg.in_shape}")
    top = max(int(md.splits.train.max(initial=-1)), int(md.splits.test.max(initial=-1)))
    if top >= len(ds):
        raise DataError(f"model's splits name id {top}, dataset has only {len(ds)} samples")
    return ds


def train_config_from_meta(meta: dict[str, Any]) -> TrainConfig | None:
    raw = meta.get("train_config")
    if not isinstance(raw, dict):
        return None
    known = set(TrainConfig.__dataclass_fields__)
    return TrainConfig(**{k: v for k, v in raw.items() if k in known})


def read_ids(path: Path) -> np.ndarray:
    """One integer id per line; blank lines and #-comments are ignored."""
    ids = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            ids.append(int(text))
        except ValueError:
            raise ForgetSetError(f"{path}:{n}: {text!r} is not an integer id") from None
    return np.asarray(ids, dtype=np.int64)


def unlearn_to_dir(*, model_dir: Path, forget_ids: np.ndarray, out: Path, method: str = "iau",
                   params: dict[str, Any] | None = None, data_path: Path | None = None,
                   data_dir: Path | None = None, use_cache: bool = True, refresh_cache: bool = False,
                   chunk_size: int = 1024) -> dict[str, Any]:
    """Forget FORGET_IDS from the model in MODEL_DIR; write the new model to OUT."""
    md = load_model_dir(model_dir)
    forget = check_forget_ids(md.splits.train, forget_ids)
    ds = dataset_for(md, data_path=data_path, data_dir=data_dir)
    vdir = model_dir / VERIFIER_FOLDER
    verifier = load_verifier(vdir, with_refs=True) if vdir.is_dir() else None
    task = UnlearnTask(model=md.model, ds=ds, train_ids=md.splits.train, forget_ids=forget,
                       weights_sha256=md.weights_sha256, cache=load_cache(model_dir) if use_cache else None,
                       chunk_size=chunk_size, seed=int(md.meta.get("seed", 0)), model_cfg=md.model_cfg,
                       train_cfg=train_config_from_meta(md.meta), val_ids=md.splits.val,
                       epochs_trained=md.meta.get("epochs"), verifier=verifier)
    res = run_method(method, task, params)
    new_splits = md.splits.without_train(forget)
    record = {
        "method": method, "n_forget": len(forget), "time_s": res.time_s, **res.info,
        "forget_acc_before": accuracy(md.model, ds, forget), "forget_acc_after": accuracy(res.model, ds, forget),
        "test_acc_before": accuracy(md.model, ds, md.splits.test),
        "test_acc_after": accuracy(res.model, ds, md.splits.test),
        "params": res.params, "parent_weights_sha256": md.weights_sha256, "chunk_size": chunk_size,
    }
    if verifier is not None:
        record["verification"] = verify_forgetting(verifier, ds, forget, before=md.model, after=res.model)
    keep = {k: v for k, v in md.meta.items() if k not in ("unlearn", "weights_sha256")}
    meta = {**keep, **provenance(), "n_train": len(new_splits.train), "test_acc": record["test_acc_after"],
            "train_acc": accuracy(res.model, ds, new_splits.train), "unlearn": record}
    save_model_dir(out, model=res.model, model_cfg=md.model_cfg, meta=meta, splits=new_splits)
    if verifier is not None:  # the references never saw a training sample: they stay valid for every descendant
        save_verifier(verifier, out / VERIFIER_FOLDER)
    if refresh_cache:
        save_cache(build_cache(res.model, ds, new_splits.train, chunk_size=chunk_size), out)
    return meta
