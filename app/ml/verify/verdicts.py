"""The verdict vocabulary: one word per forgetting result, shared by the verifier, the policy, the CLI, the API
and /ui, and the false-positive rates the verifier reports at. No torch here: the API's processes read it."""

from __future__ import annotations

from enum import StrEnum

FPRS = (0.01, 0.05)  # the verifier's false-positive rates: flagged@q for each
PRIMARY_FPR = FPRS[-1]  # the flagged rate that UE_lira and the tables use


class Verdict(StrEnum):
    FORGOTTEN = "forgotten"  # the batch's membership signal is gone (the batch is large enough to tell)
    PARTIAL = "partial"  # the verifier still detects membership after the update
    NOT_MEASURABLE = "not measurable"  # no detection, but the batch is below the minimum detectable size
    UNVERIFIED = "unverified"  # no verifier, or no model passed validation

    @classmethod
    def parse(cls, word: object) -> Verdict:
        """A stored word, including the verifier's old "not forgotten" (now `partial`)."""
        if word == "not forgotten":
            return cls.PARTIAL
        try:
            return cls(str(word))
        except ValueError:
            return cls.UNVERIFIED
