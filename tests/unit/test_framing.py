"""The edge framing rules (`gateway.http.framing`): table cases and fuzzing of heads and chunked bodies."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.errors import ConfigError
from gateway.core.settings import load_settings
from gateway.http import framing
from gateway.http.framing import (
    CHUNKED,
    LENGTH,
    NO_BODY,
    ChunkedBody,
    HeadLimits,
    Refusal,
    check_head,
    refusal_response,
)
from gateway.http.headers import PLAIN_CONNECTION

LIMITS = HeadLimits(max_request_line=100, max_header_bytes=300, max_headers=5, max_body=1000)


def head(*lines: bytes, request: bytes = b"GET / HTTP/1.1") -> bytes:
    return b"\r\n".join((request, *lines)) + b"\r\n\r\n"


def refused(block: bytes, limits: HeadLimits = LIMITS) -> tuple[int, str]:
    with pytest.raises(Refusal) as info:
        check_head(block, limits)
    return info.value.status, info.value.code


def test_a_plain_request_passes_unchanged() -> None:
    block = head(b"Host: a", b"Accept: */*")
    checked = check_head(block, LIMITS)
    assert checked.head == block and checked.framing == NO_BODY and checked.method == b"GET"


def test_body_framing_is_reported() -> None:
    assert check_head(head(b"Host: a", b"Content-Length: 12"), LIMITS).framing == LENGTH
    assert check_head(head(b"Host: a", b"Content-Length: 12"), LIMITS).length == 12
    assert check_head(head(b"Host: a", b"Content-Length: 0"), LIMITS).framing == NO_BODY
    assert check_head(head(b"Host: a", b"Transfer-Encoding:  Chunked "), LIMITS).framing == CHUNKED
    assert check_head(head(b"Host: a", b"Expect: 100-Continue", b"Content-Length: 1"), LIMITS).expect_continue


@pytest.mark.parametrize(("lines", "request_line", "status", "code"), [
    ((b"Host: a", b"Content-Length: 1", b"Transfer-Encoding: chunked"), b"POST / HTTP/1.1", 400,
     "ambiguous-framing"),
    ((b"Host: a", b"Content-Length: 1", b"Content-Length: 1"), b"POST / HTTP/1.1", 400, "ambiguous-framing"),
    ((b"Host: a", b"Content-Length: 1e3"), b"POST / HTTP/1.1", 400, "bad-content-length"),
    ((b"Host: a", b"Content-Length: 1001"), b"POST / HTTP/1.1", 413, "body-too-large"),
    ((b"Host: a", b"Transfer-Encoding: gzip, chunked"), b"POST / HTTP/1.1", 501,
     "unsupported-transfer-coding"),
    ((b"Host: a", b"Transfer-Encoding: chunked,"), b"POST / HTTP/1.1", 400, "bad-transfer-encoding"),
    ((b"Host: a",), b"GET / HTTP/3.0", 505, "http-version-not-supported"),
    ((b"Host: a",), b"GET / HTTP/1.1 ", 400, "bad-request-line"),
    ((b"Host: a",), b"G@T / HTTP/1.1", 400, "bad-request-line"),
    ((), b"GET / HTTP/1.1", 400, "missing-host"),
    ((b"Host: a", b"host: a"), b"GET / HTTP/1.1", 400, "duplicate-host"),
    ((b"Host: a b",), b"GET / HTTP/1.1", 400, "bad-host"),
    ((b"Host: a",), b"OPTIONS a.example:443 HTTP/1.1", 400, "bad-target"),
    ((b"Host: a",), b"GET ftp://a/ HTTP/1.1", 400, "bad-target"),
    ((b"Host: a", b"X-A: \x7f"), b"GET / HTTP/1.1", 400, "bad-header-value"),
    ((b"Host: a", b"X A: b"), b"GET / HTTP/1.1", 400, "bad-header-name"),
    ((b"Host: a", b"\tX-A: b"), b"GET / HTTP/1.1", 400, "obsolete-line-folding"),
    ((b"Host: a", b"X_Request_Id: 1"), b"GET / HTTP/1.1", 400, "underscore-header"),
    ((b"Host: a", b"X_Peel_Beta: 1"), b"GET / HTTP/1.1", 400, "underscore-header"),
    ((b"Host: a", b"Connection: close, Host"), b"GET / HTTP/1.1", 400, "protected-header-nominated"),
    ((b"Host: a", b"Expect: 100-continue, x"), b"GET / HTTP/1.1", 417, "unsupported-expectation"),
    ((b"Host: a",) + (b"X-N: 1",) * 5, b"GET / HTTP/1.1", 431, "too-many-headers"),
    ((b"Host: a", b"X-Big: " + b"b" * 300), b"GET / HTTP/1.1", 431, "header-too-large"),
    ((b"Host: a",), b"GET /" + b"a" * 100 + b" HTTP/1.1", 414, "request-line-too-long"),
])
def test_refusals(lines: tuple[bytes, ...], request_line: bytes, status: int, code: str) -> None:
    assert refused(head(*lines, request=request_line)) == (status, code)


@pytest.mark.parametrize("value", sorted(PLAIN_CONNECTION))
@pytest.mark.parametrize("request_line", [b"GET / HTTP/1.1", b"GET / HTTP/1.0"])
def test_a_plain_connection_value_reads_as_its_tokens_do(value: bytes, request_line: bytes) -> None:
    # "close," is read token by token; "close" as clients spell it, without a split
    plain = check_head(head(b"Host: a", b"Connection: " + value, request=request_line), LIMITS)
    split = check_head(head(b"Host: a", b"Connection: " + value + b",", request=request_line), LIMITS)
    closes = PLAIN_CONNECTION[value]  # else keep-alive, which HTTP/1.0 needs to keep the connection
    assert plain.keep_alive == split.keep_alive == (not closes)


def test_underscore_names_pass_when_allowed_or_harmless() -> None:
    allowing = HeadLimits(allow_underscore_headers=True)
    check_head(head(b"Host: a", b"X_Forwarded_For: 1.2.3.4"), allowing)
    check_head(head(b"Host: a", b"X_Custom: 1"), LIMITS)


def test_upgrade_offers_are_taken_out_of_the_head() -> None:
    checked = check_head(head(b"Host: a", b"Connection: Upgrade, HTTP2-Settings", b"Upgrade: h2c",
                              b"HTTP2-Settings: AAA", b"X-Kept: 1"), LIMITS)
    assert checked.upgrade_stripped
    assert checked.head == head(b"Host: a", b"Connection: Upgrade, HTTP2-Settings", b"X-Kept: 1")


def test_targets() -> None:
    check_head(head(b"Host: a", request=b"OPTIONS * HTTP/1.1"), LIMITS)
    check_head(head(b"Host: a", request=b"GET HTTP://a.example:8080/x?y HTTP/1.1"), LIMITS)
    check_head(head(request=b"GET /ten HTTP/1.0"), LIMITS)  # HTTP/1.0 needs no Host
    assert refused(head(b"Host: a", request=b"GET * HTTP/1.1"))[1] == "bad-target"


def test_refusal_response_is_problem_json_and_closes() -> None:
    answer = refusal_response(Refusal(408, "header-timeout", "slow"))
    head_part, _, body = answer.partition(b"\r\n\r\n")
    assert head_part.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"connection: close" in head_part.lower()
    assert b"content-type: application/problem+json" in head_part.lower()
    doc = json.loads(body)
    assert doc["status"] == 408 and doc["code"] == "header-timeout" and doc["title"] == "Request Timeout"


# -- chunked bodies -------------------------------------------------------------------------------


def feed_all(body: bytes, pieces: list[int], max_body: int = 0) -> tuple[int, ChunkedBody]:
    scanner = ChunkedBody(max_body)
    used = 0
    for size in pieces:
        if scanner.done:
            break
        part = body[used:used + size]
        if not part:
            break
        used += scanner.feed(part)
    if not scanner.done and used < len(body):
        used += scanner.feed(body[used:])
    return used, scanner


def encode_chunked(parts: list[bytes], extension: bytes = b"") -> bytes:
    out = b"".join(b"%x%s\r\n%s\r\n" % (len(p), extension, p) for p in parts if p)
    return out + b"0\r\nX-Trailer: t\r\n\r\n"


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=50), max_size=8), st.lists(st.integers(1, 40), max_size=30),
       st.binary(max_size=40), st.sampled_from([b"", b";a=b", b'; q="x\\"y"']))
def test_a_chunked_body_ends_exactly_where_it_ends(parts: list[bytes], pieces: list[int], after: bytes,
                                                   extension: bytes) -> None:
    body = encode_chunked(parts, extension)
    used, scanner = feed_all(body + after, pieces)
    assert scanner.done and used == len(body)
    assert scanner.received == sum(len(p) for p in parts)


def test_chunked_refusals() -> None:
    for bad in (b"x\r\n", b"5 ;\r\n", b"ffffffffffffffff\r\n", b"2\r\nabc\r\n", b"2\nab\r\n",
                b"0\r\n bad trailer\r\n\r\n", b"0\r\nno-colon\r\n\r\n"):
        with pytest.raises(Refusal):
            ChunkedBody().feed(bad)
    with pytest.raises(Refusal) as info:
        ChunkedBody(max_body=10).feed(b"b\r\n")
    assert info.value.status == 413


def test_the_trailer_limit_counts_the_whole_section_across_reads() -> None:
    # Fed a line at a time, 16 KiB of trailers in 1 KiB fields are still refused (the limit once
    # counted only what one read held).
    scanner = ChunkedBody()
    scanner.feed(b"1\r\na\r\n0\r\n")
    field = b"X-T: " + b"t" * 1000 + b"\r\n"
    with pytest.raises(Refusal) as info:
        for _ in range(17):
            scanner.feed(field)
    assert (info.value.status, info.value.code) == (431, "trailers-too-large") and not scanner.done


def test_the_trailer_section_is_limited_in_fields_too() -> None:
    scanner = ChunkedBody()
    scanner.feed(b"1\r\na\r\n0\r\n" + b"X-T: 1\r\n" * 32)
    assert not scanner.done
    with pytest.raises(Refusal) as info:
        scanner.feed(b"X-T: 1\r\n")
    assert (info.value.status, info.value.code) == (431, "trailers-too-large")
    scanner = ChunkedBody()
    assert scanner.feed(b"1\r\na\r\n0\r\n" + b"X-T: 1\r\n" * 32 + b"\r\n") > 0 and scanner.done


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_break_the_chunk_scanner(data: bytes) -> None:
    scanner = ChunkedBody(max_body=1 << 20)
    try:
        used = scanner.feed(data)
    except Refusal as refusal:
        assert refusal.status in (400, 413, 431)
    else:
        assert 0 <= used <= len(data)
        assert scanner.done or used == len(data)


_HEAD_BYTES = st.sampled_from([b"GET", b"POST", b" ", b"/", b"\r\n", b"\n", b"\r", b"HTTP/1.1", b"HTTP/1.0",
                               b"Host: a", b"Content-Length: 5", b"Transfer-Encoding: chunked", b":",
                               b"\x00", b"\t", b"_", b"x", b"\xff", b",", b"Connection: host", b"*"])


@settings(max_examples=1000)
@given(st.lists(_HEAD_BYTES, max_size=30))
def test_arbitrary_heads_are_accepted_or_refused_never_crash(tokens: list[bytes]) -> None:
    block = b"".join(tokens) + b"\r\n\r\n"
    try:
        checked = check_head(block, LIMITS)
    except Refusal as refusal:
        assert 400 <= refusal.status <= 505
        return
    # What passes is well-formed: CRLF only, one Host on 1.1, and framing that is not ambiguous.
    assert checked.head.count(b"\n") == checked.head.count(b"\r\n")
    lowered = checked.head.lower()
    assert not (b"content-length" in lowered and b"transfer-encoding" in lowered)
    assert b"\x00" not in checked.head


# Pieces of request lines and field lines: each rule's edge (a token's last characters, control
# bytes, obs-text, whitespace where it may and may not be, versions that parse and that do not).
_LINE_BYTES = st.sampled_from([b"GET", b"get", b"M-SEARCH", b"PROPFIND", b"G{T", b" ", b"  ", b"\t", b"/",
                               b"/a?b=c", b"*", b"http://h/x", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0",
                               b"HTTP/1.1 ", b"HTTP/1.", b"x", b"_", b":", b"!#$%&'*+-.^`|~", b"\x00",
                               b"\x7f", b"\x80", b"\xff", b"\x1f", b"@", b",", b"\""])


def _reference_request_line(line: bytes) -> tuple[bytes, bytes, tuple[int, int]] | tuple[int, str]:
    """The request line's verdict as the pattern alone gives it (the path before the fast one)."""
    match = framing._REQUEST_LINE.fullmatch(line)
    if match is None:
        return 400, "bad-request-line"
    method, target, major, minor = match.groups()
    version = (int(major), int(minor))
    if version not in ((1, 1), (1, 0)):
        return 505, "http-version-not-supported"
    if target.translate(None, framing._TARGET_BYTES):
        return 400, "bad-target"
    return method, target, version


