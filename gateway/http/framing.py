"""RFC 9112 framing rules for downstream requests (pure): the raw head and chunked bodies.

The protocol layer (`gateway.edge.protocol`) hands every request head to `check_head`, which is
its one parse of the head (what the request is comes back with the verdict), and every chunked
body to a `ChunkedBody`, which finds the body's data and its end. A request that breaks a rule
raises `Refusal`, which carries the
status and the Peel error code of the problem+json answer; the connection is then closed, because
after a framing error nobody can tell where the next request would start (request smuggling).

What is refused, and with which status:

- 400: a bare CR or LF, obs-fold, a malformed request line, a target that is neither origin-form
  nor absolute-form (`*` only with OPTIONS), bytes that are not visible ASCII in the target, a header
  name that is not a token or a value holding a control character, a missing Host on HTTP/1.1, more
  than one Host, Content-Length together with Transfer-Encoding, a duplicate or non-numeric
  Content-Length, a transfer-coding list whose last coding is not `chunked`, Transfer-Encoding on
  HTTP/1.0, a `Connection` that nominates a header Peel relies on, and (unless allowed) a header
  name with `_` that would read as a header Peel trusts once `_` is taken for `-`;
- 413: a declared Content-Length or chunked data above `max_body` (before any `100 Continue`);
- 414: a request line longer than `max_request_line`;
- 417: an `Expect` other than `100-continue`;
- 431: a header section above `max_header_bytes` or with more than `max_headers` fields; a chunked
  body's trailer section above 16 KiB or 32 fields (trailers are then dropped, never forwarded);
- 501: a transfer coding other than `chunked` (Peel does not decode gzip request bodies);
- 505: an HTTP version other than 1.0 and 1.1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

from gateway.core import problems
from gateway.core.memo import remember
from gateway.http.chunked import ChunkedDecoder
from gateway.http.headers import PLAIN_CONNECTION
from routes.grammar import TOKEN, TOKEN_BYTES_RE

# Body framing of a request.
NO_BODY: Final = 0
LENGTH: Final = 1
CHUNKED: Final = 2

_TOKEN: Final = TOKEN.encode("ascii")  # RFC 9110 5.6.2, as a bytes pattern source
_REQUEST_LINE: Final = re.compile(rb"(" + _TOKEN + rb") ([^ ]+) HTTP/(\d)\.(\d)")
_METHODS: Final = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"})  # tokens
_HTTP11: Final = (1, 1)
# Field values: HTAB, SP, visible ASCII, obs-text. Everything else is a control character.
_VALUE_BYTES: Final = bytes([0x09, *range(0x20, 0x7F), *range(0x80, 0x100)])
# Field lines already checked, each with what it reads as: the `(name lower-cased, value without
# surrounding blanks)` pair and what the line is to `check_head` (`_KINDS`). A client sends most of
# its lines again with every request (Host, User-Agent, Accept, Accept-Encoding, Accept-Language),
# and a line found here was checked when first seen: it costs a dict lookup instead of a token
# pattern, a character pass, a lower-casing and a strip. Bounded (`remember`); long lines (cookies,
# tokens) are never kept, nor a line whose name holds "_" (its verdict depends on
# `allow_underscore_headers`), nor, of course, a refused one.
_FIELD_LINES: Final[dict[bytes, tuple[tuple[bytes, bytes], int]]] = {}
_FIELD_LINES_MAX: Final = 1024
_FIELD_KEPT_BELOW: Final = 256
# What a field line is to `check_head`: any other header, or one it reads.
_OTHER: Final = 0
_HOST: Final = 1
_CONTENT_LENGTH: Final = 2
_TRANSFER_ENCODING: Final = 3
_EXPECT: Final = 4
_CONNECTION: Final = 5
_OFFER: Final = 6  # an Upgrade or HTTP2-Settings offer, left out
_KINDS: Final = {b"host": _HOST, b"content-length": _CONTENT_LENGTH, b"transfer-encoding": _TRANSFER_ENCODING,
                 b"expect": _EXPECT, b"connection": _CONNECTION, b"upgrade": _OFFER,
                 b"http2-settings": _OFFER}
# Targets: visible ASCII only (RFC 3986 has no raw space, control or non-ASCII byte in a URI).
_TARGET_BYTES: Final = bytes(range(0x21, 0x7F))
# A Host value: reg-name, IPv4, IP-literal and port characters.
_HOST_BYTES: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:%[]"
_ABSOLUTE: Final = re.compile(rb"(?i:https?)://[^/?#]+(?:[/?].*)?")
_DIGITS: Final = b"0123456789"
# The trailer section of a chunked request body, in all.
_MAX_TRAILERS: Final = 16 * 1024
# ... and its fields. Trailers never reach the upstream (RFC 9110 §6.5.1: they are not merged into
# the header section; Peel drops them), so a request needs few; past either limit: 431 and close.
_MAX_TRAILER_FIELDS: Final = 32

# Headers a `Connection` field may not nominate: stripping them as hop-by-hop would change how
# the request is framed or routed, or remove what Peel sets for the upstream.
PROTECTED: Final = frozenset({
    b"host", b"content-length", b"transfer-encoding", b"expect",
    b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded", b"x-real-ip",
    b"x-request-id", b"traceparent", b"tracestate",
})
# A header name with "_" is refused (by default) when, read with "-" for "_", it is one of these or
# starts with one of the prefixes: a server that folds "_" into "-" would take it for the real one.
_TRUSTED_PREFIXES: Final = (b"x-forwarded-", b"x-peel-", b"peel-")


@dataclass(frozen=True, slots=True)
class HeadLimits:
    """The limits `check_head` enforces (from `[limits]`; see `gateway.core.settings.LimitsSettings`)."""

    max_request_line: int = 8 * 1024
    max_header_bytes: int = 60 * 1024
    max_headers: int = 100
    max_body: int = 0  # 0: no limit
    allow_underscore_headers: bool = False


class Refusal(Exception):
    """A request Peel refuses at the edge: answered with `status` and problem `code`, then closed."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


