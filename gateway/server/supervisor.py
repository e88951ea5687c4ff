"""The worker processes of `peel serve --workers N`: started, watched, started again, signalled.

Each worker slot is watched on its own: a worker that exits is started again after a pause that
doubles from `BACKOFF_FIRST` up to `BACKOFF_MAX` while it keeps dying, and one worker's pause never
delays another's restart (the watch loop only schedules; it does not sleep through a pause). A
worker that ran for `HEALTHY_SECONDS` before it exited is taken as healthy again: its next pause is
`BACKOFF_FIRST` again. `running()` says whether any worker process is alive; the master's `/readyz`
is 503 while none is.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger("peel.serve")

# The signals Peel handles; blocked in a new worker until its event loop handles them.
HANDLED = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1})
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
# A worker that ran this long before exiting restarts after BACKOFF_FIRST again: twice the longest
# pause, so a worker that dies every BACKOFF_MAX seconds keeps its long pause.
HEALTHY_SECONDS = 60.0
POLL_SECONDS = 0.5


class Process(Protocol):
    """What the supervisor needs of a worker process (`subprocess.Popen` is one)."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...

    def wait(self, timeout: float | None = None) -> int: ...


def next_pause(previous: float, ran_for: float) -> float:
    """The pause before starting again a worker that exited after `ran_for` seconds, its previous
    pause having been `previous` (0: none yet)."""
    if previous <= 0 or ran_for >= HEALTHY_SECONDS:
        return BACKOFF_FIRST
    return min(BACKOFF_MAX, previous * 2)


class Supervisor:
    """Starts the worker processes and starts again any that die while the gateway runs.

    `launch(slot)` starts one worker (by default `python -m gateway.server.serve --worker`); `clock`
    is monotonic seconds. Both are seams for the tests, which drive `step` with fake processes.
    """

    def __init__(self, count: int, public: socket.socket | None, config_path: str | None,
                 stopping: Callable[[], bool], *, launch: Callable[[int], Process] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 inbound: socket.socket | None = None) -> None:
        self.count = count
        self.public = public
        # the inbound listener's socket, inherited by every worker too (None: no inbound listener)
        self.inbound = inbound
        self.config_path = config_path
        self.stopping = stopping
        self.procs: dict[int, Process] = {}
        self.failed = False
        self._launch = launch if launch is not None else self._popen
        self._clock = clock
        self._started: dict[int, float] = {}  # slot -> when its current process started
        self._pause: dict[int, float] = {}  # slot -> its last pause (absent: none since healthy)
        self._restart_at: dict[int, float] = {}  # slot -> when its exited process starts again

    def _popen(self, slot: int) -> Process:
        assert self.public is not None
        fd = self.public.fileno()
        args = [sys.executable, "-m", "gateway.server.serve", "--worker", "--fd", str(fd)]
        fds = [fd]
        if self.inbound is not None:
            fds.append(self.inbound.fileno())
            args += ["--inbound-fd", str(fds[-1])]
        if self.config_path:
            args += ["--config", self.config_path]
        # Only the master speaks to systemd (NotifyAccess=main would log every worker's message).
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        # The signals Peel handles stay blocked in the new worker until its loop handles them
        # (run_worker): a reload or a drain forwarded while it starts then waits, instead of
        # ending it by the default action.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        try:
            return subprocess.Popen(args, pass_fds=tuple(fds), env=env)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def spawn(self, slot: int) -> None:
        self.procs[slot] = self._launch(slot)
        self._started[slot] = self._clock()
        self._restart_at.pop(slot, None)
        log.info("worker %d started (pid %d)", slot, self.procs[slot].pid)

    def running(self) -> bool:
        """Whether at least one worker process is alive."""
        return any(proc.poll() is None for proc in self.procs.values())

    def pids(self) -> list[int]:
        """The process ids of the live workers."""
        return [proc.pid for proc in self.procs.values() if proc.poll() is None]

    def step(self) -> None:
        """One look at every slot: schedule the restart of a worker that exited, start the ones
        whose pause is over. Never waits."""
        now = self._clock()
        for slot, proc in list(self.procs.items()):
            if self.stopping():
                return
            if slot in self._restart_at:
                if now >= self._restart_at[slot]:
                    self.spawn(slot)
                continue
            code = proc.poll()
            if code is None:
                continue
            pause = next_pause(self._pause.get(slot, 0.0), now - self._started[slot])
            self._pause[slot] = pause
            self._restart_at[slot] = now + pause
            log.error("worker %d (pid %d) exited with %s; starting it again in %.1f s",
                      slot, proc.pid, code, pause)

    async def run(self) -> None:
        if self.stopping():
            return
        for slot in range(self.count):
            self.spawn(slot)
        while not self.stopping():
            await asyncio.sleep(POLL_SECONDS)
            self.step()

    def forward(self, sig: signal.Signals) -> None:
        """Pass a signal on to every live worker. With SIGTERM the master also lets go of the
        public socket, so the listener closes when the last worker closes its own descriptor."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(sig)
        if sig == signal.SIGTERM and self.public is not None:
            self.public.close()

    async def wait(self, timeout: float) -> None:
        """Wait for the signalled workers to exit; kill (and count as failed) any still there."""
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if proc.poll() is None:
                log.error("worker pid %d did not stop in %.0f s; killing it", proc.pid, timeout)
                proc.kill()
                proc.wait()
                self.failed = True
