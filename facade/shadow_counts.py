"""Shadow comparison counts: kept in memory by each serving process, persisted and summed in the store.

The data plane (`gateway.dataplane.shadow`) adds to a `ShadowStats` per compared request: the
old-vs-new comparison, the old-vs-old one when the baseline was sampled, and the copies dropped
(queue full), skipped (method, body size, a failed primary) and failed (`to` did not answer in
time). A `ShadowFlusher` takes the deltas every few seconds and adds them to the `shadow_counts`
table, one row per (route, config version, minute, process), like the traffic counts; a few
redacted example pairs per route go to `shadow_examples` (the newest `KEEP_EXAMPLES` are kept).

Readers sum over every process and gateway:

    shadow_since(store, route, version) -> ShadowTotals      # the report: since a transition
    shadow_window(store, route, since, until) -> ShadowTotals # the guard: a window of Unix time
    shadow_examples(store, route) -> list[dict]

`ShadowTotals.counts` is a `facade.noise.ShadowCounts`, so `facade.noise.report(totals.counts)`
gives the mismatch rate with its interval and the fields with their verdicts (noise or not).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection

from facade.flusher import Flusher
from facade.noise import ShadowCounts
from routes.schema import shadow_counts, shadow_examples

log = logging.getLogger("peel.facade")

# The time buckets of the stored counts: windows are read to the minute.
BUCKET = 60
# Example pairs kept per route in the store, and taken per route and flush from memory.
KEEP_EXAMPLES = 10
MAX_PENDING_EXAMPLES = 3
Key = tuple[str, int, int]  # route, config version, bucket (Unix time of the minute)


@dataclass(slots=True)
class ShadowTotals:
    """Shadow counts summed over processes: the comparisons, and copies dropped, skipped, failed."""

    counts: ShadowCounts = field(default_factory=ShadowCounts)
    dropped: int = 0
    skipped: int = 0
    failed: int = 0

    def add(self, other: ShadowTotals) -> None:
        self.counts.merge(other.counts)
        self.dropped += other.dropped
        self.skipped += other.skipped
        self.failed += other.failed

    @property
    def pairs(self) -> int:
        return self.counts.pairs

    @property
    def mismatched(self) -> int:
        return self.counts.mismatched


class ShadowStats:
    """The shadow counts of one serving process since the last `take`, per (route, version, minute).

    Only the event loop's thread adds, and `take` swaps the dicts in one step: no lock. `live`
    keeps running totals per route for this process (tests, metrics); it is never reset.
    """

    __slots__ = ("_clock", "_deltas", "_examples", "live")

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._deltas: dict[Key, ShadowTotals] = {}
        self._examples: dict[str, list[dict[str, Any]]] = {}
        self.live: dict[str, ShadowTotals] = {}

    def _totals(self, route: str, version: int) -> tuple[ShadowTotals, ShadowTotals]:
        bucket = math.floor(self._clock() / BUCKET) * BUCKET
        key = (route, version, bucket)
        delta = self._deltas.get(key)
        if delta is None:
            delta = self._deltas[key] = ShadowTotals()
        live = self.live.get(route)
        if live is None:
            live = self.live[route] = ShadowTotals()
        return delta, live

    def compared(self, route: str, version: int, candidate: Any | None, baseline: Any | None = None,
                 example: dict[str, Any] | None = None) -> None:
        """One shadowed request: its old-vs-new `Comparison`, the old-vs-old one if sampled, and an
        example (already redacted) when the pair differs."""
        for totals in self._totals(route, version):
            if candidate is not None:
                totals.counts.add(candidate)
            if baseline is not None:
                totals.counts.add(baseline, baseline=True)
        if example is not None:
            pending = self._examples.setdefault(route, [])
            if len(pending) >= MAX_PENDING_EXAMPLES:
                pending.pop(0)
            pending.append(example)

    def dropped(self, route: str, version: int) -> None:
        for totals in self._totals(route, version):
            totals.dropped += 1

    def skipped(self, route: str, version: int) -> None:
        for totals in self._totals(route, version):
            totals.skipped += 1

    def failed(self, route: str, version: int) -> None:
        for totals in self._totals(route, version):
            totals.failed += 1

    def take(self) -> tuple[dict[Key, ShadowTotals], dict[str, list[dict[str, Any]]]]:
        """The deltas and pending examples since the last take, which start again from empty."""
        deltas, self._deltas = self._deltas, {}
        examples, self._examples = self._examples, {}
        return deltas, examples

    def put_back(self, deltas: Mapping[Key, ShadowTotals]) -> None:
        """Return deltas that could not be written (examples are not kept: they are samples)."""
        for key, totals in deltas.items():
            mine = self._deltas.get(key)
            if mine is None:
                self._deltas[key] = totals
            else:
                mine.add(totals)


class _Connecting(Protocol):
    def _connect(self, *, write: bool = False) -> AbstractContextManager[Connection]: ...


def _now() -> datetime:
    return datetime.now(UTC)


def _row_totals(rows: Iterator[Any]) -> ShadowTotals:
    total = ShadowTotals()
    for r in rows:
        counts = ShadowCounts(r.pairs, r.mismatched, r.baseline_pairs, r.baseline_mismatched,
                              {k: [int(v[0]), int(v[1])] for k, v in json.loads(r.fields).items()})
        total.add(ShadowTotals(counts, r.dropped, r.skipped, r.failed))
    return total


def add_shadow(store: _Connecting, instance: str, deltas: Mapping[Key, ShadowTotals],
               examples: Mapping[str, list[dict[str, Any]]]) -> None:
    """Add one process's deltas and examples (one transaction; read-add-write per row, whose key
    includes the process, so no two writers share a row)."""
    if not deltas and not examples:
        return
    c = shadow_counts.c
    now = _now()
    with store._connect(write=True) as conn:
        for (route, version, bucket), totals in deltas.items():
            key = ((c.route == route) & (c.config_version == version) & (c.bucket == bucket)
                   & (c.instance == instance))
            row = conn.execute(select(c.fields).where(key)).first()
            counts = totals.counts
            if row is not None:
                merged = ShadowCounts(fields={k: [int(v[0]), int(v[1])]
                                              for k, v in json.loads(row.fields).items()})
                merged.merge(ShadowCounts(fields=counts.fields))
                conn.execute(update(shadow_counts).where(key).values(
                    pairs=c.pairs + counts.pairs, mismatched=c.mismatched + counts.mismatched,
                    baseline_pairs=c.baseline_pairs + counts.baseline_pairs,
                    baseline_mismatched=c.baseline_mismatched + counts.baseline_mismatched,
                    dropped=c.dropped + totals.dropped, skipped=c.skipped + totals.skipped,
                    failed=c.failed + totals.failed, fields=json.dumps(merged.fields, sort_keys=True),
                    updated_at=now))
            else:
                conn.execute(insert(shadow_counts).values(
                    route=route, config_version=version, bucket=bucket, instance=instance,
                    pairs=counts.pairs, mismatched=counts.mismatched,
                    baseline_pairs=counts.baseline_pairs,
                    baseline_mismatched=counts.baseline_mismatched, dropped=totals.dropped,
                    skipped=totals.skipped, failed=totals.failed,
                    fields=json.dumps(counts.fields, sort_keys=True), updated_at=now))
        e = shadow_examples.c
        for route, items in examples.items():
            for item in items[-KEEP_EXAMPLES:]:
                conn.execute(insert(shadow_examples).values(
                    route=route, created_at=now, example=json.dumps(item, sort_keys=True)))
            keep = (select(e.id).where(e.route == route).order_by(e.id.desc()).limit(KEEP_EXAMPLES)
                    .scalar_subquery())
            conn.execute(delete(shadow_examples).where(e.route == route, e.id.not_in(keep)))


def shadow_since(store: _Connecting, route: str, version: int) -> ShadowTotals:
    """The shadow counts of `route` over every process and gateway, from config `version` on."""
    c = shadow_counts.c
    with store._connect() as conn:
        rows = conn.execute(select(shadow_counts).where(c.route == route, c.config_version >= version))
        return _row_totals(iter(rows))


def shadow_window(store: _Connecting, route: str, since: float, until: float | None = None) -> ShadowTotals:
    """The shadow counts of `route` over every process and gateway in the minutes from `since` up to
    `until` (Unix times; the minute of `since` counts, that of `until` does not): what the guard
    reads for a window (`ShadowTotals.pairs`, `.mismatched`, and `facade.noise.report(.counts)`
    for the per-field excess over the noise baseline)."""
    c = shadow_counts.c
    query = select(shadow_counts).where(c.route == route,
                                        c.bucket >= math.floor(since / BUCKET) * BUCKET)
    if until is not None:
        query = query.where(c.bucket < math.floor(until / BUCKET) * BUCKET)
    with store._connect() as conn:
        return _row_totals(iter(conn.execute(query)))


def shadow_examples_of(store: _Connecting, route: str, limit: int = KEEP_EXAMPLES) -> list[dict[str, Any]]:
    """The newest example pairs of `route` (redacted when they were recorded), newest first."""
    e = shadow_examples.c
    with store._connect() as conn:
        rows = conn.execute(select(e.example, e.created_at).where(e.route == route)
                            .order_by(e.id.desc()).limit(max(limit, 0))).all()
    return [json.loads(r.example) for r in rows]


def shadow_routes_with_counts(store: _Connecting) -> int:
    """How many rows the table holds (for tests and `peel doctor`-style checks)."""
    with store._connect() as conn:
        return int(conn.execute(select(func.count()).select_from(shadow_counts)).scalar_one())


Examples = dict[str, list[dict[str, Any]]]


class ShadowFlusher(Flusher[tuple[dict[Key, ShadowTotals], Examples]]):
    """Takes the deltas of `stats` every `interval` seconds and adds them to the store (`Flusher`);
    a failed write keeps the counts, not the examples."""

    what = "shadow counts"

    def __init__(self, store: Any, stats: ShadowStats, *, instance: str, interval: float = 2.0) -> None:
        super().__init__(instance=instance, interval=interval)
        self.store = store
        self.stats = stats

    def take(self) -> tuple[dict[Key, ShadowTotals], Examples] | None:
        deltas, examples = self.stats.take()
        return (deltas, examples) if deltas or examples else None

    def put_back(self, taken: tuple[dict[Key, ShadowTotals], Examples]) -> None:
        self.stats.put_back(taken[0])

    def write(self, taken: tuple[dict[Key, ShadowTotals], Examples]) -> None:
        # a store, or what has the same `add_shadow` (a sidecar's `gateway.server.report_control`)
        write = getattr(self.store, "add_shadow", None) or partial(add_shadow, self.store)
        write(self.instance, *taken)
