"""HTTP/1.1 on the upstream leg (pure): request heads out, response heads and body framing in.

`ResponseReader` is fed the bytes an upstream connection receives and yields the response head and
the decoded body. It is strict where ambiguity could desynchronise a reused connection or smuggle a
response: a `Content-Length` together with `Transfer-Encoding`, differing or malformed lengths, a
transfer coding other than `chunked`, bare CR/LF, obs-fold, control characters or an oversize head
raise `ProtocolError`, and the connection is then never reused.

It knows what httptools cannot: whether the request was HEAD (then, like 1xx, 204 and 304, the
response has no body whatever its headers say). Interim 1xx responses are skipped.
"""

from __future__ import annotations

import re
from typing import Final

from gateway.core.errors import ProtocolError
from gateway.core.memo import remember
from gateway.core.writes import APART_FROM
from gateway.http.chunked import ChunkedDecoder
from gateway.http.headers import HOP_BY_HOP, PLAIN_CONNECTION
from routes.grammar import TOKEN

Headers = list[tuple[bytes, bytes]]

MAX_HEAD: Final = 64 * 1024
MAX_TRAILERS: Final = 64 * 1024

# Body framing of a response.
NO_BODY: Final = 0
LENGTH: Final = 1
CHUNKED: Final = 2
UNTIL_CLOSE: Final = 3

# Bytes a line of a response head may hold (the head split on CRLF): HT, visible ASCII, space and
# obs-text. A CR or LF left in a line came alone.
_LINE_BYTES: Final = bytes([0x09, *range(0x20, 0x7F), *range(0x80, 0x100)])
_DIGITS: Final = b"0123456789"
_FIELD_LINE: Final = re.compile(rb"(" + TOKEN.encode("ascii") + rb"):[ \t]*(.*)", re.DOTALL)
# Field lines already read, each as the `(name lower-cased, value)` pair it reads as. An upstream
# repeats most of its lines from one response to the next (Server, Content-Type, Connection, Vary,
# Cache-Control; Date for a second; Content-Length for answers of one size), and a line found here
# costs a dict lookup instead of a pattern match, a lower-casing, a strip and a tuple. Bounded:
# emptied when full, and long lines (cookies, tokens) are never kept.
_FIELDS: Final[dict[bytes, tuple[bytes, bytes]]] = {}
_FIELDS_MAX: Final = 1024
# Status lines already read, the same way: (code, reason phrase, HTTP/1.0).
_STATUS_LINES: Final[dict[bytes, tuple[int, bytes, bool]]] = {}
_STATUS_LINES_MAX: Final = 64
_FIELD_KEPT_BELOW: Final = 256
# Headers the reader handles itself: framing, and the hop-by-hop ones that never go downstream.
_SPECIAL: Final = HOP_BY_HOP | {b"content-length"}
_NOT_NOMINATIONS: Final = frozenset({b"close", b"keep-alive", b""})


def request_head(method: str, target: bytes, headers: Headers) -> bytes:
    """Serialise a request line and header block (values were validated where they came from)."""
    parts = [method.encode("ascii"), b" ", target, b" HTTP/1.1\r\n"]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (never call with empty data: that is the last-chunk)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK: Final = b"0\r\n\r\n"


class ResponseHead:
    """The head of an upstream response.

    `headers` are the end-to-end headers, ready to go downstream: lower-case names, values as
    received; hop-by-hop headers, those `Connection` nominates and the reader's `drop` names are
    left out, and Content-Length is collapsed to one field (left out for 204 and 304). `framing`
    is one of NO_BODY, LENGTH, CHUNKED, UNTIL_CLOSE; `keep_alive` is False when the upstream asked
    to close (or spoke HTTP/1.0 without offering keep-alive).
    """

    __slots__ = ("content_length", "framing", "headers", "keep_alive", "reason", "status")

    def __init__(self, status: int, reason: bytes, headers: Headers, framing: int,
                 content_length: int | None, keep_alive: bool) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.framing = framing
        self.content_length = content_length
        self.keep_alive = keep_alive


