"""A verifier on disk: FOLDER/verifier.json + stats.safetensors + ref-K.safetensors (never a pickle)."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from app.errors import VerifierError
from app.ml.common.fsutil import atomic_replace, atomic_write_text
from app.ml.verify.base import Verifier, VerifierConfig
from app.ml.verify.build import VERIFIERS

FOLDER = "verifier"
ARRAYS = ("member_ids", "calib_ids", "eval_ids", "ref_ids", "out_mean")


def save_statistics(v: Verifier, folder: Path) -> None:
    """Only the per-sample arrays, atomically, beside the reference models already there (which can be large:
    a ResNet18's are 45 MB each): what dropping a deleted sample's statistics rewrites."""
    arrays = {name: torch.from_numpy(np.ascontiguousarray(getattr(v, name))) for name in ARRAYS}
    with atomic_replace(Path(folder) / "stats.safetensors") as t:
        save_file(arrays, str(t))


def save_verifier(v: Verifier, folder: Path) -> Path:
    """Write into a sibling temp folder, then swap it in: a reader never sees half a verifier."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for k, state in enumerate(v.ref_states):
        with atomic_replace(tmp / f"ref-{k}.safetensors") as t:
            save_file(state, str(t))
    save_statistics(v, tmp)
    meta = {"name": v.name, "config": asdict(v.config), "out_std": v.out_std, "flip": v.flip, "info": v.info,
            "power": v.power, "n_refs": len(v.ref_states)}
    atomic_write_text(tmp / "verifier.json", json.dumps(meta, indent=2, sort_keys=True))
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def load_verifier(folder: Path, *, with_refs: bool = False) -> Verifier:
    folder = Path(folder)
    if not (folder / "verifier.json").is_file():
        raise VerifierError(f"no membership verifier at {folder} (train with reference models: "
                            "`unlearnd train --verify-refs K`, K ≥ 2)")
    try:
        meta = json.loads((folder / "verifier.json").read_text())
        arrays = {k: v.numpy() for k, v in load_file(str(folder / "stats.safetensors")).items()}
        known = set(VerifierConfig.__dataclass_fields__)
        cfg = VerifierConfig(**{k: v for k, v in meta["config"].items() if k in known})
        n_refs = int(meta["n_refs"])
    except (OSError, KeyError, ValueError, TypeError, SafetensorError) as e:
        raise VerifierError(f"the verifier at {folder} is unreadable: {e}") from e
    need = VERIFIERS.get(meta["name"]).min_refs
    if n_refs < need:
        raise VerifierError(f"the verifier at {folder} has K={n_refs} reference models; {meta['name']} needs "
                            f"at least {need}")
    if need:
        missing = [k for k in range(n_refs) if not (folder / f"ref-{k}.safetensors").is_file()]
        if missing:
            raise VerifierError(f"the verifier at {folder} lacks reference models {missing}")
    refs = [load_file(str(folder / f"ref-{k}.safetensors")) for k in range(n_refs)] if with_refs else []
    return Verifier(name=meta["name"], config=cfg, out_std=float(meta["out_std"]), flip=bool(meta["flip"]),
                    info=meta.get("info", {}), power=meta.get("power"), ref_states=refs,
                    **{k: arrays[k] for k in ARRAYS})
