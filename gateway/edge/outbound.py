"""The outbound listener's connections: `CONNECT` tunnels to an allow-list (`docs/east-west.md`).

    protocol = OutboundProtocol.configured(limits)     # uvicorn's `http` class of the listener
    protocol.tunnels = Tunnels(allow, dialer, counts)

Every other request on the outbound listener is ordinary HTTP, served by the same protocol as every
listener (`PeelHttpProtocol`) and the outbound data plane (`gateway.dataplane.outbound`). `CONNECT`
is not HTTP routing: its target is an authority (`host:port`), which `check_head` refuses on every
other listener. Here a `CONNECT` head is taken before that check, and:

- with no allow-list (`[listeners.outbound] connect_allow` empty): 405 `connect-not-allowed`;
- to a destination the list does not hold (`host:port` exactly, or `*.suffix:port` for a host
  with at least one more label): 403 `connect-refused`;
- otherwise the destination is dialled through the one dial seam (`Dialer.open`, plain TCP: the
  app speaks TLS end to end inside the tunnel), answered `200 Connection Established`, and the two
  connections are relayed byte for byte until either side closes; a destination that cannot be
  reached is answered 502 `upstream-connect-failed`.

Each refusal and each tunnel is counted (`OutboundCounts`). A tunnel leaves the HTTP server's
connection set (its bytes are no HTTP requests: the head and keep-alive timers and the drain's
"idle" test do not apply to it) and is closed when the process stops.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar, cast

from gateway.core.errors import UpstreamError
from gateway.core.settings import LimitsSettings
from gateway.dataplane.outbound import OutboundCounts
from gateway.edge.protocol import PeelHttpProtocol
from gateway.http.framing import Refusal
from gateway.upstream.dial import Dial
from routes.services import Endpoint

log = logging.getLogger("peel.outbound")

CONNECT_TIMEOUT = 10.0


def connect_allowed(host: str, port: int, allow: tuple[str, ...]) -> bool:
    """Whether `CONNECT host:port` is on the allow-list (`host:port` or `*.suffix:port`)."""
    for entry in allow:
        name, _, allowed = entry.rpartition(":")
        if int(allowed) != port:
            continue
        if name.startswith("*."):
            suffix = name[1:]
            if host.endswith(suffix) and len(host) > len(suffix):
                return True
        elif name == host:
            return True
    return False


def parse_connect(line: bytes) -> tuple[str, int] | None:
    """(host, port) of a `CONNECT host:port HTTP/1.x` request line; None when it is not one."""
    parts = line.split(b" ")
    if len(parts) != 3 or parts[0] != b"CONNECT" or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
        return None
    host, sep, port = parts[1].rpartition(b":")
    if not sep or not port.isdigit() or len(port) > 5 or not host:
        return None
    if host.startswith(b"[") and host.endswith(b"]"):
        host = host[1:-1]
    try:
        text = host.decode("ascii").lower()
    except UnicodeDecodeError:
        return None
    number = int(port)
    if not 0 < number <= 65535 or not all(c.isalnum() or c in ".-:" for c in text):
        return None
    return text, number


class Tunnels:
    """The `CONNECT` policy and the open tunnels of one outbound listener."""

    def __init__(self, allow: tuple[str, ...], dialer: Dial, counts: OutboundCounts) -> None:
        self.allow = allow
        self.dialer = dialer
        self.counts = counts
        self.open: set[asyncio.Transport] = set()

    def close(self) -> None:
        for transport in list(self.open):
            transport.abort()


class _Relay(asyncio.Protocol):
    """One side of a tunnel: what it reads goes to `peer`, with flow control both ways."""

    def __init__(self, tunnels: Tunnels) -> None:
        self.tunnels = tunnels
        self.transport: asyncio.Transport | None = None
        self.peer: asyncio.Transport | None = None
        self.pending = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio's subclasses
        self.tunnels.open.add(self.transport)

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self.pending += data  # the upstream spoke before the tunnel was answered
        else:
            self.peer.write(data)

    def eof_received(self) -> bool:
        if self.peer is not None and self.peer.can_write_eof():
            self.peer.write_eof()
            return True  # half-closed: the other direction may still flow
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.tunnels.open.discard(self.transport)
        if self.peer is not None:
            self.peer.close()

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.resume_reading()


class OutboundProtocol(PeelHttpProtocol):
    """`PeelHttpProtocol` that also answers `CONNECT` (see the module docstring)."""

    tunnels: ClassVar[Tunnels | None] = None

    def _take_head(self, buf: bytes) -> bytes:
        if self.tunnels is None or not buf.lstrip(b"\r\n").startswith(b"CONNECT "):
            return super()._take_head(buf)
        buf = buf.lstrip(b"\r\n")
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return super()._take_head(buf)  # keeps it (and enforces the head limits) until complete
        line = buf[:buf.find(b"\r\n")]
        self._tunnel(line, buf[end + 4:])
        return b""

    def _tunnel(self, line: bytes, rest: bytes) -> None:
        tunnels = self.tunnels
        assert tunnels is not None
        counts = tunnels.counts
        target = parse_connect(line)
        cycle: Any = self.cycle
        if self.pipeline or (cycle is not None and not cycle.response_complete):
            refusal = Refusal(400, "bad-request", "CONNECT may not be pipelined behind another request")
        elif target is None:
            refusal = Refusal(400, "bad-request", "not a CONNECT host:port HTTP/1.1 request line")
        elif not tunnels.allow:
            refusal = Refusal(405, "connect-not-allowed", "this outbound listener tunnels no CONNECT "
                              "(listeners.outbound.connect_allow is empty); call services over http://")
        elif not connect_allowed(*target, tunnels.allow):
            refusal = Refusal(403, "connect-refused", f"CONNECT to {target[0]}:{target[1]} is not on "
                              "the allow-list (listeners.outbound.connect_allow)")
        else:
            self._refused = True  # nothing more on this connection is read as HTTP
            self.waiting_since = self.body_since = None
            self.flow.pause_reading()
            self.connections.discard(self)
            counts.tunnel(f"{target[0]}:{target[1]}")
            task = self.loop.create_task(self._open(tunnels, target, rest))
            task.add_done_callback(_log_failure)
            return
        counts.refuse(refusal.code)
        log.info("outbound: refused %s: %s", line[:200].decode("latin-1"), refusal.code)
        self._refuse(refusal)

    async def _open(self, tunnels: Tunnels, target: tuple[str, int], rest: bytes) -> None:
        downstream = self.transport
        host, port = target
        try:
            transport, upstream = await tunnels.dialer.open(
                Endpoint("http", host, port), lambda: _Relay(tunnels), timeout=CONNECT_TIMEOUT)
        except UpstreamError as exc:
            tunnels.counts.refuse("upstream-connect-failed")
            self._refused = False
            self._refuse(Refusal(502, "upstream-connect-failed", f"CONNECT {host}:{port}: {exc}"))
            return
        if downstream.is_closing():
            transport.close()
            return
        down = _Relay(tunnels)
        down.connection_made(downstream)
        down.peer = transport
        upstream.peer = downstream
        downstream.set_protocol(down)
        downstream.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        if upstream.pending:
            downstream.write(upstream.pending)
            upstream.pending = b""
        if rest:
            transport.write(rest)
        downstream.resume_reading()


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("outbound: CONNECT tunnel failed", exc_info=task.exception())


def outbound_protocol(limits: LimitsSettings, tunnels: Tunnels) -> type[OutboundProtocol]:
    """The outbound listener's protocol class: `[limits]` and its `CONNECT` policy."""
    protocol = cast(type[OutboundProtocol], OutboundProtocol.configured(limits))
    protocol.tunnels = tunnels
    return protocol


__all__ = ["OutboundProtocol", "Tunnels", "connect_allowed", "outbound_protocol", "parse_connect"]
