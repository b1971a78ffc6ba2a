"""A team's own model module, as `--model tests.models_for_tests:small_cnn` names it, and broken ones."""

from __future__ import annotations

from torch import nn


def small_cnn(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return nn.Sequential(nn.Conv2d(input_shape[0], 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(8 * 4, num_classes))


def small_cnn_bn(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """With batch norm: its running statistics are frozen with its parameters."""
    return nn.Sequential(nn.Conv2d(input_shape[0], 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(8 * 4, num_classes))


def raises(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    raise RuntimeError("no GPU kernels for this layer")


def not_a_module(num_classes: int, input_shape: tuple[int, ...]) -> object:
    return {"layers": 3}


def wrong_classes(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(int(__import__("math").prod(input_shape)), num_classes + 1))


NOT_CALLABLE = 3


def mlp_bn(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """A small batch-norm MLP for tables: batch norm cannot train on a minibatch of one sample."""
    return nn.Sequential(nn.Linear(input_shape[0], 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, num_classes))
