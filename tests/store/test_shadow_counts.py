"""Shadow counts in the store: added per process, summed across processes, by version and window;
example pairs bounded per route; deltas put back when the store is down."""

from __future__ import annotations

import asyncio

from facade.compare import CompareRules, Reply, compare
from facade.noise import report
from facade.shadow_counts import (
    KEEP_EXAMPLES,
    ShadowFlusher,
    ShadowStats,
    add_shadow,
    shadow_examples_of,
    shadow_since,
    shadow_window,
)
from routes.errors import StoreError
from routes.store import Store

JSON = ((b"content-type", b"application/json"),)


def reply(body: str, status: int = 200) -> Reply:
    return Reply(status, JSON, body.encode())


PRIMARY = reply('{"price": 10, "nonce": "a"}')
SAME = compare(PRIMARY, reply('{"price": 10, "nonce": "a"}'), CompareRules())
PRICE = compare(PRIMARY, reply('{"price": 11, "nonce": "b"}'), CompareRules())
NONCE = compare(PRIMARY, reply('{"price": 10, "nonce": "c"}'), CompareRules())


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_counts_are_summed_across_processes_and_minutes(store: Store) -> None:
    clock = Clock(1_800_000_000.0)
    one, two = ShadowStats(clock), ShadowStats(clock)
    for _ in range(3):
        one.compared("orders", 2, PRICE, NONCE, example={"n": 1})
    two.compared("orders", 2, SAME)
    two.dropped("orders", 2)
    two.skipped("orders", 2)
    two.failed("orders", 1)  # an older config version
    add_shadow(store, "gw-a:1", *one.take())
    add_shadow(store, "gw-b:7", *two.take())
    clock.now += 60  # the next minute
    one.compared("orders", 2, PRICE)
    add_shadow(store, "gw-a:1", *one.take())
    add_shadow(store, "gw-a:1", *one.take())  # nothing new: a no-op

    total = shadow_since(store, "orders", 2)
    counts = total.counts
    assert (counts.pairs, counts.mismatched) == (5, 4)
    assert (counts.baseline_pairs, counts.baseline_mismatched) == (3, 3)
    assert (total.dropped, total.skipped, total.failed) == (1, 1, 0)
    assert counts.fields == {"$.price": [4, 0], "$.nonce": [4, 3]}
    assert shadow_since(store, "orders", 1).failed == 1
    assert shadow_since(store, "other", 0).pairs == 0
    # The window reads to the minute: the first minute alone, the second alone, both.
    start = 1_800_000_000.0
    assert shadow_window(store, "orders", start, start + 60).pairs == 4
    assert shadow_window(store, "orders", start + 60).pairs == 1
    assert shadow_window(store, "orders", start - 600, start + 120).mismatched == 4
    # What the report makes of it: the price differs only old-vs-new.
    fields = {f.field: f for f in report(counts).fields}
    assert fields["$.price"].new_diffs == 4 and fields["$.price"].old_diffs == 0


def test_examples_are_bounded_per_route(store: Store) -> None:
    stats = ShadowStats()
    for i in range(3 * KEEP_EXAMPLES):
        stats.compared("orders", 1, PRICE, example={"n": i})
        add_shadow(store, "gw:1", *stats.take())
    stats.compared("other", 1, PRICE, example={"n": -1})
    add_shadow(store, "gw:1", *stats.take())
    kept = shadow_examples_of(store, "orders", 100)
    assert [e["n"] for e in kept] == list(range(3 * KEEP_EXAMPLES - 1, 2 * KEEP_EXAMPLES - 1, -1))
    assert shadow_examples_of(store, "other") == [{"n": -1}]
    assert len(shadow_examples_of(store, "orders", 2)) == 2


def test_pending_examples_per_route_are_bounded_in_memory() -> None:
    stats = ShadowStats()
    for i in range(50):
        stats.compared("orders", 1, PRICE, example={"n": i})
    _, examples = stats.take()
    assert [e["n"] for e in examples["orders"]] == [47, 48, 49]


class DownStore:
    def _connect(self, *, write: bool = False) -> object:
        raise StoreError("the store is down", unreachable=True)


def test_a_failed_flush_keeps_the_counts_for_the_next(store: Store) -> None:
    stats = ShadowStats()
    stats.compared("orders", 1, PRICE)
    stats.dropped("orders", 1)
    down = ShadowFlusher(DownStore(), stats, instance="gw:1")
    assert asyncio.run(down.flush()) is False
    stats.compared("orders", 1, SAME)
    up = ShadowFlusher(store, stats, instance="gw:1")
    assert asyncio.run(up.flush()) is True
    total = shadow_since(store, "orders", 0)
    assert (total.pairs, total.mismatched, total.dropped) == (2, 1, 1)
    assert stats.live["orders"].pairs == 2
