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

The listener follows the route table (`follow`, a table follower): the document's
`mesh.inbound_mtls`, when set, is the mode instead of the settings' (`current_mode`), and its
`revocations` are checked on every TLS connection **right after the handshake**, before the
connection reaches the HTTP protocol (`_Guard.connection_made`): a peer whose certificate is
revoked is cut there and never has a request read. Python's `ssl` has no per-certificate verify
callback, and a CRL could not say "this identity, issued before T" (nor be signed without the CA's
key on every gateway), so the check cannot sit inside the handshake itself. Every open connection
that presented a certificate is remembered with what a revocation is checked against; a table
that brings new revocations closes those it now refuses at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any, cast

import uvicorn

from gateway.http.framing import Refusal, refusal_response
from gateway.identity.bundle import IdentityBundle
from gateway.identity.revocation import CertFacts, describe, peer_facts
from gateway.telemetry.metrics import Metrics
from routes.revocations import NO_REVOCATIONS, Revocations
from routes.table import RouteTable

log = logging.getLogger("peel.inbound")

TLS_HANDSHAKE = 0x16
HANDSHAKE_TIMEOUT = 10.0
MODES = ("permissive", "strict")


class InboundListener:
    """Accepts the inbound listener's connections for `server` (see the module docstring).

    `mode()` gives the settings' mode ("permissive" or "strict"); `current_mode()` the one in
    force (the document's `mesh.inbound_mtls` when the last table had one). `refused` counts
    plaintext connections refused in strict mode and `handshake_failures` TLS handshakes that failed
    (an untrusted, expired or missing client certificate); `revoked` connections refused or closed
    because their certificate is revoked. All also go to `metrics`
    (`peel_inbound_refused_total{reason}`: plaintext, handshake, revoked, revoked_open) when given.
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
        self.revoked = 0
        self._pending: set[asyncio.Task[None]] = set()
        self.closed = False
        self.document_mode: str | None = None
        self.revocations: Revocations = NO_REVOCATIONS
        # open connections that presented a certificate, by transport. Not weak: uvloop's TLS
        # transports take no weak reference. An upgraded WebSocket's transport outlives the HTTP
        # protocol that would remove it, so closed ones are pruned as the dict grows (`_admit`).
        self._open: dict[asyncio.BaseTransport, CertFacts] = {}
        self._prune_at = 64
        self._guards: dict[type, type] = {}

    def current_mode(self) -> str:
        """The mode of a connection accepted now: the document's, else the settings'."""
        return self.document_mode or self.mode()

    def follow(self, table: RouteTable) -> None:
        """A table follower: take its mode and revocations; close open connections now revoked."""
        if table.inbound_mtls != self.document_mode:
            self.document_mode = table.inbound_mtls
            log.info("config version %d: the inbound listener is now %s (%s)", table.version,
                     self.current_mode(), "the document's mesh.inbound_mtls" if self.document_mode
                     else "listeners.inbound.mtls of the settings")
        if table.revocations != self.revocations:
            self.revocations = table.revocations
            self.close_revoked()

    def close_revoked(self) -> int:
        """Close every open connection whose certificate the current revocations refuse."""
        closed = 0
        for transport, facts in list(self._open.items()):
            found = facts.refused_by(self.revocations)
            if found is None or transport.is_closing():
                continue
            self._count_revoked("revoked_open")
            log.warning("inbound listener: closing a connection from %s: %s",
                        facts.identity or facts.serial, describe(found))
            protocol = transport.get_protocol()
            cycle = getattr(protocol, "cycle", None)  # an HTTP protocol; None once upgraded
            if cycle is not None:
                cycle.disconnected = True  # cut on purpose: not "returned without a response"
            self._open.pop(transport, None)
            cast(asyncio.Transport, transport).abort()  # uvloop's are not asyncio's subclasses
            closed += 1
        return closed

    def _count_revoked(self, reason: str) -> None:
        self.revoked += 1
        if self.metrics is not None:
            self.metrics.inbound_refused(reason)

    def _admit(self, transport: asyncio.Transport) -> bool:
        """After the handshake, before the HTTP protocol: refuse a revoked certificate, else
        remember the connection's certificate for revocations that come later."""
        facts = peer_facts(transport.get_extra_info("ssl_object"))
        if facts is None:
            return True
        found = facts.refused_by(self.revocations)
        if found is not None:
            self._count_revoked("revoked")
            log.warning("inbound listener: refused %s: %s", facts.identity or facts.serial,
                        describe(found))
            transport.abort()
            return False
        if len(self._open) >= self._prune_at:
            for gone in [t for t in self._open if t.is_closing()]:
                del self._open[gone]
            self._prune_at = max(64, 2 * len(self._open))
        self._open[transport] = facts
        return True

    def _left(self, transport: asyncio.BaseTransport | None) -> None:
        if transport is not None:
            self._open.pop(transport, None)

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
        base: type = config.http_protocol_class  # a [limits] reload may replace it
        guard = self._guards.get(base)
        if guard is None:
            guard = self._guards[base] = _guarded(base)
        instance: Any = guard(config=config, server_state=server.server_state,
                              app_state=server.lifespan.state)
        instance.inbound_strict = strict
        instance.inbound_listener = self
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
        strict = self.current_mode() == "strict"
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


def _guarded(base: type) -> type:
    """`base` (the listener's HTTP protocol class) with the revocation check of `_admit` first."""

    class _Guard(base):  # type: ignore[misc]
        inbound_listener: InboundListener
        _peel_cut = False

        def connection_made(self, transport: asyncio.Transport) -> None:
            if not self.inbound_listener._admit(transport):
                self._peel_cut = True  # never registered with the server: nothing to undo
                return
            super().connection_made(transport)

        def data_received(self, data: bytes) -> None:
            if not self._peel_cut:
                super().data_received(data)

        def eof_received(self) -> None:
            if not self._peel_cut:
                super().eof_received()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._peel_cut:
                return
            self.inbound_listener._left(self.transport)
            super().connection_lost(exc)

    _Guard.__name__ = f"Inbound{base.__name__}"
    return _Guard


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
