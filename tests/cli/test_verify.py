"""`unlearnd verify` and the verifier's bad-input contract: one line on stderr, exit 2, nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from app.ml.bench.verifier import VERIFIER, run

TRAIN = ["--dataset", "digits", "--arch", "mlp", "--alpha", "0", "--max-epochs", "5", "--quiet"]


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def one_line_error(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("verify") / "m"
    proc = cli("train", *TRAIN, "--verify-refs", "2", "--out", out)
    assert proc.returncode == 0 and "membership verifier lira (K=2)" in proc.stdout, proc.stderr
    return out


def _ids(tmp_path: Path, model: Path, split: str, n: int) -> Path:
    ids = json.loads((model / "splits.json").read_text())[split][:n]
    f = tmp_path / f"{split}.txt"
    f.write_text("\n".join(map(str, ids)) + "\n")
    return f


def test_verify_prints_summary_and_pvalues(model: Path, tmp_path: Path) -> None:
    ids = _ids(tmp_path, model, "train", 30)
    unlearned = tmp_path / "u"
    assert cli("unlearn", "--model", model, "--forget-ids", ids, "--out", unlearned).returncode == 0
    meta = json.loads((unlearned / "meta.json").read_text())
    assert meta["unlearn"]["verification"]["after"]["n"] == 30  # unlearn judged its own forget set
    proc = cli("verify", "--model", unlearned, "--ids", ids, "--against", model)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("membership verifier lira (K=2): AUC") and "UE_lira" in proc.stdout
    table = lines[lines.index("id\tp_value\tp_value_against") + 1 :]
    assert len(table) == 30 and all(0 < float(r.split("\t")[1]) <= 1 for r in table)
    doc = json.loads(cli("verify", "--model", model, "--ids", ids, "--json").stdout)
    assert doc["assessed"]["n"] == 30 and len(doc["pvalues"]["model"]) == 30
    assert doc["verdict"] in ("forgotten", "partial", "not measurable")


def test_bad_ids_are_one_line_errors(model: Path, tmp_path: Path) -> None:
    one_line_error(cli("verify", "--model", model, "--ids", _ids(tmp_path, model, "test", 3)), "not training samples")
    unknown = tmp_path / "unknown.txt"
    unknown.write_text("99999999\n")
    one_line_error(cli("verify", "--model", model, "--ids", unknown), "not training samples")
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    one_line_error(cli("verify", "--model", model, "--ids", empty), "no ids")


def test_model_without_references_and_too_few_are_one_line_errors(tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    assert cli("train", *TRAIN, "--verify-refs", "0", "--out", bare).returncode == 0
    ids = _ids(tmp_path, bare, "train", 5)
    one_line_error(cli("verify", "--model", bare, "--ids", ids), "no membership verifier")
    one_line_error(cli("train", *TRAIN, "--verify-refs", "1", "--out", tmp_path / "k1"), "at least 2 reference")
    assert not (tmp_path / "k1").exists()  # refused before anything was trained or written
    one_line_error(cli("train", *TRAIN, "--verifier", "shokri", "--out", tmp_path / "x"), "valid: lira, loss")


def test_verifier_suite_runs_end_to_end(tmp_path: Path) -> None:
    cfg = replace(VERIFIER, name="verifier-tiny", seeds=1, memorise_dataset="digits", memorise_train=150,
                  memorise_epochs=20, refs=2, cost_max_epochs=3, cost_batches=(10,), cost_repeats=1)
    doc = run(cfg, out=tmp_path, seeds=None, data_dir=None, data_path=None)
    assert doc["memorise"][0]["lira"]["tpr@0.01"]["n"] == 150
    assert doc["cost"][0]["batches"][0]["verify_s"] > 0
    assert "| LiRA (K=2) |" in (tmp_path / "results.md").read_text() and (tmp_path / "verifier.png").exists()
