"""Per-endpoint keep-alive pools of upstream HTTP/1.1 connections.

Peel owns this pool because general-purpose clients cost too much on the hot path (httpx's pool
rescans every connection per request, encode/httpcore#1035). A connection is an asyncio Protocol
(no StreamReader/Writer): bytes go straight from `data_received` through `http1.ResponseReader`
into a buffer the proxy drains, and reading pauses while that buffer holds `high_water` bytes, so
a slow downstream slows the upstream instead of filling memory. With response buffering the proxy
raises `high_water` for the exchange and sets `on_done`: an answer that fits is read whole while
the client is still being written to, and the connection goes back to the pool at once.

Idle connections wait in a LIFO deque per endpoint (the most recently used is the least likely to
have been closed by the upstream's keep-alive timer); the oldest are closed when there are more
than `max_idle_per_endpoint` or when idle longer than `upstream_keepalive`. A TLS connection is
not reused once the certificate its upstream presented at the handshake has expired (a renewed
peer, such as another gateway's inbound listener with 1-minute certificates, is then met on a new
connection, which also presents this gateway's current certificate); until then it is, like any
keep-alive connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Final

from gateway.core.errors import ConnectError, ProtocolError, UpstreamTimeout
from gateway.core.settings import ProxySettings
from gateway.core.writes import BatchedWriter
from gateway.http.http1 import ResponseReader
from gateway.upstream.dial import Dial, Dialer
from routes.model import Endpoint

# Response body buffered per connection before reading from the upstream pauses.
HIGH_WATER: Final = 256 * 1024
# A deadline this close is due: the event loop's timers are no finer (uvloop counts milliseconds).
RESOLUTION: Final = 0.001
# Wall-clock time, which certificates' lives are counted in (a test moves it).
_now = time.time


class ExchangeAborted(Exception):
    """The downstream went away, so the upstream exchange was cancelled (nothing to answer)."""


class UpstreamConnection(asyncio.Protocol):
    """One HTTP/1.1 connection to an endpoint, carrying one exchange at a time.

    The proxy calls `begin()`, writes the request (`write_whole` for a whole one; `write` and
    `drain` for a streamed one), waits with `wait()` until `reader.head` is set, then alternates
    `take()` and `wait()` until `reader.done`. Any failure is stored in `error` (and wakes the
    waiter); the connection is then never reused.
    """

    def __init__(self, pool: UpstreamPool, endpoint: Endpoint,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.endpoint = endpoint
        self.reused = False
        self.closed = False
        self.exchanges = 0  # exchanges begun: who holds a connection that may be back in the pool
        self.error: BaseException | None = None
        self.reader: ResponseReader | None = None
        self.body: list[bytes | memoryview] = []  # see ResponseReader.feed for the views
        self.got_bytes = False
        self.idle_since = 0.0
        # unix time the upstream's certificate expires (0: not TLS, or no expiry to read)
        self.trusted_until = 0.0
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self._pool = pool
        self._loop = loop
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self.deadline = 0.0
        self._deadline_for: tuple[asyncio.Future[None], float, str] | None = None
        # bytes of response body buffered before reading pauses (per exchange, see `begin`)
        self.high_water = HIGH_WATER
        # called once when the response is complete (set by a proxy that is not waiting here)
        self.on_done: Callable[[], None] | None = None
        self._out: BatchedWriter = None  # type: ignore[assignment]  # with the transport

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._out = BatchedWriter(self.transport, self._loop)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:  # made after the handshake: the peer's certificate is known
            self.trusted_until = _not_after(ssl_object)

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        if reader is None:
            # Bytes nobody asked for: the connection is out of step, never reuse it.
            self.close()
            return
        self.got_bytes = True
        try:
            body = reader.feed(data)
        except ProtocolError as exc:
            self.fail(exc)
            return
        if body:
            self.body.append(body)
            self._buffered += len(body)
            if self._buffered > self.high_water and not self._reading_paused:
                self._reading_paused = True
                self.transport.pause_reading()
        if reader.head is None:
            return  # half a head: nobody to wake yet
        # The head, or body bytes: the proxy passes them on as they are read, however small the
        # body, so the idle timeout applies between its reads.
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        on_done = self.on_done
        if on_done is not None and reader.done:
            # Last: it may hand the connection back to the pool.
            self.on_done = None
            on_done()

    def eof_received(self) -> bool:
        reader = self.reader
        if reader is not None and self.error is None:
            try:
                reader.feed_eof()
            except ProtocolError as exc:
                self.error = exc
        self.closed = True
        self._wake()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        reader = self.reader
        if reader is None:
            self._pool._forget(self)
        elif not reader.done and self.error is None:
            reason = f" ({exc})" if exc else ""
            self.error = ProtocolError(f"{self.endpoint.url} closed the connection before the "
                                       f"response was complete{reason}")
        self._wake()
        drain = self._drain_waiter
        if drain is not None and not drain.done():
            drain.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drain = self._drain_waiter
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- the exchange ----------------------------------------------------------------------------

    def begin(self, *, head_request: bool, drop: frozenset[bytes] = frozenset()) -> None:
        """Start an exchange: a fresh response reader (`drop`: see `http1.parse_head`)."""
        self.reader = ResponseReader(head_request=head_request, drop=drop)
        self.exchanges += 1
        self.got_bytes = False
        self.high_water = HIGH_WATER
        self.on_done = None

    def holds(self, exchange: int) -> bool:
        """This connection still carries exchange number `exchange` (it was not handed back)."""
        return self.exchanges == exchange and self.reader is not None

    def stale(self) -> bool:
        """A reused connection that the upstream closed before answering a single byte.

        That is the keep-alive race (the upstream's idle timer fired as the request went out); a
        replayable request may then be retried once on a fresh connection.
        """
        return self.reused and self.closed and not self.got_bytes

    def write(self, data: bytes) -> None:
        """Write a part of a request (a streamed body's), at once, after anything held."""
        self._out.write(data)

    def write_whole(self, data: bytes) -> None:
        """Write a whole request: at once when it is the loop iteration's first whole message,
        otherwise at the iteration's end with the others (gateway.core.writes)."""
        self._out.write_whole(data)

    async def drain(self, timeout: float) -> None:
        """Wait while the upstream's socket buffer is full (request body backpressure).

        An upstream that takes nothing for `timeout` seconds fails the exchange (`UpstreamTimeout`).
        """
        while self._write_paused and not self.closed:
            waiter = self._drain_waiter = self._loop.create_future()
            self._arm(waiter, timeout, "request body accepted")
            try:
                await waiter
            finally:
                self._drain_waiter = None
                self._pool._unwatch(self)

    async def wait(self, timeout: float | None, what: str) -> None:
        """Wait until something arrives or the connection fails, at most `timeout` seconds.

        On timeout `error` becomes `UpstreamTimeout` naming `what` and the connection is aborted.
        """
        waiter = self._waiter = self._loop.create_future()
        if timeout is not None:
            self._arm(waiter, timeout, what)
        try:
            await waiter
        finally:
            self._waiter = None
            if timeout is not None:
                self._pool._unwatch(self)

    def _arm(self, waiter: asyncio.Future[None], timeout: float, what: str) -> None:
        # No call_later per wait (2 us with uvloop, more than the rest of the wait): the pool keeps
        # one timer, at the earliest deadline (see UpstreamPool._watch).
        self.deadline = self._loop.time() + timeout
        self._deadline_for = (waiter, timeout, what)
        self._pool._watch(self)

    def expire(self) -> None:
        """The deadline passed (called by the pool's timer)."""
        armed = self._deadline_for
        if armed is not None:
            self._deadline_for = None
            self._timed_out(*armed)

    def take(self) -> bytes:
        """All body bytes received so far (resumes reading when it was paused)."""
        data = self.take_view()
        return data if isinstance(data, bytes) else bytes(data)

    def take_view(self) -> bytes | memoryview:
        """`take`, where a body that came whole in one read is a view of that read, not a copy
        (for a write: see ResponseReader.feed)."""
        body = self.body
        data = body[0] if len(body) == 1 else b"".join(body)
        self.body = []
        self._buffered = 0
        if self._reading_paused:
            self._reading_paused = False
            if not self.closed:
                self.transport.resume_reading()
        return data

    def fail(self, exc: BaseException) -> None:
        """End the exchange with `exc` and drop the connection."""
        if self.error is None:
            self.error = exc
        self.close(abort=True)
        self._wake()

    def abort_exchange(self) -> None:
        """The downstream is gone: cancel whatever the exchange was waiting for."""
        self.fail(ExchangeAborted("the downstream closed the connection"))

    def close(self, *, abort: bool = False) -> None:
        if not self.closed:
            self.closed = True
            if abort:
                self.transport.abort()
            else:
                self.transport.close()

    def wake(self) -> None:
        """Wake whoever waits in `wait()` (the request upload finished: start the head timer)."""
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _timed_out(self, waiter: asyncio.Future[None], timeout: float, what: str) -> None:
        if not waiter.done():
            self.fail(UpstreamTimeout(f"{self.endpoint.url}: no {what} within {timeout:g} s"))
            if not waiter.done():
                waiter.set_result(None)


def _not_after(ssl_object: ssl.SSLObject) -> float:
    """When the verified certificate the peer presented expires (unix time), 0 when unknown."""
    cert = ssl_object.getpeercert()
    value = cert.get("notAfter") if cert else None
    try:
        return float(ssl.cert_time_to_seconds(value)) if isinstance(value, str) else 0.0
    except ValueError:
        return 0.0


class UpstreamPool:
    """Keep-alive connections to every endpoint this worker talks to.

    `take_idle(endpoint)` is synchronous (the hot path: a deque pop); `connect(endpoint)` opens a
    new connection; `release(conn)` hands a connection back after an exchange, which keeps it only
    when the exchange ended cleanly.
    """

    def __init__(self, settings: ProxySettings, *, dialer: Dial | None = None) -> None:
        self._connect_timeout = settings.connect_timeout
        self._keepalive = settings.upstream_keepalive
        self._max_idle = settings.max_idle_per_endpoint
        self._idle: dict[Endpoint, deque[UpstreamConnection]] = {}
        # The one dial seam (TLS per endpoint); the WebSocket proxy and health checks share it.
        self.dialer: Dial = dialer if dialer is not None else Dialer()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False
        # exchanges waiting with a deadline, and the one timer that fires at the earliest of them
        self._watched: set[UpstreamConnection] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def take_idle(self, endpoint: Endpoint) -> UpstreamConnection | None:
        idle = self._idle.get(endpoint)
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            if conn.trusted_until and _now() >= conn.trusted_until:
                conn.close()  # the certificate it was verified with has expired since
                continue
            conn.reused = True
            return conn
        return None

    async def connect(self, endpoint: Endpoint, timeout: float | None = None) -> UpstreamConnection:
        """Open a new connection; `ConnectError` or `UpstreamTimeout` when that fails.

        `timeout`: seconds for this connect (None: the `proxy.connect_timeout` setting).
        """
        if self._closed:
            raise ConnectError("the upstream pool is closed (the worker is stopping)")
        loop = asyncio.get_running_loop()
        limit = self._connect_timeout if timeout is None else timeout
        _, conn = await self.dialer.open(endpoint, lambda: UpstreamConnection(self, endpoint, loop),
                                         timeout=limit)
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        """Return `conn` after an exchange whose request was fully sent.

        From here on it may carry another exchange: `conn.holds(exchange)` tells the caller whether
        it is still its own to close.
        """
        reader = conn.reader
        if (conn.closed or conn.error is not None or reader is None or not reader.done
                or not reader.reusable or conn.body or self._max_idle == 0 or self._closed):
            conn.close()
            return
        conn.reader = None
        loop = conn._loop
        conn.idle_since = loop.time()
        idle = self._idle.get(conn.endpoint)
        if idle is None:
            idle = self._idle[conn.endpoint] = deque()
        if len(idle) >= self._max_idle:
            idle.popleft().close()
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = loop.call_later(self._sweep_every(), self._sweep, loop)

    def idle_count(self, endpoint: Endpoint) -> int:
        idle = self._idle.get(endpoint)
        return len(idle) if idle else 0

    async def close(self) -> None:
        """Close every idle connection; exchanges in flight finish on their own."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._timer is not None and not self._watched:
            self._timer.cancel()
            self._timer = None
        for idle in self._idle.values():
            while idle:
                idle.pop().close()
        self._idle.clear()

    def _watch(self, conn: UpstreamConnection) -> None:
        """Fire `conn.expire()` at `conn.deadline` unless `_unwatch` comes first.

        One timer for all exchanges, set at the earliest deadline: a new wait moves it only when it
        ends sooner (most waits end later, so arming costs a set insertion), and a wait that ends
        before its deadline leaves it alone (`_expire` then finds nothing due and moves on).
        """
        self._watched.add(conn)
        timer = self._timer
        if timer is None or conn.deadline < self._timer_at:
            if timer is not None:
                timer.cancel()
            self._timer_at = conn.deadline
            self._timer = conn._loop.call_at(conn.deadline, self._expire, conn._loop)

    def _unwatch(self, conn: UpstreamConnection) -> None:
        self._watched.discard(conn)
        conn._deadline_for = None

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fire the deadlines that passed, then set the timer at the next one.

        Deadlines fire on time, within the loop's timer resolution (`RESOLUTION`).
        """
        self._timer = None
        due = loop.time() + RESOLUTION
        for conn in [c for c in self._watched if c.deadline <= due]:
            self._watched.discard(conn)
            conn.expire()
        if self._watched:
            self._timer_at = min(c.deadline for c in self._watched)
            self._timer = loop.call_at(self._timer_at, self._expire, loop)

    def _forget(self, conn: UpstreamConnection) -> None:
        idle = self._idle.get(conn.endpoint)
        if idle is not None:
            with contextlib.suppress(ValueError):
                idle.remove(conn)

    def _sweep_every(self) -> float:
        return min(max(self._keepalive / 2, 0.05), 5.0)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweeper = None
        deadline = loop.time() - self._keepalive
        remaining = 0
        for endpoint in list(self._idle):
            idle = self._idle[endpoint]
            # Released connections are appended, so the oldest idle ones sit on the left.
            while idle and idle[0].idle_since <= deadline:
                idle.popleft().close()
            if idle:
                remaining += len(idle)
            else:
                del self._idle[endpoint]
        if remaining and not self._closed:
            self._sweeper = loop.call_later(self._sweep_every(), self._sweep, loop)


__all__ = ["HIGH_WATER", "ExchangeAborted", "UpstreamConnection", "UpstreamPool"]
