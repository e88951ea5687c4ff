"""The one place that opens upstream connections: TCP, plain or TLS, for every caller.

    dialer = Dialer(tls=<TlsFactory or None>)      # one per process: pool.dialer
    transport, protocol = await dialer.open(endpoint, protocol_factory, timeout=5.0)

The upstream pool (HTTP exchanges), the WebSocket upstream leg and the active health checks all
dial through a `Dialer`, so a check trusts exactly what a request does and the TLS of an endpoint
is decided in one place (the mTLS client identity lands here and nowhere else). Tests hand a fake
dialer (an in-memory upstream, `tests/fakes/upstream.py`) to the pool instead of real sockets.

TLS: a caller-supplied `TlsFactory` (a private CA per service, a client certificate, tests) wins
when it gives a context, and decides alone for a plain-http endpoint; an https endpoint it has no
context for gets the system's verifying context, made once when first needed.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Protocol, TypeVar

from gateway.core.errors import ConnectError, UpstreamTimeout
from routes.model import Endpoint

# The TLS context of an endpoint (None: plain TCP, or for https "use the system's").
TlsFactory = Callable[[Endpoint], "ssl.SSLContext | None"]

P = TypeVar("P", bound=asyncio.BaseProtocol)


def ssl_context_for(endpoint: Endpoint, factory: TlsFactory | None,
                    default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext | None:
    """The TLS context for `endpoint` (None: plain TCP); `default()` gives the verifying one.

    The factory wins when it gives a context (or for a plain-http endpoint); an https endpoint it
    has no context for gets the default verifying context.
    """
    if factory is not None:
        context = factory(endpoint)
        if context is not None or endpoint.scheme != "https":
            return context
    return default() if endpoint.scheme == "https" else None


class UpstreamTls:
    """Chooses the TLS context of each endpoint per `ssl_context_for`, with one default context.

    Called once per new upstream connection (never per request on a kept-alive one).
    """

    __slots__ = ("_default", "_factory")

    def __init__(self, factory: TlsFactory | None = None) -> None:
        self._factory = factory
        self._default: ssl.SSLContext | None = None

    def context_for(self, endpoint: Endpoint) -> ssl.SSLContext | None:
        """The TLS context for `endpoint`, or None for plain TCP."""
        return ssl_context_for(endpoint, self._factory, self._default_context)

    def _default_context(self) -> ssl.SSLContext:
        # Made on first use: loading the system's CA store costs milliseconds, and most
        # deployments have no https upstream at all.
        if self._default is None:
            self._default = ssl.create_default_context()
        return self._default


class Dial(Protocol):
    """What the callers need from a dialer (the real `Dialer`, or a test's fake)."""

    async def open(self, endpoint: Endpoint, protocol_factory: Callable[[], P], *,
                   timeout: float | None) -> tuple[asyncio.Transport, P]: ...


class Dialer:
    """Opens TCP connections to endpoints, with TLS per `UpstreamTls` (see the module docstring).

    `open` raises `ConnectError` when the endpoint cannot be reached (the `OSError`, TLS failures
    included, is its `__cause__`) and `UpstreamTimeout` when `timeout` seconds pass first.
    """

    __slots__ = ("tls",)

    def __init__(self, tls: TlsFactory | None = None) -> None:
        self.tls = UpstreamTls(tls)

    async def open(self, endpoint: Endpoint, protocol_factory: Callable[[], P], *,
                   timeout: float | None) -> tuple[asyncio.Transport, P]:
        """A new connection to `endpoint` whose protocol `protocol_factory()` makes.

        `timeout`: seconds for the connect and the TLS handshake (None: no limit of its own, the
        caller's `asyncio.timeout` applies).
        """
        loop = asyncio.get_running_loop()
        context = self.tls.context_for(endpoint)
        try:
            async with asyncio.timeout(timeout):
                transport, protocol = await loop.create_connection(
                    protocol_factory, endpoint.host, endpoint.port, ssl=context,
                    server_hostname=endpoint.host if context is not None else None)
        except TimeoutError as exc:
            if timeout is None:
                raise  # the caller's own timeout
            raise UpstreamTimeout(f"connecting to {endpoint.url} took longer than "
                                  f"{timeout:g} s") from exc
        except OSError as exc:
            raise ConnectError(f"cannot connect to {endpoint.url}: {exc.strerror or exc}") from exc
        return transport, protocol


__all__ = ["Dial", "Dialer", "TlsFactory", "UpstreamTls", "ssl_context_for"]
