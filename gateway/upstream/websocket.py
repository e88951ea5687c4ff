"""The upstream leg of a proxied WebSocket: websockets' sans-I/O client protocol on an asyncio transport.

Peel writes the opening handshake itself (so the upstream sees exactly the headers the route's
rules make, the way a proxied HTTP request does) and lets `websockets.client.ClientProtocol`
check the answer (`Sec-WebSocket-Accept`, the subprotocol, no extension) and parse the frames.

Flow control both ways, with a bounded amount buffered:

- reading stops while one complete message waits for the downstream to take it (`recv`), so a
  fast upstream and a slow client hold at most one message plus the socket buffers here;
- `send` waits while the transport's write buffer is above its high-water mark.

Pings: the upstream's pings are answered by the protocol; Peel pings the upstream every
`ping_interval` seconds and fails the connection (1011) when no pong comes within `ping_timeout`,
which also ends a link to an upstream that stopped reading.
"""

from __future__ import annotations

import asyncio
import random
import struct
from collections import deque
from typing import cast

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from gateway.core.errors import ProtocolError, UpstreamReset, UpstreamTimeout
from gateway.upstream.dial import Dial
from routes.model import Endpoint

# After Peel sent or answered a close frame, how long the upstream has to close the TCP connection.
CLOSE_TIMEOUT = 10.0


