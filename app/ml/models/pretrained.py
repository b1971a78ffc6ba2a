"""A pretrained start: starting weights (`--init FILE`) and frozen parameters (`--freeze PREFIX,…`).

The init is read once, from safetensors or from a torch `state_dict` loaded with `weights_only=True` (never a
pickle of code), and kept with the model as `init.safetensors`, hard-linked into each derived version, so every
path that trains from a seed (GR training, a retrain, a consolidation, the verifier's references) starts from it.
Its source file's sha256 and its weights' sha256 are recorded in meta.json.

Freezing is decided in one place, when a model is built (`create_model`): matching parameters get
`requires_grad=False`, and normalisation layers under a frozen prefix stay in eval mode, so their running
statistics do not move either. Every method optimises only the trainable parameters; `check_frozen` then proves,
after each deletion, that the frozen entries are bit-identical to the parent's.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.hooks import RemovableHandle

from app.errors import ConfigError, UnlearnFailed
from app.ml.common.hashing import weights_sha256

INIT_FILE = "init.safetensors"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # torch colours its unpickling hints


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state_dict from safetensors, or from torch.save'd tensors read with weights_only=True."""
    if not path.is_file():
        raise ConfigError(f"weights file {path} does not exist")
    try:
        return dict(load_file(str(path), device="cpu"))
    except (SafetensorError, OSError, ValueError):
        pass
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses pickled code with an UnpicklingError; garbage raises others
        why = ANSI.sub("", str(e)).strip().splitlines()
        whole = "a whole pickled model, which is never unpickled (save model.state_dict() instead); "
        raise ConfigError(f"{path}: neither safetensors nor a weights-only torch state_dict "
                          f"({whole if 'weights_only' in str(e) or 'Unpickl' in type(e).__name__ else ''}"
                          f"{type(e).__name__}: {(why[0] if why else '')[:160]})") from None
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):  # a common checkpoint wrapper
        raw = raw["state_dict"]
    if not isinstance(raw, dict) or not raw or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise ConfigError(f"{path}: holds no state_dict (a mapping of parameter names to tensors)")
    return {str(k).removeprefix("module."): v for k, v in raw.items()}


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load STATE into MODEL, or one line naming the keys and shapes that do not match."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        parts = [f"{label} {keys[:3]}{' …' if len(keys) > 3 else ''} ({len(keys)})"
                 for label, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        if shapes:
            shown = ", ".join(f"{k} model {list(own[k].shape)} file {list(state[k].shape)}" for k in shapes[:3])
            parts.append(f"other shapes: {shown}{' …' if len(shapes) > 3 else ''} ({len(shapes)})")
        raise ConfigError(f"{source} does not fit the model: {'; '.join(parts)}")
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(state[k].to(dtype=v.dtype))


def store_init(source: Path, folder: Path) -> dict[str, str]:
    """Keep SOURCE as FOLDER/init.safetensors; the record meta.json carries."""
    state = read_weights(source)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / INIT_FILE))
    return {"source": str(source), "sha256": file_sha256(source), "weights_sha256": weights_sha256(state),
            "file": INIT_FILE}


def carry_init(init: Path | None, folder: Path) -> None:
    """A new version keeps the init beside its weights: a hard link when the filesystem allows, else a copy."""
    if init is None or (folder / INIT_FILE).exists():
        return
    try:
        os.link(init, folder / INIT_FILE)
    except OSError:
        shutil.copyfile(init, folder / INIT_FILE)


def apply_init(model: nn.Module, init: Path, expected_sha256: str | None) -> None:
    state = read_weights(init)
    if expected_sha256 is not None and weights_sha256(state) != expected_sha256:
        raise ConfigError(f"{init} is not the init recorded in meta.json (weights sha256 differs)")
    load_strict(model, state, str(init))


def frozen_names(model: nn.Module, prefixes: tuple[str, ...]) -> list[str]:
    return [n for n, _ in model.named_parameters() if n.startswith(prefixes)]


def apply_freeze(model: nn.Module, prefixes: tuple[str, ...]) -> nn.Module:
    if not prefixes:
        return model
    names = [n for n, _ in model.named_parameters()]
    idle = [p for p in prefixes if not any(n.startswith(p) for n in names)]
    if idle:
        raise ConfigError(f"--freeze {','.join(idle)} matches no parameter; names start with "
                          f"{sorted({n.split('.')[0] for n in names})[:12]}")
    for n, p in model.named_parameters():
        if n.startswith(prefixes):
            p.requires_grad_(False)
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"--freeze {','.join(prefixes)} freezes every parameter: nothing is left to train")
    keep_frozen_norms_in_eval(model, prefixes)
    return model


def keep_frozen_norms_in_eval(model: nn.Module, prefixes: tuple[str, ...]) -> list[RemovableHandle]:
    """Every normalisation layer of MODEL under PREFIXES runs in eval mode, whatever the model's mode; remove the
    returned hooks to undo it."""
    return [module.register_forward_pre_hook(_stay_in_eval) for name, module in model.named_modules()
            if name and isinstance(module, nn.modules.batchnorm._NormBase) and f"{name}.".startswith(prefixes)]


def _stay_in_eval(module: nn.Module, args: object) -> None:
    module.training = False  # a frozen layer's running statistics are part of what is frozen


def frozen_state(model: nn.Module, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The state entries (parameters and buffers) under a frozen prefix, detached clones."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(prefixes)}


def check_frozen(before: nn.Module, after: nn.Module, prefixes: tuple[str, ...], method: str) -> int:
    """Refuse a result whose frozen entries moved; returns how many entries were compared (bit for bit)."""
    if not prefixes:
        return 0
    ref, now = frozen_state(before, prefixes), frozen_state(after, prefixes)
    moved = [k for k in ref if not torch.equal(ref[k], now[k])]
    if moved:
        raise UnlearnFailed(f"{method} changed frozen parameters {moved[:3]}; the result is refused")
    return len(ref)


def start_evidence(before: nn.Module, after: nn.Module, init_sha256: str | None, prefixes: tuple[str, ...],
                   method: str) -> dict[str, object]:
    """What an audit entry records of where a model starts and what it may not move: the init's sha256, the
    frozen prefixes and the result of comparing every frozen entry bit for bit (refused if one moved)."""
    n = check_frozen(before, after, prefixes, method)
    return {"init_sha256": init_sha256, "freeze": list(prefixes),
            "frozen_check": f"{n} frozen entries bit-identical" if prefixes else "no frozen parameters"}
