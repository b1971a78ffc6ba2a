"""Fuzz a live unlearnd API with schemathesis from its own OpenAPI document (issue 15; `.ci/run` runs it).

    .venv/bin/python scripts/fuzz_api.py [--max-examples N] [--max-time S]

Starts a service on a tiny digits model (SQLite, an embedded Redis, a worker), then generates
valid and invalid requests for every operation with the admin key. Fails on any 5xx answer or any
answer that does not match the schema the API documents (status, content type, body).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from app.core.embedded_redis import EmbeddedRedis
from app.ml.data.dataset import SplitConfig
from app.ml.training.fit import TrainConfig
from app.ml.workflows.pipeline import train_to_dir
from app.service.live import LiveService, free_port

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-examples", type=int, default=20, help="per operation")
    p.add_argument("--max-time", type=int, default=110, help="seconds for the fuzzing phases")
    p.add_argument("--seed", type=int, default=0)
    ns = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="unlearnd-fuzz-") as tmp:
        work = Path(tmp)
        train_to_dir(dataset="digits", arch="lenet5", out=work / "model", split_cfg=SplitConfig(seed=0),
                     train_cfg=TrainConfig(alpha=0.01, max_epochs=3, seed=0), progress=False, verifier=None,
                     device="cpu")
        redis = EmbeddedRedis(free_port(), work / "redis").start()
        svc = LiveService(work / "home", work / "model", db_url=f"sqlite:///{work / 'home' / 'ledger.db'}",
                          redis_url=redis.url, UNLEARND_VERIFY_REFS=0,
                          UNLEARND_UNLEARN_METHOD="iau", UNLEARND_MAX_ACCURACY_DROP=1, UNLEARND_BATCH_MAX_WAIT_S=0.2,
                          UNLEARND_MAX_DELETE_IDS=20, UNLEARND_THREADS=1)
        try:
            svc.start_api()
            svc.start_worker()
            cmd = [str(Path(sys.executable).with_name("st")), "run", f"{svc.url}/openapi.json",
                   "--header", f"X-API-Key: {svc.key}", "--checks", CHECKS, "--max-examples", str(ns.max_examples),
                   "--max-time", str(ns.max_time), "--seed", str(ns.seed), "--workers", "1",
                   "--generation-deterministic", "--request-timeout", "30"]
            print("$", " ".join(c if not c.startswith("X-API-Key") else "X-API-Key: …" for c in cmd), flush=True)
            return subprocess.run(cmd, check=False).returncode
        finally:
            svc.stop()
            redis.stop()


if __name__ == "__main__":
    sys.exit(main())
