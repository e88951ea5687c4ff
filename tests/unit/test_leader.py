"""`gateway/server/leader.py`: jobs run only while the lease is held, stop when it is lost, and the
lock is given up on the way out; a failing job keeps its schedule."""

from __future__ import annotations

import asyncio
from datetime import datetime

import pytest

from gateway.server.leader import AlwaysLease, Job, Leader, cancel, leader_jobs
from routes.errors import StoreError


class FakeLease:
    """A lock another process may hold (`free`) or take away (`lost`)."""

    def __init__(self, free: bool = True) -> None:
        self.free = free
        self.held = False
        self.released = 0

    def acquire(self) -> bool:
        if self.free and not self.held:
            self.held = True
        return self.held

    def check(self) -> bool:
        return self.held

    def release(self) -> None:
        self.held = False
        self.released += 1


async def until(condition: object, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():  # type: ignore[operator]
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.005)


def counting_job(runs: list[int], interval: float = 0.01) -> Job:
    async def run() -> None:
        runs.append(1)
    return Job(interval, run)


def test_jobs_run_only_while_leading_and_stop_when_the_lease_is_lost() -> None:
    asyncio.run(_leading())


async def _leading() -> None:
    lease = FakeLease(free=False)
    runs: list[int] = []
    leader = Leader(lease, {"count": counting_job(runs)}, check_interval=0.01)
    task = asyncio.create_task(leader.run())
    try:
        await asyncio.sleep(0.1)
        assert not leader.leading and runs == []  # another process holds the lock
        lease.free = True
        await until(lambda: leader.leading and len(runs) >= 3)
        lease.held = False  # the session dropped: PostgreSQL released the lock
        lease.free = False
        await until(lambda: not leader.leading)
        stopped_at = len(runs)
        await asyncio.sleep(0.1)
        assert len(runs) == stopped_at
        lease.free = True  # and takes it again when it can
        await until(lambda: leader.leading and len(runs) > stopped_at)
    finally:
        await cancel(task)
    assert not leader.leading and lease.released == 1 and not lease.held


def test_a_failing_job_is_logged_and_runs_again(caplog: pytest.LogCaptureFixture) -> None:
    asyncio.run(_flaky())
    assert "leader job flaky failed" in caplog.text


async def _flaky() -> None:
    calls: list[int] = []

    async def flaky() -> None:
        calls.append(1)
        raise RuntimeError("boom")

    leader = Leader(AlwaysLease(), {"flaky": Job(0.01, flaky)}, check_interval=0.01)
    task = asyncio.create_task(leader.run())
    try:
        await until(lambda: len(calls) >= 3)
    finally:
        await cancel(task)


class Store:
    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.calls: list[datetime] = []

    def compact_traffic(self, idle_before: datetime) -> tuple[int, int]:
        self.calls.append(idle_before)
        if self.fail:
            raise StoreError("down", unreachable=True)
        return 2, 1


def test_the_registry_holds_the_traffic_count_clean_up(caplog: pytest.LogCaptureFixture) -> None:
    asyncio.run(_registry(caplog))


async def _registry(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    store = Store(fail=False)
    jobs = leader_jobs(store)  # type: ignore[arg-type]  # only the traffic job runs here
    assert list(jobs) == ["traffic-counts", "guard"]
    await jobs["traffic-counts"].run()
    assert len(store.calls) == 1 and "2 rows of idle processes rolled up, 1 unread" in caplog.text
    store.fail = True
    await jobs["traffic-counts"].run()  # a store that is down: logged, not raised
    assert "traffic counts not compacted" in caplog.text


def test_metrics_show_whether_this_gateway_leads() -> None:
    from gateway.telemetry.metrics import render

    assert b'peel_leader{instance="host:1"} 1.0' in render([], admin_process=False,
                                                              leader=("host:1", True))
    assert b'peel_leader{instance="host:1"} 0.0' in render([], admin_process=False,
                                                              leader=("host:1", False))
    assert b"peel_leader" not in render([], admin_process=False)  # a process that does not compete
