"""Whole messages written together at the end of a loop iteration (gateway.core.writes)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.core.settings import ProxySettings
from gateway.core.writes import APART_FROM, WriteBatch, batch_for
from gateway.edge.protocol import CoalescingWriter
from gateway.upstream.pool import UpstreamConnection, UpstreamPool
from routes.services import Endpoint
from tests.fakes.transport import RecordingTransport


class Named(RecordingTransport):
    def __init__(self, name: str, out: list[str], fail: bool = False) -> None:
        super().__init__()
        self.name = name
        self.out = out
        self.fail = fail

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.fail:
            raise OSError("gone")
        self.out.append(self.name + ":" + bytes(data).decode())


def test_held_writers_flush_once_in_order_at_the_iterations_end(caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> list[str]:
        out: list[str] = []
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0)
        batch = batch_for(loop)
        assert not batch.busy
        batch.wrote()  # as if a whole message had just gone out
        assert batch.busy
        for name, fail in (("a", False), ("bad", True), ("b", False)):
            CoalescingWriter(Named(name, out, fail), loop).write_whole(b"1")
        assert out == []
        await asyncio.sleep(0)
        assert out == ["a:1", "b:1"] and not batch.busy  # the failing one is logged, the rest written
        return out

    assert asyncio.run(go()) == ["a:1", "b:1"]
    assert "a held write failed" in caplog.text


def test_one_batch_per_loop() -> None:
    async def batch() -> WriteBatch:
        first = batch_for(asyncio.get_running_loop())
        assert batch_for(asyncio.get_running_loop()) is first
        return first

    assert asyncio.run(batch()) is not asyncio.run(batch())


def connection(loop: asyncio.AbstractEventLoop) -> tuple[UpstreamConnection, RecordingTransport]:
    conn = UpstreamConnection(UpstreamPool(ProxySettings()), Endpoint("http", "127.0.0.1", 9), loop)
    transport = RecordingTransport()
    conn.connection_made(transport)
    return conn, transport


def test_a_whole_request_is_held_behind_the_iterations_first_and_a_streamed_part_keeps_order() -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0)
        first, t1 = connection(loop)
        second, t2 = connection(loop)
        third, t3 = connection(loop)
        first.write_whole(b"GET /a")
        assert t1.written == b"GET /a"
        second.write_whole(b"GET /b")
        third.write_whole(b"POST /c head;")
        assert t2.written == b"" and t3.written == b""
        third.write(b"body")  # a streamed part: what is held goes first
        assert t3.written == b"POST /c head;body"
        t2.closing = True  # a connection closed meanwhile: its held request goes nowhere
        await asyncio.sleep(0)
        assert t2.written == b""
        second.write_whole(b"GET /d")  # the next iteration's first
        assert t2.written == b"GET /d"

    asyncio.run(go())


class Calls(RecordingTransport):
    """Records each call: ("write", bytes) or ("writelines", [parts, as given])."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, object]] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.calls.append(("write", bytes(data)))

    def writelines(self, parts: object) -> None:
        self.calls.append(("writelines", list(parts)))  # type: ignore[call-overload]


def test_a_large_body_goes_after_its_head_in_one_vectored_write_never_copied() -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0)
        read = b"upstream head;" + b"x" * APART_FROM
        body = memoryview(read)[14:]
        first, second, third = Calls(), Calls(), Calls()
        CoalescingWriter(first, loop).write_whole(b"HEAD1;", body)  # the iteration's first: at once
        assert first.calls == [("writelines", [b"HEAD1;", body])]
        assert first.calls[0][1][1] is body  # type: ignore[index]  # the view itself: no copy
        held = CoalescingWriter(second, loop)
        held.write_whole(b"HEAD2;", body)  # held to the iteration's end, head and body together
        joined = CoalescingWriter(third, loop)
        joined.write_whole(b"HEAD3;", body)
        joined.write_whole(b"HEAD4;")  # after what it holds, at once, in one call
        assert third.calls == [("writelines", [b"HEAD3;", body, b"HEAD4;"])]
        held.write(b"part")  # a small part after a held whole message: the message goes out first,
        assert second.calls == [("writelines", [b"HEAD2;", body])]  # the part is held in turn
        held.write_whole(b"HEAD5;", body)  # and goes out with the next message, in order
        assert second.calls[-1] == ("writelines", [b"part", b"HEAD5;", body])
        closed = Calls()
        gone = CoalescingWriter(closed, loop)
        batch_for(loop).wrote()
        gone.write_whole(b"HEAD6;", body)
        closed.closing = True  # closed meanwhile: the held message goes nowhere, and is let go
        gone.flush()
        assert closed.calls == [] and gone._held is None and gone._held_body is None

    asyncio.run(go())
