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
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.pg import pg_server, pg_url  # noqa: F401
from tests.sockets.conftest import wait_for
from tests.sockets.fleet_harness import fleet, leader_gauge
from tests.sockets.serve_harness import PeelServe
from tests.sockets.test_strangler import Operator
from tests.sockets.upstreams import ThreadServer, read_body, read_head

pytestmark = pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk (the load generator)")

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


def guarded(name: str, to: str, guard: dict[str, Any], stage: str = "canary") -> dict[str, Any]:
    return {"name": name, "match": {"path_prefix": f"/{name}"}, "service": "legacy",
            "migration": {"to": to, "stage": stage, "percent": 50 if stage == "canary" else 0,
                          "cohort": {"header": "X-User-Id"}, "guard": {"window": "3s", **guard}}}


USERS_LUA = """
request = function()
  return wrk.format("GET", nil, {["X-User-Id"] = "u" .. math.random(1, 1000000000)})
end
"""


class Load:
    """`wrk` (its own process, so the load does not share this process's GIL with the upstreams)
    calling a path with a random user each time, until stopped."""

    def __init__(self, peel: PeelServe, path: str, connections: int) -> None:
        script = peel.tmp / "users.lua"
        script.write_text(USERS_LUA)
        self.output = b""
        self.started = time.time()
        self.process = subprocess.Popen(
            ["wrk", "-t1", f"-c{connections}", "-d120s", "-s", str(script),
             f"http://127.0.0.1:{peel.public_port}{path}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)   # wrk prints its summary on SIGINT
        self.output, _ = self.process.communicate(timeout=30)

    @property
    def non_2xx(self) -> int:
        match = re.search(rb"Non-2xx or 3xx responses: (\d+)", self.output)
        return int(match.group(1)) if match else 0

    @property
    def requests(self) -> int:
        match = re.search(rb"(\d+) requests in", self.output)
        return int(match.group(1)) if match else 0


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[PeelServe, Operator]]:
    ups = {"legacy": Upstream("legacy").start(), "flaky": Upstream("flaky", fail_every=20).start(),
           "slow": Upstream("slow", delay=0.3).start(), "fine": Upstream("fine").start(),
           "twin": Upstream("legacy").start()}
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
            # the shadow step: `to` answers another body (a regression), or the same one
            guarded("differs", "fine", {"steps": ["shadow", 50, "migrated"], "min_requests": 50,
                                        "min_pairs": 50}, stage="shadow"),
            guarded("same", "twin", {"steps": ["shadow", 50, "migrated"], "min_requests": 50,
                                     "min_pairs": 50, "max_error_increase": 0.05}, stage="shadow"),
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
    loads = [Load(peel, "/failing/x", 4), Load(peel, "/healthy/x", 4)]
    reached = watch(peel, peel_cli, loads, {"failing": "legacy", "healthy": "migrated"})
    # the first window that holds the traffic ends LAG s before it is judged (a turn a second)
    assert reached["failing"] - loads[0].started <= WINDOW + LAG + 1.0 + 2.0
    assert loads[0].requests and loads[0].non_2xx == 0   # the fallback answered to's 503s
    history = peel_cli("migrate", "history", "failing")
    assert "guard" in history and "rollback" in history and "error-rate" in history
    assert "to_errors=" in history
    healthy = peel_cli("migrate", "history", "healthy")
    assert "promote" in healthy and "guard" in healthy and "rollback" not in healthy

    # no traffic: the guard holds and says so, in `peel migrate status`
    status = peel_cli("migrate", "status", "idle")
    assert "hold (min-samples)" in status and "to answered 0 requests in the window" in status, status
    assert "hold (min-samples)" in peel_cli("migrate", "status")


def test_a_to_300_ms_slower_is_rolled_back_within_one_window(gateway: tuple[PeelServe, Operator]) -> None:
    peel, peel_cli = gateway
    loads = [Load(peel, "/slow/x", 10)]
    reached = watch(peel, peel_cli, loads, {"slow": "legacy"})
    assert reached["slow"] - loads[0].started <= WINDOW + LAG + 1.0 + 2.0
    history = peel_cli("migrate", "history", "slow")
    assert "p99-ratio" in history and "to_p99_ms=" in history


def test_in_the_shadow_step_a_differing_to_is_rolled_back_and_a_same_one_advances(
        gateway: tuple[PeelServe, Operator]) -> None:
    peel, peel_cli = gateway
    loads = [Load(peel, "/differs/x", 2), Load(peel, "/same/x", 2)]
    watch(peel, peel_cli, loads, {"differs": "legacy", "same": "canary"})
    assert all(load.requests and load.non_2xx == 0 for load in loads)   # `from` answered all
    history = peel_cli("migrate", "history", "differs")
    assert "rollback" in history and "(mismatch)" in history and "shadow_pairs=" in history
    assert "rollback" not in peel_cli("migrate", "history", "same")


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


@pytest.mark.postgres
def test_in_a_fleet_the_leader_rolls_back_on_what_another_gateway_measured(
        tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    """Two gateways on one PostgreSQL: every request goes through the one that does not lead, and
    the leader, which served none of them, rolls the migration back within one window."""
    ups = {"legacy": Upstream("legacy").start(), "flaky": Upstream("flaky", fail_every=20).start()}
    try:
        token = PeelServe.upgrade_with_token(_at(pg_url))
        PeelServe.commit(_at(pg_url), {
            "services": [{"name": n, "endpoints": [u.url]} for n, u in ups.items()],
            "routes": [guarded("failing", "flaky", {"steps": [50, 75, "migrated"], "min_requests": 100,
                                                    "max_error_increase": 0.01})]})
        gateways = fleet(tmp_path, pg_url, 2, poll_interval=1.0, extra="[facade]\ncounts_interval = 0.5\n")
        try:
            for peel in gateways:
                peel.start()
            wait_for(lambda: sorted(leader_gauge(g, token) or 0 for g in gateways) == [0, 1], 20,
                     "exactly one leader")
            leader, other = sorted(gateways, key=lambda g: -(leader_gauge(g, token) or 0))
            load = Load(other, "/failing/x", 4)
            try:
                wait_for(lambda: stage(other, "failing")[0] == "legacy", 60, "the rollback")
            finally:
                load.stop()
            assert time.time() - load.started <= 60
            store = other.store()
            try:
                [t] = store.transitions("failing", 1)
            finally:
                store.close()
            assert (t.action, t.actor) == ("rollback", "guard") and "(error-rate)" in t.reason
            assert t.created_at.timestamp() - load.started <= WINDOW + LAG + 1.0 + 2.0, t.reason
            assert "guard failing: rollback" in leader.log.read_text()
            assert "guard failing" not in other.log.read_text()   # only the leader judges
        finally:
            for peel in gateways:
                if peel.process is not None:
                    peel.stop()
    finally:
        for u in ups.values():
            u.stop()


def _at(url: str) -> PeelServe:
    """A harness object only for its store helpers (upgrade, commit) on `url`."""
    peel = PeelServe.__new__(PeelServe)
    peel.url = url
    return peel
