"""UNLEARND_DEVICE: parsed strictly, resolved honestly, honoured by every ML entry point.

Tests marked `gpu` run only where torch sees CUDA (scripts/gpu_check.sh runs them on a GPU machine);
the rest hold on any machine, with the CPU named explicitly.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from app.core.config import Settings
from app.errors import DeviceError
from app.ml.common.device import check_spec, resolve
from app.ml.common.hashing import weights_sha256
from app.ml.data import dataset as data_mod
from app.ml.data.dataset import Dataset, SplitConfig, Splits
from app.ml.forgetting.gradcache import build_cache, load_cache, save_cache
from app.ml.forgetting.methods import run_method
from app.ml.forgetting.methods.base import UnlearnTask
from app.ml.models.checkpoint import load_model_dir, save_model_dir
from app.ml.models.factory import ModelConfig, create_model
from app.ml.training.fit import TrainConfig, fit
from app.ml.training.metrics import predict_logits
from app.ml.verify.base import VerifierConfig
from tests.conftest import forget_sample

HAS_CUDA = torch.cuda.is_available()


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env}, check=False)


# --- the setting


@pytest.mark.parametrize("spec", ["auto", "cpu", "cuda", "cuda:0", "cuda:1", "cuda:12"])
def test_valid_specs_parse(spec: str) -> None:
    assert Settings(device=spec).device == spec
    assert check_spec(spec) == spec


@pytest.mark.parametrize("spec", ["gpu", "CUDA", "cuda:", "cuda:x", "cuda:-1", "mps", "cpu:0", ""])
def test_invalid_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValidationError, match="auto, cpu, cuda or cuda:N"):
        Settings(device=spec)
    with pytest.raises(DeviceError, match="auto, cpu, cuda or cuda:N"):
        check_spec(spec)


def test_a_bad_device_is_one_line_and_exit_2(tmp_path: Path) -> None:
    proc = cli("bench", "--list", UNLEARND_DEVICE="gpu", UNLEARND_HOME=str(tmp_path / "home"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "unlearnd: error: UNLEARND_DEVICE: must be auto, cpu, cuda or cuda:N (N a GPU index), got 'gpu'"]


def test_cpu_resolves_to_the_cpu() -> None:
    assert resolve("cpu") == torch.device("cpu")


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a GPU: auto takes it")
def test_auto_falls_back_to_the_cpu_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    resolve.cache_clear()
    with caplog.at_level(logging.INFO, logger="unlearnd.device"):
        assert resolve("auto") == torch.device("cpu")
    assert "no CUDA device, running on the CPU" in caplog.text


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a GPU")
@pytest.mark.parametrize("spec", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_an_error(spec: str) -> None:
    with pytest.raises(DeviceError, match="torch sees no CUDA device"):
        resolve(spec)


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a GPU")
def test_serve_refuses_to_start_without_the_gpu_it_was_given(tmp_path: Path) -> None:
    home = tmp_path / "home"
    proc = cli("serve", "--port", "1", UNLEARND_DEVICE="cuda", UNLEARND_HOME=str(home))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("unlearnd: error: device cuda was asked for, but torch sees no CUDA device")
    assert not any("Traceback" in line for line in lines)
    assert not home.exists(), "nothing may start (no ledger, no Redis, no training) before the device check"


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a GPU")
def test_worker_flag_is_checked_before_anything_starts(tmp_path: Path) -> None:
    proc = cli("worker", "--device", "cuda:0", UNLEARND_HOME=str(tmp_path / "home"))
    assert proc.returncode == 2 and "torch sees no CUDA device" in proc.stderr
    proc = cli("worker", "--device", "gpu", UNLEARND_HOME=str(tmp_path / "home"))
    assert proc.returncode == 2 and "auto, cpu, cuda or cuda:N" in proc.stderr


# --- data and weights on a device


def test_dataset_on_cpu_is_the_same_data(digits: Dataset) -> None:
    ids = np.array([5, 0, 17, 3])
    on = digits.on("cpu")
    assert on.placement == "cpu" and on.device == torch.device("cpu")
    assert torch.equal(on.features(ids), digits.features(ids)) and torch.equal(on.labels(ids), digits.labels(ids))
    assert on.x is digits.x, "moving a dataset must not copy its arrays"


def test_checkpoints_load_onto_the_device_asked(digits_model_dir: Path) -> None:
    md = load_model_dir(digits_model_dir, device="cpu")
    assert all(p.device.type == "cpu" for p in md.model.parameters())
    assert md.weights_sha256 == json.loads((digits_model_dir / "meta.json").read_text())["weights_sha256"]


def test_train_unlearn_and_verify_run_with_the_cpu_named(tmp_path: Path) -> None:
    from app.ml.verify.cli import verify_command
    from app.ml.workflows.pipeline import train_to_dir, unlearn_to_dir

    out = tmp_path / "m"
    meta = train_to_dir(dataset="digits", arch="lenet5", out=out, split_cfg=SplitConfig(seed=0), device="cpu",
                        train_cfg=TrainConfig(alpha=0.1, max_epochs=3, seed=0), progress=False, verifier="lira",
                        verifier_cfg=VerifierConfig(n_refs=2, seed=0))
    assert meta.machine["device"] == "cpu" and meta.machine["data_placement"] == "cpu"
    ids = forget_sample(Splits.load(out / "splits.json").train, frac=0.02)
    (tmp_path / "f.txt").write_text("\n".join(map(str, ids)))
    u = unlearn_to_dir(model_dir=out, forget_ids=ids, out=tmp_path / "u", method="iau", max_accuracy_drop=1.0,
                       device="cpu")
    assert u.machine["device"] == "cpu" and u.unlearn["attempts"][0]["path"] == "fast"
    res = verify_command(model=tmp_path / "u", ids_file=tmp_path / "f.txt", against=None, data=None, data_dir=None,
                         as_json=True, device="cpu")
    assert res["device"] == "cpu" and res["assessed"]["n"] == len(ids)


# --- GPU (skipped without CUDA)


@pytest.mark.gpu
def test_resident_and_streamed_batches_are_equal(digits: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    resident = digits.on("cuda")
    monkeypatch.setattr(data_mod, "RESIDENT_SHARE", 0.0)
    streamed = digits.on("cuda")
    assert (resident.placement, streamed.placement) == ("resident", "streamed")
    ids = np.array([9, 1, 400, 2])
    for ds in (resident, streamed):
        assert ds.features(ids).device.type == "cuda"
        assert torch.equal(ds.features(ids).cpu(), digits.features(ids))
        assert torch.equal(ds.labels(ids).cpu(), digits.labels(ids))


@pytest.mark.gpu
def test_a_model_saved_on_one_device_loads_on_the_other(digits: Dataset, digit_splits: Splits,
                                                        tmp_path: Path) -> None:
    cfg = ModelConfig("lenet5", digits.in_shape, 10)
    trained = fit(cfg, digits.on("cuda"), digit_splits.train, None, TrainConfig(max_epochs=2, seed=0),
                  progress=False).model
    save_model_dir(tmp_path / "m", model=trained, model_cfg=cfg, meta={"dataset": "digits"}, splits=digit_splits)
    on_cpu = load_model_dir(tmp_path / "m", device="cpu")
    on_gpu = load_model_dir(tmp_path / "m", device="cuda")
    assert on_cpu.weights_sha256 == on_gpu.weights_sha256 == weights_sha256(trained.state_dict())
    ids = digit_splits.test[:64]
    a = predict_logits(on_cpu.model, digits, ids)
    b = predict_logits(on_gpu.model, digits.on("cuda"), ids).cpu()
    assert torch.allclose(a, b, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fast_path_equals_slow_path_on_the_gpu(digits: Dataset, digit_splits: Splits, tmp_path: Path,
                                               dtype: torch.dtype) -> None:
    ds = digits.on("cuda")
    torch.manual_seed(0)
    model = create_model(ModelConfig("lenet5", digits.in_shape, 10), "cuda").to(dtype)
    forget = forget_sample(digit_splits.train)
    save_cache(build_cache(model, ds, digit_splits.train, chunk_size=128), tmp_path)
    cache = load_cache(tmp_path, ds.device)
    assert cache is not None and all(v.device.type == "cuda" and v.dtype == torch.float64
                                     for v in cache.sums.values())
    base = UnlearnTask(model=model, ds=ds, train_ids=digit_splits.train, forget_ids=forget,
                       weights_sha256=weights_sha256(model.state_dict()), chunk_size=128, cache=cache)
    params = {"eta": 0.05, "reduction": "mean", "step": "sgd"}
    fast = run_method("iau", base, params)
    slow = run_method("iau", UnlearnTask(**{**base.__dict__, "cache": None}), params)
    assert fast.info["path"] == "fast" and slow.info["path"] == "slow"
    theta = torch.cat([p.detach().flatten().double() for p in model.parameters()])
    d_fast = torch.cat([p.detach().flatten().double() for p in fast.model.parameters()]) - theta
    d_slow = torch.cat([p.detach().flatten().double() for p in slow.model.parameters()]) - theta
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    assert float((d_fast - d_slow).abs().max() / d_slow.abs().max()) <= tol
