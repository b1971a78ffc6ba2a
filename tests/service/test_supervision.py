"""`unlearnd serve` as an operator runs it (embedded Redis, its own worker): a busy Redis port is refused
(D1), a killed worker or Redis comes back and the worker's claims are redone at once (D3), and SIGTERM
stops every child (D2)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.service.live import free_port
from tests.service_harness import Service, db_url_for

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc for the children")


def _children(pid: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            kids = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
        except FileNotFoundError:
            continue
        for k in map(int, kids):
            with contextlib.suppress(FileNotFoundError):
                out[k] = Path(f"/proc/{k}/cmdline").read_bytes()
    return out


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        for k in _children(todo.pop()):
            out.append(k)
            todo.append(k)
    return out


def _kid(pid: int, marker: bytes) -> int | None:
    return next((k for k, cmd in _children(pid).items() if marker in cmd), None)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


class Served(Service):
    """A Service whose `serve` runs the worker and an embedded Redis itself."""

    def start_serve(self, redis_port: int, *extra: str, timeout_s: float = 600) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in self.env.items() if k not in ("REDIS_URL", "UNLEARND_REDIS_URL")}
        env["UNLEARND_EMBEDDED_REDIS_PORT"] = str(redis_port)
        self.api = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--model", str(self.model_dir),
                                     "--port", str(self.port), *extra], env=env, stdout=self._log("serve.log"),
                                    stderr=subprocess.STDOUT, process_group=0)  # as a terminal starts it
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.api.poll() is None, (self.home / "serve.log").read_text()[-3000:]
            try:
                r = httpx.get(self.url + "/readyz", timeout=2)
                if r.status_code == 200 and r.json()["worker"].startswith("ok: 1 live"):
                    return self.api
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError((self.home / "serve.log").read_text()[-3000:])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, digits_model_dir: Path) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("served")
    s = Served(tmp, digits_model_dir, db_url=db_url_for("sqlite", tmp / "home"), redis_url="unused",
               UNLEARND_DEBUG_COMMIT_DELAY_S=4)
    s.start_serve(free_port())
    yield s
    s.stop()


def test_a_busy_redis_port_is_refused(tmp_path: Path, digits_model_dir: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        svc = Served(tmp_path, digits_model_dir, db_url=db_url_for("sqlite", tmp_path / "home"), redis_url="unused")
        env = {k: v for k, v in svc.env.items() if k not in ("REDIS_URL", "UNLEARND_REDIS_URL")}
        r = subprocess.run([sys.executable, "-m", "app.cli", "serve", "--port", str(free_port())], timeout=120,
                           env={**env, "UNLEARND_EMBEDDED_REDIS_PORT": str(port)}, capture_output=True, text=True)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"unlearnd: error: port {port} is in use by another process" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_killed_worker_is_back_and_its_claims_are_redone_at_once(served: Served) -> None:
    assert served.api is not None
    worker = _kid(served.api.pid, b"worker")
    assert worker is not None
    with served.client() as c:
        rid = c.post("/delete", json={"sample_ids": served.train_ids()[:3]}).json()["id"]
        served.wait_request(rid, states=("processing",), timeout_s=60)
        time.sleep(0.5)  # inside the batch's 4 s commit delay
        os.kill(worker, signal.SIGKILL)
        t0 = time.monotonic()
        while (new := _kid(served.api.pid, b"worker")) in (None, worker):
            assert time.monotonic() - t0 < 10, "no new worker within 10 s"
            time.sleep(0.1)
        # the lease is the default 300 s: completing well before it means the claim was released on the death
        done = served.wait_request(rid, timeout_s=60)
        assert done["state"] == "completed" and done["attempts"] == 2
        assert time.monotonic() - t0 < 60
        log = (served.home / "serve.log").read_text()
        assert "worker exited with code -9" in log and "released 1 requests the dead worker held" in log
        assert c.get("/readyz").json()["worker"].startswith("ok: 1 live")
    assert new is not None and _alive(new)


def test_a_killed_embedded_redis_is_back(served: Served) -> None:
    assert served.api is not None
    redis = _kid(served.api.pid, b"redis-server")
    assert redis is not None
    os.kill(redis, signal.SIGKILL)
    t0 = time.monotonic()
    while (new := _kid(served.api.pid, b"redis-server")) in (None, redis):
        assert time.monotonic() - t0 < 10, "no new Redis within 10 s"
        time.sleep(0.1)
    with served.client() as c:
        deadline = time.monotonic() + 30
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.3)
        rid = c.post("/delete", json={"sample_ids": served.train_ids()[3:4]}).json()["id"]
        assert served.wait_request(rid, timeout_s=60)["state"] == "completed"
    assert new is not None


def test_sigterm_stops_every_child(served: Served) -> None:
    _stops_every_child(served, signal.SIGTERM)


def test_sigint_stops_every_child(tmp_path: Path, digits_model_dir: Path) -> None:
    """Ctrl-C in a terminal: SIGINT to serve's whole process group. The worker must stop before its Redis
    (issue 23: it logged `ERROR rq.worker … could not connect to Redis`)."""
    s = Served(tmp_path, digits_model_dir, db_url=db_url_for("sqlite", tmp_path / "home"), redis_url="unused")
    s.start_serve(free_port())
    try:
        _stops_every_child(s, signal.SIGINT, group=True)
    finally:
        s.stop()


def test_a_killed_serve_leaves_no_child(tmp_path: Path, digits_model_dir: Path) -> None:
    """SIGKILL runs no clean-up: the worker and Redis die with their parent (PR_SET_PDEATHSIG), the API's
    ledger process notices its parent is gone."""
    s = Served(tmp_path, digits_model_dir, db_url=db_url_for("sqlite", tmp_path / "home"), redis_url="unused")
    try:
        api = s.start_serve(free_port())
        kids = list(_children(api.pid))
        assert len(kids) >= 3  # worker, Redis, the ledger process (and its resource tracker)
        api.kill()
        api.wait(5)
        t0 = time.monotonic()
        while any(_alive(k) for k in kids):
            assert time.monotonic() - t0 < 10, [(k, Path(f"/proc/{k}/cmdline").read_bytes()[:80])
                                                for k in kids if _alive(k)]
            time.sleep(0.1)
    finally:
        s.stop()


def test_a_killed_serve_with_api_workers_leaves_no_process(tmp_path: Path, digits_model_dir: Path) -> None:
    """Issue 22, D3: with `--workers 2` the API runs in two uvicorn processes, each with its ledger process;
    a SIGKILLed serve left them all running, listening, and accepting deletions nobody would process."""
    s = Served(tmp_path, digits_model_dir, db_url=db_url_for("sqlite", tmp_path / "home"), redis_url="unused")
    try:
        api = s.start_serve(free_port(), "--workers", "2")
        time.sleep(2)  # both API processes have started their ledger processes
        family = _descendants(api.pid)
        cmds = [Path(f"/proc/{k}/cmdline").read_bytes() for k in family if _alive(k)]
        assert sum(b"spawn_main" in c for c in cmds) >= 4, cmds  # 2 API processes + 2 ledger processes
        api.kill()
        api.wait(5)
        t0 = time.monotonic()
        while any(_alive(k) for k in family):
            assert time.monotonic() - t0 < 15, [(k, Path(f"/proc/{k}/cmdline").read_bytes()[:80])
                                                for k in family if _alive(k)]
            time.sleep(0.2)
        with socket.socket() as probe:  # the port is free again: a new serve can start
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind(("127.0.0.1", s.port))
    finally:
        s.stop()


def _stops_every_child(served: Served, sig: signal.Signals, *, group: bool = False) -> None:
    assert served.api is not None
    kids = list(_children(served.api.pid))
    assert any(b"worker" in _children(served.api.pid)[k] for k in kids)
    before = (served.home / "serve.log").stat().st_size  # the module's earlier tests logged their own faults
    if group:
        os.killpg(served.api.pid, sig)
    else:
        served.api.send_signal(sig)
    t0 = time.monotonic()
    served.api.wait(15)
    assert time.monotonic() - t0 < 10
    while any(_alive(k) for k in kids):
        assert time.monotonic() - t0 < 10, [k for k in kids if _alive(k)]
        time.sleep(0.1)
    log = (served.home / "serve.log").read_bytes()[before:].decode(errors="replace")
    assert "unlearnd stopped" in log
    assert "could not connect to Redis" not in log and " ERROR " not in log, log[-3000:]
