"""`peel serve` as an operator runs it: real processes, a real store, real upstream sockets.

Hot reload (a committed change is served within a second, a change made through the admin API
when its write answers, and no request fails while changes are applied under steady load), several
workers, the SIGTERM drain, the refusal of an un-migrated
store, and starting from the snapshot when the store is down.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.pg import pg_server, pg_url  # noqa: F401
from tests.sockets.conftest import ROOT, wait_for
from tests.sockets.serve_harness import PeelServe, free_port
from tests.sockets.upstreams import ScriptedUpstream


@pytest.fixture(scope="module")
def echo() -> Iterator[ScriptedUpstream]:
    server = ScriptedUpstream().start()
    yield server
    server.stop()


def document(echo_url: str, version: int, extra_routes: int = 0) -> dict[str, Any]:
    """Everything to the echo upstream; responses carry `X-Version: <version>`."""
    routes: list[dict[str, Any]] = [
        {"name": "main", "match": {"path_prefix": "/"}, "service": "echo",
         "rewrite": {"response_headers": {"set": {"X-Version": str(version)}}}}]
    routes += [{"name": f"extra-{i}", "match": {"path_prefix": f"/extra/{i}"}, "service": "echo"}
               for i in range(extra_routes)]
    return {"services": [{"name": "echo", "endpoints": [echo_url]}], "routes": routes}


@pytest.fixture
def gateway(tmp_path: Path, echo: ScriptedUpstream) -> Iterator[PeelServe]:
    peel = PeelServe(tmp_path)
    peel.store().upgrade()
    peel.commit(document(echo.url, 1))
    peel.start()
    yield peel
    peel.stop()


def served_version(peel: PeelServe) -> str | None:
    status, headers, _ = peel.get("/anything")
    assert status == 200
    return headers.get("x-version")


def test_serves_the_stored_routes(gateway: PeelServe) -> None:
    status, headers, body = gateway.get("/orders/7?x=1")
    assert status == 200
    assert headers["x-version"] == "1"
    assert b'"target": "/orders/7?x=1"' in body


def test_refuses_an_unmigrated_store(tmp_path: Path) -> None:
    peel = PeelServe(tmp_path)
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--config",
                             str(peel.config)], cwd=ROOT, capture_output=True, text=True,
                            timeout=60, env={k: v for k, v in os.environ.items()
                                             if not k.startswith("PEEL_")})
    assert result.returncode == 1
    assert "peel db upgrade" in result.stderr
    # the refused gateway opened no listener
    with pytest.raises(OSError):
        peel.get("/", timeout=1)


def test_a_committed_change_is_served_within_a_second(gateway: PeelServe, echo: ScriptedUpstream
                                                      ) -> None:
    assert served_version(gateway) == "1"
    gateway.commit(document(echo.url, 2))
    committed = time.monotonic()
    wait_for(lambda: served_version(gateway) == "2", 5, "version 2 to be served")
    # Polled every 0.25 s: about 0.3 s unloaded. The bound keeps the promise's order of magnitude
    # with a margin for a loaded 2-core machine (a watcher polling every 5 s still fails it).
    assert time.monotonic() - committed < 2.5


def admin_write(peel: PeelServe, method: str, path: str, token: str, body: dict[str, Any]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", peel.admin_port, timeout=30)
    try:
        conn.request(method, path, body=json.dumps(body), headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def published(peel: PeelServe) -> set[str]:
    run = peel.tmp / "run"
    return {p.name for p in run.iterdir()} if run.exists() else set()


def main_route(version: int) -> dict[str, Any]:
    return document("", version)["routes"][0]


def test_an_admin_write_answers_once_the_gateway_serves_it(tmp_path: Path, echo: ScriptedUpstream
                                                           ) -> None:
    # A poll every 30 s: only the commit's own wake-up can explain a change served at once.
    peel = PeelServe(tmp_path, extra_settings="poll_interval = 30")
    token = peel.upgrade_with_token()
    peel.commit(document(echo.url, 1))
    peel.start()
    try:
        for version in (2, 3, 4):
            assert admin_write(peel, "PUT", "/api/v1/routes/main", token, main_route(version)) == 200
            # the very first request after the answer: one process, so the whole gateway
            assert served_version(peel) == str(version)
        assert admin_write(peel, "POST", "/api/v1/config/rollback", token, {"version": 2}) == 200
        assert served_version(peel) == "2"
    finally:
        assert peel.stop() == 0


def test_workers_are_told_of_a_change_the_admin_api_commits(tmp_path: Path, echo: ScriptedUpstream
                                                           ) -> None:
    peel = PeelServe(tmp_path, workers=2, extra_settings="poll_interval = 30")
    token = peel.upgrade_with_token()
    peel.commit(document(echo.url, 1))
    peel.start()
    try:
        # both workers past their first table, watching (each publishes its state from then on):
        # a worker still starting would load the latest version as its first table anyway
        wait_for(lambda: {f"proc-{pid}.json" for pid in peel.children()} <= published(peel)
                 and len(peel.children()) == 2, 20, "two workers serving")
        for version in (2, 3, 4):
            assert admin_write(peel, "PUT", "/api/v1/routes/main", token, main_route(version)) == 200
            # every fresh connection, whichever worker accepts it, from the very first request after
            # the answer: the master woke the workers (SIGUSR1, not the 30 s poll) and waited for
            # each to say it serves the version
            assert [served_version(peel) for _ in range(20)] == [str(version)] * 20
    finally:
        assert peel.stop() == 0


class Load:
    """Keep-alive clients sending GETs until stopped; counts every status and every failure."""

    def __init__(self, port: int, clients: int = 4) -> None:
        self.port = port
        self.statuses: Counter[int] = Counter()
        self.failures: list[str] = []
        self.versions: Counter[str] = Counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self._stop.is_set():
            try:
                conn.request("GET", "/load")
                response = conn.getresponse()
                response.read()
                with self._lock:
                    self.statuses[response.status] += 1
                    self.versions[response.getheader("X-Version") or "-"] += 1
            except (OSError, http.client.HTTPException) as exc:
                with self._lock:
                    self.failures.append(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.close()

    @property
    def total(self) -> int:
        return sum(self.statuses.values())


def test_no_request_fails_while_changes_apply_under_load(gateway: PeelServe,
                                                         echo: ScriptedUpstream) -> None:
    with Load(gateway.public_port) as load:
        wait_for(lambda: load.total > 50, 10, "load to start")
        for version in range(2, 22):
            # every change also grows and shrinks the table, so each swap is a real rebuild
            gateway.commit(document(echo.url, version, extra_routes=(version % 5) * 200))
            time.sleep(0.1)
        wait_for(lambda: load.versions["21"] > 20, 5, "the last version to be served")
    assert load.failures == []
    assert set(load.statuses) == {200}, load.statuses
    assert load.total > 500
    assert len(load.versions) > 5  # the load saw many versions, not one


def test_workers_share_the_listener_and_each_applies_changes(tmp_path: Path,
                                                             echo: ScriptedUpstream) -> None:
    peel = PeelServe(tmp_path, workers=2)
    peel.store().upgrade()
    peel.commit(document(echo.url, 1))
    peel.start()
    try:
        wait_for(lambda: len(peel.children()) == 2, 10, "two workers")
        # every fresh connection, whichever worker accepts it, sees the new version
        peel.commit(document(echo.url, 2))
        committed = time.monotonic()
        wait_for(lambda: all(served_version(peel) == "2" for _ in range(20)), 5, "version 2")
        assert time.monotonic() - committed < 3.0  # margin: each check is 20 requests, loaded
        # a worker that dies is started again, and the listener keeps serving meanwhile
        victim = peel.children()[0]
        os.kill(victim, signal.SIGKILL)
        for _ in range(20):
            assert served_version(peel) == "2"
        wait_for(lambda: len(peel.children()) == 2 and victim not in peel.children(), 15,
                 "the worker to be started again")
    finally:
        assert peel.stop() == 0
    assert peel.children() == []


def test_sigterm_lets_in_flight_requests_finish(gateway: PeelServe, echo: ScriptedUpstream
                                                ) -> None:
    result: dict[str, Any] = {}

    def slow_request() -> None:
        try:
            result["status"], _, result["body"] = gateway.get("/slow/1.5", timeout=20)
        except OSError as exc:
            result["error"] = exc

    before = len(echo.seen)
    thread = threading.Thread(target=slow_request)
    thread.start()
    wait_for(lambda: any(s.target == "/slow/1.5" for s in echo.seen[before:]), 10,
             "the slow request to reach the upstream")
    gateway.signal(signal.SIGTERM)
    thread.join(20)
    assert result.get("status") == 200, result
    assert gateway.process is not None
    assert gateway.process.wait(20) == 0


def test_starts_from_the_snapshot_when_the_store_is_down(tmp_path: Path, echo: ScriptedUpstream
                                                         ) -> None:
    peel = PeelServe(tmp_path)
    peel.store().upgrade()
    peel.commit(document(echo.url, 7))
    peel.start()
    wait_for(lambda: (tmp_path / "snapshot.json").exists(), 5, "the snapshot")
    assert peel.stop() == 0
    # The same gateway, now pointed at a database nobody answers for.
    down = PeelServe(tmp_path, url=f"postgresql+psycopg://peel@127.0.0.1:{free_port()}/peel")
    down.start()
    try:
        assert served_version(down) == "7"
        assert "starting from the snapshot" in down.log.read_text()
    finally:
        assert down.stop() == 0


@pytest.mark.postgres
def test_hot_reload_on_postgresql(tmp_path: Path, echo: ScriptedUpstream, pg_url: str  # noqa: F811
                                  ) -> None:
    peel = PeelServe(tmp_path, url=pg_url, workers=2)
    store = peel.store()
    store.upgrade()
    base = store.latest_version()
    store.close()
    peel.commit(document(echo.url, base + 1))
    peel.start()
    try:
        with Load(peel.public_port, clients=2) as load:
            for version in range(base + 2, base + 8):
                peel.commit(document(echo.url, version))
                time.sleep(0.15)
            wait_for(lambda: load.versions[str(base + 7)] > 10, 5, "the last version")
        assert load.failures == []
        assert set(load.statuses) == {200}
    finally:
        assert peel.stop() == 0
