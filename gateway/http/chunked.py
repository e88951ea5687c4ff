"""The chunked transfer coding (RFC 9112 section 7.1), decoded as the bytes come (pure).

One state machine for both legs: `gateway.http.framing.ChunkedBody` finds the end of a downstream
request body (its bytes pass on to the HTTP parser untouched), `gateway.http.http1.ResponseReader`
decodes an upstream response body. Each leg passes how it refuses (`error`): the request leg answers
a problem (`Refusal`), the response leg gives up on the connection (`ProtocolError`).

The framing rules are the same on both legs: every line ends with CRLF (a bare CR or LF is
refused), a chunk size is 1 to 15 hex digits, chunk data is followed by CRLF, a chunk-size line is
at most `MAX_LINE` bytes and the trailer section at most `max_trailers` in all. `strict` (the
request leg) also holds chunk extensions to their grammar and trailer fields to field syntax; an
upstream's extensions are ignored and its trailers only need a colon, as they are dropped anyway.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

from routes.grammar import TOKEN

# error(status, code, detail): what a leg raises for a malformed or oversize body.
ChunkErrorFactory = Callable[[int, str, str], Exception]

MAX_LINE: Final = 4096  # a chunk-size line, with its extensions
_SIZE: Final = 0  # states: a chunk-size line,
_DATA: Final = 1  # chunk data,
_DATA_END: Final = 2  # the CRLF after chunk data,
_TRAILERS: Final = 3  # the trailer section, up to its empty line
_HEX: Final = b"0123456789abcdefABCDEF"
_TOKEN: Final = TOKEN.encode("ascii")
# RFC 9112 7.1.1: chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
_CHUNK_EXT: Final = re.compile(rb'(?:[ \t]*;[ \t]*' + _TOKEN + rb'(?:[ \t]*=[ \t]*(?:' + _TOKEN
                        + rb'|"(?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[\t\x20-\x7e\x80-\xff])*"))?)*')
# Field values: HTAB, SP, visible ASCII, obs-text.
_VALUE_BYTES: Final = bytes([0x09, *range(0x20, 0x7F), *range(0x80, 0x100)])


class ChunkedDecoder:
    """Finds the end of one chunked body, checking its framing, and where its data lies.

    `feed(data, spans)` returns how many bytes of `data` belong to the body (all of them until the
    last chunk and the trailers are complete; `done` is then set) and, when `spans` is given,
    appends the `(start, end)` offsets of chunk data in `data`. Only a partial line is kept between
    calls, never data. `received` counts the data announced so far; above `max_body` (0: no limit)
    the body is refused with 413.
    """

    __slots__ = ("_error", "_fields", "_line", "_max_body", "_max_fields", "_max_trailers", "_state",
                 "_strict", "_trailers", "done", "left", "received")

    def __init__(self, error: ChunkErrorFactory, *, max_body: int = 0, max_trailers: int = 16 * 1024,
                 max_trailer_fields: int = 0, strict: bool = True) -> None:
        self._error = error
        self._max_body = max_body
        self._max_trailers = max_trailers
        # 0: no count limit (the upstream leg, whose trailers are dropped as they are read)
        self._max_fields = max_trailer_fields
        self._fields = 0
        self._strict = strict
        self._state = _SIZE
        self._line = b""
        self._trailers = 0
        self.left = 0  # data bytes still due in the current chunk
        self.received = 0
        self.done = False

    def feed(self, data: bytes, spans: list[tuple[int, int]] | None = None) -> int:
        # The state lives in a local while the loop runs: this is on every chunked body's path.
        if self.done:
            return 0
        pos, n = 0, len(data)
        state = self._state
        while pos < n:
            if state == _DATA:
                left = self.left
                take = left if left < n - pos else n - pos
                if spans is not None:
                    spans.append((pos, pos + take))
                pos += take
                self.left = left = left - take
                if not left:
                    state = _DATA_END
                continue
            if state == _DATA_END and not self._line and data[pos:pos + 2] == b"\r\n":
                pos += 2  # the usual case, without building a line
                state = _SIZE
                continue
            end = data.find(b"\n", pos)
            if end < 0:
                self._state = state
                self._line += data[pos:]
                if state == _TRAILERS:
                    if len(self._line) > self._max_trailers - self._trailers:
                        raise self._error(431, "trailers-too-large", "the trailer section is larger "
                                          f"than {self._max_trailers} bytes")
                elif len(self._line) > MAX_LINE:
                    raise self._error(400, "bad-chunk", "a chunk-size line is too long")
                return n
            if self._line:
                line, self._line = self._line + data[pos:end + 1], b""
            else:
                line = data[pos:end + 1]
            pos = end + 1
            cr = line.find(b"\r")
            if cr != len(line) - 2:  # not CRLF at the end, or a CR before it
                raise self._error(400, "bare-line-ending", "a chunk line does not end with CRLF")
            line = line[:cr]
            if state == _DATA_END:
                if line:
                    raise self._error(400, "bad-chunk", "chunk data is longer than its size")
                state = _SIZE
            elif state == _SIZE:
                state = self._size_line(line)
            elif line:
                self._trailer(line)
            else:
                self.done = True
                break
        self._state = state
        return pos

    def _size_line(self, line: bytes) -> int:
        if self._strict:
            cut = len(line)
            for i, byte in enumerate(line):
                if byte not in _HEX:
                    cut = i
                    break
            size = line[:cut]
            valid = _CHUNK_EXT.fullmatch(line[cut:]) is not None
        else:
            size = line.split(b";", 1)[0].rstrip(b" \t")
            valid = not size.translate(None, _HEX)
        if not valid or not size or len(size) > 15:
            raise self._error(400, "bad-chunk", f"malformed chunk size line {line[:40]!r}")
        self.left = int(size, 16)
        self.received += self.left
        if self._max_body and self.received > self._max_body:
            raise self._error(413, "body-too-large",
                              f"the request body is larger than {self._max_body} bytes")
        return _DATA if self.left else _TRAILERS

    def _trailer(self, line: bytes) -> None:
        self._trailers += len(line) + 2
        if self._trailers > self._max_trailers:
            raise self._error(431, "trailers-too-large",
                              f"the trailer section is larger than {self._max_trailers} bytes")
        self._fields += 1
        if self._max_fields and self._fields > self._max_fields:
            raise self._error(431, "trailers-too-large",
                              f"the trailer section has more than {self._max_fields} fields")
        if b":" not in line or (self._strict and (line[:1] in (b" ", b"\t")
                                                  or line.translate(None, _VALUE_BYTES))):
            raise self._error(400, "bad-chunk", "a malformed trailer field")
