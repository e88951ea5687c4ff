"""Scripted real upstream servers on free loopback ports, for the socket tests.

Each server runs an asyncio loop in a thread of the test process and listens on 127.0.0.1:0.

- `ScriptedUpstream`: records every request it sees (`seen`: method, target, headers, body
  length, framing, connection number) and answers by path:
    `/stream/<n>`      n bytes (`?chunked=1` chunked, `?close=1` delimited by close)
    `/status/<code>`   that status; 304 and HEAD answers announce a length and send no body
    `/slow/<secs>`     answers after a delay
    `/close`           answers with `Connection: close`
    `/early`           answers 413 at once, without reading the request body, then closes
    `/drip/<n>`        n bytes in 1 KiB pieces, forever if n is 0 (for disconnect tests)
    `/headers`         adds hop-by-hop and Connection-nominated headers to the answer
    `/closes-reused`   on a reused connection, closes without answering (the keep-alive race)
    anything else      200 with a JSON echo of what it saw
  Bodies are read and counted, never kept, so 1 GiB uploads cost no memory.
- `Refusing`: a bound socket that never listens: connecting is refused.
- `Hanging`: accepts and reads, never answers.
- `ResetMidBody`: announces 1000 bytes, sends 100, then resets the connection.
- `Garbage`: answers bytes that are not HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Self

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Seen:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body_length: int
    chunked: bool
    connection: int

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n.lower() == name.lower()]
        return ", ".join(values) if values else None

    def names(self) -> set[str]:
        return {n.lower() for n, _ in self.headers}


class ThreadServer:
    """An asyncio server in its own thread; `port` is set once it listens."""

    def __init__(self) -> None:
        self.port = 0
        self.connections = 0
        self.closed_connections = 0
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("upstream did not start")
        return self

    def stop(self) -> None:
        """Close the listener, cancel the connections still being served (each closes its writer
        while the loop runs, instead of being collected later on a closed loop), then stop."""
        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._thread.is_alive():
            done = asyncio.run_coroutine_threadsafe(shutdown(), self.loop)
            with contextlib.suppress(Exception):
                done.result(10)
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def serve() -> None:
            self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0, limit=1 << 20)
            self.port = self._server.sockets[0].getsockname()[1]
            self._ready.set()

        self.loop.run_until_complete(serve())
        self.loop.run_forever()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        try:
            await self.handle(reader, writer, number)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self.closed_connections += 1
            writer.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     number: int) -> None:
        raise NotImplementedError


async def read_head(reader: asyncio.StreamReader) -> tuple[str, str, list[tuple[str, str]]] | None:
    """(method, target, headers) of the next request head; None when the client closed first."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = raw[:-4].decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name, value.strip()))
    return method, target, headers


async def read_body(reader: asyncio.StreamReader, headers: list[tuple[str, str]],
                    kept: bytearray | None = None, keep: int = 0) -> tuple[int, bool]:
    """Read a request body (Content-Length or chunked); its length and whether it came chunked.

    The bytes are dropped, except the first `keep` of them, appended to `kept` when given (so a
    1 GiB upload costs no memory either way).
    """

    async def take(size: int) -> None:
        while size:
            piece = await reader.read(min(size, 1 << 18))
            if not piece:
                raise asyncio.IncompleteReadError(b"", size)
            if kept is not None and len(kept) < keep:
                kept.extend(piece[:keep - len(kept)])
            size -= len(piece)

    lowered = {n.lower(): v for n, v in headers}
    if lowered.get("transfer-encoding", "").lower() == "chunked":
        total = 0
        while (size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)) != 0:
            await take(size)
            total += size
            await reader.readexactly(2)
        while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
            pass
        return total, True
    total = int(lowered.get("content-length", "0"))
    await take(total)
    return total, False


PATTERN = bytes(range(256)) * 256  # 64 KiB


