"""bench/relay.py, the bench's floor (`--floor`): a real relay process between a client and a real
upstream, keep-alive requests on one connection answered in order."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.sockets.conftest import ROOT, wait_for
from tests.sockets.serve_harness import free_port
from tests.sockets.upstreams import ScriptedUpstream


@pytest.fixture
def relay() -> Iterator[int]:
    origin = ScriptedUpstream().start()
    port = free_port()
    process = subprocess.Popen([sys.executable, str(ROOT / "bench" / "relay.py"), str(port),
                                str(origin.port)], cwd=ROOT)

    def listening() -> bool:
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=1).connect()
        except OSError:
            return False
        return True

    try:
        wait_for(listening, 15, "the relay to listen")
        yield port
    finally:
        process.terminate()
        process.wait(10)
        origin.stop()


def test_the_relay_passes_keep_alive_requests_through_to_the_origin(relay: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", relay, timeout=10)
    try:
        for n in range(3):
            conn.request("GET", f"/orders/{n}", headers={"X-N": str(n)})
            response = conn.getresponse()
            body = json.loads(response.read())
            assert response.status == 200
            assert body["target"] == f"/orders/{n}"
    finally:
        conn.close()
