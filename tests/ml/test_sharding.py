"""SISA's core (issue 36): the plan keeps a subject in one shard, and an exact deletion retrains only that shard,
from the checkpoint before the first slice that held the subject."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from app.errors import ConfigError, ModelLoadError
from app.ml.bench.shards import ModelSpec, ShardsConfig, run
from app.ml.data.dataset import Dataset, Splits
from app.ml.models.aggregate import Aggregate
from app.ml.models.checkpoint import load_model_dir, save_model_dir
from app.ml.models.factory import ModelConfig
from app.ml.sharding.plan import make_plan
from app.ml.sharding.store import SHARDS, load_shards, save_shards, shards_record, slice_file
from app.ml.sharding.train import forget_sharded, train_sharded
from app.ml.training.fit import TrainConfig
from app.ml.training.metrics import accuracy


def _subjects(ids: np.ndarray) -> dict[int, str]:
    return {int(i): f"person-{int(i) % 97}" for i in ids}


def test_a_subject_lives_in_one_shard_and_the_shards_are_balanced(digit_splits: Splits) -> None:
    ids = digit_splits.train
    plan = make_plan(ids, k=4, r=2, seed=0, subjects=_subjects(ids))
    people = _subjects(ids)
    for person in {"person-3", "person-50"}:
        mine = [i for i in ids if people[int(i)] == person]
        assert len(set(plan.where(np.asarray(mine))[0].tolist())) == 1
    sizes = np.bincount(plan.shard, minlength=4)
    assert sizes.max() - sizes.min() <= max(np.bincount(np.unique(list(people.values()), return_inverse=True)[1]))
    for k in range(4):  # each shard's slices split its samples evenly, and slice 0 ⊂ slices 0..1
        assert abs(len(plan.members(k, upto=1)) * 2 - len(plan.members(k))) <= 1
    same = make_plan(ids, k=4, r=2, seed=0, subjects=_subjects(ids))
    assert np.array_equal(same.shard, plan.shard) and np.array_equal(same.slice, plan.slice)
    assert not np.array_equal(make_plan(ids, k=4, r=2, seed=1, subjects=_subjects(ids)).shard, plan.shard)
    with pytest.raises(ConfigError):
        make_plan(ids[:5], k=4, r=2, seed=0)


def test_deleting_a_subject_retrains_only_its_shard_from_the_slice_before(digits: Dataset, digit_splits: Splits,
                                                                           lenet_cfg: ModelConfig) -> None:
    ids = digit_splits.train
    subjects = _subjects(ids)
    plan = make_plan(ids, k=4, r=2, seed=0, subjects=subjects)
    sh = train_sharded(lenet_cfg, digits, plan, TrainConfig(max_epochs=30, seed=0))
    acc = accuracy(sh.aggregate(), digits, digit_splits.test)
    x = digits.features(digit_splits.test[:16])  # the K forwards in one vmapped call answer as K calls do
    with torch.inference_mode():
        assert torch.allclose(Aggregate(sh.constituents, batched=True)(x), sh.aggregate()(x), atol=1e-5)
    assert acc > 0.85, acc  # four models on a quarter of the data each, averaged
    gone = np.asarray([i for i in ids if subjects[int(i)] == "person-7"])
    shard = int(plan.where(gone)[0][0])
    first = int(plan.where(gone)[1].min())
    after, record = forget_sharded(sh, digits, gone)
    assert [r["shard"] for r in record["shards_retrained"]] == [shard]
    assert record["shards_retrained"][0]["from_slice"] == first
    for k in range(4):
        same = all(torch.equal(a, b) for a, b in zip(sh.constituents[k].state_dict().values(),
                                                    after.constituents[k].state_dict().values(), strict=True))
        assert same == (k != shard), k  # the other constituents are bit-identical; this one changed
    for j in range(plan.r):  # no checkpoint that saw the subject survives; those before its first slice are kept
        kept = all(torch.equal(sh.checkpoints[shard][j][n], after.checkpoints[shard][j][n])
                   for n in sh.checkpoints[shard][j])
        assert kept == (j < first), j
    assert not np.isin(gone, after.plan.ids).any() and len(after.plan.ids) == len(ids) - len(gone)
    assert accuracy(after.aggregate(), digits, digit_splits.test) > acc - 0.05
    # the retrain from the same checkpoint on the same data repeats itself: exactness is reproducible
    again, _ = forget_sharded(sh, digits, gone)
    assert all(torch.equal(a, b) for a, b in zip(again.constituents[shard].state_dict().values(),
                                                after.constituents[shard].state_dict().values(), strict=True))


def test_the_shards_suite_reports_every_cell_side_by_side(tmp_path: Path) -> None:
    cfg = ShardsConfig("shards-quick", dataset="digits", models=(ModelSpec("digits LeNet5", "lenet5", 600, 20),),
                       ks=(1, 2), rs=(1, 2), seeds=1, mia_rows=100, throughput_repeats=3)
    rows = run(cfg, out=tmp_path, seeds=None, data_dir=None, data_path=None)["rows"]
    assert {(r["k"], r["r"]) for r in rows} == {(1, 1), (1, 2), (2, 1), (2, 2)}
    for r in rows:
        assert 0.5 < r["test_acc"] <= 1 and 0.4 < r["mia_auc"] < 1 and r["delete_s"] > 0 and r["rows_per_s_64"] > 0
        assert r["speedup"] == pytest.approx(r["retrain_s"] / r["delete_s"])
    assert (tmp_path / "shards.png").stat().st_size > 1000 and "| 2 | 2 |" in (tmp_path / "results.md").read_text()


def test_a_sharded_directory_loads_as_its_aggregate_and_refuses_changed_slices(digits: Dataset, digit_splits: Splits,
                                                                               tmp_path: Path) -> None:
    cfg = ModelConfig(arch="tests.models_for_tests:small_cnn_bn", in_shape=digits.in_shape,
                      num_classes=digits.num_classes)
    plan = make_plan(digit_splits.train, k=3, r=2, seed=0)
    sh = train_sharded(cfg, digits, plan, TrainConfig(max_epochs=2, seed=0))
    folder = tmp_path / "m"
    save_model_dir(folder, model=sh.aggregate(), model_cfg=cfg, meta={"shards": shards_record(sh)},
                   splits=digit_splits)
    save_shards(folder, sh)
    md = load_model_dir(folder)
    x = digits.features(digit_splits.test[:32])
    with torch.inference_mode():  # batch norm in eval mode: the batched forward follows the aggregate's mode
        want = torch.log(torch.stack([m.eval()(x).softmax(-1) for m in sh.constituents]).mean(0))
        assert torch.allclose(md.model(x), want, atol=1e-5)
        assert torch.allclose(Aggregate(list(md.model.constituents), batched=True).eval()(x), want, atol=1e-5)
    back = load_shards(md)
    assert np.array_equal(back.plan.shard, plan.shard) and len(back.checkpoints[2]) == 2
    assert all(torch.equal(back.checkpoints[1][1][n], t) for n, t in sh.checkpoints[1][1].items())
    slices = folder / SHARDS / slice_file(1)
    state = load_file(str(slices))
    state[next(iter(state))] += 1
    save_file(state, str(slices))
    with pytest.raises(ModelLoadError, match="slices-1"):
        load_shards(md)
