"""Unlearning methods, one file each, registered by name in METHODS."""

from __future__ import annotations

from typing import Any

from app.ml.forgetting.methods.base import UnlearnResult, UnlearnTask
from app.ml.forgetting.methods.registry import METHODS


def run_method(name: str, task: UnlearnTask, params: dict[str, Any] | None = None) -> UnlearnResult:
    return METHODS.get(name)(task, dict(params or {}))


def _register_builtin() -> None:
    from app.ml.forgetting.methods import (  # noqa: F401  (each registers itself)
        amnesiac,
        amun,
        bad_teaching,
        finetune,
        fisher,
        gradient_ascent,
        iau,
        l1_sparse,
        neggrad_plus,
        out_match,
        retrain,
        salun,
        scrub,
        unrolling,
    )


_register_builtin()

__all__ = ["METHODS", "run_method"]
