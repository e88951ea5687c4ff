"""The data plane over real sockets: a proxy process between http.client and scripted upstreams."""

from __future__ import annotations

import http.client
import json
import re
import socket
import time

import pytest

from tests.access_log import records
from tests.sockets.conftest import Proxy, wait_for
from tests.sockets.upstreams import Seen, Upstreams


def last_seen(upstreams: Upstreams, count_before: int) -> Seen:
    wait_for(lambda: len(upstreams.echo.seen) > count_before, what="the upstream to see the request")
    return upstreams.echo.seen[-1]


def problem_of(response: http.client.HTTPResponse, body: bytes) -> dict[str, object]:
    assert response.getheader("content-type") == "application/problem+json"
    doc: dict[str, object] = json.loads(body)
    assert doc["request_id"] == response.getheader("x-request-id")
    return doc


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, read until the proxy closes or `timeout`; for what http.client cannot send."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while piece := sock.recv(65536):
                chunks.append(piece)
        except TimeoutError:
            pass
        return b"".join(chunks)


# -- through ------------------------------------------------------------------------------------


def test_get_goes_through_with_query_and_without_body_framing(proxy: Proxy, upstreams: Upstreams) -> None:
    before = len(upstreams.echo.seen)
    response, body = proxy.request("GET", "/e/echo?q=1&q=2")
    assert response.status == 200
    assert json.loads(body)["target"] == "/echo?q=1&q=2"
    seen = last_seen(upstreams, before)
    assert seen.method == "GET"
    assert "content-length" not in seen.names() and "transfer-encoding" not in seen.names()


def test_post_body_keeps_its_content_length(proxy: Proxy, upstreams: Upstreams) -> None:
    before = len(upstreams.echo.seen)
    response, body = proxy.request("POST", "/e/echo", body=b"x" * 12345)
    assert response.status == 200
    seen = last_seen(upstreams, before)
    assert (seen.body_length, seen.chunked, seen.header("content-length")) == (12345, False, "12345")
    assert response.getheader("content-length") == str(len(body))


def test_chunked_request_body_held_whole_goes_with_its_length(proxy: Proxy, upstreams: Upstreams) -> None:
    # Request buffering (on by default) has the whole body before the upstream is asked, so it
    # goes with a Content-Length, as nginx sends it (test_buffering: `buffering: false` keeps chunked).
    before = len(upstreams.echo.seen)
    conn = proxy.connection()
    conn.request("PUT", "/e/echo", body=iter([b"a" * 1000, b"b" * 5000, b"c"]), encode_chunked=True)
    response = conn.getresponse()
    response.read()
    conn.close()
    assert response.status == 200
    seen = last_seen(upstreams, before)
    assert (seen.body_length, seen.chunked, seen.header("content-length")) == (6001, False, "6001")
    assert "transfer-encoding" not in seen.names()


@pytest.mark.parametrize(("query", "framing"), [("", "length"), ("?chunked=1", "chunked"),
                                                ("?close=1", "chunked")])
def test_response_framing_is_preserved(proxy: Proxy, query: str, framing: str) -> None:
    response, body = proxy.request("GET", f"/e/stream/100000{query}")
    assert response.status == 200
    assert len(body) == 100000 and body[:256] == bytes(range(256))
    if framing == "length":
        assert response.getheader("content-length") == "100000"
    else:
        assert response.getheader("transfer-encoding") == "chunked"
        assert response.getheader("content-length") is None


def test_head_204_and_304_have_no_body_and_the_connection_stays_in_step(proxy: Proxy) -> None:
    conn = proxy.connection()
    try:
        conn.request("HEAD", "/e/stream/1000")
        head = conn.getresponse()
        assert head.status == 200 and head.read() == b""
        assert head.getheader("content-length") == "1000"
        for code in (204, 304):
            conn.request("GET", f"/e/status/{code}")
            response = conn.getresponse()
            assert response.status == code and response.read() == b""
            assert response.getheader("content-length") is None
        # A body that leaked from any answer above would be parsed as this response's head.
        conn.request("GET", "/e/stream/10")
        after = conn.getresponse()
        assert after.status == 200 and after.read() == bytes(range(10))
    finally:
        conn.close()


def test_expect_100_continue_is_answered_and_not_forwarded(proxy: Proxy, upstreams: Upstreams) -> None:
    before = len(upstreams.echo.seen)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"POST /e/echo HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        interim = sock.recv(100)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n")
        sock.sendall(b"hello")
        final = b""
        while b"\r\n\r\n" not in final:
            final += sock.recv(65536)
    assert final.startswith(b"HTTP/1.1 200 ")
    seen = last_seen(upstreams, before)
    assert seen.body_length == 5 and "expect" not in seen.names()


# -- headers ------------------------------------------------------------------------------------


