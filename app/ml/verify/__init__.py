"""Membership verifiers: per-sample tests of "was x in the training set?", registered by name.

A verifier is built once per published model (reference models, calibration split) and then
scores any model that shares that model's dataset and splits: the model itself, an unlearned
descendant, or a model retrained without some samples. See base.Verifier for the test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from app.errors import VerifierError
from app.ml.registry import Registry
from app.ml.verify.base import BuildInputs, Verifier, VerifierConfig

DEFAULT = "lira"


@dataclass(frozen=True)
class Design:
    build: Callable[[BuildInputs, VerifierConfig], Verifier]
    min_refs: int  # reference models the design needs; 0: none

    def check(self, name: str, cfg: VerifierConfig) -> None:
        if cfg.n_refs < self.min_refs:
            raise VerifierError(f"verifier {name!r} needs at least {self.min_refs} reference models, "
                                f"got K={cfg.n_refs}")


VERIFIERS: Registry[Design] = Registry("verifier")


def check_verifier(name: str, cfg: VerifierConfig) -> None:
    """Fail on an unknown name or too few references before anything is trained."""
    VERIFIERS.get(name).check(name, cfg)


def build_verifier(name: str, inputs: BuildInputs, cfg: VerifierConfig) -> Verifier:
    check_verifier(name, cfg)
    return VERIFIERS.get(name).build(inputs, cfg)


def _register_builtin() -> None:
    from app.ml.verify import lira, loss  # noqa: F401  (each registers itself)


_register_builtin()
