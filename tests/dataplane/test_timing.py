"""Time in the data plane: small bodies pass on as read, timeouts fire on time, a deadline with
less than a millisecond left is never forwarded (issue 10)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from gateway.core.asgi import Message
from gateway.core.settings import DeadlineSettings, ProxySettings
from gateway.dataplane.forward import Forwarder
from gateway.dataplane.request import RequestState
from gateway.http.headers import ForwardingRules
from gateway.policy.deadline import DeadlineRules
from gateway.upstream.endpoints import Upstreams
from gateway.upstream.pool import UpstreamPool
from routes.compiler import compile_document
from routes.model import Document
from tests.dataplane.conftest import PlaneFactory
from tests.fakes.asgi import http_scope
from tests.fakes.upstream import FakeDialer, hang, ok, trickle

UP = "http://up:80"


def document(**timeouts: str) -> dict[str, Any]:
    return {"services": [{"name": "up", "endpoints": [UP], "outlier": False, "retries": {"attempts": 1},
                          "timeouts": timeouts}],
            "routes": [{"name": "all", "match": {"path_prefix": "/"}, "service": "up"}]}


def test_a_small_trickled_body_passes_on_as_it_is_read(plane: PlaneFactory) -> None:
    p = plane(document(), {UP: trickle(b"abcdef", every=0.02)})

    async def go() -> None:
        r = await p.request("GET", "/x")
        assert (r.status, r.body) == (200, b"abcdef")
        # one body message per byte read (held until complete, it was one message at the end)
        assert r.chunks == [b"a", b"b", b"c", b"d", b"e", b"f"]
    p.run(go)


def test_the_idle_timeout_applies_between_reads_of_a_small_body(plane: PlaneFactory) -> None:
    # 10 s until the body is complete; the response timeout alone would let it through.
    p = plane(document(idle="100ms", response="30s"), {UP: trickle(b"ab", every=10.0)})

    async def go() -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        r = await p.request("GET", "/x")
        assert r.status == 200 and r.aborted and not r.complete
        assert loop.time() - started < 5.0  # the first 10 s gap is cut after 100 ms
    p.run(go)


def test_response_timeouts_fire_on_time(plane: PlaneFactory) -> None:
    """Twenty 5 ms response timeouts in a row take about 100 ms; with a 50 ms ticker each took at
    least 50 ms (1 s in all). The bound leaves 25 ms per request for a loaded machine."""
    p = plane(document(response="5ms"), {UP: hang})

    async def go() -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        for _ in range(20):
            begun = loop.time()
            r = await p.request("GET", "/x")
            assert (r.status, r.json()["code"]) == (504, "upstream-timeout")
            assert loop.time() - begun >= 0.004  # never early (the timer's resolution is 1 ms)
        assert loop.time() - started < 0.6
    p.run(go)


def test_a_deadline_with_less_than_a_millisecond_left_is_not_forwarded() -> None:
    """What is left when an attempt starts (after a retry's backoff, say) is under 1 ms: 504, and
    the upstream never sees `Peel-Timeout-Ms: 0`."""
    table = compile_document(Document.parse(document()), 1)
    route = table.routes[0]
    dialer = FakeDialer()
    upstream = dialer.add(UP, ok())
    sent: list[Message] = []

    async def go() -> None:
        pool = UpstreamPool(ProxySettings(), dialer=dialer)
        upstreams = Upstreams()
        upstreams.update(table)
        forwarder = Forwarder(pool, upstreams, ForwardingRules(()), ProxySettings(),
                              deadlines=DeadlineRules(DeadlineSettings()))

        async def receive() -> Message:
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            sent.append(message)

        req = RequestState(b"rid", http_scope("GET", "/x"), receive, send)
        req.compiled = route
        req.path = "/x"
        req.deadline = time.monotonic() + 0.0009
        await forwarder.call(req, route.service, None)
        await pool.close()

    asyncio.run(asyncio.wait_for(go(), 20))
    assert sent[0]["status"] == 504 and b"deadline-exceeded" in sent[1]["body"]
    assert upstream.count() == 0
