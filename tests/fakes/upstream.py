"""An in-memory upstream behind a fake dial seam: no sockets, no threads, no processes.

    dialer = FakeDialer()
    orders = dialer.add("http://orders:80", ok(b"hello"))       # a handler per endpoint
    pool = UpstreamPool(ProxySettings(), dialer=dialer)         # everything the pool dials lands here

A handler is `async def handler(request: FakeRequest, link: FakeLink) -> None`, called once per
request on a connection (keep-alive: the same `link` serves the next request). It answers with
`link.send(bytes)`, cuts the connection with `link.reset()` (before or after answering) or
`link.fin()` (a FIN), trickles with `await link.pause(seconds)` between sends, or hangs by
returning without sending anything. `scripted(h1, h2, ...)` answers the n-th request with the n-th
handler (the last repeats). `FakeUpstream.requests` records every complete request that arrived,
before the handler acts, so a test can assert "the POST arrived exactly once".

`FakeUpstream.refuse = True` refuses connections (`ConnectError`, as `Dialer.open` raises);
`connect_delay` delays them (an `UpstreamTimeout` past the dial's timeout).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from gateway.core.errors import ConnectError, UpstreamTimeout
from routes.model import Endpoint

P = TypeVar("P", bound=asyncio.BaseProtocol)


@dataclass
class FakeRequest:
    """One request as the upstream read it off the wire."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    connection: int  # 1-based number of the connection it came on (per upstream)

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n.lower() == name.lower()]
        return ", ".join(values) if values else None

    def names(self) -> set[str]:
        return {n.lower() for n, _ in self.headers}


Handler = Callable[[FakeRequest, "FakeLink"], Awaitable[None]]