class UpstreamSocket(asyncio.Protocol):
    """One upstream WebSocket connection; open it with `UpstreamSocket.open`.

    After `open`, `response` is the upstream's answer to the handshake: `accepted` tells whether
    it switched protocols (`subprotocol` is then what it chose). A refusal's response carries the
    status, headers and body to relay downstream.
    """

    def __init__(self, protocol: ClientProtocol, loop: asyncio.AbstractEventLoop,
                 ping_interval: float | None, ping_timeout: float | None) -> None:
        self._ws = protocol
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._messages: deque[str | bytes] = deque()
        self._fragments: list[bytes] = []
        self._text = False
        self._changed = asyncio.Event()  # a message, a response, the end: wakes `recv` and `open`
        self._writable = asyncio.Event()
        self._writable.set()
        self._read_paused = False
        self._lost = asyncio.Event()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._ping_payload: bytes | None = None
        self.response: Response | None = None
        # Why Peel failed the connection itself (bad UTF-8, no pong).
        self._failure: str | None = None
        # Payload bytes of the messages relayed each way (for the access log).
        self.sent_bytes = 0
        self.received_bytes = 0

    @classmethod
    async def open(cls, endpoint: Endpoint, head: bytes, key: str, subprotocols: list[str], *,
                   max_size: int, connect_timeout: float, response_timeout: float,
                   ping_interval: float | None, ping_timeout: float | None,
                   dialer: Dial) -> UpstreamSocket:
        """Connect to `endpoint`, send the handshake `head` (made with `key`) and read the answer.

        `dialer` opens the connection (the pool's, so TLS is chosen as for requests).

        Raises `ConnectError` / `UpstreamTimeout` when the endpoint cannot be reached or does not
        answer in time, `ProtocolError` when its answer is not a valid handshake response. A
        non-101 answer is returned, not raised (`accepted` is False).
        """
        loop = asyncio.get_running_loop()
        scheme = "wss" if endpoint.scheme == "https" else "ws"
        host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
        protocol = ClientProtocol(parse_uri(f"{scheme}://{host}:{endpoint.port}/"),
                                  subprotocols=[Subprotocol(p) for p in subprotocols] or None,
                                  max_size=max_size)
        protocol.key = key  # the key of `head`: the answer's Sec-WebSocket-Accept is checked against it
        _, link = await dialer.open(endpoint, lambda: cls(protocol, loop, ping_interval, ping_timeout),
                                    timeout=connect_timeout)
        try:
            link._write(head)
            async with asyncio.timeout(response_timeout):
                while link.response is None and protocol.handshake_exc is None and not link.lost:
                    link._changed.clear()
                    await link._changed.wait()
        except TimeoutError as exc:
            link.abort()
            raise UpstreamTimeout(f"{endpoint.url}: no handshake response within "
                                  f"{response_timeout:g} s") from exc
        except BaseException:
            link.abort()
            raise
        failure = protocol.handshake_exc
        if isinstance(failure, InvalidStatus):
            link.response = failure.response
            link.abort()
            return link
        if failure is not None or link.response is None:
            link.abort()
            if failure is None:
                raise UpstreamReset(f"{endpoint.url} closed the connection before a handshake response")
            raise ProtocolError(f"{endpoint.url}: not a WebSocket handshake response ({failure})")
        link._schedule_ping()
        return link

    # -- what the proxy calls --------------------------------------------------------------------

    @property
    def accepted(self) -> bool:
        return self.response is not None and self.response.status_code == 101

    @property
    def subprotocol(self) -> str | None:
        return self._ws.subprotocol

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    @property
    def close_received(self) -> tuple[int, str] | None:
        """The upstream's close frame (code, reason); None when it sent none."""
        close = self._ws.close_rcvd
        return None if close is None else (int(close.code), close.reason)

    @property
    def failure(self) -> str | None:
        """Why Peel ended the link itself, when it did (a close frame it sent, unanswered)."""
        if self._failure is not None:
            return self._failure
        sent, received = self._ws.close_sent, self._ws.close_rcvd
        if sent is not None and received is None:
            # The protocol failed the connection: a message over max_size, a protocol error.
            return sent.reason or f"closed with {sent.code}"
        return None

    async def recv(self) -> str | bytes | None:
        """The next message from the upstream; None once it closed (see `close_received`)."""
        while not self._messages:
            if self.lost or self._ws.close_rcvd is not None or self._ws.state is not State.OPEN:
                return None
            self._changed.clear()
            await self._changed.wait()
        message = self._messages.popleft()
        if self._read_paused and self._transport is not None:
            self._read_paused = False
            self._transport.resume_reading()
        return message

    async def send(self, message: str | bytes) -> bool:
        """Send one message, after the write buffer drained; False when the link is closing."""
        while not self._writable.is_set():
            await self._writable.wait()
        if self.lost or self._ws.state is not State.OPEN:
            return False
        data = message.encode("utf-8") if isinstance(message, str) else message
        if isinstance(message, str):
            self._ws.send_text(data)
        else:
            self._ws.send_binary(data)
        self.sent_bytes += len(data)
        self._flush()
        return True

    def close(self, code: int | None, reason: str = "") -> None:
        """Start the closing handshake (`code` None: a close frame without a code)."""
        if self.lost or self._ws.state is not State.OPEN:
            return
        self._ws.send_close(code, reason)
        self._flush()

    async def wait_closed(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Wait for the upstream to close the connection; cut it after `timeout` seconds."""
        try:
            async with asyncio.timeout(timeout):
                await self._lost.wait()
        except TimeoutError:
            self.abort()

    def abort(self) -> None:
        self._cancel_timers()
        if self._transport is not None and not self.lost:
            self._transport.abort()

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio subclasses

    def data_received(self, data: bytes) -> None:
        self._ws.receive_data(data)
        self._take_events()
        self._flush()  # pongs, the echo of a close frame, a close after a protocol error

    def eof_received(self) -> bool:
        self._ws.receive_eof()
        self._take_events()
        self._flush()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._ws.receive_eof()  # idempotent: the protocol's state becomes CLOSED
        self._cancel_timers()
        self._lost.set()
        self._writable.set()  # a send waiting for the buffer to drain must not wait forever
        self._changed.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # -- internals -------------------------------------------------------------------------------

    def _take_events(self) -> None:
        for event in self._ws.events_received():
            if isinstance(event, Response):
                self.response = event
            elif isinstance(event, Frame):
                self._take_frame(event)
        if self._messages and not self._read_paused and self._transport is not None:
            # One message waits for the downstream: read no more until it is taken.
            self._read_paused = True
            self._transport.pause_reading()
        self._changed.set()

    def _take_frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            self._text = opcode is Opcode.TEXT
            self._fragments = [bytes(frame.data)]
        elif opcode is Opcode.CONT:
            self._fragments.append(bytes(frame.data))
        else:
            if opcode is Opcode.PONG and self._ping_payload is not None \
                    and bytes(frame.data) == self._ping_payload:
                self._ping_payload = None
                self._cancel_timer("pong")
                self._schedule_ping()
            return  # pings are answered and closes echoed by the protocol itself
        if not frame.fin:
            return  # the protocol enforces max_size over all the fragments of a message
        data = self._fragments[0] if len(self._fragments) == 1 else b"".join(self._fragments)
        self._fragments = []
        self.received_bytes += len(data)
        if not self._text:
            self._messages.append(data)
            return
        try:
            self._messages.append(data.decode("utf-8"))
        except UnicodeDecodeError:
            self._fail(1007, "the upstream sent a text message that is not UTF-8")

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _flush(self) -> None:
        transport = self._transport
        if transport is None:
            return
        for data in self._ws.data_to_send():
            if data:
                self._write(data)
            elif transport.can_write_eof() and not transport.is_closing():
                transport.write_eof()
        if self._ws.close_expected() and "close" not in self._timers and not self.lost:
            self._timers["close"] = self._loop.call_later(CLOSE_TIMEOUT, self.abort)

    def _fail(self, code: int, reason: str) -> None:
        self._failure = reason
        self._ws.fail(code, reason)
        self._flush()

    def _schedule_ping(self) -> None:
        interval = self._ping_interval
        if interval and not self.lost:
            self._timers["ping"] = self._loop.call_later(interval, self._ping)

    def _ping(self) -> None:
        self._timers.pop("ping", None)
        if self.lost or self._ws.state is not State.OPEN:
            return
        self._ping_payload = struct.pack("!I", random.getrandbits(32))
        self._ws.send_ping(self._ping_payload)
        self._flush()
        if self._ping_timeout:
            self._timers["pong"] = self._loop.call_later(self._ping_timeout, self._pong_missing)
        else:
            self._schedule_ping()

    def _pong_missing(self) -> None:
        self._timers.pop("pong", None)
        self._fail(1011, "keepalive ping timeout")
        self.abort()

    def _cancel_timer(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()

    def _cancel_timers(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()


__all__ = ["CLOSE_TIMEOUT", "UpstreamSocket"]
