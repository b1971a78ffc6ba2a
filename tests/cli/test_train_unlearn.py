"""`unlearnd train` / `unlearnd unlearn` end to end, as a user runs them, and their errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file


def cli(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "app.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)
    assert "Traceback" not in proc.stderr, proc.stderr
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "model"
    cli("train", "--dataset", "digits", "--arch", "lenet5", "--alpha", "0.05", "--seed", "0",
        "--max-epochs", "12", "--quiet", "--out", out)
    return out


def _forget_file(model: Path, tmp_path: Path, n: int = 40) -> tuple[Path, list[int]]:
    train = json.loads((model / "splits.json").read_text())["train"]
    ids = sorted(np.random.default_rng(1).choice(train, n, replace=False).tolist())
    path = tmp_path / "forget.txt"
    path.write_text("# ids to forget\n" + "\n".join(map(str, ids)) + "\n")
    return path, ids


def test_train_writes_the_documented_layout(trained: Path) -> None:
    assert {p.name for p in trained.iterdir()} == {"model.safetensors", "meta.json", "splits.json",
                                                    "grad_cache.safetensors", "verifier"}
    assert {p.name for p in (trained / "verifier").iterdir()} == {
        "verifier.json", "stats.safetensors", *(f"ref-{k}.safetensors" for k in range(4))}
    meta = json.loads((trained / "meta.json").read_text())
    power = meta["verifier"]["power"]
    assert meta["verifier"]["K"] == 4 and meta["verifier"]["ref_train_seconds"] > 0
    ref_acc = json.loads((trained / "verifier" / "verifier.json").read_text())["info"]["ref_acc"]
    assert len(ref_acc) == 4 and all(0.2 < a <= 1 for a in ref_acc)  # each reference, on non-members
    assert meta["verifier"]["recipe_spread"] == pytest.approx(float(np.std(ref_acc, ddof=1)))
    for key in ("auc", "tpr@0.01", "tpr@0.05", "min_detectable_batch", "measurable"):
        assert key in power, key
    for key in ("arch", "dataset", "alpha", "gr_norm", "seed", "epochs", "train_acc", "val_acc", "test_acc",
                "wall_time_s", "version", "git_hash"):
        assert key in meta, key
    assert meta["alpha"] == 0.05 and meta["seed"] == 0 and meta["epochs"] <= 12
    splits = json.loads((trained / "splits.json").read_text())
    assert set(splits) == {"train", "val", "test", "shadow"}


def test_unlearn_fast_then_slow_give_the_same_model(trained: Path, tmp_path: Path) -> None:
    forget, ids = _forget_file(trained, tmp_path)
    no_budget = ("--method", "iau", "--max-accuracy-drop", "1")  # this test is about the two paths, not the step
    cli("unlearn", "--model", trained, *no_budget, "--forget-ids", forget, "--out", tmp_path / "fast")
    cli("unlearn", "--model", trained, *no_budget, "--forget-ids", forget, "--no-cache", "--out", tmp_path / "slow")
    fast = json.loads((tmp_path / "fast" / "meta.json").read_text())
    slow = json.loads((tmp_path / "slow" / "meta.json").read_text())
    assert fast["unlearn"]["attempts"][0]["path"] == "fast" and slow["unlearn"]["attempts"][0]["path"] == "slow"
    u = fast["unlearn"]
    for key in ("method", "n_forget", "time_s", "forget_acc_before", "forget_acc_after", "test_acc_before",
                "test_acc_after", "params"):
        assert key in u, key
    assert u["n_forget"] == len(ids) and u["params"]["reduction"] in ("sum", "mean")
    train_after = json.loads((tmp_path / "fast" / "splits.json").read_text())["train"]
    assert not set(ids) & set(train_after)
    a = load_file(str(tmp_path / "fast" / "model.safetensors"))
    b = load_file(str(tmp_path / "slow" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_unlearned_model_can_be_unlearned_again(trained: Path, tmp_path: Path) -> None:
    forget, _ = _forget_file(trained, tmp_path, n=10)
    cli("unlearn", "--model", trained, "--method", "iau", "--max-accuracy-drop", "1", "--forget-ids", forget,
        "--refresh-cache", "--out", tmp_path / "u1")
    again = cli("unlearn", "--model", tmp_path / "u1", "--forget-ids", forget, "--out", tmp_path / "u2",
                check=False)
    assert again.returncode == 2 and "not in the train split" in again.stderr
    train = json.loads((tmp_path / "u1" / "splits.json").read_text())["train"]
    (tmp_path / "next.txt").write_text(f"{train[0]}\n{train[1]}\n")
    second = cli("unlearn", "--model", tmp_path / "u1", "--method", "iau", "--max-accuracy-drop", "1",
                 "--forget-ids", tmp_path / "next.txt", "--out", tmp_path / "u2")
    assert "fast path" in second.stdout  # the refreshed cache matches the new weights


@pytest.mark.parametrize(("args", "message"), [
    (["train", "--dataset", "digits", "--arch", "alexnet", "--alpha", "0"], "valid: lenet5, mlp, resnet18, vgg19"),
    (["train", "--dataset", "mnist", "--arch", "lenet5", "--alpha", "0"],
     "valid: cifar10, cifar100, csv, digits, imagefolder"),
])
def test_unknown_names_list_the_valid_ones(tmp_path: Path, args: list[str], message: str) -> None:
    proc = cli(*args, "--out", tmp_path / "x", check=False)
    assert proc.returncode == 2 and message in proc.stderr


def test_bad_forget_lists(trained: Path, tmp_path: Path) -> None:
    splits = json.loads((trained / "splits.json").read_text())
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    proc = cli("unlearn", "--model", trained, "--forget-ids", tmp_path / "empty.txt", "--out", tmp_path / "o",
               check=False)
    assert proc.returncode == 2 and "empty" in proc.stderr
    bad = [splits["test"][0], 10**9]
    (tmp_path / "bad.txt").write_text(f"{splits['train'][0]}\n{bad[0]}\n{bad[1]}\n")
    proc = cli("unlearn", "--model", trained, "--forget-ids", tmp_path / "bad.txt", "--out", tmp_path / "o",
               check=False)
    assert proc.returncode == 2 and str(bad[0]) in proc.stderr and str(bad[1]) in proc.stderr
    (tmp_path / "words.txt").write_text("12\nabc\n")
    proc = cli("unlearn", "--model", trained, "--forget-ids", tmp_path / "words.txt", "--out", tmp_path / "o",
               check=False)
    assert proc.returncode == 2 and "name no sample of the data: abc" in proc.stderr  # the data's ids are integers
    assert not (tmp_path / "o").exists()


def test_mismatched_weights_are_refused(trained: Path, tmp_path: Path) -> None:
    forget, _ = _forget_file(trained, tmp_path, n=3)
    other = tmp_path / "other"
    cli("train", "--dataset", "digits", "--arch", "lenet5", "--alpha", "0", "--seed", "1", "--max-epochs", "1",
        "--quiet", "--no-cache", "--out", other)
    (trained.parent / "mixed").mkdir(exist_ok=True)
    for name in ("meta.json", "splits.json"):
        (trained.parent / "mixed" / name).write_bytes((trained / name).read_bytes())
    (trained.parent / "mixed" / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    proc = cli("unlearn", "--model", trained.parent / "mixed", "--forget-ids", forget, "--out", tmp_path / "o",
               check=False)
    assert proc.returncode == 2 and "does not match its meta.json" in proc.stderr
    proc = cli("unlearn", "--model", tmp_path / "nowhere", "--forget-ids", forget, "--out", tmp_path / "o",
               check=False)
    assert proc.returncode == 2 and "not a model directory" in proc.stderr
