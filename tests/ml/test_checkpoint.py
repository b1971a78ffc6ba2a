"""Model directories: round trip, strict loading, tamper detection, atomic writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from app.errors import ModelLoadError
from app.ml.models.checkpoint import MODEL_FILE, load_model_dir


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "m"
    shutil.copytree(src, dst)
    return dst


def test_round_trip(digits_model_dir: Path) -> None:
    md = load_model_dir(digits_model_dir)
    assert md.meta.arch == "lenet5" and md.meta.weights_sha256 == md.weights_sha256
    raw = load_file(str(digits_model_dir / MODEL_FILE))
    assert all(torch.equal(raw[k], v) for k, v in md.model.state_dict().items())


def test_a_paused_load_is_the_same_load(digits_model_dir: Path) -> None:
    """Serving loads a new version in steps, sleeping between them, beside live traffic."""
    steps: list[int] = []
    md = load_model_dir(digits_model_dir, pause=lambda: steps.append(1))
    assert len(steps) >= 4
    plain = load_model_dir(digits_model_dir)
    assert md.weights_sha256 == plain.weights_sha256
    assert all(torch.equal(v, plain.model.state_dict()[k]) for k, v in md.model.state_dict().items())


def test_changed_weights_are_refused(digits_model_dir: Path, tmp_path: Path) -> None:
    d = _copy(digits_model_dir, tmp_path)
    state = load_file(str(d / MODEL_FILE))
    key = next(iter(state))
    state[key] = state[key] + 1e-6
    save_file(state, str(d / MODEL_FILE))
    with pytest.raises(ModelLoadError, match=r"does not match its meta\.json"):
        load_model_dir(d)


def test_weights_of_another_arch_are_refused(digits_model_dir: Path, tmp_path: Path) -> None:
    d = _copy(digits_model_dir, tmp_path)
    meta = json.loads((d / "meta.json").read_text())
    meta["arch"] = "mlp"
    (d / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="does not fit arch 'mlp'"):
        load_model_dir(d)


def test_truncated_file_is_refused(digits_model_dir: Path, tmp_path: Path) -> None:
    d = _copy(digits_model_dir, tmp_path)
    data = (d / MODEL_FILE).read_bytes()
    (d / MODEL_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_model_dir(d)


def test_missing_file_is_named(digits_model_dir: Path, tmp_path: Path) -> None:
    d = _copy(digits_model_dir, tmp_path)
    (d / "splits.json").unlink()
    with pytest.raises(ModelLoadError, match=r"splits\.json is missing"):
        load_model_dir(d)


def test_no_temp_files_left_behind(digits_model_dir: Path) -> None:
    assert not [p.name for p in digits_model_dir.iterdir() if p.name.startswith(".")]
