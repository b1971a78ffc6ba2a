"""The registered architectures (`MODELS`), sized for the data's input and class count.

All models take (N, *in_shape) float input and return (N, num_classes) logits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from app.errors import ConfigError
from app.ml.common.registry import Registry
from app.ml.models.config import ModelConfig

MODELS: Registry[Callable[[ModelConfig], nn.Module]] = Registry("arch")


def _image_shape(cfg: ModelConfig) -> tuple[int, int, int]:
    if len(cfg.in_shape) != 3:
        raise ConfigError(f"arch {cfg.arch} needs image input (C, H, W), but the data's rows have shape "
                          f"{tuple(cfg.in_shape)}: use an arch for feature rows (mlp)")
    c, h, w = cfg.in_shape
    return c, h, w


class LeNet5(nn.Module):
    """The paper's LeNet5: conv 6@5×5 → pool → conv 16@5×5 → pool → FC 120 → 84 → classes."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c, h, w = _image_shape(cfg)
        # Small inputs (8×8 digits) would shrink below 1 pixel; pad like LeNet on 28×28 MNIST.
        pad = 2 if min(h, w) < 32 else 0
        self.features = nn.Sequential(
            nn.Conv2d(c, 6, 5, padding=pad), nn.ReLU(), nn.MaxPool2d(2),   # (N, 6, h', w')
            nn.Conv2d(6, 16, 5, padding=pad), nn.ReLU(), nn.MaxPool2d(2),  # (N, 16, h'', w'')
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, c, h, w)).numel()
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, cfg.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class MLP(nn.Module):
    """Three linear layers for tabular data (Purchase100 in the paper); images are flattened."""

    def __init__(self, cfg: ModelConfig, hidden: tuple[int, int] = (256, 128)) -> None:
        super().__init__()
        n_in = 1
        for d in cfg.in_shape:
            n_in *= d
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(n_in, hidden[0]), nn.Tanh(),
            nn.Linear(hidden[0], hidden[1]), nn.Tanh(),
            nn.Linear(hidden[1], cfg.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@MODELS.register("lenet5")
def _lenet5(cfg: ModelConfig) -> nn.Module:
    return LeNet5(cfg)


@MODELS.register("mlp")
def _mlp(cfg: ModelConfig) -> nn.Module:
    return MLP(cfg)


@MODELS.register("resnet18")
def _resnet18(cfg: ModelConfig) -> nn.Module:
    from torchvision.models import resnet18

    c, h, _ = _image_shape(cfg)
    model = resnet18(weights=None, num_classes=cfg.num_classes)
    if h <= 64:
        # The ImageNet stem (7×7 stride 2 + max-pool) throws away most of a 32×32 image.
        model.conv1 = nn.Conv2d(c, 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif c != 3:
        model.conv1 = nn.Conv2d(c, 64, 7, stride=2, padding=3, bias=False)
    return model


@MODELS.register("vgg19")
def _vgg19(cfg: ModelConfig) -> nn.Module:
    from torchvision.models import vgg19

    c, h, w = _image_shape(cfg)
    model = vgg19(weights=None, num_classes=cfg.num_classes)
    layers = list(model.features)
    if c != 3:
        first = layers[0]
        assert isinstance(first, nn.Conv2d)
        layers[0] = nn.Conv2d(c, first.out_channels, 3, padding=1)
    side = min(h, w)
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.MaxPool2d):
            if side < 2:  # input too small for all five pools
                layers[i] = nn.Identity()
            else:
                side //= 2
    model.features = nn.Sequential(*layers)
    # The CIFAR form of VGG: global pool + one linear layer instead of 3×4096 FC.
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.classifier = nn.Sequential(nn.Flatten(), nn.Linear(512, cfg.num_classes))
    return model
