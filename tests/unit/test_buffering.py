"""The `buffering` policy (parse, print, effective value) and `read_body` (memory, file, rules)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.core.asgi import Message
from gateway.dataplane.buffering import BodyTimeout, BufferedBody, read_body
from gateway.dataplane.request import BodyTooLarge
from gateway.upstream.pool import ExchangeAborted
from routes.compiler import compile_document
from routes.errors import RuleError
from routes.model import Document
from routes.policies import Buffering

# -- the policy -----------------------------------------------------------------------------------


def test_defaults_are_on() -> None:
    b = Buffering.parse({}, "b")
    assert b == Buffering.parse(True, "b") == Buffering()
    assert (b.enabled, b.memory, b.max_body, b.min_rate, b.timeout, b.response) == \
        (True, 64 * 1024, 64 * 1024 * 1024, 1024, 300.0, 1024 * 1024)


@pytest.mark.parametrize("data", [False, {"memory": 0, "min_rate": 0}, {"timeout": "30s", "response": 65536},
                                  {"max_body": 10, "memory": 10}, {}])
def test_prints_what_it_parsed(data: object) -> None:
    b = Buffering.parse(data, "b")
    assert Buffering.parse(b.to_dict(), "b") == b


def test_false_prints_false_and_the_defaults_print_nothing() -> None:
    assert Buffering.parse(False, "b").to_dict() is False
    assert Buffering().to_dict() == {}
    assert Buffering.parse({"timeout": 30}, "b").to_dict() == {"timeout": "30s"}


@pytest.mark.parametrize(("data", "field"), [
    ({"memory": -1}, "b.memory"), ({"max_body": 0}, "b.max_body"), ({"min_rate": "fast"}, "b.min_rate"),
    ({"timeout": 0}, "b.timeout"), ({"response": 10}, "b.response"), ({"memory": 2000, "max_body": 1000},
                                                                       "b.memory"),
    ({"nope": 1}, "b"), ("yes", "b"),
])
def test_refusals_name_the_field(data: object, field: str) -> None:
    with pytest.raises(RuleError) as info:
        Buffering.parse(data, "b")
    assert info.value.field.startswith(field)


def _table(service: object = None, route: object = None) -> Any:
    svc: dict[str, Any] = {"name": "s", "endpoints": ["http://a:1"]}
    if service is not None:
        svc["buffering"] = service
    rt: dict[str, Any] = {"name": "r", "service": "s", "match": {"path_prefix": "/"}}
    if route is not None:
        rt["buffering"] = route
    doc = Document.parse({"services": [svc], "routes": [rt]})
    assert Document.parse(doc.to_dict()) == doc
    return compile_document(doc, 1).route("r")


def test_the_route_block_replaces_the_services_and_false_turns_it_off() -> None:
    assert _table().buffering == Buffering()
    assert _table(service=False).buffering is None
    assert _table(service=False, route={"timeout": "1m"}).buffering == Buffering(timeout=60.0)
    assert _table(service={"timeout": "1m"}, route=False).buffering is None
    assert _table(service={"timeout": "1m"}).buffering == Buffering(timeout=60.0)


# -- reading a body ahead -------------------------------------------------------------------------


def _receive(*pieces: bytes, then: float | None = None) -> Any:
    """Hands over `pieces` (the last ends the body unless `then`: then it waits that long per read)."""
    queue = list(pieces)

    async def receive() -> Message:
        if queue:
            body = queue.pop(0)
            return {"type": "http.request", "body": body, "more_body": bool(queue) or then is not None}
        if then is None:
            return {"type": "http.disconnect"}
        await asyncio.sleep(then)
        return {"type": "http.request", "body": b"x", "more_body": True}

    return receive


async def _all(body: BufferedBody, rest: Any = None) -> bytes:
    receive = body.reader(rest)
    out = b""
    while True:
        message = await receive()
        out += message["body"]
        if not message["more_body"]:
            return out


def test_memory_then_file_replayed_whole_as_often_as_asked() -> None:
    async def test() -> None:
        pieces = [bytes([97 + i]) * 50_000 for i in range(5)]
        body = await read_body(_receive(*pieces), 10**9, memory=60_000)
        assert body.complete and body.size == 250_000 and body.spilled
        for _ in range(2):
            assert await _all(body) == b"".join(pieces)
        body.close()
        small = await read_body(_receive(b"ab", b"cd"), 10**9, memory=100)
        assert not small.spilled and await _all(small) == b"abcd"
        empty = await read_body(_receive(b""), 10**9, memory=0)
        assert empty.complete and await _all(empty) == b""

    asyncio.run(test())


def test_past_the_limit_the_rest_streams_after_the_held_part() -> None:
    async def test() -> None:
        receive = _receive(b"a" * 10, b"b" * 10, b"c" * 10, b"d" * 10)
        body = await read_body(receive, 15, memory=5)
        assert not body.complete and body.size == 20
        assert await _all(body, receive) == b"a" * 10 + b"b" * 10 + b"c" * 10 + b"d" * 10

    asyncio.run(test())


def test_the_routes_cap_and_a_client_that_leaves() -> None:
    async def test() -> None:
        with pytest.raises(BodyTooLarge):
            await read_body(_receive(b"a" * 10, b"b" * 10), 100, max_body=15)
        messages: list[Message] = [{"type": "http.request", "body": b"a", "more_body": True},
                                   {"type": "http.disconnect"}]

        async def leaves() -> Message:
            return messages.pop(0)

        with pytest.raises(ExchangeAborted):
            await read_body(leaves, 100, memory=0, timeout=5.0)

    asyncio.run(test())


def test_a_body_under_the_minimum_rate_is_refused_after_the_grace() -> None:
    async def test() -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        # 1 byte every 50 ms is 20 B/s; 1000 B/s are needed once 0.2 s have passed.
        with pytest.raises(BodyTimeout) as info:
            await read_body(_receive(b"x", then=0.05), 10**6, min_rate=1000, timeout=30.0, grace=0.2)
        assert info.value.code == "body-too-slow"
        assert 0.15 < loop.time() - t0 < 5.0
        # a fast body passes the same rule
        body = await read_body(_receive(*[b"y" * 1000] * 50), 10**6, min_rate=1000, timeout=30.0,
                               grace=0.2)
        assert body.complete and body.size == 50_000

    asyncio.run(test())


def test_a_body_past_the_total_timeout_is_refused_whatever_its_rate() -> None:
    async def test() -> None:
        # 1 byte every 10 ms keeps up with 10 B/s, but the whole body must be in within 0.2 s.
        with pytest.raises(BodyTimeout) as info:
            await read_body(_receive(b"x", then=0.01), 10**6, min_rate=10, timeout=0.2, grace=0.0)
        assert info.value.code == "body-timeout"

    asyncio.run(test())
