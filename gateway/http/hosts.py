"""The host a downstream request names: its `Host` header, or an absolute-form target (pure).

Routes match on the host name alone: lower-case, without the port, an IPv6 literal without its
brackets. HTTP and WebSocket requests read it the same way, so a route matches both alike.
"""

from __future__ import annotations

import httptools


def hostname(host: bytes) -> str:
    """The Host header's host, lower-case, without the port (or the brackets of an IPv6 literal)."""
    text = host.decode("latin-1").lower()
    if text.startswith("["):
        end = text.find("]")
        return text[1:end] if end > 0 else text
    return text.split(":", 1)[0] if ":" in text else text


def absolute_target(target: bytes) -> tuple[str, bytes] | None:
    """(host, path) of an absolute-form request target (`http://host/path`); None when it is not
    one, or names no host. The path is `/` when the target has none."""
    if not (target[:7].lower() == b"http://" or target[:8].lower() == b"https://"):
        return None
    try:
        url = httptools.parse_url(target)
    except httptools.HttpParserInvalidURLError:
        return None
    if not url.host:
        return None
    return url.host.decode("latin-1").lower(), url.path or b"/"


__all__ = ["absolute_target", "hostname"]