_PART = st.lists(_LINE_BYTES, max_size=3).map(b"".join)


@settings(max_examples=3000)
@given(st.one_of(st.lists(_LINE_BYTES, max_size=8).map(b"".join),
                 # shaped like a request line: method, separator, target, separator, version, a tail
                 st.tuples(st.sampled_from([b"GET", b"POST", b"M-SEARCH", b"G{T", b"", b"get"]) | _PART,
                           st.sampled_from([b" ", b"  ", b"\t", b""]),
                           st.sampled_from([b"/", b"/a?b", b"*"]) | _PART,
                           st.sampled_from([b" ", b"  ", b"\t", b""]),
                           st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.", b"http/1.1"]),
                           st.sampled_from([b"", b" ", b"1", b"\x00"])).map(b"".join)))
def test_the_request_line_without_the_pattern_reads_as_the_pattern_does(line: bytes) -> None:
    try:
        verdict: object = framing._request_line(line)
    except Refusal as refusal:
        verdict = (refusal.status, refusal.code)
    assert verdict == _reference_request_line(line)


def _field_verdict(field: bytes) -> str | None:
    try:
        framing._field(field, HeadLimits(allow_underscore_headers=True))
    except Refusal as refusal:
        return refusal.code
    return None


def _verdict(block: bytes, limits: HeadLimits) -> object:
    """Everything `check_head` says of `block`: the Head's fields, or the refusal."""
    try:
        checked = check_head(block, limits)
    except Refusal as refusal:
        return refusal.status, refusal.code, refusal.detail
    return (checked.head, checked.method, checked.framing, checked.length, checked.expect_continue,
            checked.upgrade_stripped, checked.target, checked.version, checked.headers, checked.keep_alive)


