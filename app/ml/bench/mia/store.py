"""Save and load a trained membership attack: safetensors weights + JSON (never a pickle)."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from app.errors import ModelLoadError
from app.ml.bench.mia.attacks import ATTACKS
from app.ml.bench.mia.shadow import AttackNet, MembershipAttack, MIAConfig
from app.ml.common.fsutil import atomic_replace, atomic_write_text


def save_attack(attack: MembershipAttack, folder: Path) -> None:
    state = {k: v.detach().contiguous() for k, v in attack.net.state_dict().items()}
    with atomic_replace(folder / "attack.safetensors") as tmp:
        save_file(state, str(tmp))
    n_in = int(state["net.0.weight"].shape[1])
    atomic_write_text(folder / "attack.json", json.dumps({"n_in": n_in, "info": attack.info}, indent=2))


def load_attack(folder: Path) -> MembershipAttack:
    try:
        meta = json.loads((folder / "attack.json").read_text())
        net = AttackNet(int(meta["n_in"]))
        net.load_state_dict(load_file(str(folder / "attack.safetensors")), strict=True)
    except (OSError, KeyError, ValueError, RuntimeError) as e:
        raise ModelLoadError(f"no usable membership attack in {folder}: {e}") from e
    net.eval()
    known = set(MIAConfig.__dataclass_fields__)
    cfg = MIAConfig(**{k: v for k, v in meta["info"].items() if k in known})
    return MembershipAttack(features=ATTACKS.get(cfg.attack), net=net, config=cfg, info=meta["info"])
