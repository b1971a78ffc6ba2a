"""First start: import a trained model and its training set, build its verifier, publish v1.

The model's training ids become the ledger's samples; the whole dataset is copied into the
service's data store (forgotten rows are later purged there, not in the source data).

A home that has served before (erased rows in its store, versions in its models folder) is never
published into a fresh ledger: that would retrain on the source data, and bring erased samples back.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from app.core.config import Settings
from app.db import ledger
from app.db.audit import append_entry
from app.db.session import transaction, utcnow
from app.errors import StateError
from app.ml.common.device import resolve
from app.ml.data.dataset import Dataset, SplitConfig, Splits
from app.ml.data.ids import keys_of
from app.ml.forgetting.calibrate import CalibrationConfig
from app.ml.forgetting.gradcache import build_cache, cache_matches, load_cache, save_cache
from app.ml.models.checkpoint import META_FILE, ModelDir, dataset_for, load_model_dir
from app.ml.models.meta import ModelMeta
from app.ml.sharding.references import sharded_references
from app.ml.sharding.store import load_shards
from app.ml.training.fit import TrainConfig
from app.ml.training.metrics import accuracy
from app.ml.training.recipe import train_config_from_meta
from app.ml.verify.base import BuildInputs, VerifierConfig
from app.ml.verify.report import power_summary
from app.ml.verify.store import FOLDER as VERIFIER_FOLDER
from app.ml.verify.store import load_verifier, save_verifier
from app.ml.workflows.pipeline import attach_verifier, calibrate_model, train_to_dir
from app.service.ledger_conn import LedgerConn
from app.service.store import FORGOTTEN_LABEL, create_store, remember_source_folder
from app.service.versions import holdout_ids, ledger_path, version_dir, write_version

log = logging.getLogger("unlearnd.bootstrap")
DEMO_SUBJECT_GROUP = 4


def calibration_config(settings: Settings, seed: int) -> CalibrationConfig:
    return CalibrationConfig(max_accuracy_drop=settings.max_accuracy_drop,
                             max_time_frac=settings.max_unlearn_time_frac, seed=seed)


def train_default(settings: Settings, out: Path, *, progress: bool = True) -> Path:
    """The digits model `make run` serves: GR-trained, its forgetting setting calibrated in its meta."""
    cfg = TrainConfig(alpha=settings.demo_alpha, max_epochs=settings.demo_max_epochs, seed=0)
    train_to_dir(dataset="digits", arch=settings.demo_arch, out=out, train_cfg=cfg, split_cfg=SplitConfig(seed=0),
                 progress=progress, chunk_size=settings.chunk_size,
                 verifier=settings.verifier if settings.verify_refs else None,
                 verifier_cfg=VerifierConfig(n_refs=settings.verify_refs, seed=0),
                 calibration=calibration_config(settings, 0), device=settings.device)
    return out


def _subjects(settings: Settings, md: ModelDir | None, default_model: bool,
              ds: Dataset | None = None) -> dict[int, str]:
    """Whose each sample is: UNLEARND_SUBJECTS_FILE, else the data's own subject column or samples.csv."""
    if settings.subjects_file is not None:
        raw = json.loads(settings.subjects_file.read_text())
        return {int(k): str(v) for k, v in raw.items()}
    if ds is not None and ds.subjects is not None:
        return {int(i): str(ds.subjects[i]) for i in np.flatnonzero((ds.subjects != "") & (ds.y >= 0))}
    if default_model and md is not None:  # digits has no people in it: groups of samples stand in for subjects
        return {int(i): f"subject-{k // DEMO_SUBJECT_GROUP:04d}" for k, i in enumerate(np.sort(md.splits.train))}
    return {}


def publish_initial(settings: Settings, conn: LedgerConn, *, model_dir: Path | None,
                    progress: bool = True) -> str:
    """Publish the first version unless one exists; returns the head's version id."""
    with transaction(conn.read) as s:
        current = ledger.head(s)
    if current is not None:
        _backfill_splits(settings, conn, current)
        return current.id
    refuse_used_home(settings)
    default_model = model_dir is None
    if model_dir is None:
        model_dir = settings.home / "initial-model"
        if not (model_dir / "meta.json").is_file():
            print(f"first start: training the default digits model ({settings.demo_arch}, GR α={settings.demo_alpha})")
            train_default(settings, model_dir, progress=progress)
    md = load_model_dir(model_dir, device=resolve(settings.device))
    ds = dataset_for(md, data_path=None, data_dir=settings.data_dir)
    create_store(settings.store_dir, ds)
    remember_source_folder(settings.store_dir, model_dir)
    train_ids = np.sort(md.splits.train)
    hold = holdout_ids(md.splits, settings.holdout_size)
    sharded = load_shards(md) if md.meta.shards else None  # exact on delete: no fast update, nothing to calibrate
    cache = load_cache(model_dir, ds.device) if sharded is None else None
    if sharded is None and not cache_matches(cache, weights=md.weights_sha256, ids=train_ids):
        cache = build_cache(md.model, ds, train_ids, chunk_size=settings.chunk_size)
    train_cfg = train_config_from_meta(md.meta) or TrainConfig()
    epochs = md.meta.retrain_epochs
    verifier = _publish_verifier(settings, md, ds, train_cfg, epochs)
    calibration = None if sharded else _publish_calibration(settings, md, ds, cache, progress=progress)
    meta = md.meta.with_(published_from=str(model_dir), calibration=calibration)
    sha, path = write_version(settings.models_dir, model=md.model, model_cfg=md.model_cfg, meta=meta,
                              splits=md.splits, sharded=sharded)
    if cache is not None:
        save_cache(cache, path)
    metrics: dict[str, Any] = {"holdout_acc": accuracy(md.model, ds, hold), "n_train": len(train_ids),
                               "verifier": verifier, "exact": True,
                               "calibration": calibration_summary(calibration) if calibration else None}
    if sharded is not None:
        metrics["shards"] = {k: md.meta.shards[k] for k in ("k", "r", "how")}  # type: ignore[index]
    now = utcnow()
    with transaction(conn.write) as s:
        if ledger.head(s) is not None:  # another process published first
            return ledger.head(s).id  # type: ignore[union-attr]
        subjects = _subjects(settings, md, default_model, ds)
        ledger.add_samples(s, ids=train_ids.tolist(), subjects=subjects, keys=keys_of(ds.keys, train_ids))
        for split in OTHER_SPLITS:
            rows = np.sort(getattr(md.splits, split))
            ledger.add_samples(s, ids=rows.tolist(), subjects=subjects, split=split, keys=keys_of(ds.keys, rows))
        v = ledger.add_version(s, sha256=sha, parent_id=None, path=ledger_path(path), now=now, metrics=metrics)
        ledger.set_head(s, version_id=v.id, expected=None, now=now)
        append_entry(s, batch_id="publish", created_at=now.isoformat(),
                     payload={"event": "publish", "model_sha256": sha, "dataset": md.meta.dataset,
                              "arch": md.model_cfg.arch, "n_train": len(train_ids), **metrics})
        log.info("published version %s (%d training samples)", v.id, len(train_ids))
        return v.id


