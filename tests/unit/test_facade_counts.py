"""Traffic counts in memory and their flushing to the store (a fake store at the seam)."""

from __future__ import annotations

import asyncio

from facade.counts import FALLBACK, FROM, TO, TrafficCounts
from facade.flusher import CountsFlusher, instance_id
from routes.errors import StoreError
from routes.store import CountDeltas


class FakeStore:
    def __init__(self) -> None:
        self.rows: list[tuple[str, dict[tuple[str, int], tuple[int, int, int, int]]]] = []
        self.down = False

    def add_traffic(self, instance: str, deltas: CountDeltas) -> None:
        if self.down:
            raise StoreError("down", unreachable=True)
        self.rows.append((instance, dict(deltas)))


def test_take_returns_the_deltas_and_starts_again() -> None:
    counts = TrafficCounts()
    for side in (TO, TO, FROM, FALLBACK):
        counts.add("orders", 3, side)
    counts.add("orders", 4, FROM)
    assert counts.take() == {("orders", 3): (2, 1, 1, 0), ("orders", 4): (0, 1, 0, 0)}
    assert counts.take() == {}


def test_a_failed_flush_keeps_the_counts_for_the_next() -> None:
    store = FakeStore()
    counts = TrafficCounts()
    flusher = CountsFlusher(store, counts, instance="gw:1")
    counts.add("orders", 3, TO)
    store.down = True
    assert asyncio.run(flusher.flush()) is False
    counts.add("orders", 3, TO)
    store.down = False
    assert asyncio.run(flusher.flush()) is True
    assert store.rows == [("gw:1", {("orders", 3): (2, 0, 0, 0)})]
    assert asyncio.run(flusher.flush()) is True and len(store.rows) == 1


def test_run_flushes_on_its_interval() -> None:
    store = FakeStore()
    counts = TrafficCounts()
    counts.add("orders", 1, FROM)

    async def scenario() -> None:
        task = asyncio.create_task(CountsFlusher(store, counts, instance=instance_id(),
                                                 interval=0.01).run())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while not store.rows and loop.time() < deadline:
            await asyncio.sleep(0.005)
        task.cancel()

    asyncio.run(scenario())
    assert store.rows and store.rows[0][1] == {("orders", 1): (0, 1, 0, 0)}
