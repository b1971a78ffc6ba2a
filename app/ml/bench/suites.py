"""The suite registry: a suite is registered by name with its one-line summary and entry point."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.errors import ConfigError
from app.ml.common.registry import Registry


@dataclass(frozen=True)
class Suite:
    summary: str
    run: Callable[..., dict[str, Any]]  # (out=, seeds=, data_dir=, data_path=, device=) → results


SUITES: Registry[Suite] = Registry("suite")


def bind(run: Callable[..., dict[str, Any]], cfg: Any, *,
         fixed_seeds: bool = False) -> Callable[..., dict[str, Any]]:
    """A suite's entry point: RUN(cfg, out=, seeds=, data_dir=, data_path=, device=) with its config bound;
    FIXED_SEEDS for a suite whose config fixes its seeds (RUN then takes no `seeds`, and `--seeds` is refused
    rather than silently ignored)."""
    def go(*, out: Path, seeds: int | None, data_dir: Path | None, data_path: Path | None,
           device: str = "cpu") -> dict[str, Any]:
        if fixed_seeds and seeds is not None:
            raise ConfigError("this suite's seeds are fixed by its configuration; run it without --seeds")
        extra = {} if fixed_seeds else {"seeds": seeds}
        return run(cfg, out=out, data_dir=data_dir, data_path=data_path, device=device, **extra)

    return go
