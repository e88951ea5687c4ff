"""One request and its response on a connection of `PeelHttpProtocol`: Peel's own request cycle.

uvicorn's `RequestResponseCycle` does per response what a gateway cannot afford on every request:
two regular-expression searches per header, a copy of the header list, a lower-cased copy of each
name, an f-string access-log check, and a `drain()` check before every write. Profiling `make bench`
put it at about a tenth of a worker's CPU (bench/profile.py). `ResponseCycle` is the same contract
(ASGI's `receive`/`send`, the attributes uvicorn's protocol reads: `body`, `more_body`,
`message_event`, `response_started`, `response_complete`, `keep_alive`, `disconnected`,
`on_response`) written for the cost:

- the response head is joined in one pass; header names are taken as the app gives them (the data
  plane passes names lower-cased, as ASGI asks) and the framing headers are found by one comparison
  each;
- instead of matching every name and value against a pattern, the joined head must hold exactly one
  CR and one LF per line: a CR or LF smuggled into a name or a value (response splitting) fails it,
  with the same `RuntimeError` uvicorn raises, and nothing is written;
- the status line comes from a table built once;
- `send` only awaits when the transport asked to pause writing.

What is kept as uvicorn does it: `100 Continue` on the first `receive()`, `Connection: close` when
the connection will not be kept, chunked framing when the app gives no length, HEAD and 204/304
without a body, a length mismatch raising, the connection closed after a response when keep-alive
is off, `http.disconnect` once the client is gone or the response is complete.
"""

from __future__ import annotations

import asyncio
import http
import logging
from collections.abc import Callable
from typing import Any, Final

from gateway.core.asgi import RESPOND
from gateway.core.writes import APART_FROM, BatchedWriter

log: Final = logging.getLogger("peel.edge")


def _status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase.encode()
    except ValueError:
        phrase = b""
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase)


STATUS_LINES: Final[dict[int, bytes]] = {status: _status_line(status) for status in range(100, 600)}

_INTERNAL_ERROR: Final = (b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain; charset=utf-8\r\n"
                   b"content-length: 21\r\nconnection: close\r\n\r\nInternal Server Error")
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_LAST_CHUNK: Final = b"0\r\n\r\n"


class Signal:
    """`asyncio.Event` as a request cycle uses it (`set`, `clear`, `is_set`, `wait`), compiled.

    `asyncio.Event` is interpreted Python: its creation and two `set()`s were about 1 % of a
    request's CPU at saturation (`bench/run.py --profile`), for a body that a bodiless request never
    waits for. This one makes its future only when a `wait()` has to wait.
    """

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        waiters = self._waiters
        if waiters is not None:
            self._waiters = None
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        if self._set:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = [waiter]
        else:
            self._waiters.append(waiter)
        try:
            await waiter
        finally:
            self._forget(waiter)

    def _forget(self, waiter: asyncio.Future[None]) -> None:
        # apart from `wait`: there mypy takes `_waiters` for the list it just made through the
        # `await`, and compiled, that is checked (`set()` has made it None since)
        waiters = self._waiters
        if waiters is not None and waiter in waiters:
            waiters.remove(waiter)