class ScriptedUpstream(ThreadServer):
    """See the module docstring for what each path does."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Seen] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     number: int) -> None:
        served = 0
        while True:
            head = await read_head(reader)
            if head is None:
                return
            method, target, headers = head
            path, _, query = target.partition("?")
            if path == "/early":
                writer.write(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n"
                             b"Connection: close\r\n\r\n")
                await writer.drain()
                self.seen.append(Seen(method, target, headers, -1, False, number))
                return
            length, chunked = await read_body(reader, headers)
            seen = Seen(method, target, headers, length, chunked, number)
            self.seen.append(seen)
            if path == "/closes-reused" and served:
                return
            served += 1
            keep = await self.respond(writer, method, path, query, seen)
            await writer.drain()
            if not keep:
                return

    async def respond(self, writer: asyncio.StreamWriter, method: str, path: str, query: str,
                      seen: Seen) -> bool:
        parts = path.strip("/").split("/")
        head_only = method == "HEAD"
        if parts[0] == "stream":
            size = int(parts[1])
            if "chunked=1" in query:
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                if not head_only:
                    await self._send(writer, size, chunked=True)
                    writer.write(b"0\r\n\r\n")
                return True
            if "close=1" in query:
                writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                if not head_only:
                    await self._send(writer, size, chunked=False)
                return False
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
            if not head_only:
                await self._send(writer, size, chunked=False)
            return True
        if parts[0] == "drip":
            size = int(parts[1])
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            sent = 0
            while size == 0 or sent < size:
                writer.write(b"400\r\n" + b"d" * 1024 + b"\r\n")
                await writer.drain()
                sent += 1024
                await asyncio.sleep(0.01)
            writer.write(b"0\r\n\r\n")
            return True
        if parts[0] == "status":
            code = int(parts[1])
            if code in (204, 304):
                extra = b"Content-Length: 5\r\n" if code == 304 else b""
                writer.write(b"HTTP/1.1 %d X\r\nETag: \"v1\"\r\n%b\r\n" % (code, extra))
            else:
                body = b"status %d" % code
                writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%b"
                             % (code, len(body), b"" if head_only else body))
            return True
        if parts[0] == "slow":
            await asyncio.sleep(float(parts[1]))
        if parts[0] == "headers":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive, X-Secret\r\n"
                         b"X-Secret: s3cret\r\nKeep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\n"
                         b"Trailer: X-T\r\nUpgrade: h2c\r\nX-Kept: yes\r\n\r\nok")
            return True
        body = json.dumps({"method": seen.method, "target": seen.target, "headers": seen.headers,
                           "body_length": seen.body_length, "chunked": seen.chunked}).encode()
        close = parts[0] == "close"
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                     b"X-Request-Id: from-upstream\r\n%b\r\n%b"
                     % (len(body), b"Connection: close\r\n" if close else b"",
                        b"" if head_only else body))
        return not close

    async def _send(self, writer: asyncio.StreamWriter, size: int, *, chunked: bool) -> None:
        left = size
        while left:
            piece = PATTERN[:min(left, len(PATTERN))]
            writer.write(b"%x\r\n%b\r\n" % (len(piece), piece) if chunked else piece)
            left -= len(piece)
            await writer.drain()


class Hanging(ThreadServer):
    """Accepts, reads the request, never answers (until the client goes away)."""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     number: int) -> None:
        while await reader.read(65536):
            pass


class ResetMidBody(ThreadServer):
    """Announces a 1000-byte body, sends 100 bytes, then resets the connection."""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     number: int) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100)
        await writer.drain()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()


class Garbage(ThreadServer):
    """Answers with bytes that are not an HTTP response."""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     number: int) -> None:
        await read_head(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\nthis is not http\r\n\r\n")
        await writer.drain()


class Refusing:
    """A port where connecting is refused: a bound socket that never listens holds it."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()


@dataclass
class Upstreams:
    """The set of upstreams one proxy process is wired to."""

    echo: ScriptedUpstream = field(default_factory=ScriptedUpstream)
    hanging: Hanging = field(default_factory=Hanging)
    reset: ResetMidBody = field(default_factory=ResetMidBody)
    garbage: Garbage = field(default_factory=Garbage)
    refusing: Refusing = field(default_factory=Refusing)

    def start(self) -> Upstreams:
        for server in (self.echo, self.hanging, self.reset, self.garbage):
            server.start()
        return self

    def stop(self) -> None:
        for server in (self.echo, self.hanging, self.reset, self.garbage):
            server.stop()
        self.refusing.stop()

    def urls(self) -> dict[str, Any]:
        return {"echo": self.echo.url, "hanging": self.hanging.url, "reset": self.reset.url,
                "garbage": self.garbage.url, "refusing": self.refusing.url}
