"""`Watcher.wake()` (routes/watcher.py): a notification makes the watcher poll at once instead of at
the end of its interval; wakes during a poll are not lost."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from routes import watcher as watcher_module
from routes.holder import TableHolder
from routes.model import Document
from routes.steps import STEP_GAP, Steps, run_on_loop
from routes.store import Store
from routes.watcher import Watcher


def test_a_wake_polls_at_once_rather_than_after_the_interval(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'peel.db'}")
    store.upgrade()
    holder = TableHolder()
    watcher = Watcher(store, holder, interval=600, snapshot=tmp_path / "snapshot.json")

    async def main() -> list[int]:
        task = asyncio.create_task(watcher.run())
        seen: list[int] = []
        try:
            while holder.table is None:  # the first poll, at start
                await asyncio.sleep(0.005)
            seen.append(watcher.version)
            for reason in ("one", "two"):
                await asyncio.to_thread(store.commit, Document(), actor="t", reason=reason)
                target = watcher.version + 1
                watcher.wake()
                await asyncio.wait_for(_until(lambda t=target: watcher.version == t), 10)
                seen.append(watcher.version)
        finally:
            task.cancel()
        return seen

    try:
        # without the wake, the 600 s interval would time the 10 s wait out
        assert asyncio.run(main()) == [0, 1, 2]
    finally:
        store.close()


async def _until(condition: object) -> None:
    while not condition():  # type: ignore[operator]
        await asyncio.sleep(0.005)


def test_the_first_table_loads_without_gaps_and_a_change_with_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No request is served before the first table: its steps run back to back. Each later
    version's steps leave the loop `STEP_GAP` between them for the requests in flight."""
    gaps: list[float] = []

    async def recorded(steps: Steps[Any], gap: float = STEP_GAP) -> Any:
        gaps.append(gap)
        return await run_on_loop(steps, gap)

    monkeypatch.setattr(watcher_module, "run_on_loop", recorded)
    store = Store(f"sqlite:///{tmp_path / 'peel.db'}")
    store.upgrade()
    watcher = Watcher(store, TableHolder(), interval=600, snapshot=tmp_path / "snapshot.json")

    async def main() -> None:
        assert await watcher.refresh_async()
        await asyncio.to_thread(store.commit, Document(), actor="t", reason="one")
        assert await watcher.refresh_async()

    try:
        asyncio.run(main())
    finally:
        store.close()
    assert gaps == [0.0, STEP_GAP]
