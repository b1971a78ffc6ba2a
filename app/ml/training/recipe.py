"""The training recipe: how a model is trained, and therefore how every exact deletion retrains it.

A recipe is TrainConfig's fields (optimizer, lr, schedule, max_epochs, patience, batch_size, weight_decay,
momentum, augment, alpha, …), given in a TOML file (`--recipe FILE`), on the command line, or both (the flags
win). It is recorded in meta.json (`train_config`, with `recipe` saying where it came from) and reused by
`--method retrain`, consolidation and the verifier's references.

    # recipe.toml
    optimizer = "sgd"
    lr = 0.05
    momentum = 0.9
    weight_decay = 5e-4
    schedule = "cosine"
    max_epochs = 30
    augment = "flip_crop"
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from app.errors import ConfigError
from app.ml.models.meta import ModelMeta
from app.ml.models.pretrained import file_sha256
from app.ml.training.fit import TrainConfig

KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig))


def read_recipe(path: Path) -> dict[str, Any]:
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"recipe {path}: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"recipe {path}: not valid TOML ({e})") from None
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise ConfigError(f"recipe {path}: unknown keys {unknown}; valid: {', '.join(KEYS)}")
    return raw


def make_recipe(path: Path | None, overrides: dict[str, Any]) -> tuple[TrainConfig, dict[str, Any]]:
    """TrainConfig from the defaults, then the file at PATH, then OVERRIDES (None values skipped); and the
    provenance record meta.json keeps as `recipe`."""
    values = read_recipe(path) if path is not None else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        cfg = TrainConfig(**values)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"recipe: {e}") from None
    given = path is not None or any(v is not None for k, v in overrides.items() if k not in ("seed", "alpha"))
    source: dict[str, Any] = {"source": "default" if not given else "given"}
    if path is not None:
        source.update(file=str(path), sha256=file_sha256(path))
    return cfg, source


DEFAULT_NOTE = ("no recipe was given: an exact deletion (retrain, consolidation) uses unlearnd's default recipe "
                "(Adam, lr 1e-3, batch 64, early stopping), not the one the weights were trained with")


def recipe_note(meta: ModelMeta | None) -> str | None:
    """What the start banner says when exact deletions will retrain with a recipe nobody chose."""
    if meta is None or not meta.imported:
        return None
    return DEFAULT_NOTE if (meta.recipe or {}).get("source") == "default" else None


def train_config_from_meta(meta: ModelMeta) -> TrainConfig | None:
    """The recipe META records, typed (None: it records none)."""
    raw = meta.train_config
    if not isinstance(raw, dict):
        return None
    known = set(TrainConfig.__dataclass_fields__)
    return TrainConfig(**{k: v for k, v in raw.items() if k in known})


