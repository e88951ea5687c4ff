"""The guard on real processes (issue 15, items 7-9): one `peel serve` (SQLite: it leads), real
upstreams, real clients, 3-second windows, the samples flushed every 0.5 s (so a window is judged
1.5 s after it ends).

Four guarded migrations at canary 50 % side by side: `to` answers 503 to every 20th request (5 %;
the fallback answers those from `from`, the guard still counts them), `to` answers 300 ms late,
`to` is as healthy as `from`, and a route nobody calls. The first two are rolled back within one
window of their traffic, the healthy one goes through its schedule, the idle one holds and says
why; the operator sets up, freezes and reads the guard with the `peel` command.
"""

from __future__ import annotations

import asyncio
import http.client
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.sockets.conftest import wait_for
from tests.sockets.serve_harness import PeelServe
from tests.sockets.test_strangler import Operator
from tests.sockets.upstreams import ThreadServer, read_body, read_head

WINDOW = 3.0
LAG = 1.5  # counts_interval 0.5 + 1


class Upstream(ThreadServer):
    """Answers 200 with its name; every `fail_every`-th request 503; each answer `delay` late."""

    def __init__(self, name: str, *, fail_every: int = 0, delay: float = 0.0) -> None:
        super().__init__()
        self.name = name
        self.fail_every = fail_every
        self.delay = delay
        self.count = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     number: int) -> None:
        while (head := await read_head(reader)) is not None:
            await read_body(reader, head[2])
            self.count += 1
            status = 503 if self.fail_every and self.count % self.fail_every == 0 else 200
            if self.delay:
                await asyncio.sleep(self.delay)
            body = self.name.encode()
            writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body))
            await writer.drain()


def guarded(name: str, to: str, guard: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "match": {"path_prefix": f"/{name}"}, "service": "legacy",
            "migration": {"to": to, "stage": "canary", "percent": 50, "cohort": {"header": "X-User-Id"},
                          "guard": {"window": "3s", **guard}}}


class Load:
    """Client threads calling a path with a random user each time, until stopped."""

    def __init__(self, peel: PeelServe, path: str, threads: int) -> None:
        self.peel, self.path = peel, path
        self.stop_event = threading.Event()
        self.statuses: dict[int, int] = {}
        self.started = time.time()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def _run(self) -> None:
        rng = random.Random()
        conn = http.client.HTTPConnection("127.0.0.1", self.peel.public_port, timeout=10)
        while not self.stop_event.is_set():
            try:
                conn.request("GET", self.path, headers={"X-User-Id": f"u{rng.getrandbits(32)}"})
                response = conn.getresponse()
                response.read()
                self.statuses[response.status] = self.statuses.get(response.status, 0) + 1
            except OSError:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.peel.public_port, timeout=10)
        conn.close()

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(15)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[PeelServe, Operator]]:
    ups = {"legacy": Upstream("legacy").start(), "flaky": Upstream("flaky", fail_every=20).start(),
           "slow": Upstream("slow", delay=0.3).start(), "fine": Upstream("fine").start()}
    peel = PeelServe(tmp_path, extra_settings="[facade]\ncounts_interval = 0.5\n")
    token = peel.upgrade_with_token("ops")
    peel.commit({
        "services": [{"name": n, "endpoints": [u.url]} for n, u in ups.items()],
        "routes": [
            guarded("failing", "flaky", {"steps": [50, 75, "migrated"], "min_requests": 100,
                                         "max_error_increase": 0.01}),
            guarded("slow", "slow", {"steps": [50, 75, "migrated"], "min_requests": 30}),
            guarded("healthy", "fine", {"steps": [50, "migrated"], "min_requests": 60,
                                        "max_error_increase": 0.05}),
            guarded("idle", "fine", {"steps": [50, "migrated"], "min_requests": 100}),
            {"name": "default", "match": {"path_prefix": "/"}, "service": "legacy"}]})
    peel.start()
    yield peel, Operator(peel, token)
    peel.stop()
    for u in ups.values():
        u.stop()


def stage(peel: PeelServe, route: str) -> tuple[str, int | float]:
    store = peel.store()
    try:
        m = store.latest().document.route(route).migration  # type: ignore[union-attr]
    finally:
        store.close()
    assert m is not None
    return m.stage, m.percent


def watch(peel: PeelServe, peel_cli: Operator, loads: list[Load], routes: dict[str, str]) -> dict[str, float]:
    """Wait until each route is at its stage (legacy: rolled back); when each got there."""
    reached: dict[str, float] = {}

    def settled() -> bool:
        for route, target in routes.items():
            if route not in reached and stage(peel, route)[0] == target:
                reached[route] = time.time()
        return len(reached) == len(routes)

    try:
        wait_for(settled, 60, f"the routes at {routes}")
    except AssertionError:
        print(peel_cli("migrate", "status"), peel.log.read_text()[-5000:])
        raise
    finally:
        for load in loads:
            load.stop()
    return reached


def test_a_failing_to_is_rolled_back_within_one_window_a_healthy_one_advances(
        gateway: tuple[PeelServe, Operator]) -> None:
    peel, peel_cli = gateway
    loads = [Load(peel, "/failing/x", 4), Load(peel, "/healthy/x", 3)]
    reached = watch(peel, peel_cli, loads, {"failing": "legacy", "healthy": "migrated"})
    # the first window that holds the traffic ends LAG s before it is judged (a turn a second)
    assert reached["failing"] - loads[0].started <= WINDOW + LAG + 1.0 + 2.0
    assert loads[0].statuses.get(503, 0) == 0   # the fallback answered to's 503s from `from`
    history = peel_cli("migrate", "history", "failing")
    assert "guard" in history and "rollback" in history and "error-rate" in history
    assert "to_errors=" in history
    healthy = peel_cli("migrate", "history", "healthy")
    assert "promote" in healthy and "guard" in healthy and "rollback" not in healthy

    # no traffic: the guard holds and says so, in `peel migrate status`
    status = peel_cli("migrate", "status", "idle")
    assert "hold (min-samples)" in status and "to answered 0 requests in the window" in status
    assert "hold (min-samples)" in peel_cli("migrate", "status")


def test_a_to_300_ms_slower_is_rolled_back_within_one_window(gateway: tuple[PeelServe, Operator]) -> None:
    peel, peel_cli = gateway
    loads = [Load(peel, "/slow/x", 10)]
    reached = watch(peel, peel_cli, loads, {"slow": "legacy"})
    assert reached["slow"] - loads[0].started <= WINDOW + LAG + 1.0 + 2.0
    history = peel_cli("migrate", "history", "slow")
    assert "p99-ratio" in history and "to_p99_ms=" in history


def test_the_operator_sets_freezes_and_takes_off_the_guard(gateway: tuple[PeelServe, Operator]) -> None:
    _, peel_cli = gateway
    out = peel_cli("migrate", "guard", "idle", "--window", "10s", "--min-requests", "20",
                   "--steps", "50,75,migrated", "--reason", "tighter")
    assert "guard of route idle set" in out and "min_requests 20" in out and "window 10s" in out
    out = peel_cli("migrate", "guard", "idle", "--freeze")
    assert "frozen" in out
    assert "frozen" in peel_cli("migrate", "status", "idle")
    assert "must rise" in peel_cli("migrate", "guard", "idle", "--steps", "75,50", expect=1)
    out = peel_cli("migrate", "guard", "idle", "--off")
    assert "guard    none" in out
    assert "no guard to freeze" in peel_cli("migrate", "guard", "idle", "--freeze", expect=1)
    history = peel_cli("migrate", "history", "idle")
    assert history.count("guard") >= 3 and "tighter" in history