class Head:
    """What the protocol layer needs from an accepted request head: the parse and its checks in one.

    `head` is the head without an `Upgrade` or `HTTP2-Settings` offer: the original bytes when it
    had none, else rebuilt without them. `framing` is NO_BODY, LENGTH or CHUNKED. `headers` are the fields as
    ASGI gives them (names lower-cased, values without surrounding whitespace, in order), an
    `Upgrade` or `HTTP2-Settings` offer left out; `keep_alive` whether the client lets the
    connection stay open after this request (RFC 9112 9.3: HTTP/1.1 unless `Connection: close`,
    HTTP/1.0 only with `Connection: keep-alive`). A plain class with slots: one is built per
    request, and compiled (gateway.core.native) it is built and read as a C struct, where a
    NamedTuple's constructor and fields are Python-level calls (called from Python, 0.15 against
    0.30 us to build; from the compiled protocol, a direct call).
    """

    __slots__ = ("expect_continue", "framing", "head", "headers", "keep_alive", "length", "method",
                 "target", "upgrade_stripped", "version")

    def __init__(self, head: bytes, method: bytes, framing: int, length: int, expect_continue: bool,
                 upgrade_stripped: bool, target: bytes, version: tuple[int, int],
                 headers: list[tuple[bytes, bytes]], keep_alive: bool) -> None:
        self.head = head
        self.method = method
        self.framing = framing
        self.length = length
        self.expect_continue = expect_continue
        self.upgrade_stripped = upgrade_stripped
        self.target = target
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive


