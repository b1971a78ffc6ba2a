"""What a model is: its spec, the data's input shape and class count, and its init and frozen prefixes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from app.errors import UnknownNameError

TORCHVISION = "torchvision:"  # a spec prefix: any torchvision classifier, built untrained
# the names app/ml/models/archs.py registers, here without torch so that a bad --arch fails at once (a test keeps
# the two equal)
ARCHS = ("lenet5", "mlp", "resnet18", "vgg19")


def check_arch(spec: str) -> str:
    """SPEC itself when it can name a model: a registered arch, or a spec with a colon (checked when built)."""
    if ":" not in spec and spec not in ARCHS:
        raise UnknownNameError("arch", spec, ARCHS)
    return spec


@dataclass(frozen=True)
class ModelConfig:
    arch: str
    in_shape: tuple[int, ...]  # (C, H, W) for images, (F,) for tabular data
    num_classes: int
    init: Path | None = None  # starting weights (app/ml/models/pretrained.py): every fit starts here, not at a seed
    init_sha256: str | None = None  # their weights' hash, checked whenever they are read
    freeze: tuple[str, ...] = ()  # parameter-name prefixes no path ever trains
