"""The demo's child processes: started in their own sessions, output relayed with a prefix, stopped by PID.

Each child gets a new session, so a Ctrl-C in the terminal reaches only `peel demo`, which then stops
the children in order (gateway first, then the apps it forwards to) instead of all of them racing to
exit at once. Stopping is terminate → wait → kill the child's whole process group after a timeout,
which also reaches any process a child started itself (for example `peel serve --workers N`).
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from typing import TextIO

TAIL_LINES = 20


class Child:
    """One running child process whose output lines are copied to `out` as `[name] line`."""

    def __init__(self, name: str, argv: Sequence[str], out: TextIO, lock: threading.Lock,
                 env: Mapping[str, str], cwd: str | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.expected_exit = False
        self._out = out
        self._lock = lock
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env=dict(env), cwd=cwd,
                                     start_new_session=True)
        self._reader = threading.Thread(target=self._relay, name=f"relay-{name}", daemon=True)
        self._reader.start()

    def _relay(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            self.tail.append(line)
            # Keep draining even when our own output is gone (`peel demo | head`): a child blocked
            # on a full pipe would stop serving.
            with self._lock, contextlib.suppress(OSError, ValueError):
                self._out.write(f"[{self.name}] {line}\n")
                self._out.flush()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def exit_code(self) -> int | None:
        return self.proc.poll()

    def describe_exit(self) -> str:
        """Why this child is gone, with its last lines of output, for the operator."""
        code = self.proc.poll()
        if code is not None and code < 0:
            how = f"was killed by signal {signal.Signals(-code).name}"
        else:
            how = f"exited with status {code}"
        self._reader.join(timeout=1)  # let the last lines arrive before quoting them
        last = "\n".join(f"    {line}" for line in list(self.tail)[-8:])
        return f"{self.name} (pid {self.pid}) {how}" + (f"; its last output:\n{last}" if last else "")

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.expected_exit = True
            self.proc.send_signal(signal.SIGTERM)

    def kill_group(self) -> None:
        """SIGKILL the child's process group (its session), whatever is still in it."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def close(self) -> None:
        self._reader.join(timeout=2)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class Children:
    """The demo's children in start order; `stop_all` stops them in reverse order."""

    def __init__(self, out: TextIO, env: Mapping[str, str], cwd: str | None = None) -> None:
        self.out = out
        self.lock = threading.Lock()
        self.env = env
        self.cwd = cwd
        self.running: list[Child] = []

    def say(self, text: str) -> None:
        """Print one message of the demo itself, never interleaved inside a child's line."""
        with self.lock, contextlib.suppress(OSError, ValueError):  # never let output stop a clean-up
            self.out.write(text + "\n")
            self.out.flush()

    def start(self, name: str, argv: Sequence[str]) -> Child:
        child = Child(name, argv, self.out, self.lock, self.env, self.cwd)
        self.running.append(child)
        return child

    def first_dead(self) -> Child | None:
        """A child that exited although nobody asked it to."""
        return next((c for c in self.running if not c.expected_exit and c.exit_code() is not None), None)

    def stop_all(self, timeout: float) -> list[str]:
        """Stop every child, last started first, each given `timeout` seconds before it is killed.

        One at a time so the gateway drains while the apps it forwards to are still up. Returns the
        names of the children that had to be killed.
        """
        killed: list[str] = []
        for child in reversed(self.running):
            child.terminate()
            try:
                child.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                killed.append(child.name)
                child.kill_group()
                child.proc.wait()
            # A clean exit can still leave grandchildren behind in the child's session.
            child.kill_group()
            child.close()
        return killed
