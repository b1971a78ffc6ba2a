"""What the service derived from samples that are now deleted: the verifier's statistics and reference
models, and the audit's membership attack.

Run after every erasure (and at worker start, to heal a crash in between): per-sample statistics of
deleted ids are dropped from the verifier; if deleted samples were in the shadow split, the models
trained on it (the verifier's references, the attack's shadow models) are retrained without them, and
an audit entry says so. Idempotent: each artefact records which shadow ids it was built without.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from app.core.config import Settings
from app.db import ledger
from app.db.audit import append_entry
from app.db.session import transaction, utcnow
from app.ml.data import Splits
from app.ml.device import resolve
from app.ml.mia.shadow import MIAConfig, fit_attack
from app.ml.mia.store import load_attack, save_attack
from app.ml.pipeline import train_config_from_meta
from app.ml.train import TrainConfig
from app.ml.verify import build_verifier
from app.ml.verify.base import BuildInputs, Verifier
from app.ml.verify.store import FOLDER as VERIFIER_FOLDER
from app.ml.verify.store import load_verifier, save_statistics, save_verifier
from app.service.ledger_conn import LedgerConn
from app.service.store import store_on
from app.service.versions import load_version

log = logging.getLogger("unlearnd.worker")


def scrub_derived(settings: Settings, conn: LedgerConn, forgotten: np.ndarray) -> dict[str, Any]:
    with transaction(conn.read) as s:
        head = ledger.head(s)
    if head is None or not len(forgotten):
        return {}
    folder = settings.home / VERIFIER_FOLDER
    v = load_verifier(folder) if folder.is_dir() else None  # the references only if they must be rebuilt
    attack_dir = settings.home / "attack"
    attack = load_attack(attack_dir) if (attack_dir / "attack.json").is_file() else None
    excluded = np.intersect1d(forgotten, Splits.load(Path(head.path) / "splits.json").shadow)
    stale_v = v is not None and _needs_rebuild(v.info, excluded)
    stale_a = attack is not None and _needs_rebuild(attack.info, excluded)
    done: dict[str, Any] = {}
    if stale_v or stale_a:
        dev = resolve(settings.device)
        md, ds = load_version(head, device=dev), store_on(settings.store_dir, dev)
        splits = md.splits.without(forgotten)
        recipe = train_config_from_meta(md.meta) or TrainConfig()
        epochs = int(md.meta.get("best_epoch") or md.meta.get("epochs") or 20)
        if stale_v and v is not None:
            v = _rebuild_verifier(v, BuildInputs(md.model, ds, splits, md.model_cfg, recipe, epochs), excluded)
            done["verifier"] = "rebuilt"
        if stale_a and attack is not None:
            cfg = MIAConfig(**{k: attack.info[k] for k in MIAConfig.__dataclass_fields__ if k in attack.info})
            new = fit_attack(ds, splits.shadow, md.model_cfg, replace(recipe, patience=10**6), epochs, cfg)
            new.info["shadow_excluded"] = excluded.tolist()
            save_attack(new, attack_dir)
            done["attack"] = "rebuilt"
    if v is not None and _drop_stats(v, forgotten):
        done.setdefault("verifier", "statistics dropped")
    if v is not None and done.get("verifier") == "rebuilt":
        save_verifier(v, folder)
    elif v is not None and done.get("verifier"):
        save_statistics(v, folder)
    if done.get("verifier") == "rebuilt" or done.get("attack"):
        now = utcnow()
        with transaction(conn.write) as s:
            append_entry(s, batch_id="derived", created_at=now.isoformat(), payload={
                "event": "rebuild_derived", "why": "samples of the shadow split were deleted", **done,
                "n_shadow_excluded": len(excluded)})
        log.info("retrained what was built on deleted shadow samples: %s", done)
    return done


def _needs_rebuild(info: dict[str, Any], hits: np.ndarray) -> bool:
    return bool(len(np.setdiff1d(hits, np.asarray(info.get("shadow_excluded", []), dtype=np.int64))))


def _rebuild_verifier(v: Verifier, inputs: BuildInputs, excluded: np.ndarray) -> Verifier:
    new = build_verifier(v.name, inputs, v.config)
    new.power = new.measure_power(inputs.model, inputs.ds)
    new.member_ids = np.union1d(new.member_ids, v.member_ids)  # ids forgotten earlier stay askable
    new.info = {**new.info, "shadow_excluded": excluded.tolist()}
    return new


def _drop_stats(v: Verifier, forgotten: np.ndarray) -> bool:
    """Per-sample statistics of deleted ids leave the verifier (their ids stay in member_ids)."""
    keep = ~np.isin(v.ref_ids, forgotten)
    changed = not keep.all() or bool(np.isin(v.calib_ids, forgotten).any() or np.isin(v.eval_ids, forgotten).any())
    if changed:
        v.ref_ids, v.out_mean = v.ref_ids[keep], v.out_mean[keep]
        v.calib_ids = np.setdiff1d(v.calib_ids, forgotten)
        v.eval_ids = np.setdiff1d(v.eval_ids, forgotten)
    return changed
