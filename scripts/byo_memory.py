"""Peak memory of `unlearnd train` and of the worker on a team's own data (issue 24): CIFAR-10 written out as an
image folder of 60,000 PNGs with a samples.csv of subjects, and a table of 1,000,000 rows × 32 features.

    PYTHONPATH=. .venv/bin/python scripts/byo_memory.py --out /tmp/byo [--rows 1000000]

Prints one line per measurement (peak RSS from /usr/bin/time -v, or the worker's VmHWM) and writes them to
OUT/memory.json. Needs ../shared/data/cifar10.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def image_folder(root: Path) -> int:
    from PIL import Image

    from app.ml.data.formats import load_dataset

    if (root / "samples.csv").is_file():
        return sum(1 for _ in (root / "samples.csv").open()) - 1
    ds = load_dataset("cifar10", data_dir=Path("../shared/data"))
    rows = []
    for i in range(len(ds)):
        split = "train" if i < ds.n_pool else "test"
        rel = f"{split}/{ds.names[ds.y[i]]}/{i:05d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(ds.x[i])).save(root / rel)
        rows.append((rel, i, f"person-{i // 5}"))
    with (root / "samples.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "sample_id", "subject_id"])
        w.writerows(rows)
    return len(rows)


def table(path: Path, rows: int) -> int:
    if path.is_file():
        return rows
    rng = np.random.default_rng(0)
    with path.open("w") as f:
        f.write(",".join([f"f{j}" for j in range(32)] + ["label", "subject_id"]) + "\n")
        for start in range(0, rows, 100_000):
            n = min(100_000, rows - start)
            y = rng.integers(0, 4, n)
            x = rng.normal(size=(n, 32)) + y[:, None] * 0.3
            names = np.asarray(["red", "green", "blue", "grey"])[y]
            lines = [",".join(f"{v:.4f}" for v in x[k]) + f",{names[k]},p{(start + k) // 7}" for k in range(n)]
            f.write("\n".join(lines) + "\n")
    return rows


def peak_rss(args: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB, wall seconds) of one unlearnd command."""
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "app.cli", *args], capture_output=True,
                          text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))  # type: ignore[union-attr]
    return kb / 1024, time.perf_counter() - t0


def worker_peak(model: Path, home: Path) -> dict[str, float]:
    """Serve MODEL, delete one subject, and read the worker's peak RSS once the request completed."""
    import httpx

    from app.service.live import LiveService
    from tests.service_harness import RedisForTests, db_url_for

    redis = RedisForTests(home / "redis-own")
    svc = LiveService(home, model, db_url=db_url_for("sqlite", home), redis_url=redis.url,
                      UNLEARND_MAX_ACCURACY_DROP=0.05)
    try:
        svc.start_api(timeout_s=3600)
        worker = svc.start_worker()
        with svc.client() as c:
            rid = c.post("/delete", json={"subject_id": "person-7"}).json()["id"]
            done = svc.wait_request(rid, timeout_s=1800)
        status = Path(f"/proc/{worker.pid}/status").read_text()
        hwm = int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]
        api = httpx.get(svc.url + "/healthz").status_code
        return {"worker_peak_rss_mib": hwm, "request_state": done["state"], "api_ok": api == 200}
    finally:
        svc.stop()
        redis.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ns = ap.parse_args()
    ns.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("UNLEARND_THREADS", "2")
    result: dict[str, object] = {}
    n_img = image_folder(ns.out / "cifar-folder")
    rss, wall = peak_rss(["train", "--model", "lenet5", "--data", f"imagefolder:{ns.out / 'cifar-folder'}",
                          "--max-epochs", "2", "--verify-refs", "2", "--quiet", "--out", str(ns.out / "m-img")])
    result["imagefolder"] = {"images": n_img, "train_peak_rss_mib": rss, "train_wall_s": wall,
                             "pixels_mib": n_img * 32 * 32 * 3 / 2**20}
    print(json.dumps(result["imagefolder"]), flush=True)
    n_rows = table(ns.out / "big.csv", ns.rows)
    rss, wall = peak_rss(["train", "--model", "mlp", "--data", f"csv:{ns.out / 'big.csv'}", "--max-epochs", "1",
                          "--verify-refs", "0", "--no-calibrate", "--no-cache", "--quiet",
                          "--out", str(ns.out / "m-csv")])
    result["csv"] = {"rows": n_rows, "file_mib": (ns.out / "big.csv").stat().st_size / 2**20,
                     "features_mib": n_rows * 32 * 4 / 2**20, "train_peak_rss_mib": rss, "train_wall_s": wall}
    print(json.dumps(result["csv"]), flush=True)
    result["service"] = worker_peak(ns.out / "m-img", ns.out / "home")
    print(json.dumps(result["service"]), flush=True)
    (ns.out / "memory.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
