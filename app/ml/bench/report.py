"""Writing a suite's results: results.json (with provenance), results.md, PNG figures."""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from app.ml.fsutil import atomic_write_text
from app.ml.provenance import provenance


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def fmt_pm(values: Sequence[float], digits: int = 2) -> str:
    m, s = mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each fn, run round-robin so that machine noise hits all of them alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def write_results(out: Path, *, suite: str, command: str, config: dict[str, Any], results: dict[str, Any],
                  markdown: str) -> dict[str, Any]:
    doc = {"suite": suite, "command": command, "config": config, "provenance": provenance(), **results}
    atomic_write_text(out / "results.json", json.dumps(doc, indent=2, default=float))
    header = f"# {suite}\n\nCommand: `{command}`\n\n"
    p = doc["provenance"]
    footer = (f"\n\n_unlearnd {p['version']} ({p['git_hash'] or 'no git'}), {p['created_at']}, "
              f"{p['machine']['platform']}, torch {p['machine']['torch']}, {p['machine']['threads']} threads._\n")
    atomic_write_text(out / "results.md", header + markdown + footer)
    return doc
