"""The ASGI 3 types the data plane speaks (the raw app, not starlette's wrappers)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Respond = Callable[[int, list[tuple[bytes, bytes]], bytes | memoryview], bool]

# The two `scope["extensions"]` keys Peel's edge (gateway.edge.protocol) fills for the data plane:
# the request line's raw target bytes, and the connection's `Downstream` handle.
TARGET: Final = "peel.target"
DOWNSTREAM: Final = "peel.downstream"
# On the inbound listener: the connection's `Peer` (its verified SPIFFE ID, or None in plaintext
# or without a client certificate); None on the other listeners. Read once per connection.
PEER: Final = "peel.peer"
# The kind of listener a request came in on when it is not the app's default ("outbound": a local
# app on this VM); the inbound listener is known by its `PEER`. Cohorts and the dependency graph
# read it (docs/east-west.md).
LISTENER: Final = "peel.listener"
# `respond(status, headers, body) -> bool`: the whole response in one call, without ASGI messages
# (gateway.edge.cycle.ResponseCycle.respond); absent when the server is not Peel's own. Used only
# by an app called with the same cycle's `send`: a wrapper that changes `send` turns it off.
RESPOND: Final = "peel.respond"


class Peer:
    """Who is on the other end of an inbound-listener connection (`docs/mtls.md`).

    `identity`: the SPIFFE ID of the client certificate OpenSSL verified, else None; `mtls`: the
    connection speaks TLS; `strict`: the listener was strict when the connection was accepted (a
    route without an authorization policy is then refused); `source`: the identity, else the
    client address, as the inbound counts name it.
    """

    __slots__ = ("identity", "mtls", "source", "strict")

    def __init__(self, identity: str | None, *, mtls: bool, strict: bool, address: str) -> None:
        self.identity = identity
        self.mtls = mtls
        self.strict = strict
        self.source = identity or address


class Downstream:
    """One downstream connection, as seen by the app.

    `on_lost` is called (once) when the connection closes; the proxy sets it while an upstream
    exchange is running and clears it after. `lost` says whether that already happened. The edge
    creates it with the function that resets the connection and calls `connection_lost`; it lives
    here, below both, so the data plane can use it without importing the edge (issue 10).
    """

    __slots__ = ("_abort", "lost", "on_lost")

    def __init__(self, abort: Callable[[], None]) -> None:
        self._abort = abort
        self.on_lost: Callable[[], None] | None = None
        self.lost = False

    def abort(self) -> None:
        """Reset the connection: a response that cannot be completed must not look complete."""
        self._abort()

    def connection_lost(self) -> None:
        """The edge's report that the connection closed: runs `on_lost` once. There is nothing
        left to reset after it, and dropping `abort` (the edge's protocol's method) leaves the
        closed connection without a reference cycle, freed without the cyclic collector."""
        self.lost = True
        self._abort = _closed
        callback, self.on_lost = self.on_lost, None
        if callback is not None:
            callback()


def _closed() -> None:
    """`Downstream.abort` once the connection is closed."""


__all__ = ["DOWNSTREAM", "LISTENER", "PEER", "RESPOND", "TARGET", "Downstream", "Message", "Peer", "Receive",
           "Respond", "Scope", "Send"]
