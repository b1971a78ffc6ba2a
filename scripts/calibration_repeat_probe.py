"""Does calibration name the same steps twice on the same model? forgetting-small's memorising MLP, per seed:
θ* and its verifier as the bench builds them, then calibration run twice on them (the same simulated deletions).
For each run, the choices by work (what calibration does now) and, from the same trials, by the clock (the rule
before: each cost ratio read off wall time).

    PYTHONPATH=. .venv/bin/python scripts/calibration_repeat_probe.py OUT_DIR [SEEDS]   # ~6 min a seed on 2 cores

Nothing else may run meanwhile: the clock's choices are what the host's load moves.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from app.core.config import Settings
from app.ml.bench.context import memorise, task_for
from app.ml.bench.small_deletions import SmallConfig
from app.ml.data.formats import load_dataset
from app.ml.forgetting.calibrate import CalibrationConfig, _escalation, calibrate
from app.ml.forgetting.ranking import ordered

CFG = SmallConfig("forgetting-small")


def _name(s: dict[str, Any] | None) -> str | None:
    return None if s is None else f"{s['method']} {json.dumps(s['params'], sort_keys=True)}"


def by_clock(cal: dict[str, Any]) -> dict[str, str | None]:
    """The set-level choice and the per-sample step from CAL's own trials, every cost read off wall time."""
    def strip(x: dict[str, Any]) -> dict[str, Any]:
        return {**x, **{r: {**x[r], "work": None} for r in ("large", "small") if x.get(r)}}
    summary = [strip(x) for x in cal["candidates"]]
    trials = [{**t, "work": None} for t in cal["trials"]]
    order = ordered(summary, "large", "large")
    esc = _escalation(summary, order, trials, cal["budget"], min(cal["large_sizes"], default=None))
    return {"choice": _name(order[0]["setting"] if order else None), "escalation": _name(esc and esc["setting"])}


def once(base: Any, hold: np.ndarray, seconds: float, seed: int) -> dict[str, Any]:
    cal = calibrate(base, hold, seconds, CalibrationConfig(max_accuracy_drop=CFG.max_accuracy_drop, seed=seed))
    work = {"choice": _name(cal["choice"]), "escalation": _name(cal["escalation"])}
    esc = [t for t in cal["trials"] if cal["escalation"] and t["method"] == cal["escalation"]["method"]
           and t["params"] == cal["escalation"]["params"]]
    return {"by_work": work, "by_clock": by_clock(cal), "seconds": cal["seconds"],
            "escalation_trials": [{k: t[k] for k in ("n", "time_s", "work")} for t in esc]}


def main(out: Path, seeds: list[int]) -> None:
    ds = load_dataset(CFG.dataset, data_dir=Settings().data_dir)
    rows = []
    for seed in seeds:
        m = memorise(ds, seed, arch=CFG.arch, n_train=CFG.n_train, epochs=CFG.epochs)
        verifier = m.verifier(ds, "lira", refs=CFG.refs, seed=seed)
        base = task_for(m.trained.model, ds, m.splits.train, np.empty(0, np.int64), cache=True, seed=seed,
                        model_cfg=m.model_cfg, train_cfg=m.train_cfg, val_ids=None, epochs_trained=CFG.epochs,
                        verifier=verifier)
        hold = m.splits.holdout(10000)
        runs = [once(base, hold, m.trained.seconds, seed) for _ in range(2)]
        rows.append({"seed": seed, "runs": runs})
        print(json.dumps(rows[-1]), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"command": " ".join(sys.argv), "seeds": seeds, "rows": rows},
                                                 indent=1))
    lines = [f"`PYTHONPATH=. .venv/bin/python {' '.join(sys.argv)}`", "",
             "| seed | run | set-level, by work | per-sample, by work | set-level, by clock | per-sample, by clock |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        for i, x in enumerate(r["runs"]):
            w, c = x["by_work"], x["by_clock"]
            lines.append(f"| {r['seed']} | {i + 1} | {w['choice']} | {w['escalation']} | {c['choice']} | "
                         f"{c['escalation']} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), [int(s) for s in sys.argv[2].split(",")] if len(sys.argv) > 2 else [0, 1, 2])