def test_hop_by_hop_and_nominated_headers_are_removed_both_ways(proxy: Proxy, upstreams: Upstreams) -> None:
    before = len(upstreams.echo.seen)
    response, _ = proxy.request("GET", "/e/echo", headers={
        "Connection": "keep-alive, X-Private", "X-Private": "p", "Keep-Alive": "timeout=5",
        "TE": "trailers", "Proxy-Authorization": "Basic eDp5", "Proxy-Connection": "keep-alive",
        "Trailer": "X-T", "X-Kept": "yes"})
    assert response.status == 200
    names = last_seen(upstreams, before).names()
    assert "x-kept" in names
    for gone in ("connection", "x-private", "keep-alive", "te", "proxy-authorization",
                 "proxy-connection", "trailer"):
        assert gone not in names, gone

    response, body = proxy.request("GET", "/e/headers")
    assert body == b"ok"
    assert response.getheader("x-kept") == "yes"
    for gone in ("x-secret", "keep-alive", "proxy-authenticate", "trailer", "upgrade"):
        assert response.getheader(gone) is None, gone


def test_untrusted_client_forwarded_headers_are_replaced(proxy: Proxy, upstreams: Upstreams) -> None:
    before = len(upstreams.echo.seen)
    proxy.request("GET", "/e/echo", headers={
        "Host": "shop.example:8080", "X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "evil.example", "Forwarded": "for=6.6.6.6"})
    seen = last_seen(upstreams, before)
    assert seen.header("x-forwarded-for") == "127.0.0.1"
    assert seen.header("x-forwarded-proto") == "http"
    assert seen.header("x-forwarded-host") == "shop.example:8080"
    assert seen.header("forwarded") == 'for=127.0.0.1;proto=http;host="shop.example:8080"'
    assert seen.header("host") == "shop.example:8080"


def test_trusted_proxy_chain_is_extended(proxy: Proxy, upstreams: Upstreams) -> None:
    before = len(upstreams.echo.seen)
    proxy.request("GET", "/e/echo", source="127.0.0.2", headers={
        "Host": "shop.example", "X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https",
        "Forwarded": "for=6.6.6.6;proto=https"})
    seen = last_seen(upstreams, before)
    assert seen.header("x-forwarded-for") == "6.6.6.6, 127.0.0.2"
    assert seen.header("x-forwarded-proto") == "https"
    assert seen.header("forwarded") == ('for=6.6.6.6;proto=https, '
                                        'for=127.0.0.2;proto=http;host="shop.example"')


def test_request_id_is_generated_forwarded_and_returned(proxy: Proxy, upstreams: Upstreams) -> None:
    before = len(upstreams.echo.seen)
    response, _ = proxy.request("GET", "/e/echo")
    rid = response.getheader("x-request-id")
    assert rid is not None and re.fullmatch(r"[0-9a-f]{32}", rid)
    # The upstream's own X-Request-Id does not leak next to Peel's.
    assert response.getheaders().count(("x-request-id", rid)) == 1
    assert len([h for h in response.getheaders() if h[0] == "x-request-id"]) == 1
    assert last_seen(upstreams, before).header("x-request-id") == rid

    response, _ = proxy.request("GET", "/e/echo", headers={"X-Request-Id": "abc-123"})
    assert response.getheader("x-request-id") == "abc-123"
    response, _ = proxy.request("GET", "/e/echo", headers={"X-Request-Id": "x" * 201})
    assert re.fullmatch(r"[0-9a-f]{32}", response.getheader("x-request-id") or "")


def test_route_rewrites_host_path_and_headers(proxy: Proxy, upstreams: Upstreams) -> None:
    before = len(upstreams.echo.seen)
    response, _ = proxy.request("GET", "/edit/echo?a=%2F", headers={"X-Added": "client"})
    assert response.getheader("x-resp") == "b"
    seen = last_seen(upstreams, before)
    assert seen.target == "/echo?a=%2F"
    assert seen.header("host") == "upstream.example"
    assert seen.header("x-added") == "a"


def test_path_is_normalised_before_routing_and_forwarding(proxy: Proxy, upstreams: Upstreams) -> None:
    before = len(upstreams.echo.seen)
    response, _ = proxy.request("GET", "/x/../%65/./echo")
    assert response.status == 200
    assert last_seen(upstreams, before).target == "/echo"
    response, body = proxy.request("GET", "/e/a%2fb")
    assert response.status == 400 and problem_of(response, body)["code"] == "bad-path"


# -- the pool -----------------------------------------------------------------------------------


def test_keep_alive_connections_are_reused(proxy: Proxy, upstreams: Upstreams) -> None:
    opened = upstreams.echo.connections
    for _ in range(20):
        response, _ = proxy.request("GET", "/e/echo")
        assert response.status == 200
    assert upstreams.echo.connections - opened <= 2


def test_stale_keep_alive_connection_is_retried_once(proxy: Proxy, upstreams: Upstreams) -> None:
    before = len(upstreams.echo.seen)
    conn = proxy.connection()
    try:
        for _ in range(3):
            conn.request("GET", "/e/closes-reused")
            response = conn.getresponse()
            response.read()
            assert response.status == 200
    finally:
        conn.close()
    # The upstream saw more requests than were sent: the race happened and was replayed.
    assert len([s for s in upstreams.echo.seen[before:] if s.target == "/closes-reused"]) > 3


def test_downstream_disconnect_cancels_the_upstream(proxy: Proxy, upstreams: Upstreams) -> None:
    closed = upstreams.echo.closed_connections
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"GET /e/drip/0 HTTP/1.1\r\nHost: a\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    wait_for(lambda: upstreams.echo.closed_connections > closed, timeout=5,
             what="the upstream connection to be closed")


def test_slow_upstream_does_not_block_other_requests(proxy: Proxy, upstreams: Upstreams) -> None:
    # A response from the same upstream that never ends (1 KiB every 10 ms, forever) is in flight
    # for as long as this test holds it open: no race with a timer. Whatever would make the other
    # request wait for it (a blocked loop, one connection per upstream) makes it wait forever.
    before = len(upstreams.echo.seen)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as dripping:
        dripping.sendall(b"GET /e/drip/0 HTTP/1.1\r\nHost: a\r\n\r\n")
        assert dripping.recv(65536).startswith(b"HTTP/1.1 200")
        wait_for(lambda: any(s.target == "/drip/0" for s in upstreams.echo.seen[before:]), 10,
                 "the endless request to reach the upstream")
        started = time.monotonic()
        response, _ = proxy.request("GET", "/e/echo")
        assert response.status == 200
        assert time.monotonic() - started < 5.0  # ~ms; only a margin for a loaded machine
        assert dripping.recv(65536)  # and the endless one is still flowing


def test_refused_endpoint_is_502_problem(proxy: Proxy) -> None:
    response, body = proxy.request("GET", "/refusing/x")
    assert response.status == 502
    assert problem_of(response, body)["code"] == "upstream-connect-failed"


def test_hanging_endpoint_is_504_within_the_response_timeout(proxy: Proxy) -> None:
    started = time.monotonic()
    response, body = proxy.request("GET", "/hanging/x")
    elapsed = time.monotonic() - started
    assert response.status == 504
    assert problem_of(response, body)["code"] == "upstream-timeout"
    assert 0.9 <= elapsed < 3.0


def test_garbage_answer_is_502_problem(proxy: Proxy) -> None:
    response, body = proxy.request("GET", "/garbage/x")
    assert response.status == 502
    assert problem_of(response, body)["code"] == "upstream-protocol-error"


def test_reset_mid_body_cuts_the_downstream_response(proxy: Proxy) -> None:
    conn = proxy.connection()
    conn.request("GET", "/reset/x")
    response = conn.getresponse()
    assert response.status == 200
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        response.read()
    conn.close()


def test_no_route_is_404_problem(proxy: Proxy) -> None:
    response, body = proxy.request("GET", "/nothing/here")
    assert response.status == 404
    assert problem_of(response, body)["code"] == "no-route"


def test_absolute_form_for_a_foreign_host_is_refused(proxy: Proxy, upstreams: Upstreams) -> None:
    response, body = proxy.request("GET", "http://foreign.example/e/echo")
    assert response.status == 400
    assert problem_of(response, body)["code"] == "not-an-open-proxy"
    before = len(upstreams.echo.seen)
    response, _ = proxy.request("GET", "http://known.example/some/path",
                                headers={"Host": "known.example"})
    assert response.status == 200
    assert last_seen(upstreams, before).target == "/some/path"


def test_access_log_has_one_line_per_request(proxy: Proxy) -> None:
    response, _ = proxy.request("GET", "/e/echo", headers={"X-Request-Id": "log-me-1"})
    assert response.status == 200

    def logged() -> dict[str, object] | None:
        for record in records(proxy.access_log):
            if record["request_id"] == "log-me-1":
                return record
        return None

    wait_for(lambda: logged() is not None, what="the access log line")
    record = logged()
    assert record is not None
    assert record["route"] == "echo" and record["service"] == "echo" and record["status"] == 200
    assert record["method"] == "GET" and record["path"] == "/e/echo" and record["error"] is None
    assert isinstance(record["upstream_ms"], float) and isinstance(record["duration_ms"], float)
    assert str(record["time"]).endswith("Z")


# -- downstream connections ---------------------------------------------------------------------


def closed_after(sock: socket.socket, timeout: float) -> float:
    """Seconds until the proxy closes `sock` (reading and discarding whatever it sends)."""
    started = time.monotonic()
    sock.settimeout(timeout)
    while sock.recv(65536):
        pass
    return time.monotonic() - started


def test_idle_keep_alive_connection_is_closed_after_the_timeout(proxy: Proxy) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"GET /e/echo HTTP/1.1\r\nHost: a\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        assert 0.8 <= closed_after(sock, 5) < 3.0


def test_a_head_trickled_byte_by_byte_is_cut_off(proxy: Proxy) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"GET /e/echo HTTP/1.1\r\nHost: a\r\n")
        started = time.monotonic()
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            while time.monotonic() - started < 5:
                sock.sendall(b"X-Slow: 1\r\n")
                time.sleep(0.1)  # the slow client's pace, not synchronisation
        assert time.monotonic() - started < 3.0


def test_a_connection_that_never_sends_a_request_is_closed(proxy: Proxy) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        assert 0.8 <= closed_after(sock, 5) < 3.0
