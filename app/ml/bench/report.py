"""Writing a suite's results: results.json (with provenance), results.md, PNG figures."""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.ml.common.fsutil import atomic_write_text
from app.ml.common.provenance import provenance

if TYPE_CHECKING:
    import torch


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def fmt_pm(values: Sequence[float], digits: int = 2) -> str:
    m, s = mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def interleaved(fns: dict[str, Callable[[], object]], repeats: int,
                device: torch.device | None = None) -> dict[str, list[float]]:
    """Seconds of each fn, run round-robin so that machine noise hits all of them alike; on a GPU each
    time includes the kernels the fn queued."""
    from app.ml.common.device import synchronize

    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if device is not None:
                synchronize(device)
            t0 = time.perf_counter()
            fn()
            if device is not None:
                synchronize(device)
            times[name].append(time.perf_counter() - t0)
    return times


def bench_command(suite: str, out: Path, seeds: int | None = None) -> str:
    """The command line that writes a suite's results to OUT, as results.md and results.json quote it."""
    return f"unlearnd bench --suite {suite} --out {out}" + (f" --seeds {seeds}" if seeds else "")


def write_results(out: Path, *, suite: str, command: str, config: dict[str, Any], results: dict[str, Any],
                  markdown: str, device: torch.device | None = None, placement: str | None = None,
                  prov: dict[str, Any] | None = None) -> dict[str, Any]:
    """DEVICE and PLACEMENT: what the suite ran on, and where its data lived (Dataset.placement); PROV: a stored
    run's provenance, when its outputs are rendered again."""
    doc = {"suite": suite, "command": command, "config": config,
           "provenance": prov or provenance(device, placement), **results}
    atomic_write_text(out / "results.json", json.dumps(doc, indent=2, default=float))
    header = f"# {suite}\n\nCommand: `{command}`\n\n"
    p = doc["provenance"]
    commit = (p["git_hash"] or "no git") + (" + uncommitted changes" if p.get("git_dirty") else "")
    footer = (f"\n\n_unlearnd {p['version']} ({commit}), {p['created_at']}, "
              f"{p['machine']['platform']}, torch {p['machine']['torch']}, {p['machine']['threads']} threads"
              + (f" ({p['machine']['cpu']}, {p['machine']['cpu_capability']})" if p["machine"].get("cpu_capability")
                 else "") + ", "
              f"device {p['machine']['device']}._\n")
    atomic_write_text(out / "results.md", header + markdown + footer)
    return doc


def summary_rows(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    """One entry per method (first-seen order): each key's mean and `KEY_std` over the method's rows."""
    out = []
    for name in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == name]
        e: dict[str, Any] = {"method": name, "n_seeds": len(mine)}
        for k in keys:
            e[k], e[f"{k}_std"] = mean_std([float("nan") if r[k] is None else float(r[k]) for r in mine])
        out.append(e)
    return out
