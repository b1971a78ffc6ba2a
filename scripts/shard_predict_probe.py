"""Issue 36: /predict through HTTP for a sharded model (K constituents, their aggregate) against K = 1, the same data
and recipe, each served by the real API in turn (SQLite, no worker), in one run.

    PYTHONPATH=. .venv/bin/python scripts/shard_predict_probe.py --out docs/results/shards [--seeds 3]

Per seed: digits LeNet5 trained with `unlearnd train` at K = 1 and K = 4 (R = 1, no verifier, no calibration), then
per model a closed-loop load of one-row and of 64-row POST /predict (2 clients, 8 s each; app/service_bench/load.py,
the service bench's generator). Writes OUT/predict-http.json and OUT/predict-http.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from app.ml.bench.report import fmt_pm
from app.ml.data.formats import load_dataset
from app.service.live import LiveService
from app.service_bench.load import run_load
from tests.service_harness import RedisForTests, db_url_for

KS = (1, 4)
ROWS = (1, 64)
SECONDS = 8.0


def train(out: Path, k: int, seed: int) -> None:
    subprocess.run([sys.executable, "-m", "app.cli", "train", "--dataset", "digits", "--arch", "lenet5", "--alpha",
                    "0.01", "--max-epochs", "20", "--seed", str(seed), "--verify-refs", "0", "--no-calibrate",
                    "--no-cache", "--shards", str(k), "--quiet", "--out", str(out)], check=True)


def measure(tmp: Path, model: Path, redis_url: str, rows: dict[int, list[list[float]]]) -> dict[str, Any]:
    home = tmp / f"home-{model.name}"
    svc = LiveService(home, model, db_url=db_url_for("sqlite", home), redis_url=redis_url, UNLEARND_VERIFY_REFS=0)
    try:
        svc.start_api()
        out = {}
        for n, body in rows.items():
            r = run_load(svc.url + "/predict", body={"instances": body}, headers={"X-API-Key": svc.key}, clients=2,
                         seconds=SECONDS)
            assert r.errors == 0, r.errors
            out[f"rps_{n}"], out[f"p50_ms_{n}"] = r.rps, r.pct(50)
        return out
    finally:
        svc.stop()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seeds", type=int, default=3)
    ns = p.parse_args()
    ds = load_dataset("digits")
    x = ds.x.reshape(len(ds.x), -1).astype(float)
    rows = {n: x[:n].tolist() for n in ROWS}
    results = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        redis = RedisForTests(tmp)
        try:
            for seed in range(ns.seeds):
                models = {k: tmp / f"k{k}-s{seed}" for k in KS}
                for k, folder in models.items():
                    train(folder, k, seed)
                order = KS if seed % 2 == 0 else KS[::-1]  # alternate which is served first: drift cancels
                for k in order:
                    results.append({"seed": seed, "k": k, **measure(tmp, models[k], redis.url, rows)})
        finally:
            redis.stop()
    ns.out.mkdir(parents=True, exist_ok=True)
    command = f"PYTHONPATH=. .venv/bin/python scripts/shard_predict_probe.py --out {ns.out} --seeds {ns.seeds}"
    (ns.out / "predict-http.json").write_text(json.dumps({"command": command, "rows": results,
                                                          "wall_s": time.perf_counter() - t0}, indent=2))
    lines = [f"Command: `{command}`", "",
             f"/predict through the real API (SQLite, no worker), digits LeNet5 at K = 1 and K = 4 (R = 1), the same "
             f"recipe; a closed loop of 2 clients for {SECONDS:g} s per body; mean ± std over {ns.seeds} seeds, the "
             "two models of a seed served one after the other in one run (the first one alternating).", "",
             "| rows per request | K = 1 requests/s | K = 4 requests/s | K = 4 / K = 1 | K = 1 p50 ms | K = 4 p50 ms |",
             "|---|---|---|---|---|---|"]
    for n in ROWS:
        one = [r for r in results if r["k"] == 1]
        four = [r for r in results if r["k"] == 4]
        ratio = [b[f"rps_{n}"] / a[f"rps_{n}"] for a, b in zip(one, four, strict=True)]
        lines.append(f"| {n} | {fmt_pm([r[f'rps_{n}'] for r in one], 0)} | {fmt_pm([r[f'rps_{n}'] for r in four], 0)}"
                     f" | {fmt_pm(ratio, 2)}× | {fmt_pm([r[f'p50_ms_{n}'] for r in one], 2)} | "
                     f"{fmt_pm([r[f'p50_ms_{n}'] for r in four], 2)} |")
    (ns.out / "predict-http.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
