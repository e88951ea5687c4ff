"""SIGHUP re-reads `[limits]`: a running `peel serve` refuses by the new limits, keeping its connections."""

from __future__ import annotations

import functools
import http.client
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sockets.conftest import wait_for
from tests.sockets.serve_harness import PeelServe
from tests.sockets.upstreams import ScriptedUpstream


@pytest.fixture(scope="module")
def echo() -> Iterator[ScriptedUpstream]:
    server = ScriptedUpstream().start()
    yield server
    server.stop()


def reloads_logged(peel: PeelServe, count: int) -> bool:
    return peel.log.read_text().count("SIGHUP: settings re-read") == count


def get(conn: http.client.HTTPConnection, target: str, headers: dict[str, str]) -> tuple[int, bytes]:
    conn.request("GET", target, headers=headers)
    response = conn.getresponse()
    return response.status, response.read()


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_applies_a_lower_header_limit_to_the_running_listener(
        tmp_path: Path, echo: ScriptedUpstream, workers: int) -> None:
    peel = PeelServe(tmp_path, workers=workers)
    peel.store().upgrade()
    peel.commit({"services": [{"name": "echo", "endpoints": [echo.url]}],
                 "routes": [{"name": "all", "match": {"path_prefix": "/"}, "service": "echo"}]})
    peel.start()
    if workers > 1:
        wait_for(lambda: len(peel.children()) == workers, 10, f"{workers} workers")
    children = sorted(peel.children())
    large = {"X-Large": "v" * 3000}
    kept = http.client.HTTPConnection("127.0.0.1", peel.public_port, timeout=10)
    try:
        assert get(kept, "/before", large)[0] == 200
        peel.config.write_text(peel.config.read_text() + "[limits]\nmax_header_bytes = 2048\n")
        peel.signal(signal.SIGHUP)
        processes = 1 if workers == 1 else workers + 1  # the master re-reads it too
        wait_for(functools.partial(reloads_logged, peel, processes), 10, "the settings to be re-read")

        status, headers, body = peel.get("/after", headers=large)
        assert status == 431
        assert headers["content-type"] == "application/problem+json"
        assert b"header-too-large" in body
        # The connection opened before the reload is still served, now under the new limit.
        assert get(kept, "/kept", {})[0] == 200
        assert peel.get("/small")[0] == 200
        assert peel.process is not None and peel.process.poll() is None
        assert sorted(peel.children()) == children
    finally:
        kept.close()
        assert peel.stop() == 0
