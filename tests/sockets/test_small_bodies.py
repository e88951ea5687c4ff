"""A small response body passes on as it is read, and the body idle timeout applies between its
reads (issue 10: such a body used to be held until it was complete, so it waited for the whole
`response_timeout` and `idle_timeout` never applied to it)."""

from __future__ import annotations

import http.client
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.sockets.conftest import Proxy, start_proxy, stop_proxy
from tests.sockets.faults import FaultUpstream

# The trickle mode sends the upstream's name as the body, one byte per `delay`.
NAME = "a-small-body-of-thirty-bytes.."
SETTINGS = """
[proxy]
connect_timeout = 5.0
response_timeout = 60.0
idle_timeout = 0.5
"""


@dataclass
class Setup:
    proxy: Proxy
    up: FaultUpstream


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    up = FaultUpstream(NAME).start()
    document = {"services": [{"name": "slowpoke", "endpoints": [up.url], "outlier": False,
                              "retries": {"attempts": 1}}],
                "routes": [{"name": "slowpoke", "match": {"path_prefix": "/"}, "service": "slowpoke"}]}
    proxy = start_proxy(tmp_path_factory.mktemp("small"), document, SETTINGS)
    yield Setup(proxy, up)
    stop_proxy(proxy)
    up.stop()


def test_a_trickled_small_body_passes_on_as_it_is_read(setup: Setup) -> None:
    # 30 bytes, 0.3 s apart: 9 s for the whole body, each gap within the 0.5 s idle timeout.
    setup.up.set("trickle", delay=0.3)
    conn = setup.proxy.connection(timeout=30)
    try:
        started = time.monotonic()
        conn.request("GET", "/trickle")
        response = conn.getresponse()
        assert response.status == 200 and response.getheader("Content-Length") == str(len(NAME))
        first = response.read(3)
        # Held until complete, the head alone would come after 9 s.
        assert first == NAME[:3].encode()
        assert time.monotonic() - started < 6.0
    finally:
        conn.close()


def test_the_idle_timeout_cuts_a_small_body_that_stalls(setup: Setup) -> None:
    # 2 s between bytes: past the 0.5 s idle timeout at the first gap (the response timeout is 60 s).
    setup.up.set("trickle", delay=2.0)
    conn = setup.proxy.connection(timeout=30)
    try:
        started = time.monotonic()
        conn.request("GET", "/stall")
        response = conn.getresponse()
        assert response.status == 200
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            response.read()
        # cut at the first 2 s gap; held until complete it would take 60 s
        assert time.monotonic() - started < 10.0
    finally:
        conn.close()
