"""A fault-injecting upstream for the resilience socket tests: a real HTTP/1.1 server on loopback.

`FaultUpstream(name)` listens on 127.0.0.1:0 with an asyncio loop in its own thread and keeps
connections alive. What it does with each request is switchable while it runs, from any thread:

    up.set("ok")                          200, body = the upstream's name (also in `X-Upstream`)
    up.set("hang_before_headers")         reads the request, never answers
    up.set("hang_mid_body")               head announcing 1000 bytes, 100 of them, then stalls
    up.set("reset")                       RST (SO_LINGER 0) before any response byte
    up.set("garbage")                     bytes that are not HTTP, then close
    up.set("trickle", delay=0.05)         the ok answer, its body one byte every `delay` seconds
    up.set("flap_503", every=2)           every `every`-th request 503 (2: alternate), others ok;
    up.set("flap_503", probability=0.3)   ... or 503 with that probability (seeded, reproducible)
    up.set("status", status=500)          that status, body = the name
    up.set("slow", delay=0.2)             the ok answer after `delay` seconds
    up.set("retry_after", retry_after="1")  503 with `Retry-After: 1`
    up.set("refuse")                      nothing listens on the port (connects are refused)
    up.set("reset", times=1)              the fault for the next request only, then ok again

Every request that arrives is recorded (`received`: method, path, headers, body, connection number,
the mode that answered it) before the fault acts, so a test can assert "the POST arrived exactly
once" with `count("POST")`. `closed_port()` gives a port with nothing listening, for a permanently
refused endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from tests.sockets.upstreams import read_body, read_head

MODES = ("ok", "hang_before_headers", "hang_mid_body", "reset", "garbage", "trickle", "flap_503",
         "status", "slow", "retry_after", "refuse")
MAX_KEPT_BODY = 1 << 20  # bytes of a request body kept in the record; the rest is read and dropped
MID_BODY_ANNOUNCED = 1000
MID_BODY_SENT = 100


@dataclass(frozen=True, slots=True)
class Fault:
    """What a `FaultUpstream` does with each request; see the module docstring for the modes."""

    mode: str = "ok"
    status: int = 200
    delay: float = 0.0
    every: int = 2
    probability: float | None = None
    retry_after: str = "1"
    # apply to this many requests, then answer ok (None: until changed)
    times: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown fault mode {self.mode!r}; one of {', '.join(MODES)}")
        if self.every < 1 or self.delay < 0 or (self.times is not None and self.times < 0):
            raise ValueError(f"bad fault parameters: {self}")


@dataclass(frozen=True, slots=True)
class Received:
    """One request as the upstream read it."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    connection: int
    mode: str

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n.lower() == name.lower()]
        return ", ".join(values) if values else None


def closed_port() -> int:
    """A loopback port with nothing listening (it may be reused later; prefer `Refuse` to hold it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Refuse:
    """A port where connecting is refused, held by a bound socket that never listens."""

    def __init__(self) -> None:
        self._sock = _holder(0)
        self.port = int(self._sock.getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()


def _holder(port: int) -> socket.socket:
    """A bound, non-listening socket: it keeps the port ours while connects to it are refused."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


