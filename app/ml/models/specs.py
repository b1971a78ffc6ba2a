"""A team's own model, named by a spec instead of registered here (docs/method.md, "Bring your own model"):

- `torchvision:NAME`: any classification model of torchvision.models, built with `num_classes` and
  `weights=None` (nothing is ever downloaded; bring trained weights with `--init` or `import`);
- `MODULE:CALLABLE`: importable from the working directory or PYTHONPATH, called as
  `CALLABLE(num_classes=…, input_shape=…)` and returning an `nn.Module` that maps (N, *input_shape) to
  (N, num_classes) logits.

The spec is recorded in meta.json (`arch`), and loading a model directory imports it again, so a model
directory is as trusted as the code it names. Every failure is one ConfigError line naming the spec.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from app.errors import ConfigError
from app.ml.models.config import TORCHVISION, ModelConfig


def build_from_spec(cfg: ModelConfig) -> nn.Module:
    spec = cfg.arch
    if spec.startswith(TORCHVISION):
        model = _torchvision(spec, spec.removeprefix(TORCHVISION), cfg)
    else:
        model = _call(spec, _resolve(spec), cfg)
    _check_outputs(spec, model, cfg)
    return model


def torchvision_names() -> list[str]:
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def _torchvision(spec: str, name: str, cfg: ModelConfig) -> nn.Module:
    import torchvision.models as tvm

    names = torchvision_names()
    if name not in names:
        raise ConfigError(f"model spec {spec!r}: not a torchvision classification model; valid names include "
                          f"{', '.join(n for n in names if n.startswith(('resnet', 'vgg', 'mobilenet')))[:200]}, …")
    if len(cfg.in_shape) != 3 or cfg.in_shape[0] != 3:
        raise ConfigError(f"model spec {spec!r}: torchvision's models take 3-channel images, the data has shape "
                          f"{tuple(cfg.in_shape)}; wrap it in a MODULE:CALLABLE of your own")
    try:
        return tvm.get_model(name, weights=None, num_classes=cfg.num_classes)  # type: ignore[no-any-return]
    except (TypeError, ValueError) as e:  # e.g. a model that fixes its input size
        raise ConfigError(f"model spec {spec!r}: torchvision could not build it with num_classes="
                          f"{cfg.num_classes}: {e}") from None


def _resolve(spec: str) -> Callable[..., Any]:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"model spec {spec!r}: use a registered name, torchvision:NAME or MODULE:CALLABLE")
    if os.getcwd() not in sys.path and "" not in sys.path:  # the console script does not put it there
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"model spec {spec!r}: cannot import {module_name!r} ({e}); it must be importable from "
                          "the working directory or PYTHONPATH") from None
    except Exception as e:  # the module itself failed while importing
        raise ConfigError(f"model spec {spec!r}: importing {module_name!r} raised {type(e).__name__}: {e}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"model spec {spec!r}: {module_name} has no callable {attr!r}")
    return fn  # type: ignore[no-any-return]


def _call(spec: str, fn: Callable[..., Any], cfg: ModelConfig) -> nn.Module:
    try:
        model = fn(num_classes=cfg.num_classes, input_shape=tuple(cfg.in_shape))
    except Exception as e:
        raise ConfigError(f"model spec {spec!r}: calling it with num_classes={cfg.num_classes}, input_shape="
                          f"{tuple(cfg.in_shape)} raised {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model spec {spec!r}: returned a {type(model).__name__}, not a torch.nn.Module")
    return model


@torch.no_grad()
def _check_outputs(spec: str, model: nn.Module, cfg: ModelConfig) -> None:
    """One forward pass on zeros: (2, *input_shape) must give (2, num_classes) finite logits."""
    was = model.training
    model.eval()
    try:
        out = model(torch.zeros(2, *cfg.in_shape))
    except Exception as e:
        raise ConfigError(f"model spec {spec!r}: a batch of shape {(2, *cfg.in_shape)} fails in forward: "
                          f"{type(e).__name__}: {str(e)[:200]}") from None
    finally:
        model.train(was)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, cfg.num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"model spec {spec!r}: returns {shape} for a batch of 2, not (2, {cfg.num_classes}) "
                          f"logits: its num_classes or input shape does not match the data")
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"model spec {spec!r}: the model has no trainable parameters")
