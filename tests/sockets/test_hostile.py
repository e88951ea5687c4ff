"""A catalogue of hostile requests over raw sockets against a real data-plane process.

Each case sends raw bytes and asserts what a client and an upstream would notice: the status of
the answer (problem+json with a Peel code for every refusal), whether the connection was closed,
and what the echo upstream received (a smuggled second request would show up there). After every
case a fresh client must still be served, and its request is the marker that proves the upstream
has seen everything the case could have sent it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.sockets.conftest import Proxy, start_proxy, stop_proxy, wait_for
from tests.sockets.upstreams import Seen, Upstreams

LIMITS = """
[server]
keepalive_timeout = 2.0
[limits]
max_request_line = 1024
max_header_bytes = 4096
max_headers = 20
max_body = 1024
header_timeout = 1.0
body_idle_timeout = 1.0
write_timeout = 1.0
"""


@pytest.fixture(scope="module")
def edge(upstreams: Upstreams, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    document = {
        "services": [{"name": "echo", "endpoints": [upstreams.echo.url]}],
        "routes": [
            {"name": "echo", "match": {"path_prefix": "/e"}, "service": "echo",
             "rewrite": {"path_prefix": "/"}},
            {"name": "known-host", "match": {"hosts": ["known.example"], "path_prefix": "/"},
             "service": "echo"},
        ],
    }
    running = start_proxy(tmp_path_factory.mktemp("edge"), document, LIMITS)
    yield running
    stop_proxy(running)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def problem(self) -> dict[str, object]:
        assert self.headers.get("content-type") == "application/problem+json", self.headers
        doc = json.loads(self.body)
        assert isinstance(doc, dict)
        return doc


class Client:
    """A raw socket that reads HTTP/1.1 responses (Content-Length framed, as Peel answers)."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            return False
        self.buf += data
        return bool(data)

    def response(self) -> Response:
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise AssertionError(f"connection closed before a response head: {self.buf[:200]!r}")
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            if not self._fill():
                raise AssertionError("connection closed in the middle of a response body")
        body, self.buf = self.buf[:length], self.buf[length:]
        if 100 <= status < 200:
            return self.response()
        return Response(status, headers, body)

    def first_response_without_continue(self) -> Response:
        """The first response head must not be `100 Continue` (no body was sent yet); returns it."""
        while b"\r\n\r\n" not in self.buf:
            assert self._fill(), f"connection closed before a response head: {self.buf[:200]!r}"
        assert not self.buf.startswith(b"HTTP/1.1 100"), self.buf[:100]
        assert b"100 Continue" not in self.buf
        return self.response()

    def closed(self) -> bool:
        """True once the peer closes (within the socket timeout); bytes after the answer fail."""
        while True:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return True
            except TimeoutError:
                return False
            if not data:
                return not self.buf
            self.buf += data


@dataclass
class Case:
    name: str
    raw: bytes
    status: int
    closed: bool
    code: str | None = None  # the problem's Peel code, for refusals
    reached: list[str] = field(default_factory=list)  # upstream targets this case must produce
    responses: int = 1


H = b"Host: a\r\n"
SMUGGLED = b"GET /e/smuggled HTTP/1.1\r\nHost: a\r\n\r\n"


def chunked(*parts: bytes) -> bytes:
    return b"POST /e/c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + b"".join(parts)