def check_head(block: bytes, limits: HeadLimits) -> Head:
    """Check one complete request head, `block` ending with its empty line (CRLF CRLF).

    Raises `Refusal`. The checks run once per request on bytes already in memory: a few C-level
    passes over the block, then each field line is checked and read once, when first seen
    (`_FIELD_LINES`).
    """
    crlf = block.count(b"\r\n")
    if block.count(b"\n") != crlf or block.count(b"\r") != crlf:
        raise Refusal(400, "bare-line-ending", "the request head holds a CR or LF outside a CRLF pair")
    end = block.find(b"\r\n")
    line = block[:end]
    if len(line) > limits.max_request_line:
        raise Refusal(414, "request-line-too-long",
                      f"the request line is longer than {limits.max_request_line} bytes")
    method, target, version = _request_line(line)
    if crlf - 2 > limits.max_headers:  # a CRLF ends the request line, each field and the head
        raise Refusal(431, "too-many-headers",
                      f"the request has more than {limits.max_headers} header fields")
    if len(block) - len(line) > limits.max_header_bytes:
        raise Refusal(431, "header-too-large",
                      f"the header section is larger than {limits.max_header_bytes} bytes")
    section = block[end + 2:-2]  # the field lines, each with its CRLF
    fields = section[:-2].split(b"\r\n") if section else []

    hosts = 0
    host = b""
    lengths: list[bytes] = []
    codings: list[bytes] = []
    expect: list[bytes] = []
    connection: list[bytes] = []
    upgrade_lines: list[int] = []
    headers: list[tuple[bytes, bytes]] = []
    index = 0  # the field's line number (the request line is 0); compiled, a counter beats enumerate
    for field in fields:
        index += 1
        read = _FIELD_LINES.get(field)
        if read is None:
            read = _read_field(field, limits)  # raises on the first line that breaks a rule
        pair, kind = read
        if kind == _OTHER:
            headers.append(pair)
            continue
        if kind == _OFFER:
            upgrade_lines.append(index)
            continue
        headers.append(pair)
        value = pair[1]
        if kind == _HOST:
            hosts += 1
            host = value
        elif kind == _CONTENT_LENGTH:
            lengths.append(value)
        elif kind == _TRANSFER_ENCODING:
            codings.append(value)
        elif kind == _EXPECT:
            expect.append(value)
        else:
            connection.append(value)

    if hosts > 1:
        raise Refusal(400, "duplicate-host", "the request has more than one Host header")
    if hosts == 0 and version == (1, 1):
        raise Refusal(400, "missing-host", "an HTTP/1.1 request must have a Host header")
    if host.translate(None, _HOST_BYTES):
        raise Refusal(400, "bad-host", "the Host header holds characters a host name cannot")
    _check_target(method, target)
    keep_alive = _check_connection(connection, version)

    framing, length = _framing(lengths, codings, version, limits)
    expect_continue = False
    for value in expect:
        if value.lower() != b"100-continue":
            raise Refusal(417, "unsupported-expectation", "the only expectation Peel meets is 100-continue")
        expect_continue = True

    head = block
    if upgrade_lines:
        # Peel forwards no protocol switch (no route allows WebSocket yet) and never h2c: the
        # request goes on as plain HTTP/1.1 without the offer, as RFC 9110 7.8 lets a server do.
        keep = [line] + [f for i, f in enumerate(fields, 1) if i not in upgrade_lines]
        head = b"\r\n".join(keep) + b"\r\n\r\n"
    return Head(head, method, framing, length, expect_continue, bool(upgrade_lines), target, version,
                headers, keep_alive)


def _request_line(line: bytes) -> tuple[bytes, bytes, tuple[int, int]]:
    method, _, rest = line.partition(b" ")
    target, _, protocol = rest.partition(b" ")
    if protocol == b"HTTP/1.1" and target and (method in _METHODS or TOKEN_BYTES_RE.fullmatch(method)):
        version = _HTTP11  # the common line, without the pattern
    else:
        match = _REQUEST_LINE.fullmatch(line)
        if match is None:
            raise Refusal(400, "bad-request-line", "the request line is not `METHOD TARGET HTTP/x.y`")
        method, target, major, minor = match.groups()
        version = (int(major), int(minor))
        if version not in (_HTTP11, (1, 0)):
            raise Refusal(505, "http-version-not-supported",
                          f"HTTP/{version[0]}.{version[1]} is not supported; use HTTP/1.1")
    if target.translate(None, _TARGET_BYTES):
        raise Refusal(400, "bad-target", "the request target holds bytes that are not visible ASCII")
    return method, target, version


def _check_target(method: bytes, target: bytes) -> None:
    if target.startswith(b"/"):
        if b"#" in target:
            raise Refusal(400, "bad-target", "the request target holds a fragment")
        return
    if target == b"*":
        if method != b"OPTIONS":
            raise Refusal(400, "bad-target", "the target `*` is only for OPTIONS")
        return
    if _ABSOLUTE.fullmatch(target) and b"#" not in target:
        return  # the data plane answers it only for hosts a route names
    raise Refusal(400, "bad-target", "the request target is neither origin-form nor absolute-form")


def _field(field: bytes, limits: HeadLimits) -> tuple[bytes, bytes]:
    if field[:1] in (b" ", b"\t"):
        raise Refusal(400, "obsolete-line-folding", "a header line starts with whitespace (obs-fold)")
    name, colon, value = field.partition(b":")
    if not colon or TOKEN_BYTES_RE.fullmatch(name) is None:
        raise Refusal(400, "bad-header-name", "a header name is empty or holds characters a token cannot")
    if value.translate(None, _VALUE_BYTES):
        raise Refusal(400, "bad-header-value", "a header value holds a control character")
    if b"_" in name and not limits.allow_underscore_headers:
        dashed = name.lower().replace(b"_", b"-")
        if dashed in PROTECTED or dashed.startswith(_TRUSTED_PREFIXES):
            raise Refusal(400, "underscore-header",
                          f"the header {name.decode('ascii')!r} would read as {dashed.decode('ascii')!r}")
    return name, value.strip(b" \t")


