"""Membership inference (Shokri et al. 2017): attacks registered by their feature set."""

from __future__ import annotations

from app.ml.bench.mia.attacks import ATTACKS, Features


def _register_builtin() -> None:
    from app.ml.bench.mia import authors, sorted_probs  # noqa: F401  (each registers itself)


_register_builtin()

__all__ = ["ATTACKS", "Features"]
