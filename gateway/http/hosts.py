"""The host a downstream request names: its `Host` header, or an absolute-form target (pure).

Routes match on the host name alone: lower-case, without the port, an IPv6 literal without its
brackets, and without one trailing dot (`api.example.com.` is the same DNS name as
`api.example.com`, so it must not escape the routes of that host). HTTP and WebSocket requests read
it the same way, so a route matches both alike.

`parse_host` is what routing reads: None for a Host that is not `host[:port]` (RFC 9110 §7.2 and
RFC 3986 §3.2.2: a bracketed IPv6 literal or a reg-name of ASCII letters, digits and
`-._~!$&'()*+,;=%`, no empty label, an optional port of at most five digits); the resolve step
answers those with 400 `bad-host`. `hostname` is its lenient form for labels (traces): never None.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Final

import httptools

from gateway.core.memo import remember

# RFC 3986 reg-name characters (unreserved, pct-encoded, sub-delims); ":" only before the port.
_REG_NAME: Final = re.compile(r"[a-z0-9\-._~!$&'()*+,;=%]*\Z")
_PORT: Final = re.compile(r"[0-9]{0,5}\Z")


def _canonical(name: str) -> str | None:
    """A lower-case reg-name without one trailing dot; None when it is not one (an empty name stays
    empty: RFC 9110 §7.2 allows an empty Host)."""
    if name.endswith("."):
        name = name[:-1]
        if not name:
            return None
    if _REG_NAME.match(name) is None or name[:1] == "." or name[-1:] == "." or ".." in name:
        return None
    return name


# Host headers repeat (a gateway serves a handful of names): each is read once, then looked up.
_PARSED: Final[dict[bytes, str | None]] = {}
_MAX_PARSED: Final = 4096


def parse_host(host: bytes) -> str | None:
    """The Host header's host, canonical (see the module docstring), or None: not `host[:port]`."""
    try:
        return _PARSED[host]
    except KeyError:
        pass
    # bounded: hostile Host values cannot grow it
    return remember(_PARSED, host, _parse_host(host), _MAX_PARSED)


def _parse_host(host: bytes) -> str | None:
    text = host.decode("latin-1").lower()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        literal, rest = text[1:end], text[end + 1:]
        if rest and (rest[0] != ":" or _PORT.match(rest[1:]) is None):
            return None
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            return None
        return literal
    name, colon, port = text.partition(":")
    if colon and (not name or _PORT.match(port) is None):
        return None
    return _canonical(name)


def hostname(host: bytes) -> str:
    """The Host header's host as `parse_host` reads it; a bad one as sent, lower-case (labels only:
    routing refuses it)."""
    parsed = parse_host(host)
    return parsed if parsed is not None else host.decode("latin-1").lower()


def absolute_target(target: bytes) -> tuple[str, bytes] | None:
    """(host, path) of an absolute-form request target (`http://host/path`); None when it is not
    one, or names no valid host. The host is canonical as `parse_host` makes it; the path is `/`
    when the target has none."""
    if not (target[:7].lower() == b"http://" or target[:8].lower() == b"https://"):
        return None
    try:
        # Any: httptools's stubs say bytes, but a part the URL lacks is None (compiled code checks)
        url: Any = httptools.parse_url(target)
    except httptools.HttpParserInvalidURLError:
        return None
    if not url.host:
        return None
    host = url.host.decode("latin-1").lower()
    if ":" in host:  # httptools strips the brackets of an IPv6 literal
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
        return host, url.path or b"/"
    name = _canonical(host)
    if not name:
        return None
    return name, url.path or b"/"


__all__ = ["absolute_target", "hostname", "parse_host"]
