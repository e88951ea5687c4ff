"""One leader per fleet: the process that runs the periodic control work.

Several gateways may share one PostgreSQL store. Work that must happen once for the whole fleet, not
once per process, runs only in the leader: the process holding a PostgreSQL session-level advisory
lock (`routes.listen.AdvisoryLease`). The master of each `peel serve` (the single process, or the
master of several workers) competes; workers never do. When the leader dies its session ends,
PostgreSQL releases the lock, and another master takes it at its next try (every
`LEADER_CHECK_INTERVAL` seconds). On SQLite there is one gateway: it leads, with no lock.

The jobs are registered in one place, `leader_jobs()`; each runs every `interval` seconds while this
process leads and is cancelled when it stops leading. A job must be safe to run twice at once
(during a partition an old leader may not have noticed yet that its session ended).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from routes.errors import StoreError

log = logging.getLogger("peel.leader")

# seconds between a follower's tries for the lock, and between the leader's checks that it holds it
LEADER_CHECK_INTERVAL = 2.0


class Lease(Protocol):
    """What leading needs from the lock (blocking calls; `AdvisoryLease` is one)."""

    def acquire(self) -> bool: ...

    def check(self) -> bool: ...

    def release(self) -> None: ...


class AlwaysLease:
    """The lease of a gateway alone on its store (SQLite): always held."""

    def acquire(self) -> bool:
        return True

    def check(self) -> bool:
        return True

    def release(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class Job:
    """A periodic job of the leader: `run()` every `interval` seconds while leading."""

    interval: float
    run: Callable[[], Awaitable[object]]


class Leader:
    """Competes for `lease` every `check_interval` seconds and runs `jobs` while it holds it."""

    def __init__(self, lease: Lease, jobs: dict[str, Job], *,
                 check_interval: float = LEADER_CHECK_INTERVAL) -> None:
        self.lease = lease
        self.jobs = jobs
        self.check_interval = check_interval
        self.leading = False
        self._running: list[asyncio.Task[None]] = []

    async def run(self) -> None:
        """Until cancelled; gives the lock up on the way out."""
        try:
            while True:
                if self.leading:
                    if not await asyncio.to_thread(self.lease.check):
                        self._step_down("its session was lost")
                elif await asyncio.to_thread(self.lease.acquire):
                    self._step_up()
                await asyncio.sleep(self.check_interval)
        finally:
            self._stop_jobs()
            if self.leading:
                self.leading = False
                await asyncio.shield(asyncio.to_thread(self.lease.release))

    def _step_up(self) -> None:
        self.leading = True
        log.info("leading the fleet: running %s", ", ".join(self.jobs) or "no jobs")
        self._running = [asyncio.create_task(self._every(name, job), name=f"leader:{name}")
                         for name, job in self.jobs.items()]

    def _step_down(self, why: str) -> None:
        self.leading = False
        log.warning("no longer leading the fleet: %s", why)
        self._stop_jobs()

    def _stop_jobs(self) -> None:
        for task in self._running:
            task.cancel()
        self._running = []

    @staticmethod
    async def _every(name: str, job: Job) -> None:
        while True:
            try:
                await job.run()
            except asyncio.CancelledError:
                raise
            except Exception:  # one failed run must not end the job: log it, try next interval
                log.exception("leader job %s failed", name)
            await asyncio.sleep(job.interval)


class TrafficStore(Protocol):
    """The store's slice the traffic-count job needs (`routes.store.Store` is one)."""

    def compact_traffic(self, idle_before: datetime) -> tuple[int, int]: ...


# traffic-count rows of a process not written for this long are rolled up (the process is gone)
TRAFFIC_IDLE = timedelta(hours=1)
TRAFFIC_COMPACT_INTERVAL = 600.0


def compact_traffic_job(store: TrafficStore, *, interval: float = TRAFFIC_COMPACT_INTERVAL,
                        idle: timedelta = TRAFFIC_IDLE) -> Job:
    """Roll up and clean up the traffic counts (`MigrationRecords.compact_traffic`)."""

    async def run() -> None:
        try:
            rolled, dropped = await asyncio.to_thread(store.compact_traffic,
                                                      datetime.now(UTC) - idle)
        except StoreError as exc:
            log.warning("traffic counts not compacted (next try in %.0f s): %s", interval, exc)
            return
        if rolled or dropped:
            log.info("traffic counts: %d rows of idle processes rolled up, %d unread rows dropped",
                     rolled, dropped)

    return Job(interval, run)


def leader_jobs(store: TrafficStore) -> dict[str, Job]:
    """Every job the leader runs, by name: the one registry (later: the rollback guard,
    certificate renewals)."""
    return {"traffic-counts": compact_traffic_job(store)}


async def cancel(task: asyncio.Task[None]) -> None:
    """Cancel `task` and wait for its clean-up (the lock given up)."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
