"""A consolidation's exact retrain, in the worker or as a torchrun job of several processes.

With `UNLEARND_EXACT_NPROC` = 1 and no `UNLEARND_EXACT_LAUNCH`, the worker fits in its own process, as always.
Otherwise it writes a job folder under the home (the served version's folder, the store, the active and
validation ids) and starts `python -m torch.distributed.run … -m worker.exact JOB`, on this host or through the
operator's launcher template. Every rank reads the spec, trains its slices (app/ml/training/distributed.py), and
rank 0 writes JOB/model.safetensors and JOB/world.json; the worker then loads those weights strictly into the
served model's architecture, and validates and swaps them in as any version. A rank that dies, a job that hangs
past `UNLEARND_EXACT_TIMEOUT_S` or a launcher that cannot start fails the consolidation as a whole: the served
version stays, the requests stay approximate, and the worker redoes it after its backoff.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from app.core.config import Settings
from app.errors import ExactJobFailed
from app.ml.common.device import resolve
from app.ml.common.fsutil import atomic_replace, atomic_write_text
from app.ml.data.dataset import Dataset, Splits
from app.ml.models.checkpoint import ModelDir, load_model_dir
from app.ml.models.factory import create_model
from app.ml.models.pretrained import load_strict
from app.ml.sharding.references import sharded_references
from app.ml.training.distributed import SINGLE, join, leave
from app.ml.training.fit import TrainConfig, fit
from app.ml.training.recipe import train_config_from_meta
from app.ml.verify.base import BuildInputs, Verifier, VerifierConfig
from app.ml.verify.build import build_verifier
from app.ml.verify.store import load_verifier, save_verifier
from app.service.store import store_on

JOBS = "jobs"
log = logging.getLogger("unlearnd.exact")


def exact_fit(settings: Settings, md: ModelDir, ds: Dataset, active: np.ndarray, val: np.ndarray,
              cfg: TrainConfig) -> tuple[nn.Module, dict[str, Any]]:
    """The retrain on ACTIVE of MD's model with recipe CFG, and how it ran ({world_size, backend, feature_cache,
    epochs}): a consolidation's, and a batch's `retrain` (UnlearnTask.refit)."""
    if settings.exact_nproc <= 1 and not settings.exact_launch:
        res = fit(md.model_cfg, ds, active, val, cfg, progress=False, feature_cache=settings.feature_cache)
        return res.model, {**SINGLE.record(), "feature_cache": res.feature_cache, "epochs": res.epochs_run}
    np_files = {"active.npy": active, "val.npy": val}
    with _job(settings, "retrain", {"version_dir": str(md.path), "recipe": dataclasses.asdict(cfg)}, np_files) as job:
        weights = job / "model.safetensors"
        if not weights.is_file():
            raise ExactJobFailed(f"the exact retrain job ended without writing {weights.name}")
        model = create_model(md.model_cfg, ds.device)
        load_strict(model, load_file(str(weights), device=str(ds.device)), str(weights))
        return model.eval(), json.loads((job / "world.json").read_text())


def exact_references(settings: Settings, md: ModelDir, ds: Dataset, splits: Splits, recipe: TrainConfig,
                     epochs: int, name: str, config: VerifierConfig) -> Verifier:
    """The verifier NAME's reference models for MD's model on SPLITS, retrained (the derived models' rebuild):
    in this process, or shared out one model per rank in a job like the retrain's (UNLEARND_EXACT_*)."""
    if (settings.exact_nproc <= 1 and not settings.exact_launch) or md.meta.shards:  # a sharded one: here
        return build_verifier(name, BuildInputs(md.model, ds, splits, md.model_cfg, recipe, epochs,
                                                fit_ref=sharded_references(md.model_cfg, md.meta.shards)), config)
    spec = {"version_dir": str(md.path), "recipe": dataclasses.asdict(recipe), "epochs": epochs, "verifier": name,
            "verifier_config": dataclasses.asdict(config), "splits": splits.to_json()}
    with _job(settings, "references", spec, {}) as job:
        if not (job / "verifier" / "verifier.json").is_file():
            raise ExactJobFailed("the reference models' job ended without writing its verifier")
        return load_verifier(job / "verifier", with_refs=True)


@contextmanager
def _job(settings: Settings, kind: str, spec: dict[str, Any], arrays: dict[str, np.ndarray]) -> Iterator[Path]:
    """A job folder under the home holding SPEC and ARRAYS, run to its end by the launcher; removed after."""
    job = settings.home / JOBS / f"{kind}-{uuid.uuid4().hex[:12]}"
    job.mkdir(parents=True)
    try:
        for file, values in arrays.items():
            np.save(job / file, values)
        atomic_write_text(job / "spec.json", json.dumps({"kind": kind, "store_dir": str(settings.store_dir),
                                                         "device": settings.device,
                                                         "feature_cache": settings.feature_cache, **spec}))
        _launch(settings, job)
        yield job
    finally:
        shutil.rmtree(job, ignore_errors=True)


def launch_command(settings: Settings, job: Path) -> list[str]:
    if settings.exact_launch:
        return shlex.split(settings.exact_launch.format(python=shlex.quote(sys.executable),
                                                        nproc=settings.exact_nproc, job=shlex.quote(str(job))))
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={settings.exact_nproc}",
            "-m", "worker.exact", str(job)]


