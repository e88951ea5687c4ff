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
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from facade.guard_run import ACTOR, Assessment, WindowStore, assess, describe, edit_for, step_start
from gateway.admin.writes import check_compiles
from routes.changes import VersionStore, commit_change
from routes.errors import ConflictError, StoreError
from routes.store import TransitionInfo

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


class GuardJobStore(TrafficStore, WindowStore, VersionStore, Protocol):
    """The store's slice the guard job needs (`routes.store.Store` is one)."""

    def last_transitions(self) -> dict[str, TransitionInfo]: ...

    def prune_guard_samples(self, before: int) -> int: ...


# how often the guard looks at every guarded migration (a verdict needs a full window: most turns
# hold with `step-time` or on a window that has not moved much)
GUARD_INTERVAL = 1.0
# guard samples older than this are deleted (checked once a minute)
GUARD_KEEP = 3600.0


class GuardJob:
    """The guard loop (issue 15): every turn, each guarded migration's last window is judged by
    `facade.guard.evaluate`; an `advance` or a `rollback` (or a freeze under `on_failure: hold`)
    becomes a config version by actor `guard` whose reason holds the rule and the window's numbers.

    The change is committed with `If-Match` on the version the turn read, so a change made
    meanwhile (an operator's, or another leader's during a partition) wins and the guard judges
    again next turn. `last` keeps each route's latest assessment (for logs and tests).
    """

    def __init__(self, store: GuardJobStore, *, lag: float, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.lag = lag
        self.clock = clock
        self.last: dict[str, Assessment] = {}
        self.actions: list[tuple[str, str, int]] = []  # (route, action, config version), newest last
        self._pruned = 0.0
        self._seen: dict[tuple[str, str, int], float] = {}

    def turn(self) -> list[tuple[str, str, int]]:
        """One pass over the guarded migrations (blocking); the actions it committed."""
        now = self.clock()
        latest = self.store.latest()
        since = self.store.last_transitions()
        done: list[tuple[str, str, int]] = []
        for route in latest.document.routes:
            m = route.migration
            if m is None or m.guard is None or m.stage in ("legacy", "retired"):
                if self.last.pop(route.name, None) is not None:
                    self._seen = {k: v for k, v in self._seen.items() if k[0] != route.name}
                continue
            # a step set without a transition (by `peel apply`): from when this leader first saw it
            seen = self._seen.setdefault((route.name, m.stage, m.share), latest.created_at.timestamp())
            step_since = step_start(since.get(route.name), m, seen)
            a = assess(self.store, route, step_since, now, self.lag)
            before = self.last.get(route.name)
            if before is None or (before.verdict.rule, before.verdict.action) != \
                    (a.verdict.rule, a.verdict.action):
                log.info("guard %s: %s (%s): %s", route.name, a.verdict.action, a.verdict.rule,
                         a.verdict.reason)
            self.last[route.name] = a
            act = edit_for(a)
            if act is None:
                continue
            action, edit, record = act
            try:
                info, _ = commit_change(self.store, edit, actor=ACTOR, reason=describe(a),
                                        if_match=latest.version, check=check_compiles,
                                        transitions=record)
            except ConflictError as exc:  # a change came first (PreconditionFailed too): next turn
                log.info("guard %s: %s not committed: %s", route.name, action, exc)
                return done
            if info is not None:
                log.warning("%s (config version %d)", describe(a), info.version)
                done.append((route.name, action, info.version))
                self.actions.append((route.name, action, info.version))
                return done  # the document changed: the next turn reads it again
        if now - self._pruned >= 60:
            self._pruned = now
            self.store.prune_guard_samples(int(now - GUARD_KEEP))
        return done


def guard_job(store: GuardJobStore, *, lag: float, interval: float = GUARD_INTERVAL) -> tuple[Job, GuardJob]:
    """The guard loop as a leader job (and the loop, whose `last` shows what it decided)."""
    loop = GuardJob(store, lag=lag)

    async def run() -> None:
        try:
            await asyncio.to_thread(loop.turn)
        except StoreError as exc:
            log.warning("guard: the store cannot be read (next try in %.0f s): %s", interval, exc)

    return Job(interval, run), loop


def leader_jobs(store: GuardJobStore, *, guard_lag: float = 3.0) -> dict[str, Job]:
    """Every job the leader runs, by name: the one registry."""
    return {"traffic-counts": compact_traffic_job(store), "guard": guard_job(store, lag=guard_lag)[0]}


async def cancel(task: asyncio.Task[None]) -> None:
    """Cancel `task` and wait for its clean-up (the lock given up)."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