@settings(max_examples=2000)
@given(st.lists(st.lists(_LINE_BYTES | st.sampled_from([b"Host", b"Content-Length", b"Transfer-Encoding",
                                                          b"Connection", b"Upgrade", b"Expect", b"5",
                                                          b"chunked", b"close", b"host"]),
                         max_size=6).map(b"".join), max_size=5),
       st.lists(st.booleans(), min_size=3, max_size=3))
def test_a_head_reads_the_same_whether_its_lines_were_remembered_or_not(fields: list[bytes],
                                                                          allowed: list[bool]) -> None:
    block = b"\r\n".join((b"POST / HTTP/1.1", *fields)) + b"\r\n\r\n"
    strict, allowing = HeadLimits(), HeadLimits(allow_underscore_headers=True)
    framing._FIELD_LINES.clear()
    fresh = {False: _verdict(block, strict), True: _verdict(block, allowing)}
    framing._FIELD_LINES.clear()
    for allow in allowed:  # read again and again, the lines remembered under either setting
        assert _verdict(block, allowing if allow else strict) == fresh[allow]


def test_field_lines_are_read_once_and_the_memo_keeps_only_what_holds_for_every_setting() -> None:
    framing._FIELD_LINES.clear()
    agent = b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"
    cookie = b"Cookie: " + b"s" * 300
    block = head(b"Host: a", agent, b"Content-Length: 5", cookie, b"X_Trace: 1", b"Accept:  */* \t")
    first = check_head(block, HeadLimits())
    assert framing._FIELD_LINES[agent] == ((b"user-agent", agent[12:]), framing._OTHER)
    assert framing._FIELD_LINES[b"Content-Length: 5"] == ((b"content-length", b"5"), framing._CONTENT_LENGTH)
    assert framing._FIELD_LINES[b"Accept:  */* \t"][0] == (b"accept", b"*/*")
    assert cookie not in framing._FIELD_LINES  # long
    assert b"X_Trace: 1" not in framing._FIELD_LINES  # refused or not by the setting
    again = check_head(block, HeadLimits())
    assert (again.headers, again.framing, again.length) == (first.headers, LENGTH, 5)
    # a refused line is never remembered, and stays refused
    bad = b"X-Bad: a\x01b"
    for _ in range(2):
        assert refused(head(b"Host: a", bad)) == (400, "bad-header-value")
    assert bad not in framing._FIELD_LINES
    assert refused(head(b"Host: a", b"X_Forwarded_For: 1.2.3.4")) == (400, "underscore-header")
    # bounded, like every memo: a stream of distinct lines never grows it past its size
    for n in range(3 * framing._FIELD_LINES_MAX):
        check_head(head(b"Host: a", b"X-N: %d" % n), LIMITS)
        assert len(framing._FIELD_LINES) <= framing._FIELD_LINES_MAX
    framing._FIELD_LINES.clear()


