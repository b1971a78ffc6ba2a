"""What a forgetting step says about itself: the typed record (`ForgettingRecord`, its verdict one word of
app/ml/verify/verdicts.py) that meta.json's `unlearn`, the audit entry and GET /requests/{id} are made from. No
torch here: the API's ledger processes read records too."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.ml.verify.verdicts import PRIMARY_FPR, Verdict


@dataclass
class ForgettingRecord:
    """How one batch was forgotten."""

    method: str | None
    params: dict[str, Any] | None
    exact: bool
    verdict: Verdict
    n_forget: int
    forget_ids_sha256: str
    holdout_acc_before: float
    holdout_acc_after: float
    accuracy_floor: float | None
    time_s: float  # the updates' own seconds, every try included
    policy_time_s: float  # the same with validation and verification
    attempts: list[dict[str, Any]] = field(default_factory=list)
    verification: dict[str, Any] = field(default_factory=dict)
    consolidate_now: bool = False
    problem: str | None = None
    device: str | None = None
    data_placement: str | None = None
    start: dict[str, Any] = field(default_factory=dict)  # init sha256, frozen prefixes, the frozen check's result

    @property
    def ue_lira(self) -> float | None:
        """Membership UE in points: D_f's flagged rate after the update against a retrain's, which the conformal
        test holds at the FPR (a retrained model's D_f are non-members)."""
        after = (self.verification.get("after") or {}).get(f"flagged@{PRIMARY_FPR:g}")
        return None if after is None else 100 * abs(float(after["rate"]) - PRIMARY_FPR)

    def to_payload(self) -> dict[str, Any]:
        """The audit entry's fields. Accuracies are named by what they measured: the held-out set (entries before
        this name said `test_acc_*` for the same numbers; from_payload reads both)."""
        return {"method": self.method, "params": self.params, "exact": self.exact, "verdict": str(self.verdict),
                "n_forget": self.n_forget, "forget_ids_sha256": self.forget_ids_sha256,
                "holdout_acc_before": self.holdout_acc_before, "holdout_acc_after": self.holdout_acc_after,
                "accuracy_floor": self.accuracy_floor, "unlearn_time_s": self.time_s,
                "policy_time_s": self.policy_time_s, "attempts": self.attempts, "verification": self.verification,
                "consolidate_now": self.consolidate_now, "ue_lira": self.ue_lira, "device": self.device,
                "data_placement": self.data_placement, **({"problem": self.problem} if self.problem else {}),
                **self.start}

    @classmethod
    def from_payload(cls, p: dict[str, Any]) -> ForgettingRecord:
        """From an audit entry or a meta.json `unlearn`, older ones included (missing fields are None)."""
        verification = p.get("verification") or {}
        nan = float("nan")
        return cls(method=p.get("method"), params=p.get("params"), exact=bool(p.get("exact")),
                   verdict=Verdict.parse(p.get("verdict") or verification.get("verdict", Verdict.UNVERIFIED)),
                   n_forget=int(p.get("n_forget") or 0), forget_ids_sha256=str(p.get("forget_ids_sha256") or ""),
                   holdout_acc_before=_float(p.get("holdout_acc_before", p.get("test_acc_before", nan))),
                   holdout_acc_after=_float(p.get("holdout_acc_after", p.get("test_acc_after", nan))),
                   accuracy_floor=p.get("accuracy_floor"),
                   time_s=_float(p.get("unlearn_time_s", p.get("time_s", 0.0))),
                   policy_time_s=_float(p.get("policy_time_s", 0.0)), attempts=list(p.get("attempts") or []),
                   verification=verification, consolidate_now=bool(p.get("consolidate_now")),
                   problem=p.get("problem"), device=p.get("device"), data_placement=p.get("data_placement"))

    def summary(self) -> dict[str, Any]:
        """What a client polling its request is told (GET /requests/{id}'s `forgetting`)."""
        v, after = self.verification, self.verification.get("after") or {}
        return {"method": self.method, "exact": self.exact, "exact_at": None, "verdict": self.verdict,
                "gap_closed": v.get("gap_closed"), "over_forgotten": v.get("over_forgotten"),
                "set_auc_before": (v.get("before") or {}).get("set", {}).get("auc"),
                "set_auc_after": after.get("set", {}).get("auc"),
                "p_member_after": after.get("set", {}).get("p_member"),
                "flagged_after": after.get(f"flagged@{PRIMARY_FPR:g}", {}).get("rate"),
                "min_detectable_batch": v.get("min_detectable_batch"), "n_forget": self.n_forget or None}


def _float(v: object) -> float:
    return float("nan") if v is None else float(v)  # type: ignore[arg-type]
