"""Calibration's order and the noise recorded beside the choice's score."""

from __future__ import annotations

from typing import Any

import pytest

from app.ml.forgetting.ranking import gap_se, ordered, score_noise


def _cand(name: str, score: float, time_s: float, qualifies: bool = True) -> dict[str, Any]:
    v = {"qualifies": qualifies, "score": score, "time_s": time_s, "noise": 0.02}
    return {"setting": {"method": name, "params": {}}, "large": v, "small": v}


def _names(xs: list[dict[str, Any]]) -> list[str]:
    return [x["setting"]["method"] for x in xs]


def test_the_best_score_leads_and_equal_scores_go_to_the_faster_by_a_tenth_of_a_second() -> None:
    summary = [_cand("slow_tie", 0.88, 4.0), _cand("best", 0.90, 4.0), _cand("fast_tie", 0.88, 1.5),
               _cand("noise_tie", 0.88, 4.04)]
    assert _names(ordered(summary, "large", "large")) == ["best", "fast_tie", "slow_tie", "noise_tie"]


def test_a_setting_three_times_slower_must_win_beyond_the_scores_noise() -> None:
    # noise 0.02 each: a difference within 1.96 · √2 · 0.02 ≈ 0.055 is noise
    within = [_cand("slow_best", 0.90, 4.0), _cand("fast", 0.86, 1.3), _cand("fastest", 0.84, 0.4)]
    assert _names(ordered(within, "large", "large")) == ["fastest", "fast", "slow_best"]  # each a tie, 3× faster
    beyond = [_cand("slow_best", 0.95, 4.0), _cand("fast", 0.86, 1.3)]
    assert _names(ordered(beyond, "large", "large")) == ["slow_best", "fast"]
    not_3x = [_cand("slow_best", 0.90, 4.0), _cand("fast", 0.88, 1.5)]  # 2.7× faster: the score decides
    assert _names(ordered(not_3x, "large", "large")) == ["slow_best", "fast"]


def test_non_qualifiers_never_rank() -> None:
    summary = [_cand("best", 0.9, 4.0), _cand("fast_but_out", 0.95, 0.1, qualifies=False)]
    assert _names(ordered(summary, "large", "large")) == ["best"]


def test_the_noise_of_a_score_comes_from_the_verifiers_interval_or_the_held_out_rows() -> None:
    before = {"set": {"auc": 0.70}}
    after = {"set": {"auc": 0.60, "ci_low": 0.60 - 1.959964 * 0.03, "ci_high": 0.60 + 1.959964 * 0.03}}
    assert gap_se(before, after) == pytest.approx(0.03 / 0.20)
    assert gap_se({"set": {"auc": 0.5}}, after) is None  # no gap to close: no gap-closed score either
    assert score_noise([0.1, 0.1], 0.9, 300) == pytest.approx(0.1 / 2**0.5)
    assert score_noise([], 0.9, 400) == pytest.approx((0.9 * 0.1 / 400) ** 0.5)


def test_the_per_sample_step_holds_the_budget_where_it_runs_on_the_smallest_judged_set() -> None:
    """The escalation runs on a batch's few flagged samples: a setting that breaks the budget only on 250 ids may
    be it; one that breaks it on 10 ids, closes no more per-sample gap than the choice, or costs on the fewest ids
    neither SLOWER times less than on the most nor within SLOWER times the choice there, may not."""
    from app.ml.forgetting.calibrate import _escalation

    def cand(name: str, closed: float, qualifies: bool) -> dict[str, Any]:
        return {"setting": {"method": name, "params": {}},
                "large": {"qualifies": qualifies, "score": closed, "time_s": 0.1, "noise": 0.0,
                          "flagged_closed": closed, "forget": None}}

    def trial(name: str, n: int, drop: float) -> dict[str, Any]:
        return {"method": name, "params": {}, "n": n, "acc_drop": drop, "holdout_acc": 0.9, "finite": True,
                "over_forgotten": False, "time_s": 0.1}

    summary = [cand("choice", 0.3, True), cand("ceiling", 0.9, False), cand("reckless", 1.0, False),
               cand("mild", 0.5, True)]
    trials = [trial("choice", 10, 0.0), trial("choice", 250, 0.005), trial("ceiling", 10, 0.004),
              trial("ceiling", 250, 0.015), trial("reckless", 10, 0.02), trial("mild", 10, 0.0)]
    budget = {"max_accuracy_drop": 0.01, "max_time_s": 1.0}
    order = [summary[0], summary[3]]  # the qualifiers at every size, best first
    picked = _escalation(summary, order, trials, budget, 10)
    assert picked is not None and picked["setting"]["method"] == "ceiling" and picked["held_at"] == 10
    weak = [cand("choice", 0.9, True), summary[3]]
    assert _escalation(weak + summary[1:3], weak, trials, budget, 10) is None  # nothing closes more than the choice
    # diverging on 250 ids (non-finite weights) rules a setting out, though it held on 10
    diverged = [*trials[:3], {**trials[3], "finite": False, "holdout_acc": None}, *trials[4:]]
    picked = _escalation(summary, order, diverged, budget, 10)
    assert picked is not None and picked["setting"]["method"] == "mild", picked
    # its cost must shrink with its few samples, or be within SLOWER times the choice's on the fewest ids
    costly = [*summary[:3], cand("epoch", 0.95, False)]

    def epoch(few: float, most: float) -> list[dict[str, Any]]:
        return [*trials, {**trial("epoch", 10, 0.0), "time_s": few}, {**trial("epoch", 250, 0.0), "time_s": most}]

    for few, most, named in ((0.31, 0.32, "ceiling"),  # an epoch over D_r whatever the batch (SCRUB, SalUn)
                             (0.4, 1.21, "epoch"),  # over 3x the choice on 10 ids, but 3x cheaper there than on 250
                             (0.29, 0.3, "epoch"),  # barely scales, but within 3x the choice's 0.1 s on 10 ids
                             ):
        picked = _escalation(costly, order, epoch(few, most), budget, 10)
        assert picked is not None and picked["setting"]["method"] == named, (few, most, picked)


