"""`unlearnd train` in 1 and 2 processes (torch.distributed, gloo on this CPU), side by side over seeds: held-out
accuracy and wall time; then the same 2-process run as two torchrun agents (`--nnodes 2`, a c10d rendezvous on
127.0.0.1), which must give the same weights as `--nproc 2`.

    .venv/bin/python scripts/distributed_check.py OUT_DIR [--dataset digits] [--seeds 3] [--epochs 10] [--refs K]

With --refs K the runs also train the verifier's K LiRA reference models: shared out one per rank at 2
processes, all in the one process at 1 (the measurement that chose one model per rank over DDP per model).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

FLAGS = ["--arch", "lenet5", "--no-calibrate", "--no-cache", "--quiet"]


def _train(args: list[str], out: Path, env: dict[str, str] | None = None) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "app.cli", *args, "--out", str(out)], capture_output=True,
                          text=True, env={**os.environ, **(env or {})})
    if proc.returncode:
        raise SystemExit(f"train failed: {proc.stderr[-2000:]}")
    return time.perf_counter() - t0, json.loads((out / "meta.json").read_text())


def _agents(args: list[str], out: Path) -> dict[str, Any]:
    """Two torchrun agents of one process each, rendezvousing over c10d on this machine."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
           f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=unlearnd-check", "-m", "app.cli", *args, "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as torchrun sets it for --nproc-per-node 2
    agents = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
    for a in agents:
        _, err = a.communicate(timeout=1800)
        if a.returncode:
            raise SystemExit(f"agent failed: {err[-2000:]}")
    return json.loads((out / "meta.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--refs", type=int, default=0)
    ns = p.parse_args()
    train = ["train", "--dataset", ns.dataset, *FLAGS, "--verify-refs", str(ns.refs)]
    ns.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(ns.seeds):
            for nproc in (1, 2):  # interleaved: the host's noise hits both alike
                args = [*train, "--seed", str(seed), "--max-epochs", str(ns.epochs), "--nproc", str(nproc)]
                wall, meta = _train(args, Path(tmp) / f"s{seed}-n{nproc}")
                rows.append({"seed": seed, "nproc": nproc, "wall_s": wall, "test_acc": meta["test_acc"],
                             "epochs": meta["epochs"], "weights_sha256": meta["weights_sha256"]})
                print(rows[-1], flush=True)
        agents = _agents([*train, "--seed", "0", "--max-epochs", str(ns.epochs)], Path(tmp) / "agents")
    two = next(r for r in rows if r["seed"] == 0 and r["nproc"] == 2)
    same = agents["weights_sha256"] == two["weights_sha256"]
    doc = {"command": f"python scripts/distributed_check.py {ns.out} --dataset {ns.dataset} --seeds {ns.seeds} "
                      f"--epochs {ns.epochs}" + (f" --refs {ns.refs}" if ns.refs else ""),
           "rows": rows, "agents_match_nproc_2": same, "agents_sha256": agents["weights_sha256"]}
    (ns.out / "results.json").write_text(json.dumps(doc, indent=1))
    (ns.out / "results.md").write_text(_markdown(doc, ns))
    print(_markdown(doc, ns))


def _markdown(doc: dict[str, Any], ns: argparse.Namespace) -> str:
    by = {n: [r for r in doc["rows"] if r["nproc"] == n] for n in (1, 2)}

    def ms(xs: list[float], scale: float = 1.0) -> str:
        sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
        return f"{scale * statistics.mean(xs):.2f} ± {scale * sd:.2f}"

    speedup = [a["wall_s"] / b["wall_s"] for a, b in zip(by[1], by[2], strict=True)]
    lines = [f"# distributed training check\n\nCommand: `{doc['command']}`\n",
             f"{ns.dataset} / lenet5, up to {ns.epochs} epochs with early stopping, "
             + (f"the verifier's {ns.refs} LiRA references (one per rank at a time at 2 processes), no calibration"
                if ns.refs else "no verifier or calibration (the fit alone, plus start-up)")
             + ", 2-core CPU, gloo; mean ± std over seeds "
             f"{[r['seed'] for r in by[1]]}. Wall time is the whole `unlearnd train` command.\n",
             "| processes | test accuracy (%) | wall time (s) | speed-up | efficiency |", "|---|---|---|---|---|",
             f"| 1 | {ms([r['test_acc'] for r in by[1]], 100)} | {ms([r['wall_s'] for r in by[1]])} | — | — |",
             f"| 2 | {ms([r['test_acc'] for r in by[2]], 100)} | {ms([r['wall_s'] for r in by[2]])} | "
             f"{ms(speedup)}× | {ms([s / 2 for s in speedup], 100)}% |",
             "", f"Two torchrun agents (`--nnodes 2 --nproc-per-node 1`, c10d rendezvous on 127.0.0.1), seed 0: "
             f"weights {'identical to' if doc['agents_match_nproc_2'] else 'DIFFERENT from'} `--nproc 2`'s "
             f"(sha256 {doc['agents_sha256'][:16]}…).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
