"""Re-run the hostile corpus against live services on SQLite and on PostgreSQL, with deletions under worker and
Redis kills, and count: requests sent, 5xx answers, answers off the expected status, deletions lost.

    PYTHONPATH=. .venv/bin/python scripts/hostile_run.py [--rounds 5] [--deletions 100] [--out DIR]

PostgreSQL is UNLEARND_TEST_DATABASE_URL (skipped without it). Writes DIR/results.json and DIR/results.md.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from app.core.embedded_redis import EmbeddedRedis
from app.ml.data.dataset import SplitConfig
from app.ml.training.fit import TrainConfig
from app.ml.verify.base import VerifierConfig
from app.ml.workflows.pipeline import train_to_dir
from app.service.live import free_port
from tests.service.test_hostile_corpus import CORPUS
from tests.service_harness import PG_URL, Service, db_url_for


def corpus(svc: Service, rounds: int) -> Counter[str]:
    n: Counter[str] = Counter()
    for _ in range(rounds):
        for method, path, params, body, ctype, keyed, status in CORPUS:
            headers = {**({"X-API-Key": svc.key} if keyed else {}), **({"content-type": ctype} if ctype else {})}
            r = httpx.request(method, svc.url + path, params=params, content=body, headers=headers, timeout=60)
            n["requests"] += 1
            n["5xx"] += r.status_code >= 500
            n["unexpected status"] += r.status_code != status
    return n


def deletions(svc: Service, redis: EmbeddedRedis, count: int) -> Counter[str]:
    """COUNT concurrent deletions of distinct training samples while two workers are SIGKILLed twice each and
    the Redis once; every accepted request must end completed with its samples forgotten."""
    n: Counter[str] = Counter()
    ids = svc.train_ids()[300:300 + 2 * count]
    accepted: list[tuple[str, list[int]]] = []
    lock = threading.Lock()

    def one(k: int) -> None:
        body = {"sample_ids": ids[2 * k:2 * k + 2]}
        for _ in range(20):  # a 503 (Redis or the ledger briefly away) is retried, with the same key
            r = httpx.post(svc.url + "/delete", json=body, timeout=60,
                           headers={"X-API-Key": svc.key, "Idempotency-Key": f"hostile-{k}"})
            with lock:
                n["requests"] += 1
                n["5xx"] += r.status_code >= 500 and r.status_code != 503
                n["503 (retried)"] += r.status_code == 503
            if r.status_code == 202:
                with lock:
                    accepted.append((r.json()["id"], body["sample_ids"]))
                return
            time.sleep(0.5)

    def chaos() -> None:
        for step in range(5):
            time.sleep(4)
            if step == 2:
                redis.stop()
                time.sleep(2)
                redis.start()
                n["redis kills"] += 1
                continue
            victim = svc.workers[step % len(svc.workers)]
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            svc.workers[svc.workers.index(victim)] = svc.start_worker()
            n["worker kills"] += 1

    killer = threading.Thread(target=chaos)
    killer.start()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(count)))
    killer.join()
    n["accepted"] = len(accepted)
    for rid, _ in accepted:
        try:
            state = svc.wait_request(rid, timeout_s=600)["state"]
        except TimeoutError:
            state = "stuck"
        n[f"ended {state}"] += 1
    n["lost"] = n["accepted"] - n["ended completed"]
    return n


def run(backend: str, work: Path, model: Path, ns: argparse.Namespace) -> dict[str, Any]:
    (work / backend).mkdir()
    redis = EmbeddedRedis(free_port(), work / f"redis-{backend}").start()
    svc = Service(work / backend, model, db_url=db_url_for(backend, work / backend / "home"), redis_url=redis.url,
                  UNLEARND_LEASE_S=60, UNLEARND_WORKER_TIMEOUT_S=6, UNLEARND_MAX_DELETE_IDS=50)
    try:
        svc.start_api()
        svc.start_worker()
        svc.start_worker()
        t0 = time.monotonic()
        out = {"backend": backend, "corpus": dict(corpus(svc, ns.rounds)),
               "deletions": dict(deletions(svc, redis, ns.deletions))}
        out["seconds"] = time.monotonic() - t0
        return out
    finally:
        svc.stop()
        redis.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5, help="passes over the corpus")
    p.add_argument("--deletions", type=int, default=100)
    p.add_argument("--out", type=Path, default=Path("docs/results/hostile"))
    ns = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="unlearnd-hostile-") as tmp:
        work = Path(tmp)
        train_to_dir(dataset="digits", arch="lenet5", out=work / "model", split_cfg=SplitConfig(seed=0),
                     train_cfg=TrainConfig(alpha=0.01, max_epochs=15, seed=0), progress=False,
                     verifier_cfg=VerifierConfig(n_refs=2, seed=0), device="cpu")
        results = [run(b, work, work / "model", ns) for b in ("sqlite", "postgres") if b == "sqlite" or PG_URL]
    ns.out.mkdir(parents=True, exist_ok=True)
    cmd = "PYTHONPATH=. .venv/bin/python scripts/hostile_run.py " + " ".join(sys.argv[1:])
    (ns.out / "results.json").write_text(json.dumps({"command": cmd, "results": results}, indent=2))
    lines = [f"# Hostile corpus and deletions under kills\n\n`{cmd}`\n",
             "| backend | corpus requests | 5xx | off-status | deletion POSTs | 5xx | 503 retried | accepted | "
             "completed | lost | worker kills | Redis kills | seconds |", "|---" * 13 + "|"]
    for r in results:
        c, d = r["corpus"], r["deletions"]
        lines.append(f"| {r['backend']} | {c.get('requests', 0)} | {c.get('5xx', 0)} | {c.get('unexpected status', 0)} "
                     f"| {d.get('requests', 0)} | {d.get('5xx', 0)} | {d.get('503 (retried)', 0)} | "
                     f"{d.get('accepted', 0)} | {d.get('ended completed', 0)} | {d.get('lost', 0)} | "
                     f"{d.get('worker kills', 0)} | {d.get('redis kills', 0)} | {r['seconds']:.0f} |")
    (ns.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(r["corpus"].get("5xx", 0) == 0 and r["deletions"].get("lost", 0) == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