def test_the_set_level_score_is_not_won_by_clipping_the_tail() -> None:
    """Measured on CIFAR-10 LeNet5 (docs/forgetting.md): a setting that brings D_f's per-sample flagged share to the
    FPR while its set AUC moves a fifth of the way outscored one that moves the set AUC half way, when the flagged
    share counted in the set-level score. The set-level step answers for the set; the share is recorded for the
    per-sample step's choice."""
    from app.ml.forgetting.calibrate import _judge

    def rows(gap: float, flagged_after: float) -> list[dict[str, Any]]:
        return [{"n": n, "acc_drop": 0.0, "finite": True, "over_forgotten": False, "time_s": 0.5,
                 "gap_closed": gap, "gap_se": 0.05, "flagged_before": 0.082, "flagged_after": flagged_after,
                 "forget": None} for n in (500, 2500)]

    budget = {"max_accuracy_drop": 0.01, "max_time_s": 1.0, "holdout_acc": 0.6, "n_holdout": 10000}
    clip, bulk = _judge(rows(0.22, 0.037), budget, 87), _judge(rows(0.5, 0.079), budget, 87)
    assert clip["flagged_closed"] == pytest.approx(1.0) and bulk["flagged_closed"] == pytest.approx(0.09375)
    assert clip["score"] == pytest.approx(0.22) and bulk["score"] == pytest.approx(0.5)
    assert _names(ordered([{"setting": {"method": "clip", "params": {}}, "large": clip, "small": None},
                           {"setting": {"method": "bulk", "params": {}}, "large": bulk, "small": None}],
                          "large", "large")) == ["bulk", "clip"]


def test_work_counted_by_both_decides_over_wall_time() -> None:
    """Where both settings counted their work, the ratio is the work's: the same model and seed give the same order
    whatever the host's load. One without a count (a vmapped step) is compared by wall time."""
    def cand(name: str, score: float, time_s: float, work: int | None) -> dict[str, Any]:
        c = _cand(name, score, time_s)
        c["large"] = {**c["large"], "work": work}
        return c

    # 2.7× faster by the clock (noise), 4× less work: a tie within noise goes to the cheaper
    assert _names(ordered([cand("slow_best", 0.90, 4.0, 4000), cand("cheap", 0.88, 1.5, 1000)],
                          "large", "large")) == ["cheap", "slow_best"]
    # 3.3× faster by the clock on a busy host, the same work: the score decides
    assert _names(ordered([cand("slow_best", 0.90, 5.0, 1000), cand("cheap", 0.88, 1.5, 1000)],
                          "large", "large")) == ["slow_best", "cheap"]
    # one side uncounted: the clock
    assert _names(ordered([cand("slow_best", 0.90, 5.0, 1000), cand("cheap", 0.88, 1.5, None)],
                          "large", "large")) == ["cheap", "slow_best"]


def test_the_per_sample_steps_scaling_is_judged_on_work() -> None:
    """forgetting-small at 534914e, seed 2: out_match's ceiling cost 0.069 s on 10 ids and 0.198 s on 250 (2.9×,
    under SLOWER), the shift 0.068 s and 0.210 s (3.1×): the clock named the shift, a step that keeps D_f's spread.
    Both do the same work (the targets' forwards plus five epochs' steps): about 4× more on 250 ids."""
    from app.ml.forgetting.calibrate import _cheap_on_few

    def rows(times: tuple[float, float], works: tuple[int | None, int | None]) -> list[dict[str, Any]]:
        return [{"n": n, "time_s": t, "work": w} for n, t, w in zip((10, 250), times, works, strict=True)]

    iau = rows((0.007, 0.015), (30, 750))
    assert not _cheap_on_few(rows((0.069, 0.198), (None, None)), iau)  # the clock: 2.9× < SLOWER
    assert _cheap_on_few(rows((0.069, 0.198), (2440, 10210)), iau)  # the work: 4.2×
    assert not _cheap_on_few(rows((0.21, 0.22), (9000, 9100)), iau)  # an epoch over D_r whatever the batch
    assert _cheap_on_few(rows((0.01, 0.011), (80, 90)), iau)  # barely scales, within SLOWER × the choice's work
