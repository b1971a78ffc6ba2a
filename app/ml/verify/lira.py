"""Offline LiRA (Carlini et al. 2022, §VI-C; U-LiRA's reference design in Hayes et al. 2024).

K reference models of the target's architecture and recipe, each trained on a random share of
the shadow split: every training (and test) sample is OUT for all of them, so no reference
model holds a training subject's data, and deleting a sample never invalidates them. A
sample's score is its true-class logit under the target minus the mean of the references'
(its difficulty), over one global spread: with few references a per-sample variance is too
noisy to help (Carlini et al., Fig. 9).
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from app.ml.train import fit
from app.ml.verify import VERIFIERS, Design
from app.ml.verify.base import BuildInputs, Verifier, VerifierConfig, split_nonmembers, true_class_logit


def build(inputs: BuildInputs, cfg: VerifierConfig) -> Verifier:
    ds, splits = inputs.ds, inputs.splits
    calib, evaluation = split_nonmembers(splits.test, cfg)
    scored = np.union1d(splits.train, splits.test)
    rng = np.random.default_rng(cfg.seed)
    n_in = max(1, round(cfg.ref_frac * len(splits.shadow)))
    phis, states, seconds = [], [], []
    for k in range(cfg.n_refs):
        inside = np.sort(rng.choice(splits.shadow, n_in, replace=False))
        # no early stopping: validation ids would be a second use of data, and the target's length is the recipe
        recipe = replace(inputs.train_cfg, seed=cfg.seed * 1000 + 7919 + k, max_epochs=inputs.epochs)
        t0 = time.perf_counter()
        ref = fit(inputs.model_cfg, ds, inside, None, recipe, progress=False).model
        seconds.append(time.perf_counter() - t0)
        phis.append(true_class_logit(ref, ds, scored, flip=cfg.flip))
        states.append({k2: v.detach().cpu().clone().contiguous() for k2, v in ref.state_dict().items()})
    phi = np.stack(phis)  # (K, n_scored)
    spread = float(np.sqrt(phi.var(axis=0, ddof=1).mean()))
    return Verifier(name="lira", config=cfg, member_ids=np.sort(splits.train), calib_ids=calib,
                    eval_ids=evaluation, ref_ids=scored, out_mean=phi.mean(axis=0), out_std=max(spread, 1e-6),
                    flip=cfg.flip, ref_states=states,
                    info={"K": cfg.n_refs, "ref_train_samples": n_in, "ref_epochs": inputs.epochs,
                          "ref_train_seconds": float(np.sum(seconds)), "variance": "global"})


VERIFIERS.register("lira")(Design(build=build, min_refs=2))  # a spread needs two references
