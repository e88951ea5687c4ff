"""A write answers once this process serves the version it committed (gateway/admin/served.py):
the admin app in-process, with a table holder standing for the process's watcher."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from gateway.admin import served
from gateway.admin.app import build_admin_app
from gateway.core.settings import Settings
from routes.compiler import compile_document
from routes.holder import TableHolder
from routes.store import Store
from tests.app.conftest import SAMPLE

pytestmark = pytest.mark.anyio


class Follower:
    """The process's watcher, woken by each commit: loads the latest version `delay` seconds later;
    records what each answer found served when the client got it."""

    def __init__(self, store: Store, holder: TableHolder, delay: float) -> None:
        self.store, self.holder, self.delay = store, holder, delay
        self.waited: list[int] = []
        self.loop = asyncio.get_running_loop()
        store.on_commit(lambda version: self.loop.call_soon_threadsafe(self.wake, version))

    def wake(self, version: int) -> None:
        self.loop.call_later(self.delay, self.load, version)

    def load(self, version: int) -> None:
        latest = self.store.latest()
        self.holder.swap(compile_document(latest.document, latest.version))

    async def served(self, version: int, timeout: float) -> bool:
        self.waited.append(version)
        return await self.holder.served(version, timeout)


async def client_of(store: Store, follower: Follower) -> httpx.AsyncClient:
    token = store.create_token("alice")
    app = build_admin_app(store, ready=lambda: True, settings=Settings(), served=follower.served)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin.test",
                             headers={"Authorization": f"Bearer {token}"})


def version_served(holder: TableHolder) -> int:
    return holder.table.version if holder.table is not None else 0


async def test_each_write_answers_once_its_version_is_served(store: Store) -> None:
    holder = TableHolder()
    follower = Follower(store, holder, delay=0.2)
    async with await client_of(store, follower) as client:
        r = await client.post("/api/v1/config/apply", json={"document": SAMPLE, "reason": "seed"})
        assert r.status_code == 200 and version_served(holder) == r.json()["version"] == 1
        route: dict[str, Any] = {"match": {"path_prefix": "/billing"}, "service": "legacy"}
        r = await client.put("/api/v1/routes/billing", json=route)
        assert r.status_code == 200 and version_served(holder) == 2
        r = await client.post("/api/v1/migrations/orders/start",
                              json={"to": "legacy", "reason": "try"})
        assert r.status_code in (200, 201), r.text
        assert version_served(holder) == 3
        r = await client.post("/api/v1/config/rollback", json={"version": 1})
        assert r.status_code == 200 and version_served(holder) == 4
        assert follower.waited == [1, 2, 3, 4]


async def test_reads_refusals_and_writes_of_nothing_do_not_wait(store: Store) -> None:
    holder = TableHolder()
    follower = Follower(store, holder, delay=0.0)
    async with await client_of(store, follower) as client:
        await client.post("/api/v1/config/apply", json={"document": SAMPLE, "reason": "seed"})
        follower.waited.clear()
        assert (await client.get("/api/v1/routes")).status_code == 200
        refused = await client.put("/api/v1/routes/x", json={"match": {}, "service": "nowhere"})
        assert refused.status_code == 422
        same = await client.post("/api/v1/config/apply", json={"document": SAMPLE, "reason": "again"})
        assert same.status_code == 200 and same.json()["changed"] is False
        assert follower.waited == []


async def test_a_table_that_does_not_come_in_time_does_not_hold_the_answer(
        store: Store, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    holder = TableHolder()
    follower = Follower(store, holder, delay=30.0)  # never, within the test
    monkeypatch.setattr(served, "SERVED_TIMEOUT", 0.1)
    async with await client_of(store, follower) as client:
        r = await client.post("/api/v1/config/apply", json={"document": SAMPLE, "reason": "seed"})
        assert r.status_code == 200 and r.json()["version"] == 1
        assert holder.table is None
    assert "before this gateway serves config version 1 (still loading after 0.1 s)" in caplog.text
