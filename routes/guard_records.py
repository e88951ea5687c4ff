"""The guard's measurements in the store: added by every serving process, summed by the leader.

`GuardRecords` is mixed into `routes.store.Store`, which provides the transactions (`_connect`).
One row per (route, side, one-second slice, process): requests, errors and a sparse latency
histogram as JSON (`facade.window` encodes and decodes it; here it is text). A window is the sum of
its slices over every process and gateway.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from contextlib import AbstractContextManager
from datetime import UTC, datetime

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection

from routes.schema import guard_samples

# (route, side, slice) -> (requests, errors, {bucket: count})
GuardDeltas = Mapping[tuple[str, str, int], tuple[int, int, Mapping[int, int]]]
# one stored row of a window: (side, requests, errors, {bucket: count})
GuardRow = tuple[str, int, int, dict[int, int]]


def _merge(text: str, add: Mapping[int, int]) -> str:
    try:
        raw = json.loads(text) if text else {}
    except ValueError:
        raw = {}
    merged: dict[str, int] = {str(k): int(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
    for index, n in add.items():
        merged[str(index)] = merged.get(str(index), 0) + n
    return json.dumps(dict(sorted(merged.items(), key=lambda kv: int(kv[0]))), separators=(",", ":"))


def _decode(text: str) -> dict[int, int]:
    try:
        raw = json.loads(text) if text else {}
    except ValueError:
        return {}
    if not isinstance(raw, dict):
        return {}
    return {int(k): v for k, v in raw.items() if str(k).isdigit() and isinstance(v, int) and v > 0}


class GuardRecords:
    """Adding, reading and pruning the guard's per-second samples."""

    def _connect(self, *, write: bool = False) -> AbstractContextManager[Connection]:
        raise NotImplementedError  # pragma: no cover - Store provides it

    def add_guard_samples(self, instance: str, deltas: GuardDeltas) -> None:
        """Add one serving process's samples (one transaction; read-add-write per row)."""
        if not deltas:
            return
        c = guard_samples.c
        now = datetime.now(UTC)
        with self._connect(write=True) as conn:
            for (route, side, second), (requests, errors, hist) in deltas.items():
                key = ((c.route == route) & (c.side == side) & (c.slice == second)
                       & (c.instance == instance))
                old = conn.execute(select(c.latency).where(key)).scalar_one_or_none()
                if old is None:
                    conn.execute(insert(guard_samples).values(
                        route=route, side=side, slice=second, instance=instance, requests=requests,
                        errors=errors, latency=_merge("", hist), updated_at=now))
                else:
                    conn.execute(update(guard_samples).where(key).values(
                        requests=c.requests + requests, errors=c.errors + errors,
                        latency=_merge(old, hist), updated_at=now))

    def guard_window(self, route: str, start: int, end: int) -> list[GuardRow]:
        """The rows of `route` with `start <= slice < end`, every process's."""
        c = guard_samples.c
        with self._connect() as conn:
            rows = conn.execute(select(c.side, c.requests, c.errors, c.latency)
                                .where(c.route == route, c.slice >= start, c.slice < end)).all()
        return [(r.side, int(r.requests), int(r.errors), _decode(r.latency)) for r in rows]

    def prune_guard_samples(self, before: int) -> int:
        """Delete the slices older than `before` (Unix seconds); how many rows went."""
        c = guard_samples.c
        with self._connect(write=True) as conn:
            return int(conn.execute(delete(guard_samples).where(c.slice < before)).rowcount or 0)