def answer(status: int = 200, body: bytes = b"", headers: list[tuple[str, str]] | None = None) -> bytes:
    """A complete HTTP/1.1 response with a Content-Length."""
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}"]
    lines += [f"{n}: {v}" for n, v in headers or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def ok(body: bytes = b"ok", headers: list[tuple[str, str]] | None = None) -> Handler:
    async def handler(request: FakeRequest, link: FakeLink) -> None:
        link.send(answer(200, body, headers))
    return handler


def status(code: int, body: bytes = b"", headers: list[tuple[str, str]] | None = None) -> Handler:
    async def handler(request: FakeRequest, link: FakeLink) -> None:
        link.send(answer(code, body, headers))
    return handler


def echo() -> Handler:
    """200 with `<method> <target>` as the body (what the upstream was asked)."""
    async def handler(request: FakeRequest, link: FakeLink) -> None:
        link.send(answer(200, f"{request.method} {request.target}".encode()))
    return handler


async def hang(request: FakeRequest, link: FakeLink) -> None:
    """Read the request, never answer."""


async def reset(request: FakeRequest, link: FakeLink) -> None:
    """Reset the connection before any response byte."""
    link.reset()


async def garbage(request: FakeRequest, link: FakeLink) -> None:
    """Bytes that are not HTTP, then close."""
    link.send(b"SSH-2.0-OpenSSH_9.2\r\n\x00\xffthis is not http\r\n\r\n")
    link.fin()


def trickle(body: bytes, every: float, headers: list[tuple[str, str]] | None = None) -> Handler:
    """The head at once, then the body one byte every `every` seconds."""
    async def handler(request: FakeRequest, link: FakeLink) -> None:
        response = answer(200, body, headers)
        link.send(response[:len(response) - len(body)])
        for i in range(len(body)):
            await link.pause(every)
            link.send(body[i:i + 1])
    return handler


async def closes_reused(request: FakeRequest, link: FakeLink) -> None:
    """Answer 200 on a new connection; on a reused one close without answering (the keep-alive
    race: the upstream's idle timer fired as the request went out)."""
    if link.served > 1:
        link.fin()
    else:
        link.send(answer(200, b"fresh"))


def scripted(*handlers: Handler) -> Handler:
    """The n-th request (over all connections) gets the n-th handler; the last one repeats."""
    served = [0]

    async def handler(request: FakeRequest, link: FakeLink) -> None:
        n = served[0]
        served[0] += 1
        await handlers[min(n, len(handlers) - 1)](request, link)
    return handler


class FakeUpstream:
    """One endpoint of the in-memory network; see the module docstring."""

    def __init__(self, url: str, handler: Handler) -> None:
        self.endpoint = Endpoint.parse(url, "endpoint")
        self.handler = handler
        self.requests: list[FakeRequest] = []
        self.connections = 0
        self.links: list[FakeLink] = []
        self.refuse = False
        self.connect_delay = 0.0

    def count(self, method: str | None = None) -> int:
        return sum(1 for r in self.requests if method is None or r.method == method)

    def open_links(self) -> int:
        return sum(1 for link in self.links if not link.closed)


class FakeDialer:
    """A dial seam (`gateway.upstream.dial.Dial`) onto in-memory upstreams, by endpoint URL."""

    def __init__(self) -> None:
        self.upstreams: dict[str, FakeUpstream] = {}
        self.dials: list[str] = []  # the URL of every connection asked for, in order

    def add(self, url: str, handler: Handler) -> FakeUpstream:
        upstream = FakeUpstream(url, handler)
        self.upstreams[upstream.endpoint.url] = upstream
        return upstream

    async def open(self, endpoint: Endpoint, protocol_factory: Callable[[], P], *,
                   timeout: float | None) -> tuple[asyncio.Transport, P]:
        self.dials.append(endpoint.url)
        upstream = self.upstreams.get(endpoint.url)
        if upstream is None or upstream.refuse:
            raise ConnectError(f"cannot connect to {endpoint.url}: Connection refused")
        if upstream.connect_delay:
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.sleep(upstream.connect_delay)
            except TimeoutError as exc:
                raise UpstreamTimeout(f"connecting to {endpoint.url} took longer than "
                                      f"{timeout:g} s") from exc
        upstream.connections += 1
        protocol = protocol_factory()
        link = FakeLink(upstream, upstream.connections, protocol)
        upstream.links.append(link)
        protocol.connection_made(link)
        return link, protocol


class FakeLink(asyncio.Transport):
    """Both ends of one in-memory connection: the client's transport and the upstream's handle.

    Bytes the client writes are parsed into requests and handed to the upstream's handler, one at
    a time; what the handler sends reaches the client's protocol on the next loop iteration (as
    a socket would deliver it).
    """

    def __init__(self, upstream: FakeUpstream, number: int, protocol: asyncio.BaseProtocol) -> None:
        super().__init__()
        self.upstream = upstream
        self.number = number
        self.protocol: Any = protocol
        self.closed = False  # either side closed it
        self.reading_paused = False
        self.served = 0  # requests read on this connection (2 and up: a reused connection)
        self._buffer = bytearray()
        self._loop = asyncio.get_running_loop()
        self._busy = False
        self._tasks: set[asyncio.Task[None]] = set()

    # -- the client's transport ------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closed:
            return
        self._buffer += data
        self._next_request()

    def close(self) -> None:
        self._lose(None)

    def abort(self) -> None:
        self._lose(None)

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading_paused = True

    def resume_reading(self) -> None:
        self.reading_paused = False

    def is_reading(self) -> bool:
        return not self.reading_paused

    def can_write_eof(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": (self.upstream.endpoint.host, self.upstream.endpoint.port)}.get(name, default)

    # -- the upstream's side ---------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Bytes from the upstream to the client (delivered on the next loop iteration)."""
        if not self.closed:
            self._loop.call_soon(self._deliver, bytes(data))

    def fin(self) -> None:
        """The upstream closes its side (a FIN after what it sent; `close()` is the client's)."""
        self._loop.call_soon(self._eof)

    def reset(self) -> None:
        """The upstream resets the connection (what it sent and not yet delivered is lost)."""
        self._lose(ConnectionResetError(104, "Connection reset by peer"))

    async def pause(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def _deliver(self, data: bytes) -> None:
        if not self.closed:
            self.protocol.data_received(data)

    def _eof(self) -> None:
        if not self.closed:
            keep = self.protocol.eof_received()
            if not keep:
                self._lose(None)

    def _lose(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        for task in self._tasks:
            task.cancel()
        self._loop.call_soon(self.protocol.connection_lost, exc)

    # -- reading requests ------------------------------------------------------------------------

    def _next_request(self) -> None:
        if self._busy:
            return
        parsed = _parse_request(self._buffer)
        if parsed is None:
            return
        request, used = parsed
        del self._buffer[:used]
        self.served += 1
        fake = FakeRequest(*request, connection=self.number)
        self.upstream.requests.append(fake)
        self._busy = True
        task = self._loop.create_task(self._serve(fake))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, request: FakeRequest) -> None:
        try:
            await self.upstream.handler(request, self)
        finally:
            self._busy = False
        if not self.closed:
            self._next_request()


def _parse_request(buffer: bytearray) -> tuple[tuple[str, str, list[tuple[str, str]], bytes], int] | None:
    """(method, target, headers, body) and the bytes it took, once a whole request is buffered."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = bytes(buffer[:end]).decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = [(n, v.strip()) for n, _, v in (line.partition(":") for line in lines[1:])]
    lowered = {n.lower(): v for n, v in headers}
    at = end + 4
    if lowered.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while True:
            line_end = buffer.find(b"\r\n", at)
            if line_end < 0:
                return None
            size = int(bytes(buffer[at:line_end]).split(b";")[0], 16)
            at = line_end + 2
            if size == 0:
                if buffer[at:at + 2] != b"\r\n":
                    return None  # (trailers are not scripted)
                return (method, target, headers, bytes(body)), at + 2
            if len(buffer) < at + size + 2:
                return None
            body += buffer[at:at + size]
            at += size + 2
    length = int(lowered.get("content-length", "0"))
    if len(buffer) < at + length:
        return None
    return (method, target, headers, bytes(buffer[at:at + length])), at + length


__all__ = ["FakeDialer", "FakeLink", "FakeRequest", "FakeUpstream", "Handler", "answer", "closes_reused",
           "echo", "garbage", "hang", "ok", "reset", "scripted", "status", "trickle"]
