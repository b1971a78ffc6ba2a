"""Every registered architecture builds for small and CIFAR-sized input and gives logits."""

from __future__ import annotations

import pytest
import torch

from app.errors import UnknownNameError
from app.ml.models.factory import MODELS, ModelConfig, create_model


@pytest.mark.parametrize("arch", ["lenet5", "mlp", "resnet18", "vgg19"])
@pytest.mark.parametrize("in_shape", [(1, 8, 8), (3, 32, 32)])
def test_output_shape(arch: str, in_shape: tuple[int, ...]) -> None:
    model = create_model(ModelConfig(arch, in_shape, 7)).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, *in_shape)).shape == (2, 7)


def test_lenet5_is_the_paper_layout() -> None:
    model = create_model(ModelConfig("lenet5", (3, 32, 32), 10))
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(6, (5, 5)), (16, (5, 5))]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(400, 120), (120, 84), (84, 10)]


def test_mlp_on_tabular() -> None:
    model = create_model(ModelConfig("mlp", (600,), 100))
    assert model(torch.zeros(3, 600)).shape == (3, 100)


def test_unknown_arch_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError) as e:
        create_model(ModelConfig("alexnet", (3, 32, 32), 10))
    assert e.value.valid == MODELS.names() and "lenet5" in str(e.value)


def test_the_arch_names_the_cli_checks_without_torch_are_the_registered_ones() -> None:
    from app.ml.models.config import ARCHS
    from app.ml.models.factory import MODELS

    assert sorted(ARCHS) == sorted(MODELS.names())
