"""Build a verifier by its registered name; importing this module registers the built-in designs."""

from __future__ import annotations

from app.ml.verify import lira, loss  # noqa: F401  (each registers itself)
from app.ml.verify.base import BuildInputs, Verifier, VerifierConfig
from app.ml.verify.designs import DEFAULT, VERIFIERS

__all__ = ["DEFAULT", "VERIFIERS", "build_verifier", "check_verifier"]


def check_verifier(name: str, cfg: VerifierConfig) -> None:
    """Fail on an unknown name or too few references before anything is trained."""
    VERIFIERS.get(name).check(name, cfg)


def build_verifier(name: str, inputs: BuildInputs, cfg: VerifierConfig) -> Verifier:
    check_verifier(name, cfg)
    return VERIFIERS.get(name).build(inputs, cfg)
