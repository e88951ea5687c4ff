"""The path normaliser: one canonical form of a request path, used to route AND to forward.

Routing on one spelling of a path and forwarding another is how path-based rules get bypassed
(`/admin` denied, `/%61dmin` or `/x/../admin` let through). So the path is normalised once, at
the edge, and the same string is matched and sent upstream:

- escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, every other escape is
  kept and upper-cased (`%2f` is never turned into a separator);
- dot segments are removed (RFC 3986 section 5.2.4), also when spelled `%2e`;
- runs of `/` are merged (as nginx does by default), so `//admin` is `/admin`;
- bytes outside the characters a path may hold are percent-encoded;
- NUL, an encoded `/` (`%2F`), a backslash (literal or `%5C`) and malformed escapes are refused
  with `ValueError`, which the data plane answers with 400.

The query string is not the path's business: callers pass the path alone (ASGI `raw_path`) and
forward the query verbatim. The function is pure and idempotent.
"""

from __future__ import annotations

import re

# pchar (RFC 3986: unreserved, sub-delims, ":" and "@") in segments that are not empty and do not
# start with "." (so no dot segment, no "//"): such a path is already normal, and the common case
# returns after this one regex.
_PLAIN = re.compile(rb"(?:/[A-Za-z0-9\-_~!$&'()*+,;=:@][A-Za-z0-9\-._~!$&'()*+,;=:@]*)*/?")
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_REFUSED_ESCAPES = {0x00: "NUL", 0x2F: "an encoded '/'", 0x5C: "an encoded backslash"}


def normalise(raw_path: bytes) -> str:
    """Return the canonical form of `raw_path` (the path part of a request target, as bytes).

    Raises ValueError (answered with 400) when the path cannot be made canonical safely.
    """
    if _PLAIN.fullmatch(raw_path) and raw_path:
        return raw_path.decode("ascii")
    if not raw_path.startswith(b"/"):
        raise ValueError("the path must start with '/'")
    return _remove_dot_segments(_decode(raw_path))


def _decode(raw: bytes) -> str:
    out: list[str] = []
    i, n = 0, len(raw)
    while i < n:
        byte = raw[i]
        if byte == 0x25:  # "%"
            pair = raw[i + 1:i + 3]
            if len(pair) != 2 or pair[0] not in _HEX or pair[1] not in _HEX:
                raise ValueError(f"malformed escape {raw[i:i + 3]!r}")
            value = int(pair, 16)
            if value in _REFUSED_ESCAPES:
                raise ValueError(f"the path holds {_REFUSED_ESCAPES[value]}")
            out.append(chr(value) if value in _UNRESERVED else "%" + pair.decode().upper())
            i += 3
            continue
        if byte == 0x00:
            raise ValueError("the path holds NUL")
        if byte == 0x5C:
            raise ValueError("the path holds a backslash")
        if byte in (0x3F, 0x23):  # "?" "#": the caller passed more than the path
            raise ValueError("the path holds a query or fragment delimiter")
        out.append(chr(byte) if byte in _SAFE else f"%{byte:02X}")
        i += 1
    return "".join(out)


def _remove_dot_segments(path: str) -> str:
    # Split on "/" after the leading one; empty segments (from "//") are dropped, which merges
    # slashes. A trailing "", "." or ".." keeps the trailing slash, as RFC 3986 does.
    segments = path[1:].split("/")
    out: list[str] = []
    for seg in segments:
        if seg == "..":
            if out:
                out.pop()
        elif seg not in (".", ""):
            out.append(seg)
    trailing = segments[-1] in ("", ".", "..") and bool(out)
    return "/" + "/".join(out) + ("/" if trailing else "")
