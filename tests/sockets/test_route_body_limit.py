"""A route's `max_body` against a real data-plane process: 413 before reading, or while streaming."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.sockets.conftest import Proxy, start_proxy, stop_proxy
from tests.sockets.test_hostile import Client
from tests.sockets.upstreams import Upstreams

LIMIT = 1000


@pytest.fixture(scope="module")
def capped(upstreams: Upstreams, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    document = {
        "services": [{"name": "echo", "endpoints": [upstreams.echo.url]}],
        "routes": [
            {"name": "small", "match": {"path_prefix": "/small"}, "service": "echo", "max_body": LIMIT},
            {"name": "open", "match": {"path_prefix": "/open"}, "service": "echo"},
        ],
    }
    running = start_proxy(tmp_path_factory.mktemp("capped"), document, "[limits]\nmax_body = 100000\n")
    yield running
    stop_proxy(running)


def targets_seen(upstreams: Upstreams) -> list[str]:
    return [s.target for s in upstreams.echo.seen]


def test_a_declared_length_over_the_route_limit_is_refused_before_reading(
        capped: Proxy, upstreams: Upstreams) -> None:
    client = Client(capped.port)
    try:
        client.send(b"POST /small/cl HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % (LIMIT + 1))
        response = client.response()
        assert response.status == 413
        assert response.problem()["code"] == "body-too-large"
        assert client.closed()
    finally:
        client.close()
    assert "/small/cl" not in targets_seen(upstreams)


def test_expect_continue_over_the_route_limit_gets_413_and_no_100(
        capped: Proxy, upstreams: Upstreams) -> None:
    client = Client(capped.port)
    try:
        client.send(b"POST /small/expect HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
                    b"Content-Length: 5000\r\n\r\n")
        response = client.first_response_without_continue()
        assert response.status == 413
        assert response.problem()["code"] == "body-too-large"
        assert client.closed()
    finally:
        client.close()
    assert "/small/expect" not in targets_seen(upstreams)


def test_a_chunked_body_passing_the_route_limit_is_cut_with_413(capped: Proxy, upstreams: Upstreams) -> None:
    client = Client(capped.port)
    try:
        client.send(b"POST /small/chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"258\r\n" + b"a" * 600 + b"\r\n")
        client.send(b"258\r\n" + b"b" * 600 + b"\r\n")
        response = client.response()
        assert response.status == 413
        assert response.problem()["code"] == "body-too-large"
        assert client.closed()
    finally:
        client.close()
    # The upstream never got a complete request (it records one only when its body ended).
    assert "/small/chunked" not in targets_seen(upstreams)


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_within_the_route_limit_passes(capped: Proxy, chunked: bool) -> None:
    body = b"x" * LIMIT
    client = Client(capped.port)
    try:
        if chunked:
            client.send(b"POST /small/ok HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"3e8\r\n" + body + b"\r\n0\r\n\r\n")
        else:
            client.send(b"POST /small/ok HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n" + body)
        response = client.response()
        assert response.status == 200
        assert json.loads(response.body)["body_length"] == LIMIT
    finally:
        client.close()


def test_a_route_without_max_body_takes_the_listener_limit(capped: Proxy) -> None:
    response, data = capped.request("POST", "/open/big", body=b"y" * 50000)
    assert response.status == 200
    assert json.loads(data)["body_length"] == 50000
    response, data = capped.request("POST", "/open/huge", body=b"y" * 100001)
    assert response.status == 413
