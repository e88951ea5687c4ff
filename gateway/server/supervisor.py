"""The worker processes of `peel serve --workers N`: started, watched, started again, signalled."""

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

log = logging.getLogger("peel.serve")

# The signals Peel handles; blocked in a new worker until its event loop handles them.
HANDLED = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


class Supervisor:
    """Starts the worker processes and starts again any that die while the gateway runs."""

    def __init__(self, count: int, public: socket.socket, config_path: str | None,
                 stopping: Callable[[], bool]) -> None:
        self.count = count
        self.public = public
        self.config_path = config_path
        self.stopping = stopping
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.failed = False

    def spawn(self, slot: int) -> None:
        fd = self.public.fileno()
        args = [sys.executable, "-m", "gateway.server.serve", "--worker", "--fd", str(fd)]
        if self.config_path:
            args += ["--config", self.config_path]
        # Only the master speaks to systemd (NotifyAccess=main would log every worker's message).
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        # The signals Peel handles stay blocked in the new worker until its loop handles them
        # (run_worker): a reload or a drain forwarded while it starts then waits, instead of
        # ending it by the default action.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        try:
            self.procs[slot] = subprocess.Popen(args, pass_fds=(fd,), env=env)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        log.info("worker %d started (pid %d)", slot, self.procs[slot].pid)

    async def run(self) -> None:
        if self.stopping():
            return
        for slot in range(self.count):
            self.spawn(slot)
        restarts: dict[int, float] = {}
        while not self.stopping():
            await asyncio.sleep(0.5)
            for slot, proc in list(self.procs.items()):
                code = proc.poll()
                if code is None or self.stopping():
                    continue
                pause = min(30.0, restarts.get(slot, 0.5) * 2)
                restarts[slot] = pause
                log.error("worker %d (pid %d) exited with %s; starting it again in %.1f s",
                          slot, proc.pid, code, pause)
                await asyncio.sleep(pause)
                if not self.stopping():
                    self.spawn(slot)

    def forward(self, sig: signal.Signals) -> None:
        """Pass a signal on to every live worker. With SIGTERM the master also lets go of the
        public socket, so the listener closes when the last worker closes its own descriptor."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(sig)
        if sig == signal.SIGTERM:
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
