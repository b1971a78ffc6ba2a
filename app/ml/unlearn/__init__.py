"""Unlearning methods, one file each, registered by name in METHODS."""

from __future__ import annotations

from typing import Any

from app.ml.registry import Registry
from app.ml.unlearn.base import Method, UnlearnResult, UnlearnTask

METHODS: Registry[Method] = Registry("method")


def run_method(name: str, task: UnlearnTask, params: dict[str, Any] | None = None) -> UnlearnResult:
    return METHODS.get(name)(task, dict(params or {}))


def _register_builtin() -> None:
    from app.ml.unlearn import iau  # noqa: F401  (registers itself)


_register_builtin()
