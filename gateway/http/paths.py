"""The path normaliser: one canonical form of a request path, used to route AND to forward.

Routing on one spelling of a path and forwarding another is how path-based rules get bypassed
(`/admin` denied, `/%61dmin` or `/x/../admin` let through). So the path is normalised once, at
the edge, and the same string is matched and sent upstream:

- escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, every other escape is
  kept and upper-cased;
- dot segments are removed (RFC 3986 section 5.2.4), also when spelled `%2e`;
- bytes outside the characters a path may hold are percent-encoded;
- NUL (literal or `%00`) and malformed escapes are always refused;
- an encoded `/` (`%2F`) and a backslash (literal or `%5C`) are refused by default; when a
  `PathRules` allows them they are kept encoded as `%2F` / `%5C`, never turned into a separator,
  so they can never start a new segment (or a dot segment) behind a prefix route's back;
- runs of `/` are merged by default (`PathRules.merge_slashes`): many upstreams (nginx, Python's
  http.server, several frameworks) read `//admin` as `/admin`, so Peel routes it as `/admin` too.
  With `merge_slashes` off, empty segments are kept as RFC 3986 says: `//admin` then matches
  neither `/admin` nor `/admin/...`, and is forwarded as `//admin`.

A refusal is a `ValueError`, which the data plane answers with 400 `bad-path`. The query string
is not the path's business: callers pass the path alone (ASGI `raw_path`) and forward the query
verbatim. The function is pure and idempotent for every `PathRules`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from gateway.core.settings import PathSettings

# pchar (RFC 3986: unreserved, sub-delims, ":" and "@") in segments that are not empty and do not
# start with "." (so no dot segment, no "//"): such a path is already normal under every rule
# set, and the common case returns after this one regex.
_PLAIN: Final = re.compile(rb"(?:/[A-Za-z0-9\-_~!$&'()*+,;=:@][A-Za-z0-9\-._~!$&'()*+,;=:@]*)*/?")
_SAFE: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/")
_UNRESERVED: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX: Final = frozenset(b"0123456789abcdefABCDEF")
_SLASH, _BACKSLASH, _NUL = 0x2F, 0x5C, 0x00


@dataclass(frozen=True, slots=True)
class PathRules:
    """What `normalise` allows besides the always-safe canonical form (settings `[paths]`).

    Built once at start (`path_rules(settings.paths)`) and handed to the data plane and to the
    admin `match` endpoint, so both normalise the same way.
    """

    reject_encoded_slash: bool = True
    reject_backslash: bool = True
    merge_slashes: bool = True


DEFAULT_RULES: Final = PathRules()


@lru_cache(maxsize=8)
def path_rules(settings: PathSettings) -> PathRules:
    """The `PathRules` of the `[paths]` settings (cached: settings are frozen and rarely change)."""
    return PathRules(settings.reject_encoded_slash, settings.reject_backslash, settings.merge_slashes)


def normalise(raw_path: bytes, rules: PathRules) -> str:
    """Return the canonical form of `raw_path` (the path part of a request target, as bytes).

    Raises ValueError (answered with 400) when the path cannot be made canonical safely.
    """
    if _PLAIN.fullmatch(raw_path) and raw_path:
        return raw_path.decode("ascii")
    if not raw_path.startswith(b"/"):
        raise ValueError("the path must start with '/'")
    return _remove_dot_segments(_decode(raw_path, rules), rules.merge_slashes)


def _decode(raw: bytes, rules: PathRules) -> str:
    out: list[str] = []
    i, n = 0, len(raw)
    while i < n:
        byte = raw[i]
        if byte == 0x25:  # "%"
            pair = raw[i + 1:i + 3]
            if len(pair) != 2 or pair[0] not in _HEX or pair[1] not in _HEX:
                raise ValueError(f"malformed escape {raw[i:i + 3]!r}")
            value = int(pair, 16)
            if value in _UNRESERVED:
                out.append(chr(value))
            else:
                _check_escaped(value, rules)
                out.append("%" + pair.decode("ascii").upper())
            i += 3
            continue
        if byte == _NUL:
            raise ValueError("the path holds NUL")
        if byte == _BACKSLASH:
            # Some upstreams (IIS, many Windows file servers) read "\" as "/": kept, it is only
            # ever forwarded encoded, and it never splits a segment here.
            if rules.reject_backslash:
                raise ValueError("the path holds a backslash")
            out.append("%5C")
        elif byte in (0x3F, 0x23):  # "?" "#": the caller passed more than the path
            raise ValueError("the path holds a query or fragment delimiter")
        else:
            out.append(chr(byte) if byte in _SAFE else f"%{byte:02X}")
        i += 1
    return "".join(out)


def _check_escaped(value: int, rules: PathRules) -> None:
    if value == _NUL:
        raise ValueError("the path holds an encoded NUL (%00)")
    if value == _SLASH and rules.reject_encoded_slash:
        raise ValueError("the path holds an encoded '/' (%2F)")
    if value == _BACKSLASH and rules.reject_backslash:
        raise ValueError("the path holds an encoded backslash (%5C)")


def _remove_dot_segments(path: str, merge_slashes: bool) -> str:
    """RFC 3986 section 5.2.4 over the segments after the leading "/".

    A "." or ".." as the last segment leaves a trailing slash ("/a/b/.." is "/a/"), as the RFC
    does. Empty segments (from "//") are kept unless `merge_slashes`; ".." removes an empty
    segment like any other ("/a//../b" is "/a/b"), again as the RFC does.
    """
    segments = path[1:].split("/")
    last = len(segments) - 1
    out: list[str] = []
    for index, seg in enumerate(segments):
        if seg == "." or seg == "..":
            if seg == ".." and out:
                out.pop()
            if index == last:
                out.append("")
        elif seg or index == last or not merge_slashes:
            out.append(seg)
    return "/" + "/".join(out)