def parse_head(block: bytes, *, head_request: bool = False,
               drop: frozenset[bytes] = frozenset()) -> ResponseHead:
    """Parse a response head (`block` without the final empty line).

    This runs once per proxied request, so it leans on C-level bytes methods and on what it read
    before: a status line or a field line seen before (`_STATUS_LINES`, `_FIELDS`) was checked and
    read then and costs a dict lookup now; a new line is checked for control characters and bare
    CR or LF (one C-level pass) and read, rather than a Python loop per character.
    """
    lines = block.split(b"\r\n")
    status_line = lines[0]
    read = _STATUS_LINES.get(status_line)
    if read is None:
        read = _status(status_line)
    status, reason, http10 = read
    keep_alive = not http10
    headers: Headers = []
    length: int | None = None
    length_field: tuple[bytes, bytes] | None = None  # the field as received, when canonical
    te: bytes | None = None
    nominated: set[bytes] | None = None
    for line in lines[1:]:
        field = _FIELDS.get(line)
        if field is None:
            field = _field(line)
        name, value = field
        if name in _SPECIAL:
            if name == b"content-length":
                if value.isdigit() and len(value) <= 18 and length is None:
                    length = int(value)
                    if value[0] != 48 or len(value) == 1:  # no leading zero: sent as received
                        length_field = field
                    continue
                length_field = None
                for part in value.split(b","):
                    part = part.strip(b" \t")
                    if not part or part.translate(None, _DIGITS) or len(part) > 18:
                        raise ProtocolError(f"malformed Content-Length: {value[:40]!r}")
                    if length is not None and int(part) != length:
                        raise ProtocolError("differing Content-Length values")
                    length = int(part)
            elif name == b"transfer-encoding":
                te = value if te is None else te + b", " + value
            elif name == b"connection":
                plain = PLAIN_CONNECTION.get(value)
                if plain is not None:  # the usual values, without a set of tokens
                    keep_alive = not plain and (keep_alive or http10)
                    continue
                tokens = {t.strip(b" \t").lower() for t in value.lower().split(b",")}
                if b"close" in tokens:
                    keep_alive = False
                elif http10 and b"keep-alive" in tokens:
                    keep_alive = True
                tokens -= _NOT_NOMINATIONS
                if tokens:
                    nominated = tokens if nominated is None else nominated | tokens
        elif name not in drop:
            headers.append(field)
    if nominated:
        headers = [(n, v) for n, v in headers if n not in nominated]
    if te is not None and length is not None:
        raise ProtocolError("both Content-Length and Transfer-Encoding")
    if te is not None and te.lower() != b"chunked":
        raise ProtocolError(f"unsupported transfer coding {te[:40]!r}")
    if head_request or status < 200 or status in (204, 304):
        # Whatever the headers announce (a HEAD or 304 answer repeats the GET's framing), these
        # have no body; bytes that follow anyway make the connection unusable (see feed).
        framing = NO_BODY
        if length is not None and status not in (204, 304):
            headers.append(length_field or (b"content-length", b"%d" % length))
    elif te is not None:
        framing = CHUNKED
    elif length is not None:
        framing = NO_BODY if length == 0 else LENGTH
        headers.append(length_field or (b"content-length", b"%d" % length))
    else:
        framing = UNTIL_CLOSE
        keep_alive = False
    return ResponseHead(status, reason, headers, framing, length, keep_alive)


def _checked(line: bytes) -> None:
    """A line of a response head not seen before: no control characters, no bare CR or LF."""
    if line.translate(None, _LINE_BYTES):
        if b"\r" in line or b"\n" in line:
            raise ProtocolError("the response head holds a bare CR or LF")
        raise ProtocolError("the response head holds control characters")


def _status(line: bytes) -> tuple[int, bytes, bool]:
    """A status line read: its code, its reason phrase and whether it is HTTP/1.0."""
    _checked(line)
    if line.startswith(b"HTTP/1.1 "):
        http10 = False
    elif line.startswith(b"HTTP/1.0 "):
        http10 = True
    else:
        raise ProtocolError(f"not an HTTP/1.1 status line: {line[:40]!r}")
    code = line[9:12]
    if len(code) != 3 or code.translate(None, _DIGITS) or line[12:13] not in (b" ", b""):
        raise ProtocolError(f"malformed status line: {line[:40]!r}")
    status = int(code)
    if not 100 <= status <= 599:
        raise ProtocolError(f"status {status} is out of range")
    read = (status, line[13:], http10)
    if len(line) < _FIELD_KEPT_BELOW:
        remember(_STATUS_LINES, line, read, _STATUS_LINES_MAX)
    return read


def _field(line: bytes) -> tuple[bytes, bytes]:
    """A field line not seen before, checked and read: its name lower-cased and its value without
    surrounding blanks. A line that is not `token ":" value` (obs-fold, a space before the colon,
    no colon) raises."""
    _checked(line)
    match = _FIELD_LINE.fullmatch(line)
    if match is None:
        raise ProtocolError("malformed header line in the response head")
    field = (match.group(1).lower(), match.group(2).rstrip(b" \t"))
    if len(line) < _FIELD_KEPT_BELOW:
        remember(_FIELDS, line, field, _FIELDS_MAX)
    return field


