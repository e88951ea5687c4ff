"""uvicorn's httptools protocol with the two things the data plane needs from the connection.

1. The raw request target: uvicorn parses it into `path`/`raw_path`/`query_string` and drops the
   rest, so an absolute-form target (`GET http://elsewhere/ HTTP/1.1`, the open-proxy probe) looks
   like an origin-form one. The bytes of the request line's target go into
   `scope["extensions"]["peel.target"]`.
2. A `Downstream` handle in `scope["extensions"]["peel.downstream"]`: uvicorn's `send` silently
   does nothing once the client is gone, so a proxy streaming a download would keep pulling from
   the upstream. The handle calls back when the connection is lost (so the upstream exchange is
   cancelled at once) and can abort the connection when a response must be cut short.

3. A `CoalescingWriter` in front of the transport, so a response head and a small body leave in
   one system call instead of two.
4. A head timeout: a connection must deliver a complete request head within the keep-alive
   timeout, whether it is new, idle between requests, or trickling a head byte by byte
   (uvicorn times only the idle case, with a timer per response).
5. On the inbound listener, the peer (`scope["extensions"]["peel.peer"]`, a `Peer`): the SPIFFE ID
   of the client certificate, read from the TLS object once per connection (uvicorn puts nothing
   of the certificate into the scope); None on the other listeners.
6. WebSocket upgrades: `check_head` strips every `Upgrade` offer; when the listener runs a
   WebSocket protocol (`ws_protocol_class`) and `gateway.dataplane.websocket_rules.websocket_offer` finds a
   complete opening handshake, the checked head goes to httptools with its offer and the
   connection is handed to uvicorn's WebSocket protocol (the app then gets a `websocket` scope;
   whether the route allows it is the app's decision). Plain requests never take this path.

The hooks cost one dict per request; everything else is uvicorn's own code path.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar, cast

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.core.asgi import DOWNSTREAM, PEER, TARGET, Downstream, Peer
from gateway.core.settings import LimitsSettings
from gateway.dataplane.websocket_rules import websocket_offer
from gateway.http.framing import (
    CHUNKED,
    LENGTH,
    ChunkedBody,
    HeadLimits,
    Refusal,
    check_head,
    refusal_response,
)
from gateway.identity.bundle import peer_identity

log = logging.getLogger("peel.edge")


class CoalescingWriter:
    """Stands in for the transport in uvicorn's request cycles: pairs of writes leave as one.

    uvicorn writes a response head and its body separately, each a `send()` system call; for the
    small answers that dominate gateway traffic that is a third of the data plane's CPU. This
    writer holds a write until the next one (then both go out in one call) or until the end of
    the current loop iteration, whichever comes first. Order is always kept; nothing waits
    longer than one iteration.
    """

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is None:
            if len(data) >= _HOLD_BELOW:
                self._transport.write(data)
                return
            self._held = data
            self._loop.call_soon(self.flush)
            return
        self._held = None
        if len(data) < _JOIN_BELOW:
            self._transport.write(held + data)
        else:
            self._transport.writelines((held, data))

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


# A write this large goes out at once (nothing to gain by waiting); two writes whose sum is below
# _JOIN_BELOW are joined (a copy is cheaper than a vectored write for small buffers).
_HOLD_BELOW = 16 * 1024
_JOIN_BELOW = 64 * 1024


class PeelHttpProtocol(HttpToolsProtocol):
    """The HTTP/1.1 protocol Peel's listeners run (pass `configured(limits)` as uvicorn's `http`).

    Every request head is checked by `gateway.http.framing.check_head` before httptools parses it, and
    every chunked body by a `ChunkedBody`, so Peel's framing rules and limits hold whatever the
    parser tolerates. To see each head whole, the bytes are handed to the parser one message part
    at a time: the head (once complete), then exactly the body's bytes, then the next head.
    """

    limits: ClassVar[LimitsSettings] = LimitsSettings()
    head_limits: ClassVar[HeadLimits] = HeadLimits()
    # Set on an instance by the inbound listener's acceptor (gateway.edge.inbound) before the
    # connection is made: the listener's mode at accept time. None: not the inbound listener.
    inbound_strict: bool | None = None

    @classmethod
    def configured(cls, limits: LimitsSettings) -> type[PeelHttpProtocol]:
        """This protocol with `limits` (uvicorn builds protocols from a class, so a subclass)."""
        head = HeadLimits(limits.max_request_line, limits.max_header_bytes, limits.max_headers,
                          limits.max_body, limits.allow_underscore_headers)
        return type(cls.__name__, (cls,), {"limits": limits, "head_limits": head})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._downstream = Downstream(self._abort_connection)
        self._writer: CoalescingWriter | None = None
        self._state = _HEAD
        self._buf = b""  # the head so far
        self._left = 0  # _LENGTH: body bytes still due
        self._chunked: ChunkedBody | None = None
        self._refused = False  # a refusal was answered (or is pending): ignore what follows
        self._pending: bytes | None = None  # a refusal that waits for the response in flight
        self._served = 0
        self._peer: Peer | None = None
        # Since when this connection waits for a complete request head (None while a request is
        # served), since when its body is being read, since when a write is blocked: see _EdgeTimer.
        self.waiting_since: float | None = None
        self.body_since: float | None = None
        self.blocked_since: float | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.inbound_strict is not None:
            self._peer = _peer(transport, self.inbound_strict, self.client)
        self._writer = CoalescingWriter(transport, self.loop)
        self.waiting_since = self.loop.time()
        _EdgeTimer.ensure(self.server_state, self.loop, self)
        limit = self.limits.max_connections
        if limit and len(self.connections) > limit:
            self._refuse(Refusal(503, "too-many-connections",
                                 f"this listener serves at most {limit} connections at once"))

    def _abort_connection(self) -> None:
        """`Downstream.abort`: reset the connection on purpose."""
        cycle = self.cycle
        if cycle is not None:
            # uvicorn would otherwise log "returned without completing response" for a cut we
            # made on purpose.
            cycle.disconnected = True
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._refused or self._state == _UPGRADED:
            return  # after a refusal nothing on this connection is read as a request
        if self._buf:
            data, self._buf = self._buf + data, b""
        while data and not self._refused:
            state = self._state
            if state == _LENGTH:
                take = min(self._left, len(data))
                if not self._feed(data if take == len(data) else data[:take]):
                    return
                data = data[take:]
                self._left -= take
                self._body_progress(self._left == 0)
            elif state == _CHUNKED:
                chunked = self._chunked
                assert chunked is not None
                try:
                    used = chunked.feed(data)
                except Refusal as refusal:
                    self._refuse(refusal)
                    return
                if not self._feed(data if used == len(data) else data[:used]):
                    return
                data = data[used:]
                self._body_progress(chunked.done)
            else:
                data = self._take_head(data)

    def _body_progress(self, done: bool) -> None:
        if done:
            self._state = _HEAD
            self._chunked = None
            self.body_since = None
        else:
            self.body_since = self.loop.time()

    def _take_head(self, buf: bytes) -> bytes:
        """Check and hand on the head at the start of `buf`; return the bytes after it.

        An incomplete head is kept for the next `data_received` (and b"" returned).
        """
        while buf.startswith(b"\r\n"):  # RFC 9112 2.2: empty lines before a request are ignored
            buf = buf[2:]
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            refusal = _incomplete_head_refusal(buf, self.head_limits)
            if refusal is not None:
                self._refuse(refusal)
            else:
                self._buf = buf
            return b""
        try:
            head = check_head(buf[:end + 4], self.head_limits)
        except Refusal as refusal:
            self._refuse(refusal)
            return b""
        block = head.head
        if head.upgrade_stripped and self.ws_protocol_class is not None \
                and websocket_offer(buf[:end + 4], head):
            cycle = self.cycle
            if self.pipeline or (cycle is not None and not cycle.response_complete):
                # The switch would interleave with a response still being written.
                self._refuse(Refusal(400, "bad-request",
                                     "a WebSocket handshake may not be pipelined behind another request"))
                return b""
            block = buf[:end + 4]  # with its offer: httptools raises HttpParserUpgrade at its end
            self._state = _UPGRADING
        elif head.framing == LENGTH:
            self._state, self._left = _LENGTH, head.length
        elif head.framing == CHUNKED:
            self._state, self._chunked = _CHUNKED, ChunkedBody(self.head_limits.max_body)
        if not self._feed(block):
            return b""
        if self._state == _UPGRADED:
            rest = buf[end + 4:]
            if rest:  # frames right behind the handshake belong to the new protocol
                cast(asyncio.Protocol, self.transport.get_protocol()).data_received(rest)
            return b""
        if self._state == _UPGRADING:
            self._state = _HEAD  # httptools saw no upgrade after all: served as plain HTTP
        if self._state != _HEAD:
            self.body_since = self.loop.time()
        return buf[end + 4:]

    def _feed(self, data: bytes) -> bool:
        """Hand bytes to httptools; False (and answered) when it refuses them."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._refuse(Refusal(400, "bad-request", f"malformed request: {exc}"))
            return False
        except httptools.HttpParserUpgrade:
            if self._state == _UPGRADING and self.parser.should_upgrade() and self._should_upgrade():
                self._upgrade()
                return True
            # check_head strips other offers and refuses CONNECT's authority-form, so this is a
            # parser disagreement: refuse rather than guess where the next request starts.
            self._refuse(Refusal(400, "bad-request", "protocol switches are not supported"))
            return False
        return True

    def _upgrade(self) -> None:
        """Hand the connection to uvicorn's WebSocket protocol (it answers the handshake later)."""
        if self._writer is not None:
            self._writer.flush()  # bytes of an earlier response go out before the 101
        self._state = _UPGRADED
        self.waiting_since = self.body_since = None
        self.handle_websocket_upgrade()
        if self._peer is not None:
            # The WebSocket protocol parsed the handshake and made its scope (its app task has
            # not run yet): the inbound listener's peer goes into it as into an HTTP scope's.
            ws: Any = self.transport.get_protocol() if self.transport is not None else None
            scope = getattr(ws, "scope", None)
            if scope is not None:
                scope["extensions"][PEER] = self._peer

    def send_400_response(self, msg: str) -> None:
        # uvicorn's own plain-text 400, for whatever the parser refuses: Peel's problem+json.
        self._refuse(Refusal(400, "bad-request", msg))

    def _refuse(self, refusal: Refusal) -> None:
        """Answer `refusal` and close; after a response already started, cut the connection."""
        self._refused = True
        self.body_since = self.waiting_since = None
        log.debug("refused %s: %s", refusal.code, refusal.detail)
        answer = refusal_response(refusal)
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            self._write_and_close(answer)
            return
        if cycle.response_started:
            self._downstream.abort()
            return
        if self.pipeline or self._state == _HEAD:
            # An earlier request is still being answered: the refusal follows its response. A
            # queued request whose body was refused is dropped (pipeline[0] is the newest).
            if self._state != _HEAD and self.pipeline:
                self.pipeline.popleft()
            self._pending = answer
            self.flow.pause_reading()
            return
        # The request whose body is refused: its app sees a disconnect and its sends go nowhere.
        cycle.disconnected = True
        cycle.message_event.set()
        self._write_and_close(answer)

    def _write_and_close(self, answer: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._writer is not None:
            self._writer.flush()
        transport.write(answer)
        transport.close()

    def on_headers_complete(self) -> None:
        self.waiting_since = None
        # on_message_begin made a fresh scope and on_url collected the whole target; the ASGI task
        # is created by the parent below, so the scope is complete before the app sees it.
        scope: Any = self.scope  # uvicorn types extensions as dict[str, dict]; ours hold bytes
        scope["extensions"] = {TARGET: self.url, DOWNSTREAM: self._downstream, PEER: self._peer}
        previous = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not previous and cycle is not None:
            cycle.transport = self._writer  # type: ignore[assignment]
            # httptools reports the trailer fields of a chunked body through on_header too, and
            # uvicorn appends them to `self.headers`, the very list that is the scope's headers:
            # after the app started, where a buffered request would send them upstream in its head,
            # past every trust rule and header limit. RFC 9110 §6.5.1: trailers are not merged into
            # the header section. From here on they land in a list nobody reads (their size and
            # number are capped by the chunked decoder, 431 past them); the next request's
            # on_message_begin makes a fresh one. (Kept for an upgrade: uvicorn reads the headers
            # again when it switches protocols; a handshake has no body, so no trailers.)
            self.headers = []

    def on_response_complete(self) -> None:
        # uvicorn's own, except that the keep-alive wait is timed by _EdgeTimer instead of a
        # call_later per response (which cost more than the rest of this method).
        self.server_state.total_requests += 1
        self._served += 1
        if self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        if self.pipeline:
            self.flow.resume_reading()
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif self._pending is not None:
            answer, self._pending = self._pending, None
            self._write_and_close(answer)
        else:
            self.flow.resume_reading()
            self.waiting_since = self.loop.time()

    def pause_writing(self) -> None:
        super().pause_writing()
        self.blocked_since = self.loop.time()

    def resume_writing(self) -> None:
        super().resume_writing()
        self.blocked_since = None

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._downstream.connection_lost()

    def timed_out(self, now: float) -> None:
        """Called by the ticker: enforce the head, keep-alive, body-idle and write timeouts."""
        if self.transport.is_closing():
            return
        limits = self.limits
        since = self.waiting_since
        if since is not None:
            head_timeout = limits.header_timeout or self.timeout_keep_alive
            if self._buf:
                if now - since >= head_timeout:
                    self._refuse(Refusal(408, "header-timeout",
                                         f"no complete request head within {head_timeout} s"))
            elif now - since >= (self.timeout_keep_alive if self._served else head_timeout):
                self.transport.close()  # nothing was sent: close without an answer
            return
        since = self.body_since
        if since is not None and not self.flow.read_paused and now - since >= limits.body_idle_timeout:
            self._refuse(Refusal(408, "body-timeout",
                                 f"the request body stalled for {limits.body_idle_timeout} s"))
            return
        since = self.blocked_since
        if since is not None and now - since >= limits.write_timeout:
            log.debug("cut a client that stopped reading for %s s", limits.write_timeout)
            self._downstream.abort()


_HEAD = 0
_LENGTH = 1
_CHUNKED = 2
_UPGRADING = 3  # a WebSocket handshake head is being handed to httptools
_UPGRADED = 4  # the connection belongs to the WebSocket protocol now


def _incomplete_head_refusal(buf: bytes, limits: HeadLimits) -> Refusal | None:
    """What an incomplete head already breaks, so a client cannot hold memory or a slot with it."""
    line_end = buf.find(b"\n")
    if line_end > limits.max_request_line + 1 or (line_end < 0 and len(buf) > limits.max_request_line):
        return Refusal(414, "request-line-too-long",
                       f"the request line is longer than {limits.max_request_line} bytes")
    if len(buf) > limits.max_request_line + limits.max_header_bytes + 4:
        return Refusal(431, "header-too-large",
                       f"the header section is larger than {limits.max_header_bytes} bytes")
    if buf.count(b"\n") != buf.count(b"\r\n"):
        # A head with bare LFs never ends in CRLF CRLF: refuse now rather than at the timeout.
        return Refusal(400, "bare-line-ending", "the request head holds an LF without a CR")
    return None


class _EdgeTimer:
    """Enforces the per-connection timeouts with one ticker per server instead of a timer each.

    Covers what uvicorn lacks: a first request, or a head trickled byte by byte (slowloris), must
    be complete within `limits.header_timeout`, because the clock only stops when a whole head has
    arrived; an idle keep-alive connection is closed after `server.keepalive_timeout`; a stalled
    body and a client that stopped reading are cut.
    """

    @staticmethod
    def ensure(state: Any, loop: asyncio.AbstractEventLoop, protocol: PeelHttpProtocol) -> None:
        if getattr(state, "peel_edge_timer", False):
            return
        state.peel_edge_timer = True
        limits = protocol.limits
        shortest = min(protocol.timeout_keep_alive, limits.header_timeout or protocol.timeout_keep_alive,
                       limits.body_idle_timeout, limits.write_timeout)
        interval = max(0.05, min(1.0, shortest / 4))
        loop.call_later(interval, _EdgeTimer.tick, state, loop, interval)

    @staticmethod
    def tick(state: Any, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        connections = state.connections
        if not connections:
            state.peel_edge_timer = False  # the next connection starts a new ticker
            return
        now = loop.time()
        for protocol in list(connections):
            timed_out = getattr(protocol, "timed_out", None)
            if timed_out is not None:
                timed_out(now)
        loop.call_later(interval, _EdgeTimer.tick, state, loop, interval)


def _peer(transport: asyncio.Transport, strict: bool, client: tuple[str, int] | None) -> Peer:
    """The one place the peer certificate is read (issue 12 item 11): at connection time."""
    tls = transport.get_extra_info("ssl_object")
    return Peer(peer_identity(tls), mtls=tls is not None, strict=strict,
                address=client[0] if client else "unknown")


def downstream_of(scope: Any) -> Downstream | None:
    """The `Downstream` handle of a request scope, None when not served by `PeelHttpProtocol`."""
    extensions = scope.get("extensions")
    if extensions is None:
        return None
    handle = extensions.get(DOWNSTREAM)
    return handle if isinstance(handle, Downstream) else None


__all__ = ["PeelHttpProtocol", "downstream_of"]
