"""The worker supervisor with fake processes and a fake clock: per-worker restarts, backoff that
resets after a healthy run, and `running()` (what the master's /readyz asks)."""

from __future__ import annotations

import re

import pytest

from gateway.server.supervisor import BACKOFF_FIRST, BACKOFF_MAX, HEALTHY_SECONDS, Supervisor, next_pause


class FakeProcess:
    """A worker that runs until the test says it exited."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.code: int | None = None
        self.signals: list[int] = []

    def poll(self) -> int | None:
        return self.code

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)

    def kill(self) -> None:
        self.code = -9

    def wait(self, timeout: float | None = None) -> int:
        assert self.code is not None
        return self.code


class Farm:
    """A supervisor over fake processes, with a clock the test moves."""

    def __init__(self, count: int) -> None:
        self.now = 1000.0
        self.stopping = False
        self.started: list[tuple[int, float]] = []
        self.supervisor = Supervisor(count, None, None, lambda: self.stopping, launch=self.launch,
                                     clock=lambda: self.now)
        for slot in range(count):
            self.supervisor.spawn(slot)

    def launch(self, slot: int) -> FakeProcess:
        self.started.append((slot, self.now))
        return FakeProcess(100 + len(self.started))

    def proc(self, slot: int) -> FakeProcess:
        proc = self.supervisor.procs[slot]
        assert isinstance(proc, FakeProcess)
        return proc

    def advance(self, seconds: float, step: float = 0.5) -> None:
        """Let time pass, the supervisor looking every `step` seconds (as its loop does)."""
        end = self.now + seconds
        while self.now < end:
            self.now = min(end, self.now + step)
            self.supervisor.step()

    def restarts(self, slot: int) -> list[float]:
        return [at for s, at in self.started if s == slot][1:]


def test_running_is_false_while_every_worker_is_dead() -> None:
    farm = Farm(2)
    assert farm.supervisor.running()
    farm.proc(0).code = 1
    assert farm.supervisor.running()
    farm.proc(1).code = -9
    assert not farm.supervisor.running()  # before the supervisor even looked
    farm.advance(0.5)
    assert not farm.supervisor.running()  # dead, restart pending
    farm.advance(BACKOFF_FIRST)
    assert farm.supervisor.running()


def test_one_workers_backoff_does_not_delay_the_others() -> None:
    farm = Farm(2)
    for _ in range(4):  # worker 0 keeps dying at once: its pause grows to 8 s
        farm.proc(0).code = 1
        farm.advance(BACKOFF_MAX)
    farm.proc(0).code = 1
    farm.advance(0.5)
    died = farm.now
    farm.proc(1).code = 1  # worker 1 dies while worker 0 waits out a 16 s pause
    farm.advance(BACKOFF_FIRST + 0.5)
    assert farm.restarts(1) == [pytest.approx(died + BACKOFF_FIRST, abs=0.51)]
    assert len(farm.restarts(0)) == 4  # the fifth restart of worker 0 is still to come
    farm.advance(16)
    assert len(farm.restarts(0)) == 5


def test_the_pause_doubles_while_a_worker_keeps_dying_and_resets_after_a_healthy_run(
        caplog: pytest.LogCaptureFixture) -> None:
    farm = Farm(1)
    caplog.set_level("ERROR", logger="peel.serve")
    for _ in range(7):
        farm.proc(0).code = 1
        farm.advance(BACKOFF_MAX + 1)
    farm.advance(HEALTHY_SECONDS)  # the seventh process runs healthily for a while
    farm.proc(0).code = 1
    farm.advance(BACKOFF_MAX + 1)
    pauses = [float(p) for p in re.findall(r"starting it again in ([\d.]+) s", caplog.text)]
    assert pauses == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 1.0]


def test_next_pause() -> None:
    assert next_pause(0, 0.1) == BACKOFF_FIRST
    assert next_pause(4, 0.1) == 8
    assert next_pause(BACKOFF_MAX, HEALTHY_SECONDS - 1) == BACKOFF_MAX
    assert next_pause(BACKOFF_MAX, HEALTHY_SECONDS) == BACKOFF_FIRST


def test_nothing_is_started_again_once_stopping() -> None:
    farm = Farm(2)
    farm.stopping = True
    farm.proc(0).code = 0
    farm.proc(1).code = 0
    farm.advance(BACKOFF_MAX + 1)
    assert len(farm.started) == 2
    assert not farm.supervisor.running()
