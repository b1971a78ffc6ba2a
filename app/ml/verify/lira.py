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
import torch
from torch import nn

from app.ml.models.factory import create_model
from app.ml.training.distributed import owner, share
from app.ml.training.fit import TrainConfig, fit
from app.ml.training.metrics import accuracy
from app.ml.verify.base import BuildInputs, Verifier, VerifierConfig, split_nonmembers, true_class_logit
from app.ml.verify.designs import VERIFIERS, Design


def build(inputs: BuildInputs, cfg: VerifierConfig) -> Verifier:
    ds, splits = inputs.ds, inputs.splits
    calib, evaluation = split_nonmembers(splits.test, cfg)
    scored = np.union1d(splits.train, splits.test)
    rng = np.random.default_rng(cfg.seed)
    n_in = max(1, round(cfg.ref_frac * len(splits.shadow)))
    world = inputs.world
    phis, states, seconds, accs = [], [], [], []
    for k in range(cfg.n_refs):
        inside = np.sort(rng.choice(splits.shadow, n_in, replace=False))  # drawn on every rank: the same draws
        # no early stopping: validation ids would be a second use of data, and the target's length is the recipe
        recipe = replace(inputs.train_cfg, seed=cfg.seed * 1000 + 7919 + k, max_epochs=inputs.epochs)
        mine = owner(k, world) == world.rank
        t0 = time.perf_counter()
        # another rank's reference: its weights, scores and seconds arrive from that rank
        ref = _fit_ref(inputs, inside, recipe) if mine else create_model(inputs.model_cfg, ds.device)
        took = torch.tensor([time.perf_counter() - t0], dtype=torch.float64, device=ds.device)
        phi_k = torch.from_numpy(true_class_logit(ref, ds, scored, flip=cfg.flip)).to(ds.device) if mine else \
            torch.zeros(len(scored), dtype=torch.float64, device=ds.device)
        share([*ref.state_dict().values(), phi_k, took], owner(k, world), world)
        seconds.append(float(took.item()))
        accs.append(accuracy(ref, ds, calib))  # every rank holds every reference by now: the same number
        phis.append(phi_k.cpu().numpy())
        states.append({k2: v.detach().cpu().clone().contiguous() for k2, v in ref.state_dict().items()})
    phi = np.stack(phis)  # (K, n_scored)
    spread = float(np.sqrt(phi.var(axis=0, ddof=1).mean()))
    return Verifier(name="lira", config=cfg, member_ids=np.sort(splits.train), calib_ids=calib,
                    eval_ids=evaluation, ref_ids=scored, out_mean=phi.mean(axis=0), out_std=max(spread, 1e-6),
                    flip=cfg.flip, ref_states=states,
                    info={"K": cfg.n_refs, "ref_train_samples": n_in, "ref_epochs": inputs.epochs,
                          "ref_train_seconds": float(np.sum(seconds)), "variance": "global",
                          # the recipe's seed-to-seed spread, which an exact retrain's floor allows for
                          "ref_acc": accs,
                          "ranks": world.size})


def _fit_ref(inputs: BuildInputs, inside: np.ndarray, recipe: TrainConfig) -> nn.Module:
    if inputs.fit_ref is not None:
        return inputs.fit_ref(inputs.ds, inside, recipe)
    return fit(inputs.model_cfg, inputs.ds, inside, None, recipe, progress=False).model


VERIFIERS.register("lira")(Design(build=build, min_refs=2))  # a spread needs two references
