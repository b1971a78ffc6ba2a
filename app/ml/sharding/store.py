"""A sharded model's own files, beside its weights (which are its K constituents', app/ml/models/aggregate.py):
shards/plan.json (which shard and slice holds each training id) and shards/slices-K.safetensors (constituent K's
weights after each of its slices, the slice's index as the key prefix). meta.json's `shards` names K, R, the
aggregation and each slice file's sha256; a file that does not match is refused, never trained from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from app.errors import ModelLoadError
from app.ml.common.fsutil import atomic_replace, atomic_write_text
from app.ml.common.hashing import weights_sha256
from app.ml.models.aggregate import Aggregate
from app.ml.models.checkpoint import META_FILE, ModelDir, set_meta_fields
from app.ml.models.factory import model_device
from app.ml.models.meta import ModelMeta
from app.ml.sharding.plan import ShardPlan
from app.ml.sharding.train import Sharded, State
from app.ml.training.fit import TrainConfig
from app.ml.training.recipe import train_config_from_meta

SHARDS = "shards"
PLAN_FILE = "plan.json"


def slice_file(k: int) -> str:
    return f"slices-{k}.safetensors"


def shards_record(sh: Sharded) -> dict[str, Any]:
    """meta.json's `shards` before the slice files exist: what the loader needs to build the aggregate."""
    return {"k": sh.plan.k, "r": sh.plan.r, "how": sh.how, "seed": sh.plan.seed}


def save_shards(folder: Path, sh: Sharded) -> dict[str, Any]:
    """Write SH's plan and slice checkpoints into the model directory FOLDER (its weights and meta.json already
    written), and their sha256 into its meta.json; the record written."""
    out = folder / SHARDS
    out.mkdir(parents=True, exist_ok=True)
    shas = []
    for k, checkpoints in enumerate(sh.checkpoints):
        state = {f"{j}.{n}": t.detach().cpu().contiguous() for j, cp in enumerate(checkpoints) for n, t in cp.items()}
        sha = weights_sha256(state)
        with atomic_replace(out / slice_file(k)) as tmp:
            save_file(state, str(tmp), metadata={"weights_sha256": sha})
        shas.append(sha)
    atomic_write_text(out / PLAN_FILE, json.dumps(sh.plan.to_json()))
    record = {**shards_record(sh), "slices_sha256": shas, "shard_seconds": [round(s, 3) for s in sh.seconds],
              "shard_sizes": [int((sh.plan.shard == k).sum()) for k in range(sh.plan.k)]}
    set_meta_fields(folder, shards=record)
    return record


def load_shards(md: ModelDir) -> Sharded:
    """The sharded model in MD (loaded by load_model_dir: its model is the aggregate), with its plan and slice
    checkpoints, checked against meta.json; ModelLoadError when MD is not sharded or a file does not match."""
    rec = md.meta.shards
    if not rec or not isinstance(md.model, Aggregate):
        raise ModelLoadError(f"{md.path} is not a sharded model")
    folder = md.path / SHARDS
    try:
        plan = ShardPlan.from_json(json.loads((folder / PLAN_FILE).read_text()))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelLoadError(f"{folder / PLAN_FILE} is missing or unreadable ({e})") from e
    if (plan.k, plan.r) != (int(rec["k"]), int(rec["r"])):
        raise ModelLoadError(f"{folder / PLAN_FILE} plans {plan.k}×{plan.r}, meta.json says {rec['k']}×{rec['r']}")
    dev = str(model_device(md.model))
    checkpoints = [_slices(folder / slice_file(k), plan.r, rec.get("slices_sha256", [None] * plan.k)[k], dev)
                   for k in range(plan.k)]
    recipe = train_config_from_meta(md.meta) or TrainConfig()
    return Sharded(plan, md.model_cfg, recipe, list(md.model.constituents), checkpoints,
                   [float(s) for s in rec.get("shard_seconds", [])], str(rec.get("how", "mean")))


def _slices(path: Path, r: int, sha: str | None, device: str) -> list[State]:
    try:
        state = load_file(str(path), device=device)
    except (SafetensorError, OSError) as e:
        raise ModelLoadError(f"{path} is not a readable safetensors file ({e})") from e
    if sha is None or weights_sha256(state) != sha:
        raise ModelLoadError(f"{path} does not match the sha256 its meta.json records")
    out: list[State] = [{} for _ in range(r)]
    for name, t in state.items():
        j, _, rest = name.partition(".")
        out[int(j)][rest] = t
    return out


def is_sharded(folder: Path) -> bool:
    return bool(ModelMeta.read(folder / META_FILE).shards)
