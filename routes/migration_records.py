"""Migration transitions and traffic counts: the store's records of the strangler facade.

`MigrationRecords` is mixed into `routes.store.Store`, which provides the transactions
(`_connect`); transitions are written by `Store.commit` in the config version's own transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection

from routes.schema import migration_transitions, traffic_counts


@dataclass(frozen=True, slots=True)
class Transition:
    """A migration transition about to be committed with its config version."""

    route: str
    action: str
    from_stage: str | None
    to_stage: str
    share: int


@dataclass(frozen=True, slots=True)
class TransitionInfo:
    """A committed migration transition (what `peel migrate history` lists)."""

    route: str
    action: str
    from_stage: str | None
    to_stage: str
    share: int
    actor: str
    reason: str
    created_at: datetime
    config_version: int

    def to_dict(self) -> dict[str, Any]:
        from routes.migration import format_percent

        return {"route": self.route, "action": self.action, "from_stage": self.from_stage,
                "to_stage": self.to_stage, "percent": format_percent(self.share),
                "actor": self.actor, "reason": self.reason, "time": self.created_at.isoformat(),
                "config_version": self.config_version}


# The instance name under which `compact_traffic` keeps the counts of processes that are gone.
ROLLUP_INSTANCE = "*rollup*"
# rows of idle processes rolled up per `compact_traffic` call (the next call takes the rest)
COMPACT_BATCH = 5000

# Traffic count deltas: (route, config version) -> (to, from, fallback, retired misses)
CountDeltas = Mapping[tuple[str, int], tuple[int, int, int, int]]


def _now() -> datetime:
    return datetime.now(UTC)


class MigrationRecords:
    """Reading transitions and adding and summing traffic counts (the store's `_connect` runs them)."""

    def _connect(self, *, write: bool = False) -> AbstractContextManager[Connection]:
        raise NotImplementedError  # pragma: no cover - Store provides it

    def transitions(self, route: str | None = None, limit: int = 100) -> list[TransitionInfo]:
        """Migration transitions, newest first (of one route, or of all)."""
        t = migration_transitions.c
        query = select(migration_transitions).order_by(t.id.desc()).limit(max(limit, 0))
        if route is not None:
            query = query.where(t.route == route)
        with self._connect() as conn:
            rows = conn.execute(query).all()
        return [TransitionInfo(r.route, r.action, r.from_stage, r.to_stage, r.share, r.actor, r.reason,
                               r.created_at, r.config_version) for r in rows]

    def last_transitions(self) -> dict[str, TransitionInfo]:
        """The newest transition of every route that has one."""
        t = migration_transitions.c
        newest = select(func.max(t.id)).group_by(t.route).scalar_subquery()
        with self._connect() as conn:
            rows = conn.execute(select(migration_transitions).where(t.id.in_(newest))).all()
        return {r.route: TransitionInfo(r.route, r.action, r.from_stage, r.to_stage, r.share, r.actor,
                                        r.reason, r.created_at, r.config_version) for r in rows}

    def add_traffic(self, instance: str, deltas: CountDeltas) -> None:
        """Add one serving process's count deltas (one transaction; read-add-write per row)."""
        if not deltas:
            return
        c = traffic_counts.c
        now = _now()
        with self._connect(write=True) as conn:
            for (route, version), (to, from_, fallback, misses) in deltas.items():
                key = (c.route == route) & (c.config_version == version) & (c.instance == instance)
                done = conn.execute(update(traffic_counts).where(key).values(
                    to_count=c.to_count + to, from_count=c.from_count + from_,
                    fallback_count=c.fallback_count + fallback,
                    retired_misses=c.retired_misses + misses, updated_at=now)).rowcount
                if not done:
                    conn.execute(insert(traffic_counts).values(
                        route=route, config_version=version, instance=instance, to_count=to,
                        from_count=from_, fallback_count=fallback, retired_misses=misses,
                        updated_at=now))

    def traffic_since(self, route: str, version: int) -> tuple[int, int, int, int]:
        """(to, from, fallback, retired misses) of `route` over every process, from `version` on."""
        c = traffic_counts.c
        with self._connect() as conn:
            row = conn.execute(select(func.coalesce(func.sum(c.to_count), 0),
                                      func.coalesce(func.sum(c.from_count), 0),
                                      func.coalesce(func.sum(c.fallback_count), 0),
                                      func.coalesce(func.sum(c.retired_misses), 0))
                               .where(c.route == route, c.config_version >= version)).one()
        return int(row[0]), int(row[1]), int(row[2]), int(row[3])

    def compact_traffic(self, idle_before: datetime, *, batch: int = COMPACT_BATCH) -> tuple[int, int]:
        """The traffic counts' clean-up, run by the fleet's leader: (rows rolled up, rows dropped).

        Roll-up: the rows of a process not written since `idle_before` (a process that is gone:
        each process counts under its own host:pid) are added into one `ROLLUP_INSTANCE` row per
        route and config version, so the rows do not grow with restarts; every sum stays exact.
        Clean-up: rows of a route below the config version of its newest transition are deleted:
        a migration's counts are summed from its newest transition on (`traffic_since`), so
        nothing reads them again. At most `batch` rows are rolled up per call.
        """
        c, t = traffic_counts.c, migration_transitions.c
        with self._connect(write=True) as conn:
            newest = (select(func.max(t.config_version)).where(t.route == c.route)
                      .scalar_subquery())
            dropped = int(conn.execute(delete(traffic_counts)
                                       .where(c.config_version < newest)).rowcount or 0)
            rows = conn.execute(
                select(traffic_counts)
                .where(c.instance != ROLLUP_INSTANCE, c.updated_at < idle_before)
                .order_by(c.route, c.config_version, c.instance).limit(max(batch, 0))
                .with_for_update()).all()
            sums: dict[tuple[str, int], list[Any]] = {}
            for r in rows:
                acc = sums.setdefault((r.route, r.config_version), [0, 0, 0, 0, r.updated_at])
                for i, n in enumerate((r.to_count, r.from_count, r.fallback_count, r.retired_misses)):
                    acc[i] += n
                acc[4] = max(acc[4], r.updated_at)
                conn.execute(delete(traffic_counts).where(
                    c.route == r.route, c.config_version == r.config_version,
                    c.instance == r.instance))
            for (route, version), (to, from_, fallback, misses, last) in sums.items():
                key = ((c.route == route) & (c.config_version == version)
                       & (c.instance == ROLLUP_INSTANCE))
                done = conn.execute(update(traffic_counts).where(key).values(
                    to_count=c.to_count + to, from_count=c.from_count + from_,
                    fallback_count=c.fallback_count + fallback,
                    retired_misses=c.retired_misses + misses)).rowcount
                if not done:
                    conn.execute(insert(traffic_counts).values(
                        route=route, config_version=version, instance=ROLLUP_INSTANCE, to_count=to,
                        from_count=from_, fallback_count=fallback, retired_misses=misses,
                        updated_at=last))
        return len(rows), dropped
