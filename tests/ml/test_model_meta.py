"""meta.json as one typed record (ModelMeta): what the current code writes reads back unchanged, an old file
from the first round still loads, and keys this version does not know survive a round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.errors import ModelLoadError
from app.ml.models.checkpoint import META_FILE, load_model_dir
from app.ml.models.meta import ModelMeta
from app.ml.training.fit import TrainConfig
from app.ml.training.recipe import train_config_from_meta

# docs/results/speed/model/meta.json as commit 63a9789 wrote it, the first round's
OLD = Path(__file__).resolve().parents[1] / "fixtures" / "meta_2026-11.json"


def test_a_meta_written_by_the_current_code_round_trips(digits_model_dir: Path) -> None:
    raw = json.loads((digits_model_dir / META_FILE).read_text())
    meta = ModelMeta.read(digits_model_dir / META_FILE)
    assert meta.to_json() == raw and not meta.extra  # every key it writes is a typed field
    assert meta.calibration is not None and meta.verifier is not None and meta.arch == "lenet5"
    assert meta.in_shape == tuple(raw["in_shape"]) and meta.retrain_epochs == raw["best_epoch"]
    assert load_model_dir(digits_model_dir).meta == meta


def test_an_old_meta_json_loads_with_its_recipe() -> None:
    meta = ModelMeta.read(OLD)
    assert (meta.arch, meta.in_shape, meta.num_classes, meta.dataset) == ("lenet5", (3, 32, 32), 10, "cifar10")
    assert meta.best_epoch is None and meta.retrain_epochs == 32  # no best epoch recorded: all it ran
    assert meta.calibration is None and meta.test_acc is None and meta.val_acc == pytest.approx(0.6122, abs=1e-4)
    recipe = train_config_from_meta(meta)
    assert isinstance(recipe, TrainConfig) and recipe.lr == 0.001 and recipe.max_epochs == 100
    assert ModelMeta.from_json(meta.to_json()) == meta


def test_unknown_keys_are_kept_and_written_back() -> None:
    raw = {**json.loads(OLD.read_text()), "parent_weights_sha256": "ab" * 32, "a_future_key": {"x": [1, 2]}}
    meta = ModelMeta.from_json(raw)
    assert meta.extra == {"parent_weights_sha256": "ab" * 32, "a_future_key": {"x": [1, 2]}}
    out = meta.to_json()
    assert out["parent_weights_sha256"] == "ab" * 32 and out["a_future_key"] == {"x": [1, 2]}
    assert ModelMeta.from_json(out) == meta  # and the known ones as they were (nulls left out, defaults in)


def test_a_meta_without_a_model_description_is_a_load_error() -> None:
    with pytest.raises(ModelLoadError, match="lacks a valid model description"):
        ModelMeta.from_json({"dataset": "digits"})


def test_a_derived_version_drops_the_records_of_how_its_parent_was_made() -> None:
    parent = ModelMeta.from_json({**json.loads(OLD.read_text()), "unlearn": {"method": "iau"},
                                  "published_from": "/models/a"})
    child = parent.inherited(test_acc=0.5)
    assert child.unlearn is None and child.published_from is None and child.weights_sha256 == ""
    assert child.test_acc == 0.5 and child.train_config == parent.train_config and child.arch == parent.arch


def test_a_derived_version_takes_its_own_records() -> None:
    parent = ModelMeta.from_json({**json.loads(OLD.read_text()), "unlearn": {"method": "iau"}})
    child = parent.inherited(unlearn={"method": "out_match"}, consolidation={"reason": "due"})
    assert child.unlearn == {"method": "out_match"} and child.consolidation == {"reason": "due"}
