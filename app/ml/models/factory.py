"""config → nn.Module: a registered arch (app/ml/models/archs.py), `torchvision:NAME` or a team's own
`MODULE:CALLABLE` (app/ml/models/specs.py), with its frozen prefixes applied and its batch norm able to take a
batch of one (app/ml/models/norms.py), so every model built anywhere has them."""

from __future__ import annotations

import torch
from torch import nn

from app.ml.models.archs import MODELS
from app.ml.models.config import TORCHVISION, ModelConfig
from app.ml.models.norms import allow_batches_of_one
from app.ml.models.pretrained import apply_freeze
from app.ml.models.specs import build_from_spec

__all__ = ["MODELS", "ModelConfig", "create_model", "model_device"]


def create_model(cfg: ModelConfig, device: torch.device | str | None = None) -> nn.Module:
    """Built on the CPU, then moved: a seeded initialisation is the same on every device. cfg.arch is a model
    spec: a registered name, `torchvision:NAME`, or `MODULE:CALLABLE` (app/ml/models/specs.py)."""
    spec = cfg.arch.startswith(TORCHVISION) or ":" in cfg.arch
    model = build_from_spec(cfg) if spec else MODELS.get(cfg.arch)(cfg)
    if cfg.freeze:
        apply_freeze(model, cfg.freeze)
    allow_batches_of_one(model)
    return model if device is None else model.to(device)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