LAUNCHES = 2  # torchrun's own start can fail transiently (a free port taken between its pick and its bind)


def _launch(settings: Settings, job: Path) -> None:
    """The job, tried again once at once when it fails: a second failure fails the consolidation."""
    for attempt in range(1, LAUNCHES + 1):
        try:
            return _run(settings, job)
        except ExactJobFailed as e:
            if attempt == LAUNCHES:
                raise ExactJobFailed(f"{e} ({LAUNCHES} launches)") from e
            log.warning("exact retrain job launch %d failed, launching again: %s", attempt, e)


def _run(settings: Settings, job: Path) -> None:
    cmd = launch_command(settings, job)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=settings.exact_timeout_s, check=False)
    except FileNotFoundError as e:
        raise ExactJobFailed(f"the exact retrain's launcher cannot start: {e}") from e
    except subprocess.TimeoutExpired as e:
        raise ExactJobFailed(f"the exact retrain job ran past UNLEARND_EXACT_TIMEOUT_S "
                             f"({settings.exact_timeout_s:g} s) and was killed") from e
    if proc.returncode:
        lines = [x for x in proc.stderr.splitlines() if x.strip() and not set(x.strip()) <= set("=-")]
        log.error("the exact retrain job failed (exit %d); its last output:\n%s", proc.returncode,
                  "\n".join(lines[-40:]))
        why = next((x for x in reversed(lines) if "Error" in x), lines[-1] if lines else "(no output)")
        raise ExactJobFailed(f"the exact retrain job failed (exit {proc.returncode}: {why.strip()[:300]})")


def run_job(job: Path) -> None:
    """One rank of the job: every rank trains; rank 0 writes what the job made, and the world it ran in."""
    spec = json.loads((job / "spec.json").read_text())
    world = join(spec["device"])
    dev = torch.device(f"cuda:{world.local_rank}") if resolve(spec["device"]).type == "cuda" else torch.device("cpu")
    md = load_model_dir(Path(spec["version_dir"]), device=dev)
    ds = store_on(Path(spec["store_dir"]), dev)
    cfg = TrainConfig(**spec["recipe"]) if "recipe" in spec else train_config_from_meta(md.meta) or TrainConfig()
    if spec.get("kind") == "references":
        splits = Splits(**{k: np.asarray(v, dtype=np.int64) for k, v in spec["splits"].items()})
        v = build_verifier(spec["verifier"], BuildInputs(md.model, ds, splits, md.model_cfg, cfg, spec["epochs"],
                                                         world=world), VerifierConfig(**spec["verifier_config"]))
        leave(world)
        if world.leader:
            save_verifier(v, job / "verifier")
        return
    res = fit(md.model_cfg, ds, np.load(job / "active.npy"), np.load(job / "val.npy"), cfg, progress=False,
              world=world, feature_cache=spec.get("feature_cache", True))
    leave(world)
    if world.leader:
        state = {k: v.detach().cpu().contiguous() for k, v in res.model.state_dict().items()}
        with atomic_replace(job / "model.safetensors") as tmp:
            save_file(state, str(tmp))
        atomic_write_text(job / "world.json", json.dumps({**world.record(), "feature_cache": res.feature_cache,
                                                             "epochs": res.epochs_run}))


if __name__ == "__main__":
    run_job(Path(sys.argv[1]))
