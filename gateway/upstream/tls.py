"""Moved to `gateway.upstream.dial` (the one dial seam); kept until `gateway.dataplane.websocket`
takes the pool's dialer instead of its own `UpstreamTls` (issue 10)."""

from __future__ import annotations

from gateway.upstream.dial import TlsFactory, UpstreamTls, ssl_context_for

SslFactory = TlsFactory

__all__ = ["SslFactory", "UpstreamTls", "ssl_context_for"]