class ResponseReader:
    """Incremental reader of one upstream response; feed it what the socket gives.

    After `feed`, `head` is set once the final (non-1xx) head arrived, `done` once the body ended,
    and `reusable` says whether the connection may carry another request. `drop` names headers
    to leave out of `head.headers` (see `parse_head`).
    """

    __slots__ = ("_buf", "_chunked", "_drop", "_head_request", "_left", "done", "head", "reusable")

    def __init__(self, *, head_request: bool = False, drop: frozenset[bytes] = frozenset()) -> None:
        self._head_request = head_request
        self._drop = drop
        self._buf = b""
        self._left = 0  # LENGTH: bytes still due
        self._chunked: ChunkedDecoder | None = None  # CHUNKED: the body's decoder
        self.head: ResponseHead | None = None
        self.done = False
        self.reusable = False

    def feed(self, data: bytes) -> bytes | memoryview:
        """Take received bytes; return the body bytes they complete (maybe empty).

        A large body that came in one read with the head (at least `APART_FROM` bytes of it) is
        returned as a view of that read rather than copied out of it: the proxy writes it
        downstream from there (gateway.core.writes).
        """
        if self.done:
            if data:
                self.reusable = False  # bytes after the response: the connection is out of step
            return b""
        head = self.head
        if head is None:
            head, read, start = self._feed_head(data)
            if head is None:
                return b""
            if head.framing == LENGTH and len(read) - start >= APART_FROM:
                view = memoryview(read)[start:]
                used = self._length_part(len(view))
                return view[:used] if used < len(view) else view
            data = read[start:]
        framing = head.framing
        if framing == LENGTH:
            if not data:
                return b""
            used = self._length_part(len(data))
            return data[:used] if used < len(data) else data
        if framing == CHUNKED:
            return self._feed_chunked(data)
        if framing == UNTIL_CLOSE:
            return data
        # NO_BODY: the message ended with the head.
        if data:
            self.reusable = False
        return b""

    def feed_eof(self) -> None:
        """The upstream closed its side: end of a close-delimited body, else a cut response."""
        if self.done:
            return
        if self.head is not None and self.head.framing == UNTIL_CLOSE:
            self.done = True
            self.reusable = False
            return
        if self.head is None:
            raise ProtocolError("the upstream closed the connection before a complete response head")
        raise ProtocolError("the upstream closed the connection in the middle of the body")

    def _finish(self, surplus: bool = False) -> None:
        self.done = True
        head = self.head
        self.reusable = head is not None and head.keep_alive and not surplus

    def _feed_head(self, data: bytes) -> tuple[ResponseHead | None, bytes, int]:
        """The head once complete (None before), the bytes read so far and where the body begins
        in them."""
        buf = self._buf + data if self._buf else data
        start = 0
        while True:
            end = buf.find(b"\r\n\r\n", start)
            if end < 0:
                if len(buf) - start > MAX_HEAD:
                    raise ProtocolError("the response head is too large")
                self._buf = buf[start:] if start else buf
                return None, b"", 0
            if end - start > MAX_HEAD:
                raise ProtocolError("the response head is too large")
            head = parse_head(buf[start:end], head_request=self._head_request, drop=self._drop)
            start = end + 4
            if head.status >= 200:
                break
            if head.status == 101:
                raise ProtocolError("the upstream switched protocols without being asked")
        self._buf = b""
        self.head = head
        if head.framing == NO_BODY:
            self._finish(start < len(buf))
        elif head.framing == LENGTH:
            self._left = head.content_length or 0
        elif head.framing == CHUNKED:
            # Extensions are ignored and trailers dropped (Peel forwards none), so they are held
            # only to the framing rules.
            self._chunked = ChunkedDecoder(_protocol_error, max_trailers=MAX_TRAILERS, strict=False)
        return head, buf, start

    def _length_part(self, size: int) -> int:
        """How many of `size` bytes read (LENGTH framing) are the body's; the rest is surplus."""
        left = self._left
        if size >= left:
            self._finish(size > left)
            return left
        self._left = left - size
        return size

    def _feed_chunked(self, data: bytes) -> bytes:
        decoder = self._chunked
        assert decoder is not None
        spans: list[tuple[int, int]] = []
        used = decoder.feed(data, spans)
        if decoder.done:
            self._finish(used < len(data))
        if len(spans) == 1:
            start, end = spans[0]
            return data if start == 0 and end == len(data) else data[start:end]
        return b"".join([data[start:end] for start, end in spans])


def _protocol_error(status: int, code: str, detail: str) -> ProtocolError:
    """How the chunked decoder refuses an upstream's body: the connection is given up."""
    return ProtocolError(detail)
