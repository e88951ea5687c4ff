"""The admin API in-process (httpx over ASGITransport) against a real SQLite store in a temp dir."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.admin.app import build_admin_app
from gateway.core.settings import Settings
from routes.store import Store

SAMPLE: dict[str, Any] = {
    "services": [{"name": "legacy", "endpoints": ["http://10.0.0.5:8080"]},
                 {"name": "orders", "endpoints": ["http://10.0.0.7:9000", "http://10.0.0.8:9000"]}],
    "routes": [{"name": "legacy-default", "match": {"path_prefix": "/"}, "service": "legacy"},
               {"name": "orders", "match": {"path_prefix": "/orders", "methods": ["GET", "POST"]},
                "service": "orders", "rewrite": {"path_prefix": "/v2/orders", "host": "orders.internal"}}],
}


class Admin:
    """An HTTP client with the bearer token set, plus the store to look behind the API."""

    def __init__(self, transport: httpx.ASGITransport, client: httpx.AsyncClient, store: Store,
                 token: str) -> None:
        self.transport = transport
        self.client = client
        self.store = store
        self.token = token

    def other(self, headers: dict[str, str]) -> httpx.AsyncClient:
        """Another client of the same app, with only `headers` (say, no token at all)."""
        return httpx.AsyncClient(transport=self.transport, base_url="http://admin.test", headers=headers)

    def version(self) -> int:
        return self.store.latest_version()

    async def apply(self, document: dict[str, Any], reason: str = "seed") -> int:
        r = await self.client.post("/api/v1/config/apply", json={"document": document, "reason": reason})
        assert r.status_code == 200, r.text
        return int(r.json()["version"])


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'peel.db'}")
    s.upgrade()
    yield s
    s.close()


@pytest.fixture
def ready_flag() -> dict[str, bool]:
    return {"ready": True}


@pytest.fixture
async def admin(store: Store, ready_flag: dict[str, bool]) -> AsyncIterator[Admin]:
    token = store.create_token("alice")
    app = build_admin_app(store, ready=lambda: ready_flag["ready"], settings=Settings())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://admin.test",
                                 headers={"Authorization": f"Bearer {token}"}) as client:
        yield Admin(transport, client, store, token)
