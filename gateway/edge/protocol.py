"""Peel's HTTP/1.1 protocol for every listener: the request head parsed and checked in one pass.

uvicorn's server runs it (the same constructor as uvicorn's protocols, `shutdown()`, the server's
`connections` and `tasks`), but the connection is Peel's own, for speed and for the edge rules:

1. One parse. `gateway.http.framing.check_head` checks the complete head against Peel's framing
   rules and limits and returns what the request is (method, target, version, headers lower-cased,
   framing, keep-alive); the body is framed by its Content-Length or decoded by a `ChunkedBody`.
   No second HTTP parser reads the bytes, and no Python callback runs per header.
2. The raw request target in `scope["extensions"]["peel.target"]`: an absolute-form target
   (`GET http://elsewhere/ HTTP/1.1`, the open-proxy probe) must not look like an origin-form one.
3. A `Downstream` handle in `scope["extensions"]["peel.downstream"]`: it calls back when the
   connection is lost (so the upstream exchange is cancelled at once) and can abort the connection
   when a response must be cut short.
4. A `ResponseCycle` per request (gateway.edge.cycle): ASGI's receive/send without uvicorn's
   per-header pattern checks, and a `CoalescingWriter` in front of the transport, so a response
   head and a small body leave in one system call instead of two.
5. Timeouts from one ticker per server: a complete request head within the header timeout
   (new, idle between requests, or trickled byte by byte), an idle keep-alive connection closed, a
   stalled body and a client that stopped reading cut.
6. On the inbound listener, the peer (`scope["extensions"]["peel.peer"]`, a `Peer`): the SPIFFE ID
   of the client certificate, read from the TLS object once per connection; None elsewhere.
7. WebSocket upgrades: `check_head` strips every `Upgrade` offer; when the listener runs a
   WebSocket protocol (`ws_protocol_class`) and `gateway.dataplane.websocket_rules.websocket_offer`
   finds a complete opening handshake, the connection is handed to uvicorn's WebSocket protocol
   with its head, names lower-cased (the app then gets a `websocket` scope; whether the route allows it is
   the app's decision). Plain requests never take this path.
8. Pipelining: a request whose head arrives while the one before is answered waits, reading
   paused, and starts when that response is complete; a refusal waits likewise, then closes.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, ClassVar, Final, cast
from urllib.parse import unquote

import httptools
from mypy_extensions import mypyc_attr
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT, FlowControl
from uvicorn.protocols.utils import get_local_addr, get_remote_addr, is_ssl
from uvicorn.server import ServerState

from gateway.core.asgi import DOWNSTREAM, PEER, RESPOND, TARGET, Downstream, Peer
from gateway.core.settings import LimitsSettings
from gateway.core.writes import BatchedWriter
from gateway.dataplane.websocket_rules import websocket_offer
from gateway.edge.cycle import ResponseCycle
from gateway.http.framing import (
    CHUNKED,
    LENGTH,
    NO_BODY,
    ChunkedBody,
    Head,
    HeadLimits,
    Refusal,
    check_head,
    refusal_response,
)
from gateway.identity.bundle import peer_identity

log: Final = logging.getLogger("peel.edge")


class CoalescingWriter(BatchedWriter):
    """Stands in for the transport in the request cycles: fewer writes, fewer wake-ups.

    An ASGI response is a head and a body sent separately, each a `send()` system call; for the
    small answers that dominate gateway traffic that is a third of the data plane's CPU. This
    writer holds a small write until the next one (then both go out in one call) or until the end
    of the current loop iteration, whichever comes first. `write_whole` is for a write that is
    complete in itself (a whole response): after anything held, it goes out at once when it is the
    iteration's first, and otherwise at the iteration's end with the others (gateway.core.writes).
    Order is always kept; nothing waits longer than one iteration.
    """

    __slots__ = ()

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None and self._held_body is not None:
            self.flush()  # a whole message with a large body: out first, as it is
            held = None
        if held is None:
            if len(data) >= _HOLD_BELOW:
                self._transport.write(data)
                return
            self._held = data
            self._batch.hold(self)
            return
        self._held = None
        if len(data) < _JOIN_BELOW:
            self._transport.write(held + data)
        else:
            self._transport.writelines((held, data))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


# A write this large goes out at once (nothing to gain by waiting); two writes whose sum is below
# _JOIN_BELOW are joined (a copy is cheaper than a vectored write for small buffers).
_HOLD_BELOW: Final = 16 * 1024
_JOIN_BELOW: Final = 64 * 1024


@mypyc_attr(allow_interpreted_subclasses=True)  # `configured()` subclasses it per listener
class PeelHttpProtocol(asyncio.Protocol):
    """The HTTP/1.1 protocol Peel's listeners run (pass `configured(limits)` as uvicorn's `http`).

    Peel's own, with uvicorn's constructor (`config=, server_state=, app_state=`), so uvicorn's
    server runs it, drains it (`shutdown()`, `server_state.connections` and `tasks`) and hands it a
    WebSocket protocol class. Every request head is parsed and checked in one pass by
    `gateway.http.framing.check_head`, which gives the method, target, version, header list,
    framing and keep-alive; the body is framed by its Content-Length or decoded by a
    `ChunkedBody`; no second parser reads the bytes. Each request gets a `ResponseCycle`
    (gateway.edge.cycle), run by the connection's task (`_run`); a pipelined request waits, read
    paused, until the response before it is complete.
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

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        if not config.loaded:
            config.load()
        self.config = config
        self.app = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self.ws_protocol_class = config.ws_protocol_class
        self.app_state = app_state
        # a float where Peel sets it (uvicorn's annotation says int; compiled code checks)
        self.timeout_keep_alive: float = cast(Any, config).timeout_keep_alive
        self.server_state = server_state
        self.connections = server_state.connections
        self.tasks = server_state.tasks
        # per connection
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.flow: FlowControl = None  # type: ignore[assignment]
        self.server: tuple[str, int | None] | None = None
        self.client: tuple[str, int] | None = None
        self.scheme = "http"
        self.pipeline: deque[ResponseCycle] = deque()  # requests waiting, newest first
        self.cycle: ResponseCycle | None = None  # the newest request (its body is being read)
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
        # The connection's task waiting for its next request (`_serve`), and that task
        self._idle: asyncio.Future[ResponseCycle | None] | None = None
        self._idle_task: asyncio.Task[Any] | None = None
        # Since when this connection waits for a complete request head (None while a request is
        # served), since when its body is being read, since when a write is blocked: see _EdgeTimer.
        self.waiting_since: float | None = None
        self.body_since: float | None = None
        self.blocked_since: float | None = None

    # -- the connection ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        self.connections.add(self)  # type: ignore[arg-type]
        self.transport = transport
        self.flow = FlowControl(transport)
        self.server = get_local_addr(transport)
        self.client = get_remote_addr(transport)
        self.scheme = "https" if is_ssl(transport) else "http"
        if self.inbound_strict is not None:
            self._peer = _peer(transport, self.inbound_strict, self.client)
        self._writer = CoalescingWriter(transport, self.loop)
        self.waiting_since = self.loop.time()
        _EdgeTimer.ensure(self.server_state, self.loop, self)
        limit = self.limits.max_connections
        if limit and len(self.connections) > limit:
            self._refuse(Refusal(503, "too-many-connections",
                                 f"this listener serves at most {limit} connections at once"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        self._end_idle()
        cycle = self.cycle
        if cycle is not None:
            if not cycle.response_complete:
                cycle.disconnected = True
            cycle.message_event.set()
        for waiting in self.pipeline:
            waiting.disconnected = True
        if self.flow is not None:
            self.flow.resume_writing()
        if exc is None:
            self.transport.close()
        self._downstream.connection_lost()

    def eof_received(self) -> None:
        return None  # the transport closes: a half-closed client gets its answers no further

    def pause_writing(self) -> None:
        self.flow.pause_writing()
        self.blocked_since = self.loop.time()

    def resume_writing(self) -> None:
        self.flow.resume_writing()
        self.blocked_since = None

    def shutdown(self) -> None:
        """The server drains: close an idle connection now, end a busy one after its response."""
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            if self._writer is not None:
                self._writer.close()  # a response held to the end of this iteration goes first
            else:
                self.transport.close()
        else:
            cycle.keep_alive = False

    def _abort_connection(self) -> None:
        """`Downstream.abort`: reset the connection on purpose."""
        cycle = self.cycle
        if cycle is not None:
            cycle.disconnected = True  # cut on purpose: not "returned without completing"
        if self.transport is not None:
            self.transport.abort()

    # -- reading requests -------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._refused or self._state == _UPGRADED:
            return  # after a refusal nothing on this connection is read as a request
        if self._buf:
            data, self._buf = self._buf + data, b""
        while data and not self._refused:
            state = self._state
            if state == _LENGTH:
                take = min(self._left, len(data))
                self._body(data if take == len(data) else data[:take])
                data = data[take:]
                self._left -= take
                self._body_progress(self._left == 0)
            elif state == _CHUNKED:
                chunked = self._chunked
                assert chunked is not None
                spans: list[tuple[int, int]] = []
                try:
                    used = chunked.feed(data, spans)
                except Refusal as refusal:
                    self._refuse(refusal)
                    return
                for start, end in spans:
                    self._body(data[start:end])
                data = data[used:]
                self._body_progress(chunked.done)
            else:
                data = self._take_head(data)
                if self._state == _UPGRADED:
                    return

    def _body(self, data: bytes) -> None:
        """Bytes of the current request's body, for its app (dropped once it has answered)."""
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not data:
            return
        cycle.body += data
        if len(cycle.body) > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.message_event.set()

    def _body_progress(self, done: bool) -> None:
        if done:
            self._state = _HEAD
            self._chunked = None
            self.body_since = None
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                cycle.more_body = False
                cycle.message_event.set()
        else:
            self.body_since = self.loop.time()

    def _take_head(self, buf: bytes) -> bytes:
        """Check and start the request whose head is at the start of `buf`; return the bytes after it.

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
        block = buf[:end + 4]
        try:
            head = check_head(block, self.head_limits)
        except Refusal as refusal:
            self._refuse(refusal)
            return b""
        if head.upgrade_stripped and self.ws_protocol_class is not None and websocket_offer(block, head):
            cycle = self.cycle
            if self.pipeline or (cycle is not None and not cycle.response_complete):
                # The switch would interleave with a response still being written.
                self._refuse(Refusal(400, "bad-request",
                                     "a WebSocket handshake may not be pipelined behind another request"))
                return b""
            self._upgrade(block, buf[end + 4:])
            return b""
        self.waiting_since = None
        self._start(head)
        if head.framing == LENGTH:
            self._state, self._left = _LENGTH, head.length
            self.body_since = self.loop.time()
        elif head.framing == CHUNKED:
            self._state, self._chunked = _CHUNKED, ChunkedBody(self.head_limits.max_body)
            self.body_since = self.loop.time()
        return buf[end + 4:]

    def _start(self, head: Head) -> None:
        """A checked head: the request's scope and cycle, and its run (or its place in line)."""
        target = head.target
        if target[:1] == b"/" and b"?" not in target:
            raw_path, query = target, b""  # the common origin-form target: nothing to split
        else:
            try:
                # Any: httptools's stubs say bytes, but a part the URL lacks is None
                parsed: Any = httptools.parse_url(target)
            except httptools.HttpParserInvalidURLError:
                raw_path, query = b"/", b""  # `*` (OPTIONS): nothing routes it; the app answers
            else:
                raw_path, query = parsed.path or b"/", parsed.query or b""
        path = raw_path.decode("ascii")
        major, minor = head.version
        scope: Any = {
            "type": "http",
            "asgi": _ASGI,
            "http_version": "1.1" if minor == 1 else f"{major}.{minor}",
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "root_path": "",
            "headers": head.headers,
            "state": self.app_state.copy() if self.app_state else {},
            "method": head.method.decode("ascii"),
            "path": unquote(path) if "%" in path else path,
            "raw_path": raw_path,
            "query_string": query,
            # the raw target (absolute-form included) for the resolve step, the Downstream handle,
            # the inbound listener's peer
            "extensions": {TARGET: target, DOWNSTREAM: self._downstream, PEER: self._peer},
        }
        cycle = ResponseCycle(scope, self._writer, self.flow, self.server_state.default_headers,
                              head.expect_continue, head.keep_alive, self._response_complete)
        scope["extensions"][RESPOND] = cycle.respond
        if head.framing == NO_BODY:
            cycle.more_body = False
            cycle.message_event.set()  # the whole request is in: `receive()` answers at once
        previous = self.cycle
        self.cycle = cycle
        if previous is None or previous.response_complete:
            self._run(cycle)
        else:
            # Pipelined: waits for the response in flight; reading pauses meanwhile.
            self.flow.pause_reading()
            self.pipeline.appendleft(cycle)

    def _run(self, cycle: ResponseCycle) -> None:
        """Run the app on `cycle`: in the connection's task when it waits for its next request,
        otherwise (the connection's first request, or one that starts while the task still
        finishes the one before) in a new task.

        A task per request cost about 3 % of a request's CPU at saturation (`perf`: its creation,
        its registration in asyncio's `WeakSet` of tasks, interpreted, its done callback and its
        deallocation); a keep-alive connection's requests now share one, woken by a future. The
        server's `tasks` hold only the tasks running a request: uvicorn's drain waits for those,
        and an idle one ends when its connection closes (`_end_idle`).
        """
        if self._wake(cycle):
            return
        task = self.loop.create_task(self._serve(cycle))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    async def _serve(self, cycle: ResponseCycle | None) -> None:
        """The app on `cycle`, then on each next request of this connection that finds this task
        waiting; returns when the connection will serve no more, or another task already waits.
        While it waits it holds no request's objects, and itself only through `_idle_task` (no
        reference cycle of the task and its coroutine is left when it ends)."""
        while cycle is not None:
            await cycle.run_asgi(self.app)
            if not cycle.keep_alive or self._idle is not None or self.transport.is_closing():
                return
            cycle = None
            task = asyncio.current_task(self.loop)
            if task is None or task.cancelling():
                return  # cancelled (the app's cycle caught it): end as asked
            waiting = self._wait_for_next(task)
            task = None
            cycle = await waiting

    def _wait_for_next(self, task: asyncio.Task[Any]) -> asyncio.Future[ResponseCycle | None]:
        """`task` (running `_serve`) waits for this connection's next request, out of the server's
        tasks until it has one: the future it gets it from (or None, when the connection ends)."""
        waiter: asyncio.Future[ResponseCycle | None] = self.loop.create_future()
        self._idle, self._idle_task = waiter, task
        self.tasks.discard(task)
        return waiter

    def _end_idle(self) -> None:
        """The connection will serve no more requests: its waiting task, if any, ends."""
        self._wake(None)

    def _wake(self, cycle: ResponseCycle | None) -> bool:
        """Hand the waiting task (if any) `cycle` to run, back among the server's tasks, or None
        to end; whether there was one to wake (not when it was cancelled while it waited)."""
        idle, task = self._idle, self._idle_task
        if idle is None:
            return False
        self._idle = self._idle_task = None
        if idle.done():
            return False
        if cycle is not None and task is not None:
            self.tasks.add(task)
        idle.set_result(cycle)
        return True

    def _upgrade(self, block: bytes, rest: bytes) -> None:
        """Hand the connection to uvicorn's WebSocket protocol with the handshake's head (it answers
        the handshake itself, once the app accepts)."""
        if self._writer is not None:
            self._writer.flush()  # bytes of an earlier response go out before the 101
        self._state = _UPGRADED
        self.waiting_since = self.body_since = None
        self.connections.discard(self)
        self._end_idle()
        assert self.ws_protocol_class is not None
        protocol: Any = self.ws_protocol_class(config=self.config,  # type: ignore[call-arg]
                                               server_state=self.server_state, app_state=self.app_state)
        protocol.connection_made(self.transport)
        self.transport.set_protocol(protocol)
        # as uvicorn hands it over: names lower-cased (the WebSocket scope's headers are ASGI's)
        lines = block[:-4].split(b"\r\n")
        fields = (name.lower() + b": " + value.strip(b" \t")
                  for name, _, value in (line.partition(b":") for line in lines[1:]))
        protocol.data_received(b"\r\n".join((lines[0], *fields)) + b"\r\n\r\n")
        if self._peer is not None:
            # The WebSocket protocol parsed the handshake and made its scope (its app task has not
            # run yet): the inbound listener's peer goes into it as into an HTTP scope's.
            scope = getattr(protocol, "scope", None)
            if scope is not None:
                scope["extensions"][PEER] = self._peer
        if rest:  # frames right behind the handshake belong to the new protocol
            protocol.data_received(rest)

    # -- answering --------------------------------------------------------------------------------

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

    def _response_complete(self) -> None:
        """A response is complete (called by its cycle): start the next request, or wait for one.

        The keep-alive wait is timed by _EdgeTimer, not by a timer per response.
        """
        self.server_state.total_requests += 1
        self._served += 1
        if self.transport.is_closing():
            return
        if self.pipeline:
            self.flow.resume_reading()
            self._run(self.pipeline.pop())
        elif self._pending is not None:
            answer, self._pending = self._pending, None
            self._write_and_close(answer)
        else:
            self.flow.resume_reading()
            self.waiting_since = self.loop.time()

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


_ASGI: Final[Any] = {"version": "3.0", "spec_version": "2.3"}  # the same in every scope
_HEAD: Final = 0
_LENGTH: Final = 1
_CHUNKED: Final = 2
_UPGRADED: Final = 3  # the connection belongs to the WebSocket protocol now


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
