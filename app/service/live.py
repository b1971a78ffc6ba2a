"""A live unlearnd: `unlearnd serve` and `unlearnd worker` as real processes, driven over HTTP.

One driver for everything that runs the service end to end: the service benchmark (`unlearnd bench
--suite service-*`), `make fuzz`, and the tests' harness (tests/service_harness.py builds on it)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from app.core.config import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveService:
    def __init__(self, home: Path, model_dir: Path, *, db_url: str, redis_url: str, key: str | None = None,
                 **env: Any) -> None:
        """KEY: the deployment's bootstrap admin key (a new one revokes the old: processes of one deployment
        share it); default a fresh one."""
        self.home, self.model_dir = home, model_dir
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.key = key or "ulk_admin_" + uuid.uuid4().hex
        self.env = {**os.environ, "UNLEARND_HOME": str(home), "DATABASE_URL": db_url, "REDIS_URL": redis_url,
                    "UNLEARND_QUEUE_NAME": f"unlearnd-{uuid.uuid4().hex[:8]}",
                    "UNLEARND_BOOTSTRAP_ADMIN_KEY": self.key, **{k: str(v) for k, v in env.items()}}
        self.settings = Settings(home=home, database_url=db_url, redis_url=redis_url)
        self.api: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.server_cpus: set[int] | None = None  # where the benchmark pins the API, if it does
        self.worker_cpus: set[int] | None = None  # and the workers it starts
        self.url = f"http://127.0.0.1:{self.port}"

    def train_ids(self) -> list[int]:
        """The served model's training ids: the ledger's samples, forgotten or not."""
        return sorted(int(i) for i in json.loads((self.model_dir / "splits.json").read_text())["train"])

    def _log(self, name: str) -> Any:
        return (self.home / name).open("ab")

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "app.cli", *args], env={**self.env, **env},
                              capture_output=True, text=True, timeout=120)

    def start_api(self, timeout_s: float = 600) -> LiveService:
        log = self._log("api.log")
        self.api = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--model", str(self.model_dir),
                                     "--port", str(self.port), "--no-worker"], env=self.env, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.api.poll() is not None:
                raise RuntimeError((self.home / "api.log").read_text()[-3000:])
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError((self.home / "api.log").read_text()[-3000:])

    def children(self) -> list[int]:
        """The API process's child processes (its ledger process among them). Linux."""
        assert self.api is not None
        kids: list[int] = []
        for tid in os.listdir(f"/proc/{self.api.pid}/task"):
            with contextlib.suppress(FileNotFoundError):
                kids += [int(p) for p in Path(f"/proc/{self.api.pid}/task/{tid}/children").read_text().split()]
        return kids

    def ledger_pids(self) -> list[int]:
        """The API's ledger processes: the pool processes it spawned (not multiprocessing's tracker)."""
        return [p for p in self.children() if b"spawn_main" in _cmdline(p)]

    def start_worker(self, **env: Any) -> subprocess.Popen[bytes]:
        log = self._log(f"worker{len(self.workers)}.log")
        cpus = self.worker_cpus
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", "worker"],
                                env={**self.env, **{k: str(v) for k, v in env.items()}}, stdout=log, stderr=log,
                                preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
        self.workers.append(proc)
        return proc

    def client(self, key: str | None = "admin") -> httpx.Client:
        headers = {"X-API-Key": self.key if key == "admin" else key} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def wait_request(self, request_id: str, *, states: tuple[str, ...] = ("completed", "failed", "rejected"),
                     timeout_s: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        with self.client() as c:
            while time.monotonic() < deadline:
                body = c.get(f"/requests/{request_id}").json()
                if body["state"] in states:
                    return body  # type: ignore[no-any-return]
                time.sleep(0.05)
        raise TimeoutError(f"request {request_id} still {body['state']}; logs in {self.home}")

    def wait_serving(self, version: str, timeout_s: float = 60, poll_s: float = 0.05) -> None:
        deadline = time.monotonic() + timeout_s
        with self.client() as c:
            while time.monotonic() < deadline:
                if c.get("/models/current").json().get("serving") == version:
                    return
                time.sleep(poll_s)
        raise TimeoutError(f"API never served {version}")

    def wait_grad_cache(self, version: str, timeout_s: float = 600) -> None:
        """Until the worker has refreshed VERSION's gradient cache (the IAU fast path needs it)."""
        cache = self.settings.models_dir / version / "grad_cache.safetensors"
        deadline = time.monotonic() + timeout_s
        while not cache.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no gradient cache for {version}; logs in {self.home}")
            time.sleep(0.05)

    def stop_workers(self) -> None:
        _terminate(self.workers)
        self.workers = []

    def stop(self) -> None:
        _terminate([p for p in (*self.workers, self.api) if p is not None])


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return b""


def _terminate(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()

