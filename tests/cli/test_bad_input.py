"""Every subcommand with bad input: one line on stderr (`unlearnd: error: …`), exit code 2, nothing written
(issue 23: several exited 1, printed a traceback, or did not name the flag)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def _run(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`unlearnd ARGS` as a process (the exit code and stderr a user sees), with its home under TMP."""
    import os

    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "UNLEARND_HOME": str(tmp / "home")})


def _main(tmp: Path, argv: list[str], capsys: pytest.CaptureFixture[str],
          monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """The same in this process (no interpreter start-up per case): (exit code, stderr)."""
    from app.cli import main

    monkeypatch.setenv("UNLEARND_HOME", str(tmp / "home"))
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's errors exit
        code = int(e.code or 0)
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    tab = d / "tab.npz"
    rng = np.random.default_rng(0)
    np.savez(tab, x_train=rng.normal(size=(40, 5)).astype(np.float32), y_train=rng.integers(0, 2, 40),
             x_test=rng.normal(size=(10, 5)).astype(np.float32), y_test=rng.integers(0, 2, 10))
    text = d / "text.npz"
    text.write_text("this is not an npz archive\n")
    ids = d / "ids.txt"
    ids.write_text("1\nnot-an-id\n")
    assert _run(d, "db", "upgrade").returncode == 0  # the ledger commands meet a real, empty ledger
    return {"tab": tab, "text": text, "ids": ids, "dir": d}


def cases(f: dict[str, Path]) -> dict[str, tuple[list[str], str]]:
    """name → (argv, a text the error must contain: what to fix)."""
    out = str(f["dir"] / "out")
    return {
        "arch on the wrong input": (["train", "--dataset", "npz", "--data", str(f["tab"]), "--arch", "lenet5",
                                     "--alpha", "0", "--out", out], "needs image input"),
        "negative alpha": (["train", "--dataset", "digits", "--arch", "mlp", "--alpha", "-1", "--out", out],
                           "--alpha"),
        "unknown dataset": (["train", "--dataset", "nope", "--arch", "mlp", "--alpha", "0", "--out", out],
                            "valid: cifar10, cifar100, csv, digits, imagefolder"),
        "unknown arch": (["train", "--dataset", "digits", "--arch", "nope", "--alpha", "0", "--out", out],
                         "valid: lenet5, mlp, resnet18"),
        "npz without --data": (["train", "--dataset", "npz", "--arch", "mlp", "--alpha", "0", "--out", out],
                               "--data"),
        "text as npz": (["train", "--dataset", "npz", "--data", str(f["text"]), "--arch", "mlp", "--alpha", "0",
                         "--out", out], "not a readable .npz"),
        "zero epochs": (["train", "--dataset", "digits", "--arch", "mlp", "--alpha", "0", "--max-epochs", "0",
                         "--out", out], "--max-epochs"),
        "missing flag": (["train", "--dataset", "digits", "--arch", "mlp"], "--out"),
        "zero shards": (["train", "--dataset", "digits", "--arch", "mlp", "--shards", "0", "--out", out],
                        "--shards"),
        "shards on several processes": (["train", "--dataset", "digits", "--arch", "mlp", "--shards", "2", "--nproc",
                                         "2", "--out", out], "--nproc"),
        "more slices than epochs": (["train", "--dataset", "digits", "--arch", "mlp", "--shards", "2", "--slices",
                                     "3", "--max-epochs", "2", "--out", out], "--slices 3"),
        "unknown subcommand": (["frobnicate"], "invalid choice"),
        "unlearn a missing model": (["unlearn", "--model", str(f["dir"] / "none"), "--forget-ids", str(f["ids"]),
                                     "--out", out], "is not a model directory"),
        "verify a missing model": (["verify", "--model", str(f["dir"] / "none"), "--ids", str(f["ids"])], "none"),
        "cache a missing model": (["cache", "--model", str(f["dir"] / "none")], "none"),
        "unknown suite": (["bench", "--suite", "nope", "--out", out], "valid"),
        "revoke an unknown key": (["keys", "revoke", "nope"], "no key 'nope'"),
        "unknown scope": (["keys", "create", "--scopes", "root"], "scopes must be"),
        "retry an unknown request": (["requests", "retry", "nope"], "no deletion request"),
        "a bad head": (["audit", "verify", "--expect-head", "12:xyz"], "12:xyz"),
        "a bad device": (["worker", "--device", "gpu"], "gpu"),
        "a bad port": (["serve", "--port", "http"], "--port"),
    }


@pytest.mark.parametrize("name", list(cases({k: Path() for k in ("tab", "text", "ids", "dir")})))
def test_bad_input_is_one_line_and_exit_2(name: str, files: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    argv, says = cases(files)[name]
    code, err = _main(files["dir"], argv, capsys, monkeypatch)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("unlearnd: error: ")]
    assert code == 2, (name, code, err[-2000:])
    assert len(errors) == 1 and "Traceback" not in err, (name, err[-2000:])
    assert says in errors[0], (name, errors[0])
    assert not any(ln.startswith("usage:") for ln in lines), (name, err)
    assert not (files["dir"] / "out").exists(), f"{name}: something was written"


def test_a_bad_flag_as_a_user_meets_it(files: dict[str, Path]) -> None:
    """Once as a real process: the exit code and the one line a shell sees."""
    r = _run(files["dir"], "train", "--dataset", "digits", "--arch", "mlp", "--alpha", "-1", "--out", "x")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "unlearnd: error: train: argument --alpha: '-1' must be ≥ 0 (see --help)"], r.stderr
    fresh = files["dir"] / "fresh"
    r = _run(fresh, "keys", "list")
    assert r.returncode == 2 and "run `unlearnd db upgrade`" in r.stderr, r.stderr


def test_help_lists_the_choices_and_describes_every_flag(files: dict[str, Path]) -> None:
    text = _run(files["dir"], "train", "--help").stdout
    for word in ("digits", "cifar10", "lenet5", "resnet18"):
        assert word in text, word
    for flag in ("--seed", "--lr", "--max-epochs", "--out"):
        block = text.split(flag, 1)[1].split("\n  -", 1)[0]
        assert len(block.split()) > 2, f"{flag} has no help text"
    assert "model directory" in _run(files["dir"], "unlearn", "--help").stdout


def test_db_upgrade_says_what_it_did(tmp_path: Path) -> None:
    first = _run(tmp_path, "db", "upgrade")
    again = _run(tmp_path, "db", "upgrade")
    assert first.returncode == again.returncode == 0
    assert "migrated from an empty database to revision" in first.stdout, first.stdout
    assert "was already at the newest revision" in again.stdout, again.stdout