CASES = [
    # -- framing: Content-Length and Transfer-Encoding ------------------------------------------
    Case("cl-and-te", b"POST /e/x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked"
         b"\r\n\r\n0\r\n\r\n" + SMUGGLED, 400, True, "ambiguous-framing"),
    Case("te-and-cl", b"POST /e/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 40"
         b"\r\n\r\n0\r\n\r\n" + SMUGGLED, 400, True, "ambiguous-framing"),
    Case("two-cl-differing", b"POST /e/x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 38"
         b"\r\n\r\n" + SMUGGLED, 400, True, "ambiguous-framing"),
    Case("two-cl-equal", b"POST /e/x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 2"
         b"\r\n\r\nab", 400, True, "ambiguous-framing"),
    Case("cl-list", b"POST /e/x HTTP/1.1\r\nHost: a\r\nContent-Length: 2, 2\r\n\r\nab", 400, True,
         "ambiguous-framing"),
    Case("cl-not-a-number", b"POST /e/x HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", 400, True,
         "bad-content-length"),
    Case("cl-negative", b"POST /e/x HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400, True,
         "bad-content-length"),
    Case("cl-plus", b"POST /e/x HTTP/1.1\r\nHost: a\r\nContent-Length: +2\r\n\r\nab", 400, True,
         "bad-content-length"),
    Case("te-leading-comma", b"POST /e/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,chunked\r\n\r\n0\r\n\r\n",
         400, True, "bad-transfer-encoding"),
    Case("te-chunked-twice", b"POST /e/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"
         b"0\r\n\r\n", 400, True, "bad-transfer-encoding"),
    Case("te-two-fields", b"POST /e/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, True, "bad-transfer-encoding"),
    Case("te-gzip-chunked", b"POST /e/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
         b"0\r\n\r\n", 501, True, "unsupported-transfer-coding"),
    Case("te-chunked-not-final", b"POST /e/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
         400, True, "bad-transfer-encoding"),
    Case("te-identity", b"POST /e/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n" + SMUGGLED,
         400, True, "bad-transfer-encoding"),
    Case("te-xchunked", b"POST /e/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", 400, True,
         "bad-transfer-encoding"),
    Case("te-on-http10", b"POST /e/x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, True,
         "ambiguous-framing"),
    Case("chunk-size-not-hex", chunked(b"zz\r\nab\r\n0\r\n\r\n"), 400, True, "bad-chunk"),
    Case("chunk-size-overflow", chunked(b"ffffffffffffffffff\r\nab\r\n0\r\n\r\n"), 400, True, "bad-chunk"),
    Case("chunk-bad-extension", chunked(b"2;=x\r\nab\r\n0\r\n\r\n"), 400, True, "bad-chunk"),
    Case("chunk-longer-than-size", chunked(b"2\r\nabcd\r\n0\r\n\r\n" + SMUGGLED), 400, True, "bad-chunk"),
    Case("chunk-bare-lf", chunked(b"2\nab\r\n0\r\n\r\n"), 400, True, "bare-line-ending"),
    Case("chunked-with-extension-ok", chunked(b'2;name="v"\r\nab\r\n0\r\n\r\n'), 200, False,
         reached=["/c"]),
    # -- framing: the head -----------------------------------------------------------------------
    Case("bare-lf-head", b"GET /e/x HTTP/1.1\nHost: a\n\n", 400, True, "bare-line-ending"),
    Case("bare-cr-in-value", b"GET /e/x HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n", 400, True,
         "bare-line-ending"),
    Case("obs-fold", b"GET /e/x HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", 400, True,
         "obsolete-line-folding"),
    Case("space-before-colon", b"GET /e/x HTTP/1.1\r\nHost : a\r\n\r\n", 400, True, "bad-header-name"),
    Case("nul-in-value", b"GET /e/x HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n", 400, True,
         "bad-header-value"),
    Case("non-token-name", b"GET /e/x HTTP/1.1\r\nHost: a\r\nX(A): b\r\n\r\n", 400, True, "bad-header-name"),
    Case("empty-name", b"GET /e/x HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n", 400, True, "bad-header-name"),
    Case("http-2-0", b"GET /e/x HTTP/2.0\r\nHost: a\r\n\r\n", 505, True, "http-version-not-supported"),
    Case("h2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, True, "http-version-not-supported"),
    Case("http-1-2", b"GET /e/x HTTP/1.2\r\nHost: a\r\n\r\n", 505, True, "http-version-not-supported"),
    Case("lower-case-version", b"GET /e/x http/1.1\r\nHost: a\r\n\r\n", 400, True, "bad-request-line"),
    Case("http-0-9", b"GET /e/x\r\n\r\n", 400, True, "bad-request-line"),
    Case("double-space", b"GET  /e/x HTTP/1.1\r\nHost: a\r\n\r\n", 400, True, "bad-request-line"),
    Case("missing-host", b"GET /e/x HTTP/1.1\r\n\r\n", 400, True, "missing-host"),
    Case("duplicate-host", b"GET /e/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, True, "duplicate-host"),
    Case("host-with-userinfo", b"GET /e/x HTTP/1.1\r\nHost: a@evil\r\n\r\n", 400, True, "bad-host"),
    Case("http10-without-host", b"GET /e/ten HTTP/1.0\r\n\r\n", 200, True, reached=["/ten"]),
    Case("leading-empty-line", b"\r\nGET /e/lead HTTP/1.1\r\nHost: a\r\n\r\n", 200, False, reached=["/lead"]),
    # -- targets -----------------------------------------------------------------------------------
    Case("absolute-form-foreign", b"GET http://elsewhere.example/e/x HTTP/1.1\r\nHost: a\r\n\r\n", 400, False,
         "not-an-open-proxy"),
    Case("absolute-form-routed", b"GET http://known.example/abs HTTP/1.1\r\nHost: known.example\r\n\r\n",
         200, False, reached=["/abs"]),
    Case("star-with-get", b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400, True, "bad-target"),
    Case("authority-form-connect", b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n", 400,
         True, "bad-target"),
    Case("non-ascii-target", b"GET /e/\xff HTTP/1.1\r\nHost: a\r\n\r\n", 400, True, "bad-target"),
    Case("fragment-in-target", b"GET /e/x#frag HTTP/1.1\r\nHost: a\r\n\r\n", 400, True, "bad-target"),
    Case("nul-in-path", b"GET /e/a%00b HTTP/1.1\r\nHost: a\r\n\r\n", 400, False, "bad-path"),
    Case("encoded-slash", b"GET /e/a%2Fb HTTP/1.1\r\nHost: a\r\n\r\n", 400, False, "bad-path"),
    Case("dot-segments", b"GET /e/a/%2e%2e/b HTTP/1.1\r\nHost: a\r\n\r\n", 200, False, reached=["/b"]),
    # -- limits --------------------------------------------------------------------------------------
    Case("request-line-too-long", b"GET /e/" + b"a" * 2000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414, True,
         "request-line-too-long"),
    Case("header-section-too-large", b"GET /e/x HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * 5000 + b"\r\n\r\n",
         431, True, "header-too-large"),
    Case("too-many-headers", b"GET /e/x HTTP/1.1\r\nHost: a\r\n" + b"X-N: 1\r\n" * 25 + b"\r\n", 431, True,
         "too-many-headers"),
    Case("declared-body-too-large", b"POST /e/x HTTP/1.1\r\nHost: a\r\nContent-Length: 2000\r\n\r\n"
         + b"x" * 2000, 413, True, "body-too-large"),
    Case("chunked-body-too-large", chunked(b"7d0\r\n" + b"x" * 2000 + b"\r\n0\r\n\r\n"), 413, True,
         "body-too-large"),
    Case("expect-other", b"POST /e/x HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\nx",
         417, True, "unsupported-expectation"),
    # -- header trust ----------------------------------------------------------------------------------
    Case("underscore-forwarded-for", b"GET /e/x HTTP/1.1\r\nHost: a\r\nX_Forwarded_For: 10.0.0.1\r\n\r\n",
         400, True, "underscore-header"),
    Case("underscore-content-length", b"GET /e/x HTTP/1.1\r\nHost: a\r\nContent_Length: 5\r\n\r\n", 400, True,
         "underscore-header"),
    Case("underscore-harmless", b"GET /e/under HTTP/1.1\r\nHost: a\r\nX_Custom: 1\r\n\r\n", 200, False,
         reached=["/under"]),
    Case("connection-nominates-xff", b"GET /e/x HTTP/1.1\r\nHost: a\r\nConnection: X-Forwarded-For\r\n\r\n",
         400, True, "protected-header-nominated"),
    Case("connection-nominates-cl", b"POST /e/x HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\n"
         b"Content-Length: 38\r\n\r\n" + SMUGGLED, 400, True, "protected-header-nominated"),
    Case("h2c-upgrade", b"GET /e/h2c HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
         b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n", 200, False, reached=["/h2c"]),
    Case("websocket-upgrade", b"GET /e/ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n"
         b"Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
         b"Sec-WebSocket-Version: 13\r\n\r\n", 403, True, "websocket-not-allowed"),
    Case("hop-by-hop-family", b"GET /e/hop HTTP/1.1\r\nHost: a\r\nProxy-Connection: keep-alive\r\n"
         b"Keep-Alive: 300\r\nTE: trailers\r\nTrailer: X-T\r\n\r\n", 200, False, reached=["/hop"]),
    # -- pipelining ------------------------------------------------------------------------------------
    Case("pipelined-pair", b"GET /e/p1 HTTP/1.1\r\nHost: a\r\n\r\nGET /e/p2 HTTP/1.1\r\nHost: a\r\n\r\n", 200,
         False, reached=["/p1", "/p2"], responses=2),
    Case("pipelined-then-hostile", b"GET /e/q1 HTTP/1.1\r\nHost: a\r\n\r\nGET /e/q2 HTTP/1.1\r\nHost: a\r\n"
         b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED, 400, True,
         "ambiguous-framing", reached=["/q1"], responses=2),
]

_markers = itertools.count()


def new_since(upstreams: Upstreams, before: int) -> list[Seen]:
    return list(upstreams.echo.seen[before:])


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_request(case: Case, edge: Proxy, upstreams: Upstreams) -> None:
    before = len(upstreams.echo.seen)
    client = Client(edge.port)
    try:
        client.send(case.raw)
        answers = [client.response() for _ in range(case.responses)]
        last = answers[-1]
        assert last.status == case.status, (last.status, last.body)
        for earlier in answers[:-1]:
            assert earlier.status == 200
        if case.code is not None:
            doc = last.problem()
            assert doc["code"] == case.code and doc["status"] == case.status, doc
        if case.closed:
            assert client.closed(), "the connection stayed open after a refusal that must close it"
        else:
            # Still open and in step: a second request on the same connection is answered.
            client.send(b"GET /e/again HTTP/1.1\r\nHost: a\r\n\r\n")
            assert client.response().status == 200
    finally:
        client.close()

    # The worker still serves others, and the marker proves the upstream saw all it ever will.
    marker = f"/e/marker-{next(_markers)}"
    response, _ = edge.request("GET", marker)
    assert response.status == 200
    wait_for(lambda: any(s.target == marker[2:] for s in upstreams.echo.seen[before:]), 5, "the marker")
    targets = [s.target for s in new_since(upstreams, before)
               if not s.target.startswith("/marker-") and s.target != "/again"]
    assert sorted(targets) == sorted(case.reached)
    assert "/smuggled" not in targets


def test_catalogue_is_large_enough() -> None:
    assert len(CASES) >= 40


def test_upgrade_and_hop_by_hop_headers_do_not_reach_the_upstream(edge: Proxy, upstreams: Upstreams) -> None:
    client = Client(edge.port)
    try:
        client.send(b"GET /e/strip HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings, X-Gone\r\n"
                    b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\nX-Gone: 1\r\nProxy-Connection: x\r\n"
                    b"Keep-Alive: 1\r\nTE: trailers\r\nTrailer: X-T\r\nX-Kept: yes\r\n\r\n")
        assert client.response().status == 200
    finally:
        client.close()
    seen = next(s for s in reversed(upstreams.echo.seen) if s.target == "/strip")
    assert seen.header("x-kept") == "yes"
    for gone in ("upgrade", "http2-settings", "x-gone", "proxy-connection", "keep-alive", "te", "trailer"):
        assert gone not in seen.names(), gone
    assert seen.header("connection") in (None, "keep-alive")


def test_oversized_expect_continue_is_refused_before_any_100(edge: Proxy, upstreams: Upstreams) -> None:
    before = len(upstreams.echo.seen)
    client = Client(edge.port)
    try:
        client.send(b"POST /e/big HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
                    b"Content-Length: 5000\r\n\r\n")
        response = client.first_response_without_continue()
        assert response.status == 413
        assert response.problem()["code"] == "body-too-large"
        assert client.closed()
    finally:
        client.close()
    assert not [s for s in upstreams.echo.seen[before:] if s.target == "/big"]


def test_expect_continue_within_the_limit_gets_a_100(edge: Proxy) -> None:
    client = Client(edge.port)
    try:
        client.send(b"POST /e/small HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        while b"\r\n\r\n" not in client.buf:
            assert client._fill()
        assert client.buf.startswith(b"HTTP/1.1 100 ")
        client.send(b"hello")
        response = client.response()
        assert response.status == 200
        assert json.loads(response.body)["body_length"] == 5
    finally:
        client.close()


def test_a_stalled_body_is_answered_408_and_closed(edge: Proxy, upstreams: Upstreams) -> None:
    before = len(upstreams.echo.seen)
    client = Client(edge.port)
    try:
        client.send(b"POST /e/stall HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
        started = time.monotonic()
        response = client.response()
        assert response.status == 408 and response.problem()["code"] == "body-timeout"
        assert 0.8 <= time.monotonic() - started < 4.0
        assert client.closed()
    finally:
        client.close()
    assert not [s for s in upstreams.echo.seen[before:] if s.target == "/stall"]


def test_a_trickled_head_gets_408(edge: Proxy) -> None:
    client = Client(edge.port)
    try:
        client.send(b"GET /e/x HTTP/1.1\r\nHost: a\r\n")
        response = client.response()
        assert response.status == 408 and response.problem()["code"] == "header-timeout"
        assert client.closed()
    finally:
        client.close()


def test_a_client_that_stops_reading_is_cut(edge: Proxy) -> None:
    client = Client(edge.port, timeout=20)
    try:
        client.send(b"GET /e/stream/500000000 HTTP/1.1\r\nHost: a\r\n\r\n")
        time.sleep(3.0)  # the client's behaviour under test: it stops reading for 3 s
        total = 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                data = client.sock.recv(1 << 20)
            except ConnectionResetError:
                break
            if not data:
                break
            total += len(data)
        else:
            raise AssertionError("an endless response to a client that stopped reading was never cut")
        assert total < 64 << 20
    finally:
        client.close()
    assert edge.request("GET", "/e/after-cut")[0].status == 200


def test_slowloris_does_not_starve_normal_clients(edge: Proxy) -> None:
    """300 connections trickle a head a byte at a time; normal requests keep being answered."""
    head = b"GET /e/slow HTTP/1.1\r\nHost: a\r\nX-Padding: " + b"p" * 200
    slow = []
    for _ in range(300):
        sock = socket.create_connection(("127.0.0.1", edge.port), timeout=5)
        sock.setblocking(False)
        slow.append(sock)
    latencies = []
    try:
        started = time.monotonic()
        for position in range(len(head)):
            if time.monotonic() - started > 2.5:
                break
            for sock in slow:
                with contextlib.suppress(OSError):  # already cut by the header timeout
                    sock.send(head[position:position + 1])
            t0 = time.monotonic()
            response, _ = edge.request("GET", "/e/normal")
            latencies.append(time.monotonic() - t0)
            assert response.status == 200
            time.sleep(0.05)  # the attackers' pace
        # Every trickling connection was cut within the header timeout (with a 408 once bytes came).
        for sock in slow:
            sock.setblocking(True)
            sock.settimeout(5)
            data = b""
            try:
                while chunk := sock.recv(4096):
                    data += chunk
            except ConnectionResetError:
                pass
            assert data == b"" or data.startswith(b"HTTP/1.1 408 "), data[:60]
    finally:
        for sock in slow:
            sock.close()
    assert len(latencies) >= 10
    assert max(latencies) < 1.0, max(latencies)


def test_max_connections_refuses_the_one_too_many(upstreams: Upstreams, tmp_path: Path) -> None:
    document = {"services": [{"name": "echo", "endpoints": [upstreams.echo.url]}],
                "routes": [{"name": "echo", "match": {"path_prefix": "/"}, "service": "echo"}]}
    proxy = start_proxy(tmp_path, document, "[limits]\nmax_connections = 3\n")
    held = []
    try:
        for _ in range(3):
            client = Client(proxy.port)
            client.send(b"GET /held HTTP/1.1\r\nHost: a\r\n\r\n")
            assert client.response().status == 200
            held.append(client)
        extra = Client(proxy.port)
        response = extra.response()
        assert response.status == 503 and response.problem()["code"] == "too-many-connections"
        assert extra.closed()
        extra.close()
        held.pop().close()
        wait_for(lambda: _accepts(proxy), 5, "a free connection slot")
    finally:
        for client in held:
            client.close()
        stop_proxy(proxy)


def _accepts(proxy: Proxy) -> bool:
    client = Client(proxy.port)
    try:
        client.send(b"GET /probe HTTP/1.1\r\nHost: a\r\n\r\n")
        return client.response().status == 200
    finally:
        client.close()


def test_trailer_fields_never_reach_the_upstream(edge: Proxy, upstreams: Upstreams) -> None:
    # A PUT is retryable, so Peel holds its body before it goes upstream: httptools reports the
    # trailers while that happens, and they once landed in the forwarded head, past every trust rule.
    client = Client(edge.port)
    try:
        client.send(b"PUT /e/trailers HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"5\r\nhello\r\n0\r\nPeel-Timeout-Ms: 1\r\nX-Forwarded-For: 6.6.6.6\r\n"
                    b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n"
                    b"X-Trailer-Only: yes\r\n\r\n")
        response = client.response()
        assert response.status == 200
    finally:
        client.close()
    seen = next(s for s in reversed(upstreams.echo.seen) if s.target == "/trailers")
    assert seen.body_length == 5
    for gone in ("peel-timeout-ms", "x-trailer-only", "traceparent"):
        assert gone not in seen.names(), gone
    assert "6.6.6.6" not in (seen.header("x-forwarded-for") or "")


def test_a_trailer_section_past_its_limits_is_431_and_closes(edge: Proxy, upstreams: Upstreams) -> None:
    before = len(upstreams.echo.seen)
    client = Client(edge.port)
    try:
        client.send(b"POST /e/many-trailers HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"1\r\na\r\n0\r\n" + b"X-T: 1\r\n" * 40 + b"\r\n")
        response = client.response()
        assert response.status == 431
        assert b"trailers-too-large" in response.body
        assert client.closed()
    finally:
        client.close()
    assert not any(s.target == "/many-trailers" for s in upstreams.echo.seen[before:])


def test_options_asterisk_answers_the_documented_refusal(edge: Proxy, upstreams: Upstreams) -> None:
    # `OPTIONS *` is valid HTTP/1.1 (RFC 9110 9.3.7) but asks the server itself, and Peel has no
    # route for "the server": README and docs/edge.md list 400 not-an-open-proxy for it.
    client = Client(edge.port)
    try:
        client.send(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
        response = client.response()
    finally:
        client.close()
    assert response.status == 400
    assert json.loads(response.body)["code"] == "not-an-open-proxy"
