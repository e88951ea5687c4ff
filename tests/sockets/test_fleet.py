"""Two real `peel serve` gateways on one real PostgreSQL (issue 13 item 5; separate processes on
loopback; tests/e2e/test_fleet_netns.py runs them in two network namespaces).

A change made through one gateway's admin API is served by both within a second: with a 30 s poll
interval only LISTEN/NOTIFY can do it. One leads (`peel_leader` 1); killed with SIGKILL, the other
takes over within seconds. With the database cut off both keep serving, a gateway restarted
meanwhile starts from its snapshot, and both converge, with a leader again, when it returns.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.relay import Relay
from tests.pg import pg_server, pg_url  # noqa: F401
from tests.sockets.conftest import wait_for
from tests.sockets.fleet_harness import document, fleet, leader_gauge, propagate, stamp
from tests.sockets.serve_harness import PeelServe
from tests.sockets.upstreams import ScriptedUpstream

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def echo() -> Iterator[ScriptedUpstream]:
    server = ScriptedUpstream()
    server.start()
    yield server
    server.stop()


@contextlib.contextmanager
def running(gateways: list[PeelServe]) -> Iterator[list[PeelServe]]:
    try:
        for peel in gateways:
            peel.start()
        yield gateways
    finally:
        for peel in gateways:
            if peel.process is not None:
                peel.stop()


def prepare(url: str, echo_url: str) -> str:
    store = PeelServe.__new__(PeelServe)
    store.url = url
    token = PeelServe.upgrade_with_token(store)
    PeelServe.commit(store, document(echo_url, 1))
    return token


def test_a_change_through_one_gateway_is_served_by_both_within_a_second(
        tmp_path: Path, echo: ScriptedUpstream, pg_url: str) -> None:  # noqa: F811
    token = prepare(pg_url, echo.url)
    with running(fleet(tmp_path, pg_url, 2, poll_interval=30)) as (a, b):
        assert stamp(a) == stamp(b) == "1"
        latencies = [propagate([a, b], (a, b)[i % 2], token, echo.url, i) for i in range(2, 12)]
        # each waited up to 5 s; the 1 s promise is measured, with its p99, by bench/propagation.py
        print("commit -> served by both, seconds:", [round(x, 3) for x in latencies])
        assert sorted(latencies)[len(latencies) // 2] < 1.0, latencies


def test_the_leader_killed_another_leads_within_seconds(
        tmp_path: Path, echo: ScriptedUpstream, pg_url: str) -> None:  # noqa: F811
    token = prepare(pg_url, echo.url)
    with running(fleet(tmp_path, pg_url, 2)) as gateways:
        wait_for(lambda: sorted(leader_gauge(g, token) or 0 for g in gateways) == [0, 1], 20,
                 "exactly one leader")
        leader, other = sorted(gateways, key=lambda g: -(leader_gauge(g, token) or 0))
        assert (leader_gauge(leader, token), leader_gauge(other, token)) == (1, 0)
        assert leader.process is not None
        os.killpg(leader.process.pid, signal.SIGKILL)
        leader.process.wait(10)
        killed_at = time.monotonic()
        wait_for(lambda: leader_gauge(other, token) == 1, 15, "the other gateway to lead")
        took = time.monotonic() - killed_at
        assert took < 10, took
        assert "leading the fleet" in other.log.read_text()


def test_the_database_gone_both_serve_a_restarted_one_from_its_snapshot_then_both_converge(
        tmp_path: Path, echo: ScriptedUpstream, pg_url: str) -> None:  # noqa: F811
    host, port = re.search(r"@([\d.]+):(\d+)/", pg_url).groups()  # type: ignore[union-attr]
    switch = Relay((host, int(port)))
    url = pg_url.replace(f"{host}:{port}", f"127.0.0.1:{switch.port}")
    token = prepare(url, echo.url)
    try:
        with running(fleet(tmp_path, url, 2, poll_interval=0.2)) as (a, b):
            wait_for(lambda: sorted(leader_gauge(g, token) or 0 for g in (a, b)) == [0, 1], 20,
                     "one leader")
            wait_for(lambda: (tmp_path / "gw1" / "snapshot.json").exists(), 10, "b's snapshot")
            switch.cut()
            for peel in (a, b):
                wait_for(lambda p=peel: "store unreachable" in p.log.read_text(), 30,  # type: ignore[misc]
                         "the lost store to be noticed")
            assert stamp(a) == stamp(b) == "1"
            # b restarted while the database is away: it starts from its snapshot
            assert b.stop() == 0
            b.start()
            assert stamp(b) == "1"
            assert "starting from the snapshot" in b.log.read_text()
            switch.restore()
            # both converge on a change made after the database came back, and a leader is back
            store = a.store()
            try:
                wait_for(lambda: _can_commit(store, echo.url), 30, "the store to be usable again")
            finally:
                store.close()
            wait_for(lambda: stamp(a) == stamp(b) == "2", 15, "both gateways to serve version 2")
            wait_for(lambda: sorted(leader_gauge(g, token) or 0 for g in (a, b)) == [0, 1], 20,
                     "one leader again")
    finally:
        switch.cut()


def _can_commit(store: object, echo_url: str) -> bool:
    from routes.errors import StoreError
    from routes.model import Document
    from routes.store import Store

    assert isinstance(store, Store)
    try:
        store.commit(Document.parse(document(echo_url, 2)), actor="test", reason="back")
    except StoreError:
        return False
    return True
