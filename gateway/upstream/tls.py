"""The TLS context of an upstream endpoint: one rule for requests, WebSockets and health checks.

A caller-supplied factory (`SslFactory`: tests, a private CA, client certificates) wins when it
gives a context, and decides alone for a plain-http endpoint; an https endpoint it has no context
for gets the system's verifying context, made once when first needed. The upstream pool, the
WebSocket proxy and the health checker all choose through here, so a check trusts exactly what a
request does.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable

from routes.model import Endpoint

SslFactory = Callable[[Endpoint], "ssl.SSLContext | None"]


def ssl_context_for(endpoint: Endpoint, factory: SslFactory | None,
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

    def __init__(self, factory: SslFactory | None = None) -> None:
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


__all__ = ["SslFactory", "UpstreamTls", "ssl_context_for"]