@settings(max_examples=1000)
@given(st.lists(st.lists(_LINE_BYTES, max_size=6).map(b"".join), max_size=4))
def test_a_refused_head_names_the_field_rule_it_broke(fields: list[bytes]) -> None:
    block = b"\r\n".join((b"GET / HTTP/1.1", b"Host: a", *fields)) + b"\r\n\r\n"
    first = next((code for code in map(_field_verdict, fields) if code is not None), None)
    try:
        check_head(block, HeadLimits())
    except Refusal as refusal:
        if first is not None and block.count(b"\n") == block.count(b"\r\n") == block.count(b"\r"):
            assert refusal.code == first
        return
    assert first is None


def test_limits_settings_are_read_and_checked() -> None:
    loaded = load_settings(environ={"PEEL_LIMITS_MAX_BODY": "1048576", "PEEL_LIMITS_MAX_CONNECTIONS": "10",
                                    "PEEL_LIMITS_ALLOW_UNDERSCORE_HEADERS": "true"})
    assert loaded.limits.max_body == 1 << 20 and loaded.limits.max_connections == 10
    assert loaded.limits.allow_underscore_headers
    with pytest.raises(ConfigError, match="limits"):
        load_settings(environ={"PEEL_LIMITS_MAX_HEADERS": "0"})
    with pytest.raises(ConfigError, match="write_timeout"):
        load_settings(environ={"PEEL_LIMITS_WRITE_TIMEOUT": "0"})
