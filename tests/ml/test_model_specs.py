"""Issue 24, part 2: a team's own model by spec (registered name, torchvision:NAME, MODULE:CALLABLE), recorded
in meta.json, imported again on load, and every bad spec one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from app.errors import ConfigError, UnknownNameError
from app.ml.models.factory import ModelConfig, create_model

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ModelConfig("tests.models_for_tests:small_cnn", (1, 8, 8), 10)


def test_a_module_callable_and_torchvision() -> None:
    torch.manual_seed(0)
    m = create_model(DIGITS)
    assert m(torch.zeros(5, 1, 8, 8)).shape == (5, 10)
    tv = create_model(ModelConfig("torchvision:resnet18", (3, 16, 16), 4))
    assert tv(torch.zeros(2, 3, 16, 16)).shape == (2, 4)
    assert sum(p.numel() for p in tv.parameters()) > 10_000_000  # the real ResNet18, untrained, nothing downloaded


@pytest.mark.parametrize(("spec", "shape", "says"), [
    ("tests.nope:small_cnn", (1, 8, 8), "cannot import 'tests.nope'"),
    ("tests.models_for_tests:missing", (1, 8, 8), "has no callable 'missing'"),
    ("tests.models_for_tests:NOT_CALLABLE", (1, 8, 8), "has no callable 'NOT_CALLABLE'"),
    ("tests.models_for_tests:raises", (1, 8, 8), "raised RuntimeError: no GPU kernels"),
    ("tests.models_for_tests:not_a_module", (1, 8, 8), "not a torch.nn.Module"),
    ("tests.models_for_tests:wrong_classes", (1, 8, 8), "not (2, 10) logits"),
    ("tests.models_for_tests:small_cnn", (64,), "fails in forward"),
    ("torchvision:resnet18", (1, 8, 8), "3-channel images"),
    ("torchvision:not_a_model", (3, 8, 8), "not a torchvision classification model"),
    (":x", (3, 8, 8), "MODULE:CALLABLE"),
])
def test_bad_specs_are_one_line(spec: str, shape: tuple[int, ...], says: str) -> None:
    with pytest.raises(ConfigError) as e:
        create_model(ModelConfig(spec, shape, 10))
    assert says in str(e.value) and spec in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UnknownNameError, match="valid: lenet5, mlp"):
        create_model(ModelConfig("lenet6", (1, 8, 8), 10))


def _cli(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_train_and_unlearn_a_module_model_and_a_torchvision_one(tmp_path: Path) -> None:
    out = tmp_path / "own"
    r = _cli("train", "--dataset", "digits", "--model", "tests.models_for_tests:small_cnn", "--alpha", "0",
             "--max-epochs", "3", "--verify-refs", "0", "--no-calibrate", "--quiet", "--out", out)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "meta.json").read_text())["arch"] == "tests.models_for_tests:small_cnn"
    train = json.loads((out / "splits.json").read_text())["train"]
    (tmp_path / "ids.txt").write_text("\n".join(map(str, train[:20])))
    r = _cli("unlearn", "--model", out, "--forget-ids", tmp_path / "ids.txt", "--method", "iau", "--max-accuracy-drop",
             "1", "--out", tmp_path / "after")
    assert r.returncode == 0, r.stderr  # loading the directory imported the module again
    # the module gone: one line naming the spec
    r = subprocess.run([sys.executable, "-m", "app.cli", "unlearn", "--model", str(out), "--forget-ids",
                        str(tmp_path / "ids.txt"), "--out", str(tmp_path / "x")], capture_output=True, text=True,
                       timeout=300, cwd=tmp_path, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert r.returncode == 2 and "tests.models_for_tests:small_cnn" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    # torchvision on tiny 3-channel images
    rng = np.random.default_rng(0)
    data = tmp_path / "tiny.npz"
    np.savez(data, x_train=rng.integers(0, 255, (120, 16, 16, 3), dtype=np.uint8), y_train=rng.integers(0, 3, 120),
             x_test=rng.integers(0, 255, (40, 16, 16, 3), dtype=np.uint8), y_test=rng.integers(0, 3, 40))
    r = _cli("train", "--dataset", "npz", "--data", data, "--model", "torchvision:resnet18", "--alpha", "0",
             "--max-epochs", "1", "--verify-refs", "0", "--no-calibrate", "--quiet", "--out", tmp_path / "tv")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "tv" / "meta.json").read_text())["arch"] == "torchvision:resnet18"
