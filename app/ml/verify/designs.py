"""The registry of verifier designs (`VERIFIERS`): each design's module registers itself here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from app.errors import VerifierError
from app.ml.common.registry import Registry
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
