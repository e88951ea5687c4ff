"""The in-process data-plane tier: `ProxyApp` driven through the fake dial seam.

No sockets, no threads, no processes: the pool dials `tests.fakes.upstream.FakeDialer`, requests go
in through `tests.fakes.asgi.asgi_request`. What needs real sockets (the edge protocol, TLS, drain,
signals, memory) stays in tests/sockets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from gateway.core.settings import ProxySettings, Settings
from gateway.dataplane.proxy import ProxyApp
from gateway.upstream.pool import UpstreamPool
from routes.compiler import compile_document
from routes.holder import TableHolder
from routes.model import Document
from tests.fakes.asgi import AsgiResponse, asgi_request
from tests.fakes.upstream import FakeDialer, FakeRequest, FakeUpstream, Handler

# Generous for a loaded 2-core machine: a test that hangs fails after this, it never passes by it.
TEST_TIMEOUT = 20.0


@dataclass
class Plane:
    """One data plane on a fake network: `request()` sends through it, `up[url]` is an upstream."""

    app: ProxyApp
    pool: UpstreamPool
    dialer: FakeDialer

    def __getitem__(self, url: str) -> FakeUpstream:
        return self.dialer.upstreams[url]

    def first(self, *urls: str) -> FakeRequest:
        """The first request that reached any of these upstreams (they are asked in order)."""
        return next(u.requests[0] for u in map(self.__getitem__, urls) if u.requests)

    async def request(self, method: str, path: str, **kwargs: Any) -> AsgiResponse:
        return await asgi_request(self.app, method, path, **kwargs)

    def run(self, test: Callable[[], Awaitable[None]]) -> None:
        async def whole() -> None:
            try:
                await asyncio.wait_for(test(), TEST_TIMEOUT)
            finally:
                await self.pool.close()
        asyncio.run(whole())


PlaneFactory = Callable[..., Plane]


def make_plane(document: dict[str, Any], upstreams: dict[str, Handler],
               settings: ProxySettings | Settings | None = None) -> Plane:
    """A `ProxyApp` serving `document`, whose endpoints are the fake `upstreams` (url: handler)."""
    holder = TableHolder()
    holder.swap(compile_document(Document.parse(document), 1))
    dialer = FakeDialer()
    for url, handler in upstreams.items():
        dialer.add(url, handler)
    settings = settings or ProxySettings(connect_timeout=1.0, response_timeout=5.0, idle_timeout=5.0)
    proxy = settings.proxy if isinstance(settings, Settings) else settings
    pool = UpstreamPool(proxy, dialer=dialer)
    return Plane(ProxyApp(holder, pool, settings), pool, dialer)


@pytest.fixture
def plane() -> Iterator[PlaneFactory]:
    yield make_plane
