"""gateway/edge/cycle.py and the request side of gateway/edge/protocol.py, driven without sockets.

The socket tier and the hostile catalogue hold the protocol to the wire; these pin the response
framing `ResponseCycle` writes and the parse `PeelHttpProtocol` makes of a head, including what
uvicorn's cycle did that Peel's must keep (response splitting refused, HTTP/1.0 closes, HEAD has
no body, chunked when no length is given).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from gateway.core.writes import APART_FROM
from gateway.edge.cycle import ResponseCycle, Signal
from gateway.edge.protocol import CoalescingWriter, PeelHttpProtocol
from tests.fakes.served import until_served
from tests.fakes.transport import RecordingTransport

Transport = RecordingTransport


class Flow:
    write_paused = False

    def resume_reading(self) -> None:
        pass


def cycle(method: str = "GET", keep_alive: bool = True) -> tuple[ResponseCycle, Transport, list[int]]:
    transport = Transport()
    done: list[int] = []
    made = ResponseCycle({"method": method}, transport, Flow(), [], False, keep_alive,
                         lambda: done.append(1))
    return made, transport, done


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_a_response_with_a_length_is_written_as_given() -> None:
    c, t, done = cycle()

    async def go() -> None:
        await c.send({"type": "http.response.start", "status": 200,
                      "headers": [(b"content-length", b"5"), (b"x-a", b"1")]})
        await c.send({"type": "http.response.body", "body": b"hello"})

    run(go())
    assert bytes(t.written) == b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhello"
    assert c.response_complete and done == [1] and not t.closing


@pytest.mark.parametrize("headers", [
    [[b"content-length", b"5"], [b"x-a", b"1"]],  # lists, as ASGI allows
    ((b"content-length", b"5"), (b"x-a", b"1")),  # a tuple of tuples
    iter([(b"content-length", b"5"), (b"x-a", b"1")]),  # any iterable
])
def test_any_iterable_of_two_item_sequences_is_a_header_list(headers: Any) -> None:
    c, t, _ = cycle()

    async def go() -> None:
        await c.send({"type": "http.response.start", "status": 200, "headers": headers})
        await c.send({"type": "http.response.body", "body": b"hello"})

    run(go())
    assert bytes(t.written) == b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhello"


def test_no_length_means_chunked_and_the_last_chunk_ends_it() -> None:
    c, t, _ = cycle()

    async def go() -> None:
        await c.send({"type": "http.response.start", "status": 200, "headers": []})
        await c.send({"type": "http.response.body", "body": b"ab", "more_body": True})
        await c.send({"type": "http.response.body", "body": b"", "more_body": True})
        await c.send({"type": "http.response.body", "body": b"c"})

    run(go())
    assert bytes(t.written) == (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                                b"2\r\nab\r\n1\r\nc\r\n0\r\n\r\n")


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses_get_no_chunked_framing(status: int) -> None:
    c, t, _ = cycle()

    async def go() -> None:
        await c.send({"type": "http.response.start", "status": status, "headers": []})
        await c.send({"type": "http.response.body", "body": b""})

    run(go())
    assert b"transfer-encoding" not in t.written and t.written.endswith(b"\r\n\r\n")


def test_head_sends_the_length_but_no_body() -> None:
    c, t, _ = cycle("HEAD")

    async def go() -> None:
        await c.send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
        await c.send({"type": "http.response.body", "body": b"hello"})

    run(go())
    assert bytes(t.written) == b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"


def test_a_connection_not_kept_says_close_and_closes() -> None:
    c, t, _ = cycle(keep_alive=False)

    async def go() -> None:
        await c.send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
        await c.send({"type": "http.response.body", "body": b""})

    run(go())
    assert b"connection: close\r\n" in t.written and t.closing


@pytest.mark.parametrize("header", [(b"x-a", b"1\r\nset-cookie: evil=1"), (b"x-a\r\nx-b", b"1"),
                                    (b"x-a", b"1\nx"), (b"x-a", b"1\rx")])
def test_a_cr_or_lf_in_a_header_is_refused_before_anything_is_written(header: tuple[bytes, bytes]) -> None:
    c, t, _ = cycle()

    async def go() -> None:
        await c.send({"type": "http.response.start", "status": 200, "headers": [header]})

    with pytest.raises(RuntimeError, match="CR or an LF"):
        run(go())
    assert t.written == b"" and not c.response_started


def test_a_body_longer_or_shorter_than_its_length_raises() -> None:
    c, _, _ = cycle()

    async def longer() -> None:
        await c.send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await c.send({"type": "http.response.body", "body": b"abc"})

    with pytest.raises(RuntimeError, match="longer"):
        run(longer())
    c, _, _ = cycle()

    async def shorter() -> None:
        await c.send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await c.send({"type": "http.response.body", "body": b"a"})

    with pytest.raises(RuntimeError, match="shorter"):
        run(shorter())


def test_an_app_that_fails_before_answering_gets_a_500_and_the_connection_closes() -> None:
    c, t, _ = cycle()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise ValueError("boom")

    run(c.run_asgi(app))
    assert t.written.startswith(b"HTTP/1.1 500 ") and t.closing


# --- the protocol's parse ------------------------------------------------------------------------

async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    answer = f"{scope['method']} {scope['path']} {scope['query_string'].decode()} {body.decode()}".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(answer)).encode())]})
    await send({"type": "http.response.body", "body": answer})


def connected(app: Any) -> tuple[PeelHttpProtocol, ServerState, Transport]:
    """A protocol serving `app` on a recording transport (call on a running loop)."""
    config = uvicorn.Config(app, lifespan="off", log_config=None)
    config.load()
    state = ServerState()
    protocol = PeelHttpProtocol(config=config, server_state=state, app_state={})
    transport = Transport()
    protocol.connection_made(transport)
    return protocol, state, transport


def serve(*chunks: bytes) -> tuple[PeelHttpProtocol, Transport]:
    async def go() -> tuple[PeelHttpProtocol, Transport]:
        protocol, state, transport = connected(asgi_app)
        for chunk in chunks:
            protocol.data_received(chunk)
            await asyncio.sleep(0)
        await until_served(state)
        for _ in range(20):
            await asyncio.sleep(0)
        return protocol, transport

    result: tuple[PeelHttpProtocol, Transport] = asyncio.run(go())
    return result


def test_a_chunked_body_reaches_the_app_decoded_across_reads() -> None:
    _, t = serve(b"POST /up?x=1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab",
                 b"c\r\n2\r\nde\r\n0\r\n\r\n")
    assert t.written.endswith(b"POST /up x=1 abcde")


def test_a_percent_encoded_path_is_decoded_in_path_and_kept_in_the_target() -> None:
    p, t = serve(b"GET /a%20b HTTP/1.1\r\nHost: a\r\n\r\n")
    assert t.written.endswith(b"GET /a b  ")
    assert p.cycle is not None and p.cycle.scope["raw_path"] == b"/a%20b"


def test_pipelined_requests_are_answered_in_order() -> None:
    _, t = serve(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
                 b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"
                 b"GET /3 HTTP/1.1\r\nHost: a\r\n\r\n")
    text = bytes(t.written)
    assert text.index(b"GET /1") < text.index(b"POST /2  hi") < text.index(b"GET /3")
    assert text.count(b"HTTP/1.1 200 OK") == 3 and not t.closing


def recording_app(tasks: list[asyncio.Task[Any] | None]) -> Any:
    """An app answering 204 that notes the task each request runs in."""
    async def app(scope: Any, receive: Any, send: Any) -> None:
        tasks.append(asyncio.current_task())
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
    return app


def test_a_keep_alive_connections_requests_share_one_task_that_ends_with_it() -> None:
    async def go() -> None:
        ran: list[asyncio.Task[Any] | None] = []
        protocol, state, transport = connected(recording_app(ran))
        for n in range(3):
            protocol.data_received(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % n)
            assert state.tasks  # running the request: uvicorn's drain waits for it
            await until_served(state)
        await asyncio.sleep(0)  # a response held to the end of the iteration (CoalescingWriter)
        task = ran[0]
        assert task is not None and ran == [task] * 3 and not task.done()  # waiting, not in `tasks`
        assert transport.written.count(b"HTTP/1.1 204") == 3
        protocol.connection_lost(None)
        await asyncio.sleep(0)
        assert task.done() and not task.cancelled()

    asyncio.run(go())


def test_a_connection_not_kept_alive_leaves_no_task_waiting() -> None:
    async def go() -> None:
        ran: list[asyncio.Task[Any] | None] = []
        protocol, state, transport = connected(recording_app(ran))
        protocol.data_received(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        await until_served(state)
        await asyncio.sleep(0)
        task = ran[0]
        assert task is not None and task.done() and transport.closing

    asyncio.run(go())


def test_a_request_after_the_waiting_task_was_cancelled_runs_in_a_new_one() -> None:
    async def go() -> None:
        ran: list[asyncio.Task[Any] | None] = []
        protocol, state, transport = connected(recording_app(ran))
        protocol.data_received(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
        await until_served(state)
        first = ran[0]
        assert first is not None
        first.cancel()
        await asyncio.sleep(0)
        assert first.cancelled()
        for n in (2, 3):
            protocol.data_received(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % n)
            await until_served(state)
        await asyncio.sleep(0)
        assert transport.written.count(b"HTTP/1.1 204") == 3
        assert ran[1] is not first and ran[2] is ran[1]  # the new task waits in its turn

    asyncio.run(go())


def test_a_websocket_upgrade_after_a_request_ends_the_waiting_task() -> None:
    class WebSocketProtocol:  # stands in for uvicorn's: takes the connection and its bytes
        def __init__(self, **kwargs: Any) -> None:
            self.received = b""

        def connection_made(self, transport: Any) -> None:
            return None

        def data_received(self, data: bytes) -> None:
            self.received += data

    class Switching(RecordingTransport):
        protocol: Any = None

        def set_protocol(self, protocol: Any) -> None:
            self.protocol = protocol

    async def go() -> None:
        ran: list[asyncio.Task[Any] | None] = []
        config = uvicorn.Config(recording_app(ran), lifespan="off", log_config=None)
        config.load()
        state = ServerState()
        protocol = PeelHttpProtocol(config=config, server_state=state, app_state={})
        protocol.ws_protocol_class = WebSocketProtocol  # type: ignore[assignment]
        transport = Switching()
        protocol.connection_made(transport)
        protocol.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        await until_served(state)
        task = ran[0]
        assert task is not None and not task.done()
        protocol.data_received(b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n"
                               b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                               b"Sec-WebSocket-Version: 13\r\n\r\n")
        assert isinstance(transport.protocol, WebSocketProtocol)
        assert transport.protocol.received.startswith(b"GET /ws HTTP/1.1")
        await asyncio.sleep(0)
        assert task.done() and not task.cancelled() and len(ran) == 1

    asyncio.run(go())


def test_pipelined_requests_leave_one_task_waiting() -> None:
    async def go() -> None:
        ran: list[asyncio.Task[Any] | None] = []
        protocol, state, transport = connected(recording_app(ran))
        protocol.data_received(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n" * 3)
        await until_served(state)
        for _ in range(5):
            await asyncio.sleep(0)
        assert transport.written.count(b"HTTP/1.1 204") == 3
        waiting = [task for task in set(ran) if task is not None and not task.done()]
        assert len(waiting) == 1
        protocol.data_received(b"GET /4 HTTP/1.1\r\nHost: a\r\n\r\n")
        await until_served(state)
        assert ran[-1] is waiting[0]

    asyncio.run(go())


@pytest.mark.parametrize(("version", "connection", "kept"), [
    (b"1.1", b"", True), (b"1.1", b"Connection: close\r\n", False),
    (b"1.0", b"", False), (b"1.0", b"Connection: keep-alive\r\n", True)])
def test_keep_alive_follows_the_version_and_connection(version: bytes, connection: bytes, kept: bool) -> None:
    _, t = serve(b"GET / HTTP/" + version + b"\r\nHost: a\r\n" + connection + b"\r\n")
    assert t.written.startswith(b"HTTP/1.1 200 OK") and t.closing is not kept
    assert (b"connection: close" in t.written) is not kept


def test_an_upgrade_offer_on_a_plain_request_is_left_out_of_the_headers() -> None:
    p, t = serve(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade\r\nX-A: 1\r\n\r\n")
    assert p.cycle is not None
    assert p.cycle.scope["headers"] == [(b"host", b"a"), (b"connection", b"Upgrade"), (b"x-a", b"1")]
    assert t.written.startswith(b"HTTP/1.1 200 OK")


def test_respond_writes_a_whole_answer_in_one_write_and_completes_it() -> None:
    writes: list[bytes] = []

    class Writes(Transport):
        def write(self, data: bytes | bytearray | memoryview) -> None:
            writes.append(bytes(data))

    done: list[int] = []
    c = ResponseCycle({"method": "GET"}, Writes(), Flow(), [], False, True, lambda: done.append(1))
    assert c.respond(200, [(b"content-length", b"5")], b"hello")
    assert writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"]
    assert c.response_complete and done == [1] and c.message_event.is_set()


def test_respond_writes_a_large_body_after_the_head_without_copying_it() -> None:
    async def go() -> None:
        calls: list[tuple[str, object]] = []

        class Writes(Transport):
            def write(self, data: bytes | bytearray | memoryview) -> None:
                calls.append(("write", bytes(data)))

            def writelines(self, parts: object) -> None:
                calls.append(("writelines", list(parts)))  # type: ignore[call-overload]

        await asyncio.sleep(0)  # a fresh iteration: the answer goes out at once
        read = b"head;" + b"b" * APART_FROM
        body = memoryview(read)[5:]
        done: list[int] = []
        c = ResponseCycle({"method": "GET"}, CoalescingWriter(Writes(), asyncio.get_running_loop()), Flow(),
                          [], False, True, lambda: done.append(1))
        assert c.respond(200, [(b"content-length", b"%d" % APART_FROM)], body)
        head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % APART_FROM
        assert calls == [("writelines", [head, body])] and calls[0][1][1] is body  # type: ignore[index]
        assert c.response_complete and done == [1]
        # a plain transport (no coalescing writer): one write of both, as before
        t = Transport()
        c = ResponseCycle({"method": "GET"}, t, Flow(), [], False, True, lambda: None)
        assert c.respond(200, [(b"content-length", b"%d" % APART_FROM)], body)
        assert bytes(t.written) == head + body

    run(go())


def test_the_coalescing_writer_sends_a_whole_answer_at_once_after_what_it_holds() -> None:
    async def go() -> list[bytes]:
        writes: list[bytes] = []

        class Writes(Transport):
            def write(self, data: bytes | bytearray | memoryview) -> None:
                writes.append(bytes(data))

        await asyncio.sleep(0)  # a fresh iteration: nothing written in it yet
        writer = CoalescingWriter(Writes(), asyncio.get_running_loop())
        writer.write(b"held;")  # held until the next write or the end of this loop iteration
        writer.write_whole(b"whole")
        assert writes == [b"held;whole"]
        return writes

    assert run(go()) == [b"held;whole"]


def test_the_coalescing_writer_holds_the_iterations_later_whole_answers_to_its_end() -> None:
    async def go() -> list[bytes]:
        writes: list[bytes] = []

        class Writes(Transport):
            def __init__(self, name: bytes) -> None:
                super().__init__()
                self.name = name

            def write(self, data: bytes | bytearray | memoryview) -> None:
                writes.append(self.name + bytes(data))

        loop = asyncio.get_running_loop()
        await asyncio.sleep(0)
        a, b, c = (CoalescingWriter(Writes(name), loop) for name in (b"a:", b"b:", b"c:"))
        a.write_whole(b"1")  # the iteration's first: at once
        b.write_whole(b"2")  # later ones: at the iteration's end, in order
        c.write_whole(b"3")
        b.write(b"4")  # after what b holds, joined with it
        assert writes == [b"a:1", b"b:24"]
        await asyncio.sleep(0)
        assert writes == [b"a:1", b"b:24", b"c:3"]
        c.write_whole(b"5")  # a new iteration's first: at once again
        assert writes[-1] == b"c:5"
        c.close()  # closing writes what is held first
        return writes

    assert run(go()) == [b"a:1", b"b:24", b"c:3", b"c:5"]


def test_respond_frames_without_a_length_and_keeps_heads_bodiless() -> None:
    c, t, _ = cycle()
    assert c.respond(200, [], b"ab")
    assert t.written.endswith(b"transfer-encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n")
    c, t, _ = cycle("HEAD")
    assert c.respond(200, [(b"content-length", b"5")], b"hello")
    assert t.written.endswith(b"content-length: 5\r\n\r\n")


def test_respond_refuses_a_wrong_length_and_leaves_waiting_to_send() -> None:
    c, t, _ = cycle()
    with pytest.raises(RuntimeError, match="shorter"):
        c.respond(200, [(b"content-length", b"9")], b"hello")
    c, t, done = cycle()
    c.flow.write_paused = True
    assert not c.respond(200, [(b"content-length", b"5")], b"hello")  # the caller sends (and drains)
    assert t.written == b"" and not c.response_started and done == []
    c, t, _ = cycle(keep_alive=False)
    assert c.respond(204, [], b"") and t.closing and b"connection: close" in t.written


def test_the_data_plane_answers_in_one_call_only_through_the_edges_own_send() -> None:
    from gateway.core.asgi import RESPOND
    from gateway.dataplane.request import RequestState

    c, _, _ = cycle()
    scope = {"method": "GET", "extensions": {RESPOND: c.respond}}
    assert RequestState(b"id", scope, c.receive, c.send).respond == c.respond

    async def wrapped(message: Any) -> None:  # HSTS, a recording send: they see messages only
        await c.send(message)

    assert RequestState(b"id", scope, c.receive, wrapped).respond is None
    assert RequestState(b"id", {"method": "GET"}, c.receive, c.send).respond is None


def test_the_cycles_signal_wakes_every_waiter_and_forgets_a_cancelled_one() -> None:
    async def main() -> None:
        signal = Signal()
        first = asyncio.ensure_future(signal.wait())
        second = asyncio.ensure_future(signal.wait())
        gone = asyncio.ensure_future(signal.wait())
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.sleep(0)
        assert not first.done() and not second.done() and not signal.is_set()
        signal.set()
        await asyncio.wait_for(asyncio.gather(first, second), 1)
        assert signal.is_set()
        await asyncio.wait_for(signal.wait(), 1)  # set: no wait at all
        signal.clear()
        late = asyncio.ensure_future(signal.wait())
        await asyncio.sleep(0)
        assert not late.done()
        signal.set()
        await asyncio.wait_for(late, 1)

    asyncio.run(main())
