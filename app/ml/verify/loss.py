"""The reference-free baseline: the target's true-class logit alone (the loss attack, Yeom et al. 2018).

No reference models, so no cost at publication; it cannot tell a hard sample from a forgotten
one, which is what LiRA's references add. Kept to show what they buy (docs/verifier.md).
"""

from __future__ import annotations

import numpy as np

from app.ml.verify.base import BuildInputs, Verifier, VerifierConfig, split_nonmembers
from app.ml.verify.designs import VERIFIERS, Design


def build(inputs: BuildInputs, cfg: VerifierConfig) -> Verifier:
    splits = inputs.splits
    calib, evaluation = split_nonmembers(splits.test, cfg)
    scored = np.union1d(splits.train, splits.test)
    return Verifier(name="loss", config=cfg, member_ids=np.sort(splits.train), calib_ids=calib, eval_ids=evaluation,
                    ref_ids=scored, out_mean=np.zeros(len(scored)), out_std=1.0, flip=cfg.flip,
                    info={"K": 0, "ref_train_seconds": 0.0})


VERIFIERS.register("loss")(Design(build=build, min_refs=0))