OTHER_SPLITS = ("val", "test", "shadow")


def served_meta(settings: Settings, conn: LedgerConn) -> ModelMeta | None:
    """meta.json of the version the ledger serves (None: none yet)."""
    with transaction(conn.read) as s:
        head = ledger.head(s)
    return None if head is None else ModelMeta.read(version_dir(settings.home, head) / META_FILE)


def refuse_used_home(settings: Settings) -> None:
    """A ledger with no version beside a home that has served: the ledger was lost or replaced. Publishing
    would retrain on the source data and bring erased samples back, so the service refuses to start."""
    signs = []
    y = settings.store_dir / "y.npy"
    if y.is_file():
        erased = int((np.load(y, mmap_mode="r") == FORGOTTEN_LABEL).sum())
        if erased:
            signs.append(f"its data store has {erased} erased rows")
    if settings.models_dir.is_dir():
        versions = [d for d in settings.models_dir.iterdir() if d.is_dir() and not d.name.startswith(".")]
        if versions:
            signs.append(f"its models folder holds {len(versions)} versions")
    if signs:
        raise StateError(f"the ledger at {settings.db_url.split('@')[-1]} has no published version, but "
                         f"{settings.home} has served before ({'; '.join(signs)}): restore the ledger from the "
                         "backup taken with this home (docs/operations.md), or move the home aside to start anew")


def _backfill_splits(settings: Settings, conn: LedgerConn, head: Any) -> None:
    """Ledgers published before every split was recorded get the val, test and shadow samples of the served
    version, so that they too can be deleted."""
    with transaction(conn.read) as s:
        if ledger.has_split_samples(s):
            return
    splits = Splits.load(version_dir(settings.home, head) / "splits.json")
    subjects = _subjects(settings, None, False)
    with transaction(conn.write) as s:
        if ledger.has_split_samples(s):
            return
        for split in OTHER_SPLITS:
            ledger.add_samples(s, ids=np.sort(getattr(splits, split)).tolist(), subjects=subjects, split=split)
    log.info("recorded the val, test and shadow samples in the ledger")


def _publish_verifier(settings: Settings, md: ModelDir, ds: Any, train_cfg: TrainConfig,
                      epochs: int) -> dict[str, Any] | None:
    """The model directory's own verifier when it was built for these training ids, else a new one,
    kept under HOME/verifier; its power goes into the publish entry."""
    if not settings.verify_refs:
        return None
    target = settings.home / VERIFIER_FOLDER
    own = md.path / VERIFIER_FOLDER
    if own.is_dir():
        v = load_verifier(own, with_refs=True)
        if v.name == settings.verifier and np.array_equal(v.member_ids, np.sort(md.splits.train)) and v.power:
            save_verifier(v, target)
            return {**power_summary(v), "power": v.power, "reused": "the model directory's own verifier"}
    inputs = BuildInputs(model=md.model, ds=ds, splits=md.splits, model_cfg=md.model_cfg, train_cfg=train_cfg,
                         epochs=epochs, fit_ref=sharded_references(md.model_cfg, md.meta.shards))
    return attach_verifier(settings.home, inputs, settings.verifier,
                           VerifierConfig(n_refs=settings.verify_refs, seed=md.meta.seed))


def _publish_calibration(settings: Settings, md: ModelDir, ds: Any, cache: Any, *,
                         progress: bool) -> dict[str, Any]:
    """The model's own calibration when it was made with this service's budgets, else a new one."""
    own = md.meta.calibration
    want = calibration_config(settings, md.meta.seed)
    # every knob counts (budgets, sizes, chain, seed): a changed time budget must recalibrate too
    if isinstance(own, dict) and own.get("config") == json.loads(json.dumps(asdict(want))) \
            and own.get("holdout_size") == settings.holdout_size and "candidates" in own:
        return own
    folder = settings.home / VERIFIER_FOLDER
    verifier = load_verifier(folder) if settings.verify_refs and folder.is_dir() else None
    return calibrate_model(md, ds, verifier, cache, want, holdout_size=settings.holdout_size, progress=progress)


def calibration_summary(cal: dict[str, Any]) -> dict[str, Any]:
    """What the publish entry says of the calibration: the choice, why, and the budgets."""
    keep = ("choice", "choice_small", "escalation", "why", "measurable", "min_detectable_batch", "budget", "seconds")
    return {k: cal.get(k) for k in keep}