def _read_field(field: bytes, limits: HeadLimits) -> tuple[tuple[bytes, bytes], int]:
    """A field line not seen before, checked (`_field` raises `Refusal`) and read, and remembered
    when `_FIELD_LINES` may keep it."""
    name, value = _field(field, limits)
    lowered = name.lower()
    read = ((lowered, value), _KINDS.get(lowered, _OTHER))
    if len(field) < _FIELD_KEPT_BELOW and b"_" not in name:
        remember(_FIELD_LINES, field, read, _FIELD_LINES_MAX)
    return read


def _check_connection(values: list[bytes], version: tuple[int, int]) -> bool:
    """Refuse a `Connection` that nominates a protected header; whether the connection is kept."""
    close = keep = False
    for value in values:
        plain = PLAIN_CONNECTION.get(value)
        if plain is not None:  # a value as clients spell it: read without a split
            close = close or plain
            keep = keep or not plain
            continue
        for token in value.split(b","):
            token = token.strip(b" \t").lower()
            if token in PROTECTED:
                raise Refusal(400, "protected-header-nominated",
                              f"Connection may not nominate {token.decode('ascii')!r}")
            if token == b"close":
                close = True
            elif token == b"keep-alive":
                keep = True
    if close:
        return False
    return keep if version == (1, 0) else True


def _framing(lengths: list[bytes], codings: list[bytes], version: tuple[int, int],
             limits: HeadLimits) -> tuple[int, int]:
    if codings:
        if lengths:
            raise Refusal(400, "ambiguous-framing",
                          "the request has both Content-Length and Transfer-Encoding")
        if version == (1, 0):
            raise Refusal(400, "ambiguous-framing", "Transfer-Encoding is not HTTP/1.0")
        tokens = [t.strip(b" \t").lower() for t in b",".join(codings).split(b",")]
        if any(not t for t in tokens):
            raise Refusal(400, "bad-transfer-encoding", "the Transfer-Encoding list has an empty element")
        if tokens[-1] != b"chunked" or tokens.count(b"chunked") != 1:
            raise Refusal(400, "bad-transfer-encoding", "the final transfer coding must be chunked, once")
        if len(tokens) > 1:
            raise Refusal(501, "unsupported-transfer-coding",
                          f"Peel decodes no transfer coding but chunked (got {b', '.join(tokens[:-1])!r})")
        return CHUNKED, 0
    if not lengths:
        return NO_BODY, 0
    if len(lengths) > 1 or b"," in lengths[0]:
        raise Refusal(400, "ambiguous-framing", "the request has more than one Content-Length")
    value = lengths[0]
    if not value or value.translate(None, _DIGITS) or len(value) > 18:
        raise Refusal(400, "bad-content-length", "Content-Length is not a decimal number")
    length = int(value)
    if limits.max_body and length > limits.max_body:
        raise Refusal(413, "body-too-large", f"the request body is larger than {limits.max_body} bytes")
    return (LENGTH if length else NO_BODY), length


class ChunkedBody(ChunkedDecoder):
    """Finds the end of one chunked request body and checks its framing as the bytes come.

    `feed(data)` returns how many bytes of `data` belong to this body (all of them until the
    last chunk and trailers are complete); `done` is then set. Raises `Refusal` on a malformed
    chunk size, extension, chunk end or trailer, and on data beyond `max_body` (0: no limit).
    Only counts and framing bytes are kept, never data (`gateway.http.chunked`, shared with the
    upstream leg's reader).
    """

    __slots__ = ()

    def __init__(self, max_body: int = 0) -> None:
        super().__init__(Refusal, max_body=max_body, max_trailers=_MAX_TRAILERS,
                         max_trailer_fields=_MAX_TRAILER_FIELDS)


def refusal_response(refusal: Refusal) -> bytes:
    """The complete HTTP/1.1 answer to a refused request: problem+json, then the connection closes."""
    title = HTTPStatus(refusal.status).phrase
    headers, body = problems.render(refusal.status, refusal.code, refusal.detail, close=True, title=title)
    return b"".join([b"HTTP/1.1 %d %s\r\n" % (refusal.status, title.encode("ascii")),
                     *(name + b": " + value + b"\r\n" for name, value in headers), b"\r\n", body])
