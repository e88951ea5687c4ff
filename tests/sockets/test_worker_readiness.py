"""`peel serve --workers 2`: the master's /readyz is 503 while every worker is dead, and 200 again
once the supervisor started them again."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sockets.conftest import wait_for
from tests.sockets.serve_harness import PeelServe
from tests.sockets.test_serve import document
from tests.sockets.upstreams import ScriptedUpstream


@pytest.fixture(scope="module")
def echo() -> Iterator[ScriptedUpstream]:
    upstream = ScriptedUpstream().start()
    yield upstream
    upstream.stop()


def test_readyz_is_503_while_every_worker_is_dead(tmp_path: Path, echo: ScriptedUpstream) -> None:
    peel = PeelServe(tmp_path, workers=2)
    peel.store().upgrade()
    peel.commit(document(echo.url, 1))
    peel.start()
    try:
        wait_for(lambda: len(peel.children()) == 2, 15, "two workers")
        assert peel.get("/readyz", port=peel.admin_port)[0] == 200
        first = set(peel.children())
        for pid in first:
            os.kill(pid, signal.SIGKILL)
        # the restart comes after a pause of at least 1 s: /readyz must say 503 meanwhile
        seen: list[int] = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and 503 not in seen:
            seen.append(peel.get("/readyz", port=peel.admin_port)[0])
        assert 503 in seen, seen[-5:]
        wait_for(lambda: len(set(peel.children()) - first) == 2, 30, "two new workers")
        wait_for(lambda: peel.get("/readyz", port=peel.admin_port)[0] == 200, 15, "ready again")
    finally:
        assert peel.stop() == 0
