r"""The shared grammars of HTTP that rules, matching and the data plane all read (pure).

One copy of each, at the bottom of the import graph, so that a header name is a token and a cookie
header splits into pairs the same way for route validation, route matching, cohort keys, hash
balancing, beta-value stripping and the settings.

- `TOKEN` / `TOKEN_RE` / `TOKEN_BYTES_RE`: RFC 9110 §5.6.2 `token` (header names, methods).
  `TOKEN_RE.match` takes the whole string (anchored with `\Z`: `$` would let a trailing newline
  through); `TOKEN_BYTES_RE` is unanchored, to build larger byte patterns from or `fullmatch`.
- `IDEMPOTENT_METHODS`: RFC 9110 §9.2.2 (retries, and which requests a migration may move).
- `cookie_pairs(value)`: the `name=value` pairs of one Cookie header (RFC 6265 §5.4, read as
  servers read it: split on `;`, names and values trimmed, pairs without `=` skipped).
- `cookie_value(headers, name)` / `header_value(headers, name)`: the first value in a header list.
- `cookie_name_key(name)` / `cookie_part_keys(part)`: the name, folded, that lenient frameworks
  read for a cookie name (percent-decoded and `.`, space and `+` as `_` like PHP, cut at `[` like
  PHP arrays, case-folded like ASP.NET), and the keys of every name in one `;`-separated part,
  including those after a comma (RFC 2965 `a=1,b=2`, still split by Tomcat's legacy parser and
  others). Beta-value stripping refuses every such spelling of a beta cookie but the exact one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from urllib.parse import unquote_plus

# RFC 9110 token characters, as a pattern source (str and bytes forms compile from it).
TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
TOKEN_RE = re.compile(rf"{TOKEN}\Z")
TOKEN_BYTES_RE = re.compile(TOKEN.encode("ascii"))

# RFC 9110 section 9.2.2: the methods whose intended effect of several identical requests is the
# same as one. POST and PATCH are not; CONNECT is never forwarded as a plain request.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


def cookie_pairs(value: str) -> Iterator[tuple[str, str]]:
    """(name, value) for each `name=value` of one Cookie header value, both trimmed."""
    for part in value.split(";"):
        name, sep, raw = part.partition("=")
        name = name.strip()
        if sep and name:
            yield name, raw.strip()


def cookie_name_key(name: str) -> str:
    """`name` as the most lenient common framework reads it (see the module docstring)."""
    key = unquote_plus(name, "latin-1").strip().replace(".", "_").replace(" ", "_")
    return key.partition("[")[0].casefold()


def cookie_part_keys(part: str) -> Iterator[str]:
    """The keys (`cookie_name_key`) of the names in one `;`-separated part of a Cookie header: its
    own name, and the name of each comma-joined pair after it."""
    pieces = part.split(",")
    for piece in pieces[:1] + [p for p in pieces[1:] if "=" in p]:
        yield cookie_name_key(piece.partition("=")[0])


def cookie_value(headers: Iterable[tuple[bytes, bytes]], name: str) -> str | None:
    """The first value of cookie `name` in the Cookie header(s), unquoted, or None."""
    for key, value in headers:
        if key == b"cookie":
            for pair_name, raw in cookie_pairs(value.decode("latin-1")):
                if pair_name == name:
                    return raw.strip('"')
    return None


def header_value(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    """The first value of header `name` (lower-case bytes) in a header list, or None."""
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None