class FaultUpstream:
    """An HTTP/1.1 keep-alive upstream whose behaviour a test switches at run time."""

    def __init__(self, name: str, seed: int = 0) -> None:
        self.name = name
        self.port = 0
        self.connections = 0
        self._lock = threading.Lock()
        self._fault = Fault()
        self._served_in_mode = 0
        self._received: list[Received] = []
        self._random = random.Random(seed)
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._holder: socket.socket | None = None
        self._live: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"fault-{name}", daemon=True)

    # -- control, from any thread --------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultUpstream:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"fault upstream {self.name} did not start")
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._call(self._shutdown())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if self._holder is not None:
            self._holder.close()

    def __enter__(self) -> FaultUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set(self, mode: str, **params: Any) -> None:
        """Switch behaviour; in effect for the next request (and, for `refuse`, the port) on return."""
        fault = Fault(mode, **params)
        with self._lock:
            previous = self._fault
            self._fault = fault
            self._served_in_mode = 0
        if (previous.mode == "refuse") != (mode == "refuse"):
            self._call(self._close_listener() if mode == "refuse" else self._listen())

    @property
    def fault(self) -> Fault:
        with self._lock:
            return self._fault

    @property
    def received(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    def count(self, method: str | None = None, path: str | None = None) -> int:
        """Requests received, optionally only of this method and/or this path."""
        return sum(1 for r in self.received
                   if (method is None or r.method == method) and (path is None or r.path == path))

    def clear(self) -> None:
        with self._lock:
            self._received.clear()

    @property
    def open_connections(self) -> int:
        return len(self._live)

    # -- the server, on its own loop ---------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._listen())
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    async def _listen(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Linux lets a reuse-address socket bind next to the bound, non-listening holder, so the
        # port is never free for someone else while it changes hands.
        sock.bind(("127.0.0.1", self.port))
        self._server = await asyncio.start_server(self._connection, sock=sock, limit=1 << 20)
        self.port = int(sock.getsockname()[1])
        if self._holder is not None:
            self._holder.close()
            self._holder = None

    async def _close_listener(self) -> None:
        if self._server is not None:
            self._server.close()  # closes the listening socket at once, so the holder may bind
            self._server = None
        self._holder = _holder(self.port)
        # A stopped server also drops its established connections, as a crashed process would.
        for writer in list(self._live):
            writer.transport.abort()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _next_fault(self) -> Fault:
        """The fault that answers this request (counts it towards `times` and `every`)."""
        with self._lock:
            fault = self._fault
            self._served_in_mode += 1
            n = self._served_in_mode
            if fault.times is not None and n > fault.times:
                return Fault()
            if fault.mode == "flap_503":
                if fault.probability is not None:
                    failing = self._random.random() < fault.probability
                else:
                    failing = n % fault.every == 0
                return Fault("status", status=503) if failing else Fault()
            return fault

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        self._live.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while await self._exchange(reader, writer, number):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            self._live.discard(writer)
            self._tasks.discard(task)
            writer.close()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        number: int) -> bool:
        """Read one request and answer it as the fault says; False when the connection ends."""
        head = await read_head(reader)
        if head is None:
            return False
        method, target, headers = head
        kept = bytearray()
        await read_body(reader, headers, kept, MAX_KEPT_BODY)
        body = bytes(kept)
        fault = self._next_fault()
        with self._lock:
            self._received.append(Received(method, target, headers, body, number, fault.mode))
        return await self._answer(fault, method, reader, writer)

    async def _answer(self, fault: Fault, method: str, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> bool:
        mode = fault.mode
        name = self.name.encode()
        if mode in ("hang_before_headers", "refuse"):
            # refuse: a request that raced the listener closing; treat it like a dead process
            await _until_closed(reader)
            return False
        if mode == "reset":
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                       struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        if mode == "garbage":
            writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\x00\xffthis is not http\r\n\r\n")
            await writer.drain()
            return False
        if mode == "hang_mid_body":
            body = (name + b" " + b"x" * MID_BODY_ANNOUNCED)[:MID_BODY_ANNOUNCED]
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Upstream: %b\r\n\r\n%b"
                         % (MID_BODY_ANNOUNCED, name, body[:MID_BODY_SENT]))
            await writer.drain()
            await _until_closed(reader)
            return False
        if mode == "slow":
            await asyncio.sleep(fault.delay)
        status, extra = 200, b""
        if mode == "status":
            status = fault.status
        elif mode == "retry_after":
            status, extra = 503, b"Retry-After: %b\r\n" % fault.retry_after.encode()
        head = (b"HTTP/1.1 %d X\r\nContent-Length: %d\r\nX-Upstream: %b\r\n%b\r\n"
                % (status, len(name), name, extra))
        if method == "HEAD" or status in (204, 304):
            writer.write(head)
        elif mode == "trickle":
            writer.write(head)
            for i in range(len(name)):
                await writer.drain()
                await asyncio.sleep(fault.delay)
                writer.write(name[i:i + 1])
        else:
            writer.write(head + name)
        await writer.drain()
        return True


async def _until_closed(reader: asyncio.StreamReader) -> None:
    """Stall: read and drop whatever comes until the client closes (or the server stops)."""
    with contextlib.suppress(ConnectionError):
        while await reader.read(65536):
            pass


@dataclass
class FaultSet:
    """Several named fault upstreams started and stopped together."""

    names: tuple[str, ...]
    upstreams: dict[str, FaultUpstream] = field(default_factory=dict)

    def start(self) -> FaultSet:
        for name in self.names:
            self.upstreams[name] = FaultUpstream(name, seed=len(self.upstreams)).start()
        return self

    def stop(self) -> None:
        for upstream in self.upstreams.values():
            upstream.stop()

    def __getitem__(self, name: str) -> FaultUpstream:
        return self.upstreams[name]
