"""`unlearnd bench`: suites are listed, and a tiny table run writes all three outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from app.ml.bench import SUITES
from app.ml.bench.speed import SpeedConfig, run_speed
from app.ml.bench.table import run_table, tiny
from tests.ml.test_methods import BASELINES


def test_list_names_every_suite() -> None:
    proc = subprocess.run([sys.executable, "-m", "app.cli", "bench", "--list"], capture_output=True, text=True,
                          check=True, timeout=120)
    for name in ("quick", "cifar10-lenet5", "iau-sweep", "speed"):
        assert name in proc.stdout and name in SUITES.names()


def test_tiny_table_writes_json_md_png_with_every_method(tmp_path: Path) -> None:
    doc = run_table(tiny(), out=tmp_path, data_dir=None, data_path=None, seeds=1, progress=False)
    assert {p.name for p in tmp_path.iterdir()} >= {"results.json", "results.md", "mu_ue.png"}
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["provenance"]["git_hash"] is None or len(saved["provenance"]["git_hash"]) == 40
    assert saved["config"]["seeds"] == [0]
    methods = {r["method"] for r in saved["summary"]}
    assert set(BASELINES) <= methods
    md = (tmp_path / "results.md").read_text()
    for m in BASELINES:
        assert f"| {m} |" in md
    assert "UE_lira" in md and "| shokri on θ* (α=0.0) |" in md and "| LiRA on θ* (α=0.0) |" in md
    for r in saved["rows"]:
        assert 0 <= r["lira_flagged"] <= 100 and 0 <= r["lira_auc"] <= 1 and r["UE_lira"] >= 0
    assert next(r for r in saved["rows"] if r["method"] == "retrain")["UE_lira"] == 0
    assert saved["verifier_power"][0]["verifier"]["K"] == 4
    ranked = [r for r in doc["summary"] if "avg_rank" in r]
    assert {r["method"] for r in ranked} == set(BASELINES) - {"retrain"}
    assert (tmp_path / "mu_ue.png").read_bytes()[:4] == b"\x89PNG"


def test_unknown_suite_is_a_clean_error(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "app.cli", "bench", "--suite", "table9", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "valid:" in proc.stderr and "Traceback" not in proc.stderr


def test_seeds_for_a_suite_with_fixed_seeds_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "speed"
    proc = subprocess.run([sys.executable, "-m", "app.cli", "bench", "--suite", "speed-quick", "--seeds", "2",
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "without --seeds" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_speed_suite_on_digits(tmp_path: Path) -> None:
    doc = run_speed(SpeedConfig(dataset="digits", max_epochs=2, patience=2, epoch_repeats=1, repeats=1),
                    out=tmp_path, data_dir=None, data_path=None)
    s = doc["summary"]
    assert s["memory"]["fast"]["path"] == "fast" and s["memory"]["slow"]["path"] == "slow"
    assert s["fast_vs_slow_max_abs_weight_diff"] < 1e-5
    assert (tmp_path / "speed.png").exists() and (tmp_path / "results.md").exists()


def test_sweep_default_respects_the_accuracy_bound() -> None:
    from app.ml.bench.sweep import select_default

    rows = [{"MU_val": 6.5, "UE": 1.7, "score": 8.2, "name": "damaging"},
            {"MU_val": 1.0, "UE": 8.5, "score": 9.5, "name": "chosen"},
            {"MU_val": 0.5, "UE": 8.5, "score": 9.0, "name": "tie-break"},
            {"MU_val": 1.9, "UE": 12.0, "score": 13.9, "name": "worse"}]
    assert select_default(rows, 2.0)["name"] == "tie-break"
    assert select_default(rows, 10.0)["name"] == "damaging"
    assert select_default(rows, 0.1)["name"] == "tie-break"  # nothing feasible: the least damage


def test_forgetting_suite_rows_frontier_and_chain(tmp_path: Path) -> None:
    from app.ml.bench.forgetting import CALIBRATED, CONFIGS, FAST, PEER_METHODS, label, render, run
    from app.ml.forgetting.calibrate import CANDIDATES

    quick = next(c for c in CONFIGS if c.name == "forgetting-quick")
    doc = run(quick, out=tmp_path, seeds=None, data_dir=None, data_path=None)
    names = [r["method"] for r in doc["rows"]]
    peers = names[2 + len(FAST) + len(CANDIDATES):-1]
    assert names[:2 + len(FAST) + len(CANDIDATES)] == ["θ*", "retrain", *(f[0] for f in FAST),
                                                        *(label(c.to_dict()) for c in CANDIDATES)]
    assert names[-1] == CALIBRATED and len(peers) == 2 * len(PEER_METHODS)
    # each at its authors' defaults and tuned by calibration's rule, under one name whatever the seed gave
    assert peers == [f"{p} ({kind})" for p in PEER_METHODS for kind in ("paper defaults", "tuned")]
    rows = {r["method"]: r for r in doc["rows"]}
    assert all(isinstance(rows[f"{p} (tuned)"]["qualified"], bool) for p in PEER_METHODS)
    assert rows["retrain"]["salun_gap"] == 0 and all(r["salun_gap"] >= 0 for r in rows.values())
    assert 0 <= rows["θ*"]["mia_efficacy"] <= 100
    gap = rows["retrain"]["gap_closed"]
    assert rows["retrain"]["MU"] == 0 and (gap == pytest.approx(1.0) or gap != gap)  # NaN: θ* shows no gap at all
    assert rows["θ*"]["time_s"] is None and rows["iau (paper: one step)"]["speedup"] > 1
    cal = doc["per_seed"][0]["calibration"]
    assert "candidates" in cal and rows[CALIBRATED]["params"]["method"] in {"retrain", *(
        c["setting"]["method"] for c in cal["candidates"])}
    (chain,) = doc["per_seed"][0]["chains"]
    assert chain["size"] == 10 and len(chain["steps"]) == 3
    assert all(s["verdict"] in ("forgotten", "partial", "not measurable") for s in chain["steps"])
    for step in chain["steps"]:  # the policy never keeps a fast result below the floor, nor a broken retrain
        budget = quick.exact_max_accuracy_drop if step["exact"] else quick.max_accuracy_drop
        assert step["failed"] or chain["holdout_acc_start"] - step["holdout_acc"] <= budget + 1e-9, step
    md = (tmp_path / "results.md").read_text()
    assert "| calibrated (policy) |" in md and "Chained deletions" in md and "speed-up" in md
    assert "| scrub (tuned) (qualified on " in md
    assert (tmp_path / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "frontier.png").unlink()
    render(tmp_path)  # from results.json alone: the same table, the run's own provenance
    assert (tmp_path / "results.md").read_text() == md and (tmp_path / "frontier.png").exists()


def test_finetune_suite_rows_and_frozen_backbone(tmp_path: Path) -> None:
    from app.ml.bench.finetune import FinetuneConfig, run

    cfg = FinetuneConfig("finetune-quick", dataset="digits", seeds=1, max_epochs=3, verify_refs=2, limit=400)
    doc = run(cfg, out=tmp_path, seeds=None, data_dir=None, data_path=None)
    rows = {r["method"]: r for r in doc["rows"]}
    assert set(rows) == {"θ* (fine-tuned)", "calibrated policy", "exact re-fine-tune (same init)",
                         "same, whole model every epoch", "retrain from scratch (all layers)"}
    assert rows["exact re-fine-tune (same init)"]["MU"] == 0
    # over cached features or through the whole model, the same re-fine-tune
    assert abs(rows["same, whole model every epoch"]["test_acc"] - rows["exact re-fine-tune (same init)"]["test_acc"]) \
        < 0.5
    assert doc["per_seed"][0]["feature_cache"]["used"]
    assert all(rows[n]["frozen_identical"] for n in rows if "scratch" not in n)  # the backbone never moved
    assert set(doc["per_seed"][0]["speedups"]) == {"scratch / re-fine-tune", "whole-model / cached re-fine-tune",
                                                   "re-fine-tune / policy", "scratch / policy"}
    assert (tmp_path / "finetune.png").read_bytes()[:4] == b"\x89PNG" and "speed-ups" in \
        (tmp_path / "results.md").read_text().lower()


def test_small_deletions_suite_steps_pvalues_and_retrain(tmp_path: Path) -> None:
    from app.ml.bench.small_deletions import SmallConfig, run

    cfg = SmallConfig("forgetting-small-quick", dataset="digits", n_train=300, epochs=30, refs=2, steps=3, seeds=1)
    doc = run(cfg, out=tmp_path, seeds=None, data_dir=None, data_path=None)
    steps = doc["per_seed"][0]["steps"]
    assert len(steps) == 3 and all(len(s["ids"]) == 10 for s in steps)
    assert len({i for s in steps for i in s["ids"]}) == 30  # chained: never the same id twice
    for s in steps:
        for who in ("before", "policy", "retrain", "twin"):
            assert len(s[who]["p_values"]) == 10 and 0 <= s[who]["flagged"] <= 100
        assert s["twin"]["p_values"] != s["retrain"]["p_values"]  # another init seed: another model
        step = s["per_sample"]  # the per-sample step's record exists exactly when one ran
        assert (step is not None) == (s["escalated"] or s["memorised"])
        assert step is None or 1 <= step["n_flagged"] <= 10
    md = (tmp_path / "results.md").read_text()
    assert "| step |" in md and "refused" in md and "halved step" in md and "the metric's floor" in md
