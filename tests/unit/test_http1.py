"""The upstream leg's HTTP/1.1 reader: heads, framing, chunked decoding, strictness."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.errors import ProtocolError
from gateway.core.writes import APART_FROM
from gateway.http import http1
from gateway.http.headers import PLAIN_CONNECTION
from gateway.http.http1 import (
    CHUNKED,
    LAST_CHUNK,
    LENGTH,
    NO_BODY,
    UNTIL_CLOSE,
    ResponseReader,
    chunk,
    parse_head,
    request_head,
)


def read_all(raw: bytes, *, head_request: bool = False, pieces: list[int] | None = None,
             eof: bool = False) -> tuple[ResponseReader, bytes]:
    reader = ResponseReader(head_request=head_request)
    body = b""
    cuts = sorted(set(pieces or []))
    start = 0
    for cut in [*cuts, len(raw)]:
        if cut <= start or cut > len(raw):
            continue
        body += reader.feed(raw[start:cut])
        start = cut
    if eof:
        reader.feed_eof()
    return reader, body


def test_request_head() -> None:
    assert request_head("GET", b"/a?b=1", [(b"host", b"x"), (b"accept", b"*/*")]) == (
        b"GET /a?b=1 HTTP/1.1\r\nhost: x\r\naccept: */*\r\n\r\n")
    assert chunk(b"hello") == b"5\r\nhello\r\n"
    assert LAST_CHUNK == b"0\r\n\r\n"


def test_head_parsing() -> None:
    head = parse_head(b"HTTP/1.1 201 Created\r\nContent-Type: text/plain \r\nContent-Length: 5\r\n"
                      b"Set-Cookie: a=1\r\nSet-Cookie:b=2\r\nKeep-Alive: timeout=5\r\n"
                      b"Connection: keep-alive, X-Hop\r\nX-Hop: 1\r\nX-Request-Id: up\r\n"
                      b"Proxy-Authenticate: Basic\r\nTrailer: X-T\r\nUpgrade: h2c",
                      drop=frozenset({b"x-request-id"}))
    assert (head.status, head.reason, head.framing, head.content_length, head.keep_alive) == (
        201, b"Created", LENGTH, 5, True)
    # End-to-end headers only: hop-by-hop, nominated and dropped names are left out.
    assert head.headers == [(b"content-type", b"text/plain"), (b"set-cookie", b"a=1"),
                            (b"set-cookie", b"b=2"), (b"content-length", b"5")]
    assert parse_head(b"HTTP/1.1 200").reason == b""
    assert parse_head(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0").keep_alive is False
    assert parse_head(b"HTTP/1.0 200 OK\r\nContent-Length: 1").keep_alive is False
    assert parse_head(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1").keep_alive
    assert parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 7, 7").content_length == 7


@pytest.mark.parametrize(("head", "framing"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10", LENGTH),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0", NO_BODY),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked", CHUNKED),
    (b"HTTP/1.1 200 OK", UNTIL_CLOSE),
    (b"HTTP/1.1 204 No Content", NO_BODY),
    (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99", NO_BODY),
    (b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked", NO_BODY),
])
def test_framing(head: bytes, framing: int) -> None:
    assert parse_head(head).framing == framing


def test_until_close_is_never_reusable() -> None:
    assert parse_head(b"HTTP/1.1 200 OK").keep_alive is False


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6",
    b"HTTP/1.1 200 OK\r\nContent-Length: -5",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0x5",
    b"HTTP/1.1 200 OK\r\nContent-Length: ",
    b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
    b"HTTP/1.1 200 OK\r\nX: a\nb",
    b"HTTP/1.1 200 OK\r\nX: a\rb",
    b"HTTP/1.1 200 OK\r\nX: a\x00b",
    b"HTTP/1.1 200 OK\r\n folded: yes",
    b"HTTP/1.1 200 OK\r\nBad Name: x",
    b"HTTP/1.1 200 OK\r\nNoColon",
    b"HTTP/1.1 200 OK\r\n: empty-name",
    b"HTTP/2 200",
    b"HTTP/1.1 20 OK",
    b"HTTP/1.1 2000 OK",
    b"HTTP/1.1 099 Low",
    b"HTTP/1.1 600 High",
    b"SSH-2.0-OpenSSH_9.2",
])
def test_ambiguous_or_malformed_heads_are_refused(head: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_head(head)


def fields(head: http1.ResponseHead) -> tuple[object, ...]:
    return (head.status, head.reason, head.headers, head.framing, head.content_length, head.keep_alive)


def test_a_line_read_before_reads_the_same_from_the_field_cache() -> None:
    raw = (b"HTTP/1.1 200 OK\r\nServer: up \t\r\nContent-Length: 5\r\nX-Request-Id: up\r\n"
           b"Connection: keep-alive, X-Hop\r\nX-Hop: 1\r\nVary:\tAccept")
    drop = frozenset({b"x-request-id"})
    http1._FIELDS.clear()
    first = fields(parse_head(raw, drop=drop))
    assert http1._FIELDS[b"Server: up \t"] == (b"server", b"up")
    assert fields(parse_head(raw, drop=drop)) == first == (
        200, b"OK", [(b"server", b"up"), (b"vary", b"Accept"), (b"content-length", b"5")], LENGTH, 5, True)
    # what is cached is a whole line: the same field folded, or with a space before its colon, fails
    for bad in (b"HTTP/1.1 200 OK\r\n Server: up \t", b"HTTP/1.1 200 OK\r\nServer : up \t"):
        with pytest.raises(ProtocolError):
            parse_head(bad)


def test_the_field_cache_is_bounded_and_keeps_no_long_line() -> None:
    for second in range(3 * http1._FIELDS_MAX):
        assert parse_head(b"HTTP/1.1 200 OK\r\nDate: %d\r\nContent-Length: 0" % second).status == 200
        assert len(http1._FIELDS) <= http1._FIELDS_MAX
    cookie = b"Set-Cookie: " + b"a" * http1._FIELD_KEPT_BELOW
    assert parse_head(b"HTTP/1.1 200 OK\r\n" + cookie).headers == [(b"set-cookie", cookie[12:])]
    assert cookie not in http1._FIELDS


def test_a_status_line_read_before_reads_the_same_and_the_memo_is_bounded() -> None:
    http1._STATUS_LINES.clear()
    cold = [fields(parse_head(b"HTTP/1.%d %d Reason %d\r\nContent-Length: 0" % (minor, code, code)))
            for minor in (0, 1) for code in (200, 404, 503)]
    assert len(http1._STATUS_LINES) == 6
    hot = [fields(parse_head(b"HTTP/1.%d %d Reason %d\r\nContent-Length: 0" % (minor, code, code)))
           for minor in (0, 1) for code in (200, 404, 503)]
    assert hot == cold and cold[0][:2] == (200, b"Reason 200") and cold[0][5] is False
    for bad in (b"HTTP/1.1 200 O\x00K", b"HTTP/1.1 200 O\rK", b"HTTP/1.1 2x0 OK", b"HTTP/1.1 200OK"):
        for _ in range(2):  # refused again: a refused line is never remembered
            with pytest.raises(ProtocolError):
                parse_head(bad)
        assert bad not in http1._STATUS_LINES
    for code in range(100, 600):
        parse_head(b"HTTP/1.1 %d Any" % code)
        assert len(http1._STATUS_LINES) <= http1._STATUS_LINES_MAX


def test_a_content_length_goes_on_as_received_or_canonical() -> None:
    assert parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 12").headers == [(b"content-length", b"12")]
    assert parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 012").headers == [(b"content-length", b"12")]
    assert parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 0").headers == [(b"content-length", b"0")]
    assert parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Length: 007").headers == [
        (b"content-length", b"7")]


@pytest.mark.parametrize("value", sorted(PLAIN_CONNECTION))
@pytest.mark.parametrize("status_line", [b"HTTP/1.1 200 OK", b"HTTP/1.0 200 OK"])
def test_a_plain_connection_value_reads_as_its_tokens_do(value: bytes, status_line: bytes) -> None:
    # "close," is read token by token; "close" as upstreams spell it, without a split
    plain = parse_head(status_line + b"\r\nConnection: " + value + b"\r\nContent-Length: 1")
    split = parse_head(status_line + b"\r\nConnection: " + value + b",\r\nContent-Length: 1")
    assert plain.keep_alive == split.keep_alive == (not PLAIN_CONNECTION[value])
    assert plain.headers == split.headers == [(b"content-length", b"1")]


_NAMES = st.sampled_from([b"Server", b"content-TYPE", b"Content-Length", b"X-Thing", b"Keep-Alive",
                          b"Connection", b"Set-Cookie", b"ETag", b"x-request-id", b"Vary"])
_VALUES = st.sampled_from([b"1", b"12", b" 7 ", b"\tclose", b"keep-alive", b"a=1; b", b"", b"X-Thing",
                           b"up", b"\"tag\"  ", b"x" * 300])


@given(st.lists(st.tuples(_NAMES, _VALUES), max_size=8), st.booleans())
def test_a_head_reads_the_same_with_its_lines_cached_or_not(pairs: list[tuple[bytes, bytes]],
                                                           clear: bool) -> None:
    raw = b"HTTP/1.1 200 OK" + b"".join(b"\r\n" + name + b":" + value for name, value in pairs)
    drop = frozenset({b"x-request-id"})

    def read() -> tuple[object, ...] | str:
        try:
            return fields(parse_head(raw, drop=drop))
        except ProtocolError as exc:
            return str(exc)

    if clear:
        http1._FIELDS.clear()
    cold = read()
    assert read() == cold
    http1._FIELDS.clear()
    assert read() == cold


RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world"
CHUNKED_RESPONSE = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"5;ext=1\r\nhello\r\n1\r\n \r\n05\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n")


@given(st.lists(st.integers(min_value=0, max_value=len(CHUNKED_RESPONSE)), max_size=12))
def test_chunked_body_survives_any_split(cuts: list[int]) -> None:
    reader, body = read_all(CHUNKED_RESPONSE, pieces=cuts)
    assert body == b"hello world"
    assert reader.done and reader.reusable


@given(st.lists(st.integers(min_value=0, max_value=len(RESPONSE)), max_size=8))
def test_length_body_survives_any_split(cuts: list[int]) -> None:
    reader, body = read_all(RESPONSE, pieces=cuts)
    assert body == b"hello world" and reader.done and reader.reusable


def test_interim_responses_are_skipped() -> None:
    raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + RESPONSE
    reader, body = read_all(raw, pieces=[10, 30])
    assert reader.head is not None and reader.head.status == 200 and body == b"hello world"


def test_unasked_switching_protocols_is_refused() -> None:
    with pytest.raises(ProtocolError):
        ResponseReader().feed(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n")


def test_head_response_has_no_body_whatever_it_announces() -> None:
    reader, body = read_all(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n", head_request=True)
    assert body == b"" and reader.done and reader.reusable
    assert reader.head is not None and reader.head.headers == [(b"content-length", b"500")]
    reader, _ = read_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", head_request=True)
    assert reader.done and reader.reusable


def test_304_with_length_has_no_body() -> None:
    reader, body = read_all(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\nETag: x\r\n\r\n")
    assert body == b"" and reader.done and reader.reusable
    # Passed downstream, the length would make the server expect a body.
    assert reader.head is not None and reader.head.headers == [(b"etag", b"x")]


def test_bytes_beyond_the_response_make_the_connection_unusable() -> None:
    reader, body = read_all(RESPONSE + b"HTTP/1.1 200 OK\r\n")
    assert body == b"hello world" and reader.done and not reader.reusable
    reader, _ = read_all(b"HTTP/1.1 204 No Content\r\n\r\nextra")
    assert reader.done and not reader.reusable
    reader = ResponseReader()
    reader.feed(RESPONSE)
    reader.feed(b"late")
    assert not reader.reusable


def test_close_delimited_body_ends_at_eof() -> None:
    reader, body = read_all(b"HTTP/1.1 200 OK\r\n\r\nall of it", pieces=[25], eof=True)
    assert body == b"all of it" and reader.done and not reader.reusable


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
    b"HTTP/1.1 200 OK\r\nContent-Le",
    b"",
])
def test_eof_before_the_end_is_a_protocol_error(raw: bytes) -> None:
    reader = ResponseReader()
    reader.feed(raw)
    with pytest.raises(ProtocolError):
        reader.feed_eof()


@pytest.mark.parametrize("body", [
    b"zz\r\nhello\r\n0\r\n\r\n",
    b"-5\r\nhello\r\n0\r\n\r\n",
    b"5\r\nhelloXX0\r\n\r\n",
    b"\r\nhello\r\n",
    b"1" * 20 + b"\r\n",
    b"5\r\nhello\r\n0\r\nbad trailer\r\n\r\n",
    # a bare CR or LF in a chunk line (the extension was skipped unread before)
    b"5;a\rb\r\nhello\r\n0\r\n\r\n",
    b"5;a\nb\r\nhello\r\n0\r\n\r\n",
    b"5\r\nhello\r\n0\r\nX-T: t\n\r\n",
])
def test_malformed_chunks_are_refused(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        ResponseReader().feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body)


def test_trailers_are_limited_in_all() -> None:
    # Each field is small, but the section grows without end: refused past MAX_TRAILERS.
    reader = ResponseReader()
    reader.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n")
    field = b"X-T: " + b"t" * 1000 + b"\r\n"
    with pytest.raises(ProtocolError):
        for _ in range(70):
            reader.feed(field)
    assert not reader.done


def test_extensions_and_whitespace_from_upstreams_are_tolerated() -> None:
    # The upstream leg ignores extensions (the request leg holds them to their grammar).
    reader, body = read_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"5 ;odd ext!\r\nhello\r\n0\r\n\r\n")
    assert body == b"hello" and reader.done and reader.reusable


def test_oversize_head_is_refused() -> None:
    reader = ResponseReader()
    with pytest.raises(ProtocolError):
        for _ in range(80):
            reader.feed(b"X-Filler: " + b"f" * 1000 + b"\r\n")


def test_connection_close_response_is_not_reusable() -> None:
    reader, _ = read_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
    assert reader.done and not reader.reusable


LARGE = b"y" * APART_FROM + b"z" * 3
LARGE_RESPONSE = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(LARGE)
                  + LARGE)


def test_a_large_body_read_with_its_head_is_a_view_of_the_read() -> None:
    reader = ResponseReader()
    body = reader.feed(LARGE_RESPONSE)
    assert isinstance(body, memoryview) and body.obj is LARGE_RESPONSE  # not copied out
    assert body == LARGE and reader.done and reader.reusable
    # more than the body in the read: the view ends with the body, the connection is out of step
    reader = ResponseReader()
    body = reader.feed(LARGE_RESPONSE + b"HTTP/1.1 200 OK")
    assert isinstance(body, memoryview) and body == LARGE and reader.done and not reader.reusable
    # a part of it: a view, then the rest as read
    reader = ResponseReader()
    cut = len(LARGE_RESPONSE) - 2  # APART_FROM + 1 bytes of the body with the head
    first = reader.feed(LARGE_RESPONSE[:cut])
    assert isinstance(first, memoryview) and not reader.done
    assert bytes(first) + reader.feed(LARGE_RESPONSE[cut:]) == LARGE and reader.done
    # a small body, or one read apart from its head, is bytes as before
    assert type(ResponseReader().feed(RESPONSE)) is bytes
    reader = ResponseReader()
    end = LARGE_RESPONSE.index(b"\r\n\r\ny") + 4
    assert reader.feed(LARGE_RESPONSE[:end]) == b""
    assert type(reader.feed(LARGE_RESPONSE[end:])) is bytes and reader.done


@given(st.lists(st.integers(min_value=0, max_value=len(LARGE_RESPONSE)), max_size=6))
def test_a_large_body_survives_any_split(cuts: list[int]) -> None:
    reader, body = read_all(LARGE_RESPONSE, pieces=cuts)
    assert body == LARGE and reader.done and reader.reusable
    assert reader.head is not None and reader.head.status == 200
