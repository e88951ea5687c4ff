"""1 GiB through the proxy both ways: the gateway streams, its memory stays flat."""

from __future__ import annotations

import http.client
from collections.abc import Iterator

import pytest

from tests.sockets.conftest import Proxy, start_proxy, stop_proxy
from tests.sockets.upstreams import ScriptedUpstream

GIB = 1 << 30
PIECE = b"\xa5" * (1 << 20)
MAX_GROWTH_KIB = 50 * 1024

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proxy, ScriptedUpstream]]:
    upstream = ScriptedUpstream().start()
    document = {"services": [{"name": "echo", "endpoints": [upstream.url]}],
                "routes": [{"name": "all", "match": {"path_prefix": "/"}, "service": "echo"}]}
    proxy = start_proxy(tmp_path_factory.mktemp("big"), document, '[proxy]\nidle_timeout = 30.0\n')
    yield proxy, upstream
    stop_proxy(proxy)
    upstream.stop()


def body(size: int) -> Iterator[bytes]:
    for _ in range(size // len(PIECE)):
        yield PIECE


@pytest.mark.timeout(120)
def test_1gib_upload_streams_with_flat_memory(big: tuple[Proxy, ScriptedUpstream]) -> None:
    proxy, upstream = big
    baseline = proxy.rss_kib()
    conn = proxy.connection(timeout=60)
    conn.request("POST", "/upload", body=body(GIB), headers={"Content-Length": str(GIB)})
    response = conn.getresponse()
    response.read()
    conn.close()
    assert response.status == 200
    assert upstream.seen[-1].body_length == GIB and not upstream.seen[-1].chunked
    assert proxy.rss_kib("VmHWM") - baseline < MAX_GROWTH_KIB


@pytest.mark.timeout(120)
def test_1gib_download_streams_with_flat_memory(big: tuple[Proxy, ScriptedUpstream]) -> None:
    proxy, _ = big
    baseline = proxy.rss_kib()
    conn = proxy.connection(timeout=60)
    conn.request("GET", f"/stream/{GIB}")
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("content-length") == str(GIB)
    received = 0
    while piece := response.read(1 << 20):
        received += len(piece)
    conn.close()
    assert received == GIB
    assert proxy.rss_kib("VmHWM") - baseline < MAX_GROWTH_KIB


def test_chunked_upload_of_unknown_length_stays_chunked(big: tuple[Proxy, ScriptedUpstream]) -> None:
    # Larger than buffering's max_body (64 MiB): the held part goes first and the rest streams, so
    # the length is unknown upstream too (a smaller body held whole goes with its length).
    proxy, upstream = big
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=60)
    conn.request("POST", "/upload", body=body(96 << 20), encode_chunked=True)
    response = conn.getresponse()
    response.read()
    conn.close()
    assert response.status == 200
    assert upstream.seen[-1].body_length == 96 << 20 and upstream.seen[-1].chunked
