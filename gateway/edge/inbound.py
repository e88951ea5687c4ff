"""The inbound listener (east-west, `docs/mtls.md`): mTLS and, when permissive, plaintext on one port.

    inbound = InboundListener(server, sock, bundle, mode)   # server: the listener's uvicorn.Server
    task = asyncio.create_task(inbound.run())               # after server.serve(sockets=[]) started

uvicorn creates a listening server with one fixed TLS context or none, so a port that speaks both
cannot be its server. Peel accepts on the inbound socket itself and, per connection, waits until
the first byte can be read and peeks at it (`MSG_PEEK`: nothing is consumed): 0x16 is a TLS
handshake record (a ClientHello; no HTTP request starts with that byte), anything else is
plaintext HTTP. The connection is then handed to the loop with the current identity's server
context or none (`loop.connect_accepted_socket`), running the same protocol class as uvicorn's
own connections, registered in the same server state, so drain, limits and `[limits]` reloads see
them as usual. The cost is one readiness wait and one `recv(MSG_PEEK)` per connection, nothing per
request.

`mode` is read per connection: a SIGHUP that turns `permissive` into `strict` applies to
connections accepted after it. In `strict` a plaintext connection is answered 403 problem+json
`mtls-required` and closed; a TLS one must present a certificate that verifies against the trust
bundle (`CERT_REQUIRED`). In `permissive` a client may present none (`CERT_OPTIONAL`), but one it
presents must verify: a certificate of another CA or an expired one fails the handshake in
either mode. The context is the identity's current one (`IdentityBundle.server_context`), so a
renewed certificate serves the next handshake while open connections keep theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

import uvicorn

from gateway.http.framing import Refusal, refusal_response
from gateway.identity.bundle import IdentityBundle
from gateway.telemetry.metrics import Metrics

log = logging.getLogger("peel.inbound")

TLS_HANDSHAKE = 0x16
HANDSHAKE_TIMEOUT = 10.0
MODES = ("permissive", "strict")


class InboundListener:
    """Accepts the inbound listener's connections for `server` (see the module docstring).

    `mode()` gives the current mode ("permissive" or "strict"). `refused` counts plaintext
    connections refused in strict mode and `handshake_failures` TLS handshakes that failed (an
    untrusted, expired or missing client certificate); both also go to `metrics`
    (`peel_inbound_refused_total{reason}`) when given.
    """

    def __init__(self, server: uvicorn.Server, sock: socket.socket, bundle: IdentityBundle,
                 mode: Callable[[], str], *, first_byte_timeout: float = 15.0,
                 metrics: Metrics | None = None) -> None:
        self.server = server
        self.sock = sock
        self.bundle = bundle
        self.mode = mode
        self.first_byte_timeout = first_byte_timeout
        self.refused = 0
        self.metrics = metrics
        self.handshake_failures = 0
        self._pending: set[asyncio.Task[None]] = set()
        self.closed = False

    def close(self) -> None:
        """Stop accepting (the drain); connections already handed over are the server's."""
        self.closed = True
        for task in list(self._pending):
            task.cancel()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.sock.setblocking(False)
        while not self.closed:
            try:
                conn, _ = await loop.sock_accept(self.sock)
            except asyncio.CancelledError:
                raise
            except OSError as exc:
                if self.closed:
                    return
                log.warning("inbound listener: accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            conn.setblocking(False)
            task = asyncio.create_task(self._connection(conn))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    def _protocol(self, strict: bool) -> Any:
        server = self.server
        config = server.config
        protocol: Any = config.http_protocol_class
        instance = protocol(config=config, server_state=server.server_state,
                            app_state=server.lifespan.state)
        instance.inbound_strict = strict
        return instance

    async def _connection(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            first = await asyncio.wait_for(_peek(loop, conn), self.first_byte_timeout)
        except (TimeoutError, OSError):
            conn.close()
            return
        except asyncio.CancelledError:
            conn.close()
            raise
        if not first:
            conn.close()  # closed before sending anything
            return
        strict = self.mode() == "strict"
        if first[0] != TLS_HANDSHAKE:
            if strict:
                self.refused += 1
                if self.metrics is not None:
                    self.metrics.inbound_refused("plaintext")
                _refuse_plaintext(conn)
                return
            context: ssl.SSLContext | None = None
        else:
            context = self.bundle.server_context(strict=strict)
        try:
            await loop.connect_accepted_socket(
                lambda: self._protocol(strict), conn, ssl=context,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT if context is not None else None)
        except (ssl.SSLError, OSError, TimeoutError, ConnectionError) as exc:
            self.handshake_failures += 1
            if self.metrics is not None:
                self.metrics.inbound_refused("handshake")
            log.info("inbound listener: TLS handshake refused: %s", exc)
            with contextlib.suppress(OSError):
                conn.close()


async def _peek(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> bytes:
    """The first byte of `conn`, left in the socket's buffer."""
    while True:
        try:
            return conn.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            pass
        ready: asyncio.Future[None] = loop.create_future()
        fd = conn.fileno()
        loop.add_reader(fd, _wake, ready)
        try:
            await ready
        finally:
            loop.remove_reader(fd)


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


def _refuse_plaintext(conn: socket.socket) -> None:
    answer = refusal_response(Refusal(403, "mtls-required", "this listener is in strict mode: "
                                      "connect with mutual TLS (a certificate of this trust domain)"))
    with contextlib.suppress(OSError):
        conn.send(answer)  # small: fits the socket buffer of a fresh connection
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_WR)
    conn.close()


__all__ = ["MODES", "InboundListener"]
