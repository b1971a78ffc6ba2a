"""A model directory's meta.json as one typed record, read and written here and nowhere else.

Its sections follow the layers: what the model and its data are (here), how it trained (the recipe's
fields, typed by app/ml/training/recipe.py), what the verifier measured, what calibration chose and how its
last step was forgotten (recorded by app/ml/verify and app/ml/forgetting, kept here as their own records).
Keys this version does not know, from an older or newer meta.json, are kept as they are (`extra`), so a
round trip loses nothing. No torch here.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.errors import ModelLoadError

RETRAIN_EPOCHS = 20  # a model whose meta records no epochs at all (an import without a recipe) retrains this long


@dataclass(frozen=True)
class ModelMeta:
    # the model
    arch: str
    in_shape: tuple[int, ...]
    num_classes: int
    weights_sha256: str = ""
    class_names: tuple[str, ...] | None = None
    feature_names: tuple[str, ...] | None = None
    init: dict[str, Any] | None = None  # {file, sha256, source, weights_sha256}: the copy kept beside the weights
    freeze: tuple[str, ...] = ()
    # a SISA model (app/ml/sharding): {k, r, how, seed, slices_sha256}; the weights are its K constituents'
    shards: dict[str, Any] | None = None
    # the data
    dataset: str | None = None
    data_path: str | None = None
    data_options: dict[str, Any] = field(default_factory=dict)
    split_config: dict[str, Any] | None = None
    split_origin: dict[str, Any] | None = None
    n_train: int | None = None
    # how it trained: the recipe's fields (`recipe_of`), where the recipe came from, what the run measured
    train_config: dict[str, Any] | None = None
    recipe: dict[str, Any] | None = None
    alpha: float | None = None
    gr_norm: str | None = None
    seed: int = 0
    epochs: int | None = None
    best_epoch: int | None = None
    seconds_per_epoch: float | None = None
    seconds_per_epoch_estimated: bool | None = None  # an import's: priced by timing the recipe
    wall_time_s: float | None = None
    distributed: dict[str, Any] | None = None  # {world_size, backend} of the run that trained it
    feature_cache: dict[str, Any] | None = None  # its frozen features cached (cut, rows, seconds), or why not
    imported: dict[str, Any] | None = None  # `unlearnd import`: the weights' file and sha256
    # accuracies, named by the split they were measured on
    train_acc: float | None = None
    val_acc: float | None = None
    test_acc: float | None = None
    # the records of the layers above: the verifier's power, calibration's choice, this version's own step
    verifier: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    unlearn: dict[str, Any] | None = None
    consolidation: dict[str, Any] | None = None
    published_from: str | None = None
    # provenance
    created_at: str | None = None
    git_hash: str | None = None
    git_dirty: bool | None = None  # tracked files differed from git_hash's commit when these weights were made
    machine: dict[str, Any] | None = None
    version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def training_seconds(self) -> float:
        """What retraining this model costs, as its own training run measured it."""
        return float(self.seconds_per_epoch or 0.0) * int(self.epochs or 0)

    @property
    def n_shards(self) -> int:
        return int((self.shards or {}).get("k", 1))

    @property
    def retrain_epochs(self) -> int:
        """How long an exact retrain runs: the epoch training kept, else all it ran."""
        return int(self.best_epoch or self.epochs or RETRAIN_EPOCHS)

    def inherited(self, **changes: Any) -> ModelMeta:
        """What a version derived from this one keeps: everything but the records of how these weights were
        made (their unlearn step or consolidation, their sha256, where they were published from)."""
        cleared: dict[str, Any] = {"unlearn": None, "consolidation": None, "weights_sha256": "", "published_from": None}
        return dataclasses.replace(self, **{**cleared, **changes})

    def with_(self, **changes: Any) -> ModelMeta:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ModelMeta:
        """From meta.json's object, older ones included; ModelLoadError when it does not describe a model."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in raw.items() if k in names and v is not None}
        try:
            for k in ("in_shape", "class_names", "feature_names", "freeze"):
                if k in known:
                    known[k] = tuple(known[k])
            known["in_shape"] = tuple(int(d) for d in known["in_shape"])
            known["num_classes"] = int(known["num_classes"])
            return cls(**known, extra={k: v for k, v in raw.items() if k not in names})
        except (KeyError, TypeError, ValueError) as e:
            raise ModelLoadError(f"meta.json lacks a valid model description ({e})") from e

    def to_json(self) -> dict[str, Any]:
        out = {**self.extra}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "extra" or v is None:
                continue
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def read(cls, path: Path) -> ModelMeta:
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ModelLoadError(f"{path} is not valid JSON ({e})") from e
        if not isinstance(raw, dict):
            raise ModelLoadError(f"{path} is not a JSON object")
        return cls.from_json(raw)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True)
