"""The dependency graph's edges in the store: added to by every serving process, summed by window.

`GraphRecords` is mixed into `routes.store.Store`, which provides the transactions (`_connect`).
A row is (listener, source, destination, minute, instance) -> requests, errors and a latency
histogram (a JSON list of counts, `gateway.telemetry.graph`); processes add their deltas every few
seconds (read-add-write per row, like the traffic counts) and `edges_since` sums them over every
gateway in SQL, the histograms in Python (JSON).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection

from routes.schema import graph_edges

# (listener, source, destination) -> [requests, errors, histogram counts...]
EdgeDeltas = Mapping[tuple[str, str, str], Sequence[int]]
EdgeRow = tuple[str, str, str, int, int, list[int]]


def _histogram(text: str) -> list[int]:
    try:
        value = json.loads(text)
    except ValueError:
        return []
    return [int(n) for n in value] if isinstance(value, list) else []


class GraphRecords:
    """Adding, summing and pruning dependency-graph edges (the store's `_connect` runs them)."""

    def _connect(self, *, write: bool = False) -> AbstractContextManager[Connection]:
        raise NotImplementedError  # pragma: no cover - Store provides it

    def add_edges(self, instance: str, minute: int, deltas: EdgeDeltas) -> None:
        """Add one process's edge deltas to `minute`'s rows (one transaction)."""
        if not deltas:
            return
        c = graph_edges.c
        now = datetime.now(UTC)
        with self._connect(write=True) as conn:
            for (listener, source, destination), values in deltas.items():
                key = ((c.listener == listener) & (c.source == source) & (c.destination == destination)
                       & (c.minute == minute) & (c.instance == instance))
                row = conn.execute(select(c.requests, c.errors, c.latency).where(key)).first()
                histogram = list(values[2:])
                if row is None:
                    conn.execute(insert(graph_edges).values(
                        listener=listener, source=source, destination=destination, minute=minute,
                        instance=instance, requests=values[0], errors=values[1],
                        latency=json.dumps(histogram), updated_at=now))
                    continue
                old = _histogram(row.latency)
                merged = [a + b for a, b in zip(old + [0] * (len(histogram) - len(old)),
                                                histogram + [0] * (len(old) - len(histogram)),
                                                strict=True)]
                conn.execute(update(graph_edges).where(key).values(
                    requests=c.requests + values[0], errors=c.errors + values[1],
                    latency=json.dumps(merged), updated_at=now))

    def edges_since(self, minute: int) -> list[EdgeRow]:
        """(listener, source, destination, requests, errors, histogram) from `minute` on, summed
        over every process and gateway."""
        c = graph_edges.c
        with self._connect() as conn:
            rows = conn.execute(select(c.listener, c.source, c.destination, c.requests, c.errors,
                                       c.latency).where(c.minute >= minute)).all()
        sums: dict[tuple[str, str, str], tuple[list[int], list[int]]] = {}
        for r in rows:
            counts, total = sums.setdefault((r.listener, r.source, r.destination), ([0, 0], []))
            counts[0] += int(r.requests)
            counts[1] += int(r.errors)
            for i, n in enumerate(_histogram(r.latency)):
                if i < len(total):
                    total[i] += n
                else:
                    total.append(n)
        return [(k[0], k[1], k[2], counts[0], counts[1], total)
                for k, (counts, total) in sorted(sums.items())]

    def prune_edges(self, before: int) -> int:
        """Delete the rows of minutes before `before`; how many went."""
        c = graph_edges.c
        with self._connect(write=True) as conn:
            return int(conn.execute(delete(graph_edges).where(c.minute < before)).rowcount or 0)

    def count_edges(self) -> int:
        """Rows kept (for tests and `peel graph --stats`)."""
        with self._connect() as conn:
            return int(conn.execute(select(func.count()).select_from(graph_edges)).scalar_one())
