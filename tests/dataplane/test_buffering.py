"""Request and response buffering in the data plane (the route's or service's `buffering`).

A slow upload must not hold an upstream connection (the upstream is asked once the body is in),
a body that comes too slowly is answered 408 and closed, a held body is replayed whole to a retry,
and an answer that is in goes back to the pool while a slow client is still reading it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.core.asgi import DOWNSTREAM, Downstream, Message
from tests.dataplane.conftest import Plane, PlaneFactory
from tests.fakes.asgi import http_scope
from tests.fakes.upstream import FakeLink, FakeRequest, answer, echo, scripted, status

UP = "http://up:80"


def document(buffering: object = None, **route: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": "r", "match": {"path_prefix": "/"}, "service": "up", **route}
    if buffering is not None:
        spec["buffering"] = buffering
    return {"services": [{"name": "up", "endpoints": [UP]}], "routes": [spec]}


class Client:
    """One request driven by hand: body pieces released one by one, sends that may block."""

    def __init__(self, plane: Plane, method: str = "POST", *, chunked: bool = True,
                 length: int | None = None) -> None:
        self.plane = plane
        headers = {"transfer-encoding": "chunked"} if chunked else {"content-length": str(length)}
        self.scope = http_scope(method, "/upload", headers=headers)
        self.scope["extensions"][DOWNSTREAM] = Downstream(lambda: None)
        self.pieces: asyncio.Queue[tuple[bytes, bool]] = asyncio.Queue()
        self.waiting = asyncio.Event()  # the app waits for the next body piece
        self.messages: list[Message] = []
        self.reading = asyncio.Event()  # cleared: sends of body messages block (a slow reader)
        self.reading.set()
        self.blocked = asyncio.Event()  # a body send is blocked
        self.done = asyncio.Event()

    async def receive(self) -> Message:
        if self.pieces.empty():
            self.waiting.set()
        body, more = await self.pieces.get()
        self.waiting.clear()
        if body == b"" and more:
            await self.done.wait()
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": body, "more_body": more}

    async def send(self, message: Message) -> None:
        self.messages.append(message)
        if message["type"] == "http.response.body" and not self.reading.is_set():
            self.blocked.set()
            await self.reading.wait()

    def start(self) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(
            self.plane.app(self.scope, self.receive, self.send))

    @property
    def status(self) -> int:
        return next(m["status"] for m in self.messages if m["type"] == "http.response.start")

    def header(self, name: bytes) -> bytes | None:
        start = next(m for m in self.messages if m["type"] == "http.response.start")
        return next((v for n, v in start["headers"] if n == name), None)

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages if m["type"] == "http.response.body")


@pytest.mark.parametrize(("buffering", "dials_before_the_end"), [(None, 0), (False, 1)])
def test_the_upstream_is_asked_only_once_the_body_is_in(
        plane: PlaneFactory, buffering: object, dials_before_the_end: int) -> None:
    p = plane(document(buffering), {UP: echo()})

    async def test() -> None:
        client = Client(p)
        task = client.start()
        client.pieces.put_nowait((b"a" * 1000, True))
        await asyncio.wait_for(client.waiting.wait(), 5)
        # The client stalls halfway: buffering has not asked the upstream; streaming has.
        for _ in range(5):
            await asyncio.sleep(0)
        assert len(p.dialer.dials) == dials_before_the_end
        client.pieces.put_nowait((b"b" * 1000, False))
        await asyncio.wait_for(task, 5)
        assert client.status == 200
        assert p[UP].requests[0].body == b"a" * 1000 + b"b" * 1000

    p.run(test)


def test_a_buffered_chunked_body_goes_with_a_length_and_streaming_keeps_chunked(plane: PlaneFactory) -> None:
    p = plane({"services": [{"name": "up", "endpoints": [UP]}],
               "routes": [{"name": "held", "match": {"path_prefix": "/held"}, "service": "up"},
                          {"name": "streamed", "match": {"path_prefix": "/streamed"}, "service": "up",
                           "buffering": False}]}, {UP: echo()})

    async def test() -> None:
        for path in ("/held", "/streamed"):
            response = await p.request("POST", path, body=[b"x" * 10, b"y" * 20])
            assert response.status == 200
        held, streamed = p[UP].requests
        assert (held.header("content-length"), held.header("transfer-encoding")) == ("30", None)
        assert (streamed.header("content-length"), streamed.header("transfer-encoding")) == (None, "chunked")
        assert held.body == streamed.body == b"x" * 10 + b"y" * 20

    p.run(test)


def test_a_body_that_is_not_in_by_the_timeout_is_answered_408_and_closed(plane: PlaneFactory) -> None:
    p = plane(document({"timeout": "200ms"}), {UP: echo()})

    async def test() -> None:
        client = Client(p)
        task = client.start()
        client.pieces.put_nowait((b"a" * 10, True))  # and nothing more
        await asyncio.wait_for(task, 5)
        assert client.status == 408
        assert client.header(b"connection") == b"close"
        assert b'"code":"body-timeout"' in client.body.replace(b" ", b"")
        assert p.dialer.dials == []  # the upstream never heard of it

    p.run(test)


def test_a_held_body_past_memory_is_replayed_whole_to_a_retry(plane: PlaneFactory) -> None:
    p = plane(document({"memory": 1024}, retries={"attempts": 2, "statuses": [503],
                                                  "max_body": 1_000_000}),
              {UP: scripted(status(503), echo())})
    pieces = [bytes([65 + i % 26]) * 7000 for i in range(40)]  # 280 kB: most of it in a file

    async def test() -> None:
        response = await p.request("PUT", "/upload", body=pieces)
        assert response.status == 200
        first, second = p[UP].requests
        assert first.body == second.body == b"".join(pieces)

    p.run(test)


def test_fallback_replays_a_body_held_by_buffering(plane: PlaneFactory) -> None:
    p = plane({"services": [{"name": "old", "endpoints": ["http://old:80"]},
                            {"name": "new", "endpoints": ["http://new:80"]}],
               "routes": [{"name": "r", "match": {"path_prefix": "/"}, "service": "old",
                           "buffering": {"memory": 100},
                           "migration": {"to": "new", "stage": "migrated",
                                         "fallback": {"statuses": [502], "max_body": 100_000,
                                                      "unsafe_methods": True}}}]},
              {"http://old:80": echo(), "http://new:80": status(502)})

    async def test() -> None:
        body = [b"q" * 3000, b"r" * 3000]
        response = await p.request("POST", "/x", body=body)
        assert response.status == 200
        assert p["http://new:80"].requests[0].body == p["http://old:80"].requests[0].body == b"".join(body)

    p.run(test)


async def _trickled(request: FakeRequest, link: FakeLink) -> None:
    data = answer(200, b"z" * 600_000)
    link.send(data[:100_000])
    await link.pause(0.02)
    link.send(data[100_000:])


@pytest.mark.parametrize(("buffering", "idle_while_the_client_reads"), [(None, 1), (False, 0)])
def test_the_connection_goes_back_while_a_slow_client_reads_the_answer(
        plane: PlaneFactory, buffering: object, idle_while_the_client_reads: int) -> None:
    p = plane(document(buffering), {UP: _trickled})

    async def test() -> None:
        client = Client(p, "GET", chunked=False, length=0)
        client.scope["headers"] = [h for h in client.scope["headers"] if h[0] != b"content-length"]
        client.reading.clear()
        task = client.start()
        await asyncio.wait_for(client.blocked.wait(), 5)
        # The client reads nothing more; the rest of the answer arrives meanwhile.
        await asyncio.sleep(0.2)
        endpoint = p[UP].endpoint
        assert p.pool.idle_count(endpoint) == idle_while_the_client_reads
        client.reading.set()
        await asyncio.wait_for(task, 5)
        assert client.body == b"z" * 600_000
        assert p.pool.idle_count(endpoint) == 1

    p.run(test)
