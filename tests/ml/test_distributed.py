"""Training on torch.distributed (torchrun, gloo on this CPU): the data partition, the gradient two ranks
all-reduce against the one-process gradient, one process unchanged bit for bit, and `train --nproc 2`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app.ml.data.dataset import minibatches
from app.ml.training.distributed import World, my_slice

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("size", [2, 3])
def test_each_epoch_every_active_sample_lands_on_exactly_one_rank_and_a_forgotten_one_on_none(size: int) -> None:
    rng = np.random.default_rng(0)
    pool = np.arange(1000)
    forgotten = rng.choice(pool, 37, replace=False)
    active = np.setdiff1d(pool, forgotten)
    for epoch in range(3):
        order = np.random.default_rng(epoch).permutation(active)
        seen = []
        for whole in minibatches(order, 64, "fold"):
            parts = [my_slice(whole, World(rank=r, size=size, backend="gloo")) for r in range(size)]
            assert sorted(np.concatenate(parts).tolist()) == sorted(whole.tolist())  # the global batch, split
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
            seen += [x for p in parts for x in p.tolist()]
        assert len(seen) == len(set(seen)) == len(active) and not set(seen) & set(forgotten.tolist())


GRAD_CHECK = """
import json, sys, numpy as np, torch
from app.ml.data.formats import load_dataset
from app.ml.models.factory import ModelConfig
from app.ml.training.distributed import join, all_reduce_grads, my_slice, leave
from app.ml.training.fit import seeded_model
from app.ml.training.gr import gr_loss_and_grads
world = join("cpu")
ds = load_dataset("digits")
model = seeded_model(ModelConfig("mlp", ds.in_shape, ds.num_classes), 0)
batch = np.arange(101)  # an odd global batch: the ranks' slices differ in size
def grads(ids):
    return gr_loss_and_grads(model, ds.features(ids), ds.labels(ids), alpha=0.0, norm="global", method="exact")[1]
mine = my_slice(batch, world)
reduced = all_reduce_grads(grads(mine), len(mine), len(batch), world)
whole = grads(batch)
err = max(float((a - b).abs().max()) for a, b in zip(reduced, whole))
if world.leader:
    json.dump({"err": err, "world": world.size, "backend": world.backend}, open(sys.argv[1], "w"))
leave(world)
"""


def _torchrun(*args: str | Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def test_two_ranks_all_reduce_the_one_process_gradient(tmp_path: Path) -> None:
    script, out = tmp_path / "grad_check.py", tmp_path / "out.json"
    script.write_text(GRAD_CHECK)
    proc = _torchrun(script, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["world"] == 2 and got["backend"] == "gloo" and got["err"] < 1e-6, got


def test_one_process_trains_as_before_bit_for_bit() -> None:
    """fit with no world is the loop it was before torch.distributed (02211d0), written out here: the rank
    slices, the all-reduce, the buffer average and the loss sum change nothing in one process. (A recorded
    sha256 of the weights held on one host, not on another host's CPU: this compares on the same host.)"""
    import copy

    import torch

    from app.ml.data.dataset import SplitConfig, make_splits
    from app.ml.data.formats import load_dataset
    from app.ml.models.factory import ModelConfig
    from app.ml.training.fit import TrainConfig, _loss_and_grads, fit, make_optimizer, seeded_model
    from app.ml.training.metrics import accuracy

    ds = load_dataset("digits")
    splits = make_splits(ds, SplitConfig(seed=0))
    mc, cfg = ModelConfig("mlp", ds.in_shape, ds.num_classes), TrainConfig(alpha=0.05, max_epochs=3, seed=0)
    res = fit(mc, ds, splits.train, splits.val, cfg, progress=False)

    model = seeded_model(mc, cfg.seed)
    opt, rng = make_optimizer(model, cfg), np.random.default_rng(cfg.seed)
    best, best_state = -1.0, None
    for _ in range(cfg.max_epochs):
        model.train()
        for batch in minibatches(rng.permutation(splits.train), cfg.batch_size, cfg.last_batch):
            _, grads = _loss_and_grads(model, ds.features(batch), ds.labels(batch), cfg, None)
            for p, g in zip([p for p in model.parameters() if p.requires_grad], grads, strict=True):
                p.grad = g
            opt.step()
        acc = accuracy(model, ds, splits.val)
        if acc > best:
            best, best_state = acc, copy.deepcopy(model.state_dict())
    assert best_state is not None
    for k, v in res.model.state_dict().items():
        assert torch.equal(v, best_state[k]), k


def test_train_nproc_2_writes_one_model_directory_recording_its_world(tmp_path: Path) -> None:
    """…and its verifier's references, one per rank, are the ones one process trains for that model (the same
    subsets and seeds: another draw would differ by far more than rounding); so are `import --nproc 2`'s."""
    out = tmp_path / "model"
    proc = subprocess.run([sys.executable, "-m", "app.cli", "train", "--dataset", "digits", "--arch", "mlp",
                           "--max-epochs", "6", "--verify-refs", "2", "--no-calibrate", "--quiet", "--nproc", "2",
                           "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("trained mlp on digits") == 1  # rank 0 reports, once
    meta = json.loads((out / "meta.json").read_text())
    assert meta["distributed"] == {"world_size": 2, "backend": "gloo"} and meta["test_acc"] > 0.85, meta
    _refs_are_one_process_refs(out)
    imported = tmp_path / "imported"  # import's recipe runs (the references) on the ranks too
    proc = subprocess.run([sys.executable, "-m", "app.cli", "import", "--weights", str(out / "model.safetensors"),
                           "--dataset", "digits", "--arch", "mlp", "--max-epochs", "4", "--verify-refs", "2",
                           "--no-calibrate", "--quiet", "--nproc", "2", "--out", str(imported)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("imported ") == 1
    meta = json.loads((imported / "meta.json").read_text())
    assert meta["distributed"] == {"world_size": 2, "backend": "gloo"} and meta["imported"], meta
    _refs_are_one_process_refs(imported)


def _refs_are_one_process_refs(out: Path) -> None:
    import torch

    from app.ml.data.formats import load_dataset
    from app.ml.models.checkpoint import load_model_dir
    from app.ml.training.recipe import train_config_from_meta
    from app.ml.verify.base import BuildInputs, VerifierConfig
    from app.ml.verify.build import build_verifier
    from app.ml.verify.store import load_verifier

    shared = load_verifier(out / "verifier", with_refs=True)
    assert shared.info["ranks"] == 2 and len(shared.ref_states) == 2
    md = load_model_dir(out)
    train_cfg = train_config_from_meta(md.meta)
    assert train_cfg is not None
    alone = build_verifier("lira", BuildInputs(model=md.model, ds=load_dataset("digits"), splits=md.splits,
                                               model_cfg=md.model_cfg, train_cfg=train_cfg,
                                               epochs=md.meta.retrain_epochs), shared.config)
    # the ranks ran with one thread each (torchrun's OMP_NUM_THREADS=1), this process with two: float rounding
    assert isinstance(shared.config, VerifierConfig)
    np.testing.assert_allclose(shared.out_mean, alone.out_mean, rtol=1e-5, atol=1e-6)
    for mine, theirs in zip(alone.ref_states, shared.ref_states, strict=True):
        for k in mine:
            torch.testing.assert_close(theirs[k], mine[k], rtol=1e-4, atol=1e-5)