class ResponseCycle:
    """One request on a connection: its body as it arrives, and its response as the app sends it."""

    __slots__ = ("body", "chunked", "default_headers", "disconnected", "flow", "head_only", "keep_alive",
                 "length", "message_event", "more_body", "on_response", "response_complete",
                 "response_started", "scope", "transport", "waiting_for_100_continue", "write_whole")

    def __init__(self, scope: Any, transport: Any, flow: Any, default_headers: list[tuple[bytes, bytes]],
                 expect_100_continue: bool, keep_alive: bool, on_response: Callable[[], None]) -> None:
        self.scope = scope
        self.transport = transport
        # a whole response: the coalescing writer's `write_whole` (at once, or with the loop
        # iteration's others at its end: gateway.core.writes); a plain transport's `write`
        self.write_whole: Callable[[bytes], None] = getattr(transport, "write_whole", transport.write)
        self.flow = flow
        self.default_headers = default_headers
        self.message_event = Signal()
        self.on_response = on_response
        self.disconnected = False
        self.keep_alive = keep_alive
        self.waiting_for_100_continue = expect_100_continue
        self.body = bytearray()
        self.more_body = True
        self.response_started = False
        self.response_complete = False
        self.chunked = False
        self.length = 0  # body bytes still due under a Content-Length
        self.head_only = scope["method"] == "HEAD"

    async def run_asgi(self, app: Any) -> None:
        """Run the app for this request (the name uvicorn's protocol calls it by)."""
        try:
            result = await app(self.scope, self.receive, self.send)
        except BaseException:
            log.exception("exception in the request handler")
            if not self.response_started:
                self._write_internal_error()
            else:
                self.transport.close()
        else:
            if result is not None:
                log.error("the request handler returned %r instead of None", result)
                self.transport.close()
            elif not self.response_started and not self.disconnected:
                log.error("the request handler returned without starting a response")
                self._write_internal_error()
            elif not self.response_complete and not self.disconnected:
                log.error("the request handler returned without completing its response")
                self.transport.close()
        finally:
            self.on_response = _nothing
            # the scope holds this cycle's `respond` (`gateway.edge.protocol`): a reference cycle,
            # broken here so that a request leaves no garbage for the cyclic collector, whose
            # passes would otherwise run every few hundred requests
            extensions = self.scope.get("extensions")
            if extensions is not None:
                extensions.pop(RESPOND, None)

    def _write_internal_error(self) -> None:
        self.response_started = self.response_complete = True
        if not self.disconnected and not self.transport.is_closing():
            self.transport.write(_INTERNAL_ERROR)
            self.transport.close()

    async def send(self, message: Any) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        if not self.response_started:
            if message["type"] != "http.response.start":
                raise RuntimeError(f"expected 'http.response.start', got {message['type']!r}")
            self.transport.write(self._start(message["status"], _header_list(message.get("headers", ()))))
            return
        if self.response_complete:
            raise RuntimeError(f"unexpected {message['type']!r} after the response completed")
        if message["type"] != "http.response.body":
            raise RuntimeError(f"expected 'http.response.body', got {message['type']!r}")
        body = message.get("body", b"")
        more = message.get("more_body", False)
        if self.head_only:
            self.length = 0
        elif self.chunked:
            if body:
                self.transport.write(b"%x\r\n%b\r\n%b" % (len(body), body, b"" if more else _LAST_CHUNK)
                                     if len(body) < 65536 else
                                     b"".join((b"%x\r\n" % len(body), body, b"\r\n",
                                               b"" if more else _LAST_CHUNK)))
            elif not more:
                self.transport.write(_LAST_CHUNK)
        elif body:
            size = len(body)
            if size > self.length:
                raise RuntimeError("response content longer than Content-Length")
            self.length -= size
            self.transport.write(body)
        if not more:
            if self.length != 0:
                raise RuntimeError("response content shorter than Content-Length")
            self.response_complete = True
            self.message_event.set()
            if not self.keep_alive:
                self.transport.close()
            self.on_response()

    def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes | memoryview) -> bool:
        """A whole response in one call and one write, without ASGI messages: what the data plane
        sends for the common small answer (the `peel.respond` scope extension).

        Does what `send(start)` then `send(body)` do; False, having done nothing, when that needs
        waiting (the transport asked to pause writing) or the response already started: the
        caller then sends the messages.
        """
        if self.response_started or (self.flow.write_paused and not self.disconnected):
            return False
        if self.disconnected:
            return True
        head = self._start(status, headers)
        apart: bytes | memoryview | None = None  # a large body, written after the head uncopied
        if self.head_only:
            self.length = 0
        elif self.chunked:
            if body:
                head += b"%x\r\n%b\r\n" % (len(body), body if isinstance(body, bytes) else bytes(body))
            head += _LAST_CHUNK
        else:
            size = len(body)
            if size != self.length:
                raise RuntimeError(f"response content {'longer' if size > self.length else 'shorter'} "
                                   "than Content-Length")
            self.length = 0
            if size >= APART_FROM and isinstance(self.transport, BatchedWriter):
                apart = body
            else:
                head += body
        if apart is None:
            self.write_whole(head)
        else:
            self.transport.write_whole(head, apart)  # one vectored write
        self.response_complete = True
        self.message_event.set()
        if not self.keep_alive:
            self.transport.close()
        self.on_response()
        return True

    def _start(self, status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
        """The response head for `status` and `headers` (the framing decided from them).

        Typed as a list of tuples of bytes so that, compiled, the loop below reads the list and its
        tuples directly and compares bytes in C (with `Any` every step was a generic Python call).
        """
        self.response_started = True
        self.waiting_for_100_continue = False
        parts = [STATUS_LINES.get(status) or _status_line(status)]
        lines = 0
        length: bytes | None = None
        chunked = close = False
        for name, value in (self.default_headers + headers) if self.default_headers else headers:
            if name == b"content-length":
                if length is None:
                    length = value
            elif name == b"transfer-encoding":
                if value.lower() == b"chunked":
                    chunked = True
            elif name == b"connection" and b"close" in value.lower():
                self.keep_alive = False
                close = True
            parts.append(name)
            parts.append(b": ")
            parts.append(value)
            parts.append(b"\r\n")
            lines += 1
        if not self.keep_alive and not close:
            parts.append(b"connection: close\r\n")
            lines += 1
        if chunked:
            self.chunked = True
        elif length is not None:
            try:
                self.length = int(length)
            except ValueError:
                raise RuntimeError("invalid Content-Length in the response") from None
        elif not self.head_only and status not in (204, 304):
            self.chunked = True
            parts.append(b"transfer-encoding: chunked\r\n")
            lines += 1
        parts.append(b"\r\n")
        head = b"".join(parts)
        # one CRLF per header line, the status line and the end: anything else is a CR or an LF
        # inside a name or value (response splitting), refused before a byte is written
        if head.count(b"\n") != lines + 2 or head.count(b"\r") != lines + 2:
            self.response_started = False
            raise RuntimeError("invalid HTTP header name or value: it holds a CR or an LF")
        return head

    async def receive(self) -> Any:
        if self.waiting_for_100_continue and not self.transport.is_closing():
            self.transport.write(_CONTINUE)
            self.waiting_for_100_continue = False
        if not self.disconnected and not self.response_complete:
            self.flow.resume_reading()
            await self.message_event.wait()
            self.message_event.clear()
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        message = {"type": "http.request", "body": bytes(self.body), "more_body": self.more_body}
        self.body = bytearray()
        return message


def _header_list(headers: Any) -> list[tuple[bytes, bytes]]:
    """An ASGI app's response headers as `_start` takes them. ASGI allows any iterable of two-item
    sequences; Peel's apps and Starlette send a list of tuples, passed on as it is."""
    if type(headers) is list and all(type(header) is tuple for header in headers):
        return headers
    return [(name, value) for name, value in headers]


def _nothing() -> None:
    return None


__all__ = ["STATUS_LINES", "ResponseCycle", "Signal"]
