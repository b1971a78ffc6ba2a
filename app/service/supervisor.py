"""`serve`'s children (its worker, its embedded Redis), restarted when they die.

A thread polls each child; one that exited unasked is logged, its death handled (a worker's claims
go back to pending at once), and it is started again after a backoff that doubles up to a cap and
resets once a child has lived a minute. Children get SIGKILL if `serve` itself dies (Linux
PR_SET_PDEATHSIG), so a killed `serve` leaves no worker or Redis behind: a SIGTERM let a worker in the
middle of its start-up or a batch outlive it by many seconds; its claims go back by heartbeat timeout.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("unlearnd.supervisor")

PR_SET_PDEATHSIG = 1
SERVE_PID_ENV = "UNLEARND_SERVE_PID"  # set by `serve` for its API processes, which die with it too
STABLE_S = 60.0  # a child that lived this long starts again at the shortest backoff
BACKOFF_S = (0.5, 30.0)


def die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the thread that started it exits (Linux; elsewhere nothing)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class Child:
    name: str
    start: Callable[[], subprocess.Popen[bytes]]
    on_death: Callable[[int], None] = lambda code: None
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff_s: float = BACKOFF_S[0]
    next_try: float = 0.0
    last_exit: int | None = None

    def launch(self) -> None:
        self.proc, self.started_at = self.start(), time.monotonic()


@dataclass
class Supervisor:
    children: list[Child] = field(default_factory=list)
    poll_s: float = 0.25
    _stopping: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def add(self, child: Child) -> Child:
        child.launch()
        self.children.append(child)
        return child

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.wait(self.poll_s):
            for c in self.children:
                self._check(c)

    def _check(self, c: Child) -> None:
        if self._stopping.is_set():
            return
        now = time.monotonic()
        if c.proc is not None:
            code = c.proc.poll()
            if code is None:
                return
            lived = now - c.started_at
            c.backoff_s = BACKOFF_S[0] if lived >= STABLE_S else min(c.backoff_s * 2, BACKOFF_S[1])
            c.proc, c.last_exit, c.next_try = None, code, now + c.backoff_s
            log.warning("%s exited with code %s after %.1f s; restarting in %.1f s", c.name, code, lived, c.backoff_s)
            try:
                c.on_death(code)
            except Exception as e:  # the restart matters more; the sweep redoes what this missed
                log.error("%s: handling its exit failed: %s", c.name, e)
        if c.proc is None and now >= c.next_try:
            try:
                c.launch()
                c.restarts += 1
                log.warning("%s restarted (restart %d)", c.name, c.restarts)
            except Exception as e:
                c.backoff_s = min(c.backoff_s * 2, BACKOFF_S[1])
                c.next_try = now + c.backoff_s
                log.error("%s could not be restarted (%s); next try in %.1f s", c.name, e, c.backoff_s)

    def stop(self, timeout_s: float = 8.0) -> None:
        """Children in reverse order, each gone before the next is signalled (the worker's shutdown still talks
        to the Redis it uses): SIGTERM, then SIGKILL what is left when TIMEOUT_S in all have passed."""
        self._stopping.set()  # no restarts from here; the thread is joined last: its exit SIGKILLs what it started
        live = [c.proc for c in reversed(self.children) if c.proc is not None and c.proc.poll() is None]
        deadline = time.monotonic() + timeout_s
        for p in live:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self._thread is not None:
            self._thread.join(2)
        for c in self.children:  # a worker killed mid-batch: its claims go back now, not at the next start
            with contextlib.suppress(Exception):
                c.on_death(c.proc.returncode if c.proc is not None else -1)
