"""WebSocket through the gateway, on real sockets: a proxy process, a websockets upstream in a thread.

Only routes with `websocket: true` switch protocols; elsewhere an upgrade is refused (403
`websocket-not-allowed`) before any upstream is asked, and other upgrade offers (h2c) are stripped.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.http11 import Request, Response
from websockets.sync.client import ClientConnection, connect

from tests.access_log import records
from tests.sockets.conftest import Proxy, start_proxy, stop_proxy, wait_for
from tests.sockets.serve_harness import PeelServe
from tests.sockets.upstreams import Refusing, ScriptedUpstream

pytestmark = pytest.mark.timeout(60)


@dataclass
class Ended:
    path: str
    code: int | None
    reason: str | None


@dataclass
class WsUpstream:
    """A websockets server in its own thread, scripted by path; records handshakes and closes.

    `/echo...` echoes every message; `/close/<code>` closes at once with that code; `/big/<n>`
    sends one binary message of n bytes; `/blast/<n>/<size>` sends n messages of size bytes as
    fast as it may; `/flood/<n>` sends n numbered text messages, then
    echoes; `/refuse` answers the handshake with 403 and a body. Every other path echoes.
    """

    handshakes: list[Request] = field(default_factory=list)
    ended: list[Ended] = field(default_factory=list)
    # since when (time.monotonic) a `/blast` send has been waiting for the transport, by path
    sending: dict[str, float] = field(default_factory=dict)
    port: int = 0

    def start(self) -> WsUpstream:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def main() -> None:
            self._stop = asyncio.Event()
            async with serve(self._handler, "127.0.0.1", 0, process_request=self._process,
                             select_subprotocol=_select, max_size=None, compression=None) as server:
                self.port = server.sockets[0].getsockname()[1]
                ready.set()
                await self._stop.wait()

        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(main(),), daemon=True)
        self._thread.start()
        assert ready.wait(10)
        return self

    def held_back(self, path: str) -> bool:
        """Whether a send on `path` has been waiting for more than a second (backpressure)."""
        since = self.sending.get(path)
        return since is not None and time.monotonic() - since > 1.0

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _process(self, conn: ServerConnection, request: Request) -> Response | None:
        self.handshakes.append(request)
        if request.path.startswith("/refuse"):
            response = conn.respond(403, "go away\n")
            response.headers["X-Refused-By"] = "upstream"
            return response
        return None

    async def _handler(self, conn: ServerConnection) -> None:
        path = conn.request.path if conn.request is not None else ""
        parts = path.strip("/").split("/")
        try:
            if parts[0] == "close":
                await conn.close(int(parts[1]), "bye from upstream")
            elif parts[0] == "blast":
                count, size = int(parts[1]), int(parts[2])
                for _ in range(count):
                    self.sending[path] = time.monotonic()
                    await conn.send(b"b" * size)
                    del self.sending[path]
                await conn.wait_closed()
            elif parts[0] == "big":
                await conn.send(b"x" * int(parts[1]))
                await conn.wait_closed()
            else:
                if parts[0] == "flood":
                    for i in range(int(parts[1])):
                        await conn.send(f"flood {i}")
                async for message in conn:
                    await conn.send(message)
        except ConnectionClosed:
            pass
        await conn.wait_closed()
        self.ended.append(Ended(path, conn.close_code, conn.close_reason))


def _select(conn: ServerConnection, offered: list[str]) -> str | None:
    return "chat.v2" if "chat.v2" in offered else None


@dataclass
class Setup:
    proxy: Proxy
    ws: WsUpstream
    http: ScriptedUpstream

    def uri(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.proxy.port}{path}"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    ws = WsUpstream().start()
    http = ScriptedUpstream().start()
    refusing = Refusing()
    document = {
        "services": [{"name": "ws", "endpoints": [ws.url]}, {"name": "http", "endpoints": [http.url]},
                     {"name": "gone", "endpoints": [refusing.url]}],
        "routes": [
            {"name": "live", "match": {"path_prefix": "/live"}, "service": "ws", "websocket": True,
             "rewrite": {"path_prefix": "/", "host": "ws.internal",
                         "request_headers": {"set": {"X-Route": "live"}},
                         "response_headers": {"set": {"X-Edge": "peel"}}}},
            {"name": "gone", "match": {"path_prefix": "/gone"}, "service": "gone", "websocket": True},
            {"name": "plain", "match": {"path_prefix": "/plain"}, "service": "http"},
        ],
    }
    proxy = start_proxy(tmp_path_factory.mktemp("ws"), document,
                        '[proxy]\ntrusted_proxies = ["127.0.0.2/32"]\nconnect_timeout = 1.0\n')
    yield Setup(proxy, ws, http)
    stop_proxy(proxy)
    ws.stop()
    http.stop()
    refusing.stop()


def _ended(setup: Setup, path: str) -> Ended:
    wait_for(lambda: any(e.path == path for e in setup.ws.ended), what=f"the upstream end of {path}")
    return next(e for e in setup.ws.ended if e.path == path)


def _handshake(setup: Setup, path: str) -> Request:
    return next(r for r in setup.ws.handshakes if r.path == path)


def test_text_and_binary_echo_and_the_clients_close_code_reaches_the_upstream(setup: Setup) -> None:
    with connect(setup.uri("/live/echo-1"), open_timeout=5) as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        ws.send(b"\x00\x01binary\xff")
        assert ws.recv(timeout=5) == b"\x00\x01binary\xff"
        ws.send("ünïcödé ✓")
        assert ws.recv(timeout=5) == "ünïcödé ✓"
        assert ws.response is not None
        assert ws.response.headers["X-Edge"] == "peel"
        assert ws.response.headers["X-Request-Id"]
        ws.close(4001, "client done")
    ended = _ended(setup, "/echo-1")
    assert (ended.code, ended.reason) == (4001, "client done")


def test_the_upstreams_close_code_and_reason_reach_the_client(setup: Setup) -> None:
    with connect(setup.uri("/live/close/4002"), open_timeout=5) as ws, \
            pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=5)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4002, "bye from upstream")


def test_the_upstream_sees_the_routes_rewrite_and_forwarded_headers_not_the_clients_handshake(
        setup: Setup) -> None:
    headers = {"X-Forwarded-For": "6.6.6.6", "X-Request-Id": "ws-trace-1", "Origin": "https://app.example",
               "Cookie": "session=abc"}
    with connect(setup.uri("/live/echo-2?room=7"), additional_headers=headers, open_timeout=5) as ws:
        ws.send("x")
        ws.recv(timeout=5)
    seen = _handshake(setup, "/echo-2?room=7").headers
    assert seen["Host"] == "ws.internal"
    assert seen["X-Route"] == "live"
    assert seen.get_all("X-Forwarded-For") == ["127.0.0.1"]  # the client's claim is not believed
    assert seen["X-Request-Id"] == "ws-trace-1"
    assert (seen["Origin"], seen["Cookie"]) == ("https://app.example", "session=abc")
    # The upstream leg has its own key and offers no extension (the client offered permessage-deflate).
    assert "Sec-WebSocket-Extensions" not in seen
    assert seen["Upgrade"] == "websocket" and seen["Sec-WebSocket-Version"] == "13"


def test_subprotocol_chosen_upstream_is_the_one_accepted_downstream(setup: Setup) -> None:
    with connect(setup.uri("/live/echo-sub"), subprotocols=["chat.v1", "chat.v2"], open_timeout=5) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "chat.v2"
        ws.send("sub")
        assert ws.recv(timeout=5) == "sub"
    assert _handshake(setup, "/echo-sub").headers["Sec-WebSocket-Protocol"] == "chat.v1, chat.v2"
    with connect(setup.uri("/live/echo-nosub"), subprotocols=["chat.v1"], open_timeout=5) as ws:  # type: ignore[list-item]
        assert ws.subprotocol is None


def test_an_upstream_refusal_reaches_the_client_with_its_status_and_body(setup: Setup) -> None:
    with pytest.raises(InvalidStatus) as refused:
        connect(setup.uri("/live/refuse"), open_timeout=5)
    response = refused.value.response
    assert response.status_code == 403
    assert response.body == b"go away\n"
    assert response.headers["X-Refused-By"] == "upstream"
    assert response.headers["X-Request-Id"]


def test_an_unreachable_upstream_is_a_502_problem(setup: Setup) -> None:
    with pytest.raises(InvalidStatus) as refused:
        connect(setup.uri("/gone/x"), open_timeout=5)
    response = refused.value.response
    assert response.status_code == 502
    assert response.headers["Content-Type"] == "application/problem+json"
    assert json.loads(response.body)["code"] == "upstream-connect-failed"


def test_an_upgrade_on_a_route_without_websocket_is_refused_and_the_upstream_never_sees_it(
        setup: Setup) -> None:
    before = len(setup.http.seen)
    with pytest.raises(InvalidStatus) as refused:
        connect(setup.uri("/plain/chat"), open_timeout=5)
    response = refused.value.response
    assert response.status_code == 403
    assert json.loads(response.body)["code"] == "websocket-not-allowed"
    with pytest.raises(InvalidStatus) as missing:
        connect(setup.uri("/nowhere"), open_timeout=5)
    assert missing.value.response.status_code == 404
    assert json.loads(missing.value.response.body)["code"] == "no-route"
    assert len(setup.http.seen) == before


def _raw(setup: Setup, request: bytes, *, wait_close: float = 0.0) -> tuple[bytes, bool]:
    """Send `request` on a fresh connection: (the response head, whether the gateway closed the
    connection within `wait_close` seconds after it)."""
    with socket.create_connection(("127.0.0.1", setup.proxy.port), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head = data.split(b"\r\n\r\n", 1)[0]
        if not wait_close:
            return head, False
        try:
            sock.settimeout(wait_close)
            while chunk := sock.recv(65536):
                pass
            closed = True
        except TimeoutError:
            closed = False
        return head, closed


def test_h2c_and_incomplete_websocket_offers_are_stripped_and_proxied_as_plain_http(setup: Setup) -> None:
    head, _ = _raw(setup, b"GET /plain/h2c HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                          b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    # No Sec-WebSocket-Key: not a WebSocket handshake, so no 403 either: plain HTTP without the offer.
    head, _ = _raw(setup, b"GET /plain/nokey HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n"
                          b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    for target in ("/plain/h2c", "/plain/nokey"):
        seen = next(s for s in setup.http.seen if s.target == target)
        assert not seen.names() & {"upgrade", "connection", "http2-settings"}


def test_a_refused_upgrade_closes_the_connection(setup: Setup) -> None:
    head, closed = _raw(setup, b"GET /plain/ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n"
                               b"Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                               b"Sec-WebSocket-Version: 13\r\n\r\n", wait_close=5)
    assert head.startswith(b"HTTP/1.1 403 ")
    assert closed


def test_a_handshake_pipelined_behind_a_request_is_refused_after_its_response(setup: Setup) -> None:
    with socket.create_connection(("127.0.0.1", setup.proxy.port), timeout=5) as sock:
        sock.sendall(b"GET /plain/first HTTP/1.1\r\nHost: a\r\n\r\n"
                     b"GET /live/echo-piped HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n"
                     b"Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     b"Sec-WebSocket-Version: 13\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 ")
    assert b"HTTP/1.1 400 " in data and b"HTTP/1.1 101" not in data
    assert not any(r.path == "/echo-piped" for r in setup.ws.handshakes)


def test_a_client_that_vanishes_closes_the_upstream_side(setup: Setup) -> None:
    with connect(setup.uri("/live/echo-vanish"), open_timeout=5) as ws:
        ws.send("before")
        assert ws.recv(timeout=5) == "before"
        # No close frame: the TCP connection is simply reset.
        ws.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        ws.socket.close()
    ended = _ended(setup, "/echo-vanish")
    assert ended.code == 1001


def test_many_messages_both_ways_keep_their_order(setup: Setup) -> None:
    count = 3000
    with connect(setup.uri(f"/live/flood/{count}"), open_timeout=5, max_size=None) as ws:
        received: list[str | bytes] = []

        def reader(conn: ClientConnection) -> None:
            for _ in range(2 * count):
                received.append(conn.recv(timeout=20))

        thread = threading.Thread(target=reader, args=(ws,))
        thread.start()
        for i in range(count):
            ws.send(f"up {i}" if i % 2 else f"up {i}".encode())
        thread.join(30)
        assert not thread.is_alive()
    assert received[:count] == [f"flood {i}" for i in range(count)]
    assert received[count:] == [f"up {i}" if i % 2 else f"up {i}".encode() for i in range(count)]


def test_a_client_that_does_not_read_holds_the_upstream_back_instead_of_filling_memory(
        setup: Setup) -> None:
    count, size = 100, 512 * 1024  # 50 MiB, far more than the socket buffers on the way hold
    path = f"/blast/{count}/{size}"
    before = setup.proxy.rss_kib()
    # A raw client: websockets' own keeps reading into its queue whatever max_queue says.
    with socket.create_connection(("127.0.0.1", setup.proxy.port), timeout=10) as sock:
        sock.sendall(b"GET /live" + path.encode() + b" HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n"
                     b"Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     b"Sec-WebSocket-Version: 13\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(1)
        assert data.startswith(b"HTTP/1.1 101 ")
        wait_for(lambda: setup.ws.held_back(path), timeout=30, what="the upstream to be held back")
        grown = setup.proxy.rss_kib() - before
        assert grown < 16 * 1024, f"the gateway grew by {grown} KiB while the client did not read"
        # Now read everything: binary frames with a 64-bit length (10-byte header), unmasked.
        expected = count * (size + 10)
        received = 0
        first = b""
        while received < expected:
            chunk = sock.recv(min(1 << 20, expected - received))
            assert chunk, "the gateway closed before every message came"
            first = first or chunk[:10]
            received += len(chunk)
    assert first[:2] == b"\x82\x7f" and int.from_bytes(first[2:10], "big") == size


def test_messages_up_to_the_limit_pass_and_larger_ones_close_with_1009_or_1014(setup: Setup) -> None:
    with connect(setup.uri("/live/echo-big"), open_timeout=5, max_size=None) as ws:
        ws.send(b"a" * (1024 * 1024))
        assert len(ws.recv(timeout=10)) == 1024 * 1024
        ws.send(b"a" * (1024 * 1024 + 1))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    assert _ended(setup, "/echo-big").code == 1009
    with connect(setup.uri(f"/live/big/{1024 * 1024 + 1}"), open_timeout=5, max_size=None) as ws, \
            pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1014


def test_the_access_log_has_one_line_per_websocket(setup: Setup) -> None:
    with connect(setup.uri("/live/echo-logged"), open_timeout=5) as ws:
        ws.send("12345")
        ws.recv(timeout=5)
    log: Path = setup.proxy.access_log

    def logged() -> bool:
        return any(record["path"] == "/live/echo-logged" for record in records(log))

    wait_for(logged, what="the access log line")
    line = next(record for record in records(log) if record["path"] == "/live/echo-logged")
    assert line["status"] == 101 and line["route"] == "live"



def test_a_draining_gateway_closes_websockets_with_1012_instead_of_waiting_out_the_grace_period(
        setup: Setup, tmp_path: Path) -> None:
    peel = PeelServe(tmp_path)  # grace_period = 10
    peel.store().upgrade()
    peel.commit({"services": [{"name": "ws", "endpoints": [setup.ws.url]}],
                 "routes": [{"name": "live", "match": {"path_prefix": "/"}, "service": "ws",
                             "websocket": True}]})
    peel.start()
    try:
        with connect(f"ws://127.0.0.1:{peel.public_port}/echo/drain", open_timeout=5) as client:
            client.send("before")
            assert client.recv(timeout=5) == "before"
            t0 = time.monotonic()
            peel.signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as closed:
                client.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
        assert peel.process is not None
        assert peel.process.wait(15) == 0
        # The drain did not wait for the 10 s grace period: the WebSocket was not left open.
        assert time.monotonic() - t0 < 6
        # and the upstream was told the same (the gateway restarts)
        assert _ended(setup, "/echo/drain").code in (1012, 1001)
    finally:
        peel.stop()


def test_websockets_on_a_migrated_route_go_to_their_side_and_are_counted(setup: Setup,
                                                                        tmp_path: Path) -> None:
    new = WsUpstream().start()
    refusing = Refusing()
    peel = PeelServe(tmp_path, extra_settings='[facade]\ntrusted_networks = ["127.0.0.0/8"]\n'
                                              'counts_interval = 0.2\n')
    token = peel.upgrade_with_token()
    peel.commit({"services": [{"name": "old", "endpoints": [setup.ws.url]},
                              {"name": "new", "endpoints": [new.url]},
                              {"name": "down", "endpoints": [refusing.url]}],
                 "routes": [{"name": "chat", "match": {"path_prefix": "/chat"}, "service": "old",
                             "websocket": True,
                             "migration": {"to": "new", "stage": "canary", "percent": 0,
                                           "beta": {"header": "X-Beta-User", "allow": ["alice"]}}},
                            {"name": "feed", "match": {"path_prefix": "/feed"}, "service": "old",
                             "websocket": True, "migration": {"to": "down", "stage": "retired"}}]})
    peel.start()
    try:
        for user in (None, None, "alice"):
            headers = {"X-Beta-User": user} if user else None
            path = f"/chat/{user or 'anyone'}"
            with connect(f"ws://127.0.0.1:{peel.public_port}{path}", additional_headers=headers,
                         open_timeout=5) as client:
                client.send("hi")
                assert client.recv(timeout=5) == "hi"
        assert [r.path for r in new.handshakes] == ["/chat/alice"]
        assert [r.path for r in setup.ws.handshakes].count("/chat/anyone") == 2
        # a retired route: `to` cannot be reached, the client gets a 502 and a retired miss counts
        with pytest.raises(InvalidStatus) as refused:
            connect(f"ws://127.0.0.1:{peel.public_port}/feed", open_timeout=5)
        assert refused.value.response.status_code == 502

        def counts(route: str) -> dict[str, int]:
            status, body = peel.admin_get(f"/api/v1/migrations/{route}", token, timeout=5)
            assert status == 200
            found: dict[str, int] = json.loads(body)["migration"]["counts"]
            return found

        wait_for(lambda: counts("chat")["to"] == 1 and counts("chat")["from"] == 2, 10,
                 "the WebSockets in the chat route's counts")
        wait_for(lambda: counts("feed")["retired_misses"] == 1, 10, "the feed route's retired miss")
        assert counts("feed")["to"] == 1
    finally:
        peel.stop()
        new.stop()
        refusing.stop()
