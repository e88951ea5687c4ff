"""A pathological input to a regex route does not stall the worker (issue 11, item 4).

The data plane runs on one event loop: a regex that backtracks for seconds on a client's path or
header holds every other request of that process. With Python's `re`, `^/re/(a+)+$` on a
26-character path took 1.1 s; the paths here are 4,000 characters, which would backtrack for longer
than the universe has existed. RE2 answers them in microseconds, so an unrelated request sent right
after them is answered at once.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from tests.sockets.conftest import Proxy, start_proxy, stop_proxy
from tests.sockets.upstreams import Upstreams

EVIL = r"^/(a+)+$"
LONG = "a" * 4000 + "!"


@pytest.fixture(scope="module")
def proxy(upstreams: Upstreams, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    echo = upstreams.urls()["echo"]
    document = {
        "services": [{"name": "echo", "endpoints": [echo]}],
        "routes": [
            {"name": "by-path", "match": {"path_regex": r"^/re/(a+)+$"}, "service": "echo"},
            {"name": "by-header", "match": {"path_prefix": "/hdr", "headers": [{"name": "X-Probe",
                                                                              "regex": EVIL}]},
             "service": "echo"},
            {"name": "by-query", "match": {"path_prefix": "/qry", "query": [{"name": "q", "regex": EVIL}]},
             "service": "echo"},
            {"name": "rewritten", "match": {"path_prefix": "/rw"}, "service": "echo",
             "rewrite": {"path_regex": r"^/rw/(a+)+$", "replacement": r"/x/\1"}},
            {"name": "plain", "match": {"path_prefix": "/e"}, "service": "echo"},
        ],
    }
    running = start_proxy(tmp_path_factory.mktemp("regex"), document)
    yield running
    stop_proxy(running)


def send_raw(proxy: Proxy, target: str, headers: str = "") -> socket.socket:
    """Send one request and return the connection without reading the answer."""
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=30)
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: h\r\n{headers}Connection: close\r\n\r\n".encode())
    return sock


def status_of(sock: socket.socket) -> int:
    data = b""
    with sock:
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1])


def test_pathological_inputs_do_not_delay_an_unrelated_request(proxy: Proxy) -> None:
    evil = [
        (send_raw(proxy, f"/re/{LONG}"), 404),                               # path_regex
        (send_raw(proxy, "/hdr", f"X-Probe: /{LONG}\r\n"), 404),             # header regex
        (send_raw(proxy, f"/qry?q=/{LONG}"), 404),                           # query regex
        (send_raw(proxy, f"/rw/{LONG}"), 200),                               # path rewrite
    ]
    # Sent after all four are on the wire: a worker stuck on any of them would hold this one too.
    start = time.monotonic()
    response, _ = proxy.request("GET", "/e/unrelated")
    elapsed = time.monotonic() - start
    assert response.status == 200
    assert elapsed < 3.0, f"an unrelated request waited {elapsed:.1f} s behind a regex"
    assert [status_of(sock) for sock, _ in evil] == [status for _, status in evil]


def test_the_regex_routes_still_route(proxy: Proxy) -> None:
    assert proxy.request("GET", "/re/aaaa")[0].status == 200
    assert proxy.request("GET", "/hdr", headers={"X-Probe": "/aaa"})[0].status == 200
    assert proxy.request("GET", "/qry?q=/aa")[0].status == 200
    response, body = proxy.request("GET", "/rw/aaa")
    assert response.status == 200 and b'"/x/aaa"' in body, body

