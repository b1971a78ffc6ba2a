"""Shadow models and the attack model that learns member vs non-member from their outputs.

Each of n shadows has the target's architecture and recipe, trained for the target's
number of epochs on its own random half ("in") of the shadow pool, which is disjoint from
the target's training data; the other half is its "out". The attack MLP
(F → 256 → 128, ReLU, dropout 0.5 → sigmoid) is trained on all shadows' in/out outputs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn

from app.ml.bench.mia.attacks import ATTACKS, Features
from app.ml.data.dataset import Dataset
from app.ml.models.factory import ModelConfig
from app.ml.training.fit import TrainConfig, fit
from app.ml.training.metrics import predict_logits


@dataclass(frozen=True)
class MIAConfig:
    attack: str = "authors"
    n_shadows: int = 3
    epochs: int = 40  # attack-model epochs
    lr: float = 1e-3
    batch_size: int = 128
    seed: int = 0


class AttackNet(nn.Module):
    def __init__(self, n_in: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_in, 256), nn.ReLU(), nn.Dropout(0.5),
                                 nn.Linear(256, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)  # logits; sigmoid gives P(member)


@dataclass
class MembershipAttack:
    features: Features
    net: AttackNet
    config: MIAConfig
    info: dict[str, Any]

    def member_prob(self, model: nn.Module, ds: Dataset, ids: np.ndarray) -> np.ndarray:
        probs = F.softmax(predict_logits(model, ds, ids), dim=1)
        self.net.eval()
        with torch.no_grad():
            # the attack MLP is small and stays on the CPU, whatever device the target runs on
            return torch.sigmoid(self.net(self.features(probs.cpu(), ds.labels(ids).cpu()))).numpy()

    def member_rate(self, model: nn.Module, ds: Dataset, ids: np.ndarray) -> float:
        """Fraction of IDS the attack calls members (the paper's MIA score)."""
        return float((self.member_prob(model, ds, ids) > 0.5).mean()) if len(ids) else float("nan")

    def evaluate(self, model: nn.Module, ds: Dataset, members: np.ndarray, nonmembers: np.ndarray,
                 seed: int = 0) -> dict[str, float]:
        """Balanced accuracy and AUC on equally many held-out members and non-members."""
        n = min(len(members), len(nonmembers))
        rng = np.random.default_rng(seed)
        m = rng.choice(members, n, replace=False)
        o = rng.choice(nonmembers, n, replace=False)
        pm, po = self.member_prob(model, ds, m), self.member_prob(model, ds, o)
        tpr, tnr = float((pm > 0.5).mean()), float((po <= 0.5).mean())
        auc = roc_auc_score(np.r_[np.ones(n), np.zeros(n)], np.r_[pm, po])
        return {"balanced_accuracy": (tpr + tnr) / 2, "auc": float(auc), "tpr": tpr, "tnr": tnr, "n_each": n}


def fit_attack(ds: Dataset, shadow_pool: np.ndarray, model_cfg: ModelConfig, train_cfg: TrainConfig,
               epochs: int, cfg: MIAConfig) -> MembershipAttack:
    """Train cfg.n_shadows shadows for EPOCHS epochs each, then the attack model on their outputs."""
    features = ATTACKS.get(cfg.attack)
    rng = np.random.default_rng(cfg.seed)
    xs, ys = [], []
    for k in range(cfg.n_shadows):
        perm = rng.permutation(shadow_pool)
        half = len(perm) // 2
        inside, outside = perm[:half], perm[half : 2 * half]
        shadow_cfg = replace(train_cfg, seed=cfg.seed * 1000 + k + 1, max_epochs=epochs)
        shadow = fit(model_cfg, ds, inside, None, shadow_cfg, progress=False).model
        for ids, label in ((inside, 1.0), (outside, 0.0)):
            probs = F.softmax(predict_logits(shadow, ds, ids), dim=1)
            xs.append(features(probs.cpu(), ds.labels(ids).cpu()))
            ys.append(torch.full((len(ids),), label))
    x, y = torch.cat(xs), torch.cat(ys)
    net = _train_attack_net(x, y, cfg)
    return MembershipAttack(features=features, net=net, config=cfg,
                            info={**asdict(cfg), "shadow_epochs": epochs, "n_attack_train": len(y)})


def _train_attack_net(x: torch.Tensor, y: torch.Tensor, cfg: MIAConfig) -> AttackNet:
    torch.manual_seed(cfg.seed)
    net = AttackNet(x.shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    net.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), cfg.batch_size):
            b = order[start : start + cfg.batch_size]
            loss = F.binary_cross_entropy_with_logits(net(x[b]), y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()
    return net
