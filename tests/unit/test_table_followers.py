"""The one list of table followers (routes/holder.py): each registered once, called once per table,
in order, on the swap itself; and the watcher swaps on the event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path

from routes.compiler import compile_document
from routes.holder import TableHolder
from routes.model import Document
from routes.registry import Registration
from routes.store import Store
from routes.table import RouteTable
from routes.watcher import Watcher

DOC = {"services": [{"name": "legacy", "endpoints": ["http://10.0.0.5:8080"]}],
       "routes": [{"name": "all", "match": {"path_prefix": "/"}, "service": "legacy"}]}


def _table(version: int) -> RouteTable:
    return compile_document(Document.parse(DOC), version)


def test_followers_run_once_per_swap_in_order_and_a_late_one_gets_the_current_table() -> None:
    holder = TableHolder()
    calls: list[tuple[str, int]] = []
    holder.follow(lambda t: calls.append(("a", t.version)))
    holder.follow(lambda t: calls.append(("b", t.version)))
    assert calls == []
    holder.swap(_table(1))
    holder.swap(_table(2))
    assert calls == [("a", 1), ("b", 1), ("a", 2), ("b", 2)]
    holder.follow(lambda t: calls.append(("late", t.version)))
    assert calls[-1] == ("late", 2)
    assert holder.table is not None and holder.table.version == 2 and holder.loaded_at > 0


def test_a_failing_follower_does_not_stop_the_others_or_the_swap() -> None:
    holder = TableHolder()
    seen: list[int] = []

    def broken(table: RouteTable) -> None:
        raise RuntimeError("boom")

    holder.follow(broken)
    holder.follow(lambda t: seen.append(t.version))
    holder.swap(_table(3))
    assert seen == [3] and holder.table is not None and holder.table.version == 3


def test_the_watcher_swaps_on_the_loop_and_reports_a_failing_version_once(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'peel.db'}")
    store.upgrade()
    store.commit(Document.parse(DOC), actor="t", reason="one")
    holder = TableHolder()
    threads: list[threading.Thread] = []
    holder.follow(lambda t: threads.append(threading.current_thread()))
    failures: list[int] = []

    def compile_or_fail(document: Document, version: int, registered: Sequence[Registration]) -> RouteTable:
        if version == 2:
            raise ValueError("cannot compile")
        return compile_document(document, version, registered)

    watcher = Watcher(store, holder, interval=0.01, snapshot=tmp_path / "snap.json",
                      compile=compile_or_fail)
    watcher.on_failed = failures.append

    async def main() -> None:
        assert await watcher.refresh_async()
        store.commit(Document.parse({**DOC, "routes": []}), actor="t", reason="two")
        assert not await watcher.refresh_async()
        assert not await watcher.refresh_async()

    asyncio.run(main())
    assert threads == [threading.main_thread()]
    assert failures == [2]
    assert holder.table is not None and holder.table.version == 1
    assert (tmp_path / "snap.json").exists()
    store.close()


async def settle() -> None:
    """A few turns of the loop: a waiter's result reaches its caller through `wait_for`'s task."""
    for _ in range(5):
        await asyncio.sleep(0)


def test_served_waits_for_the_swap_that_brings_the_version_or_a_later_one() -> None:
    async def main() -> None:
        holder = TableHolder()
        order: list[str] = []
        holder.follow(lambda t: order.append(f"follower {t.version}"))

        async def wait(version: int) -> None:
            assert await holder.served(version, 5.0)
            order.append(f"served {version}")

        waiting = [asyncio.create_task(wait(2)), asyncio.create_task(wait(3))]
        await settle()
        holder.swap(_table(1))
        await settle()
        assert order == ["follower 1"]  # version 1 serves neither
        holder.swap(_table(2))
        await settle()
        assert order == ["follower 1", "follower 2", "served 2"]  # after the followers
        holder.swap(_table(4))  # a later version serves 3 as well
        await asyncio.gather(*waiting)
        assert order[-1] == "served 3"
        assert await holder.served(4, 0.0)  # already served: at once
        assert holder._waiting == []

    asyncio.run(main())


def test_served_says_false_when_the_version_does_not_come_in_time() -> None:
    async def main() -> None:
        holder = TableHolder()
        holder.swap(_table(1))
        assert not await holder.served(2, 0.05)
        assert holder._waiting == []  # nothing left behind for the next swap
        holder.swap(_table(2))

    asyncio.run(main())
