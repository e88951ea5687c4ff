"""Lifecycle promises of `peel serve` (gateway/server/serve.py, supervisor.py, systemd.py and
routes/watcher.py), on real processes: a config version that cannot be loaded, the store lost after
start, a second SIGTERM against a second Ctrl-C, the grace period running out, the systemd notify
messages, and the growing pause before a dead worker is started again.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, insert

from routes.model import Document
from routes.schema import config_versions
from tests.fakes.relay import Relay
from tests.pg import pg_server, pg_url  # noqa: F401
from tests.sockets.conftest import wait_for
from tests.sockets.serve_harness import PeelServe
from tests.sockets.test_serve import document
from tests.sockets.upstreams import ScriptedUpstream


@pytest.fixture(scope="module")
def echo() -> Iterator[ScriptedUpstream]:
    server = ScriptedUpstream()
    server.start()
    yield server
    server.stop()


def served_version(peel: PeelServe) -> str | None:
    status, headers, _ = peel.get("/anything")
    assert status == 200
    return headers.get("x-version")


def with_server_settings(peel: PeelServe, **values: float) -> PeelServe:
    """Replace `[server]` keys the harness writes itself (TOML refuses a key given twice)."""
    text = peel.config.read_text()
    for key, value in values.items():
        text, n = re.subn(rf"^{key} = .*$", f"{key} = {value}", text, flags=re.M)
        if n == 0:
            text = text.replace("[server]\n", f"[server]\n{key} = {value}\n", 1)
    peel.config.write_text(text)
    return peel


def commit_unloadable(url: str, version: int, echo_url: str) -> None:
    """Write config version `version` straight into the store: JSON that no Peel can compile (its
    route names a service the document does not have), as a buggy tool or a newer Peel could."""
    bad = document(echo_url, version)
    bad["routes"][0]["service"] = "no-such-service"
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(insert(config_versions).values(
                version=version, created_at=datetime.now(UTC), actor="test", reason="unloadable",
                summary="broken", document=json.dumps(bad)))
    finally:
        engine.dispose()


class Client(threading.Thread):
    """One GET in a thread: `status` when it was answered, else `error`."""

    def __init__(self, peel: PeelServe, target: str, timeout: float = 60) -> None:
        super().__init__(daemon=True)
        self.peel, self.target, self.timeout = peel, target, timeout
        self.status: int | None = None
        self.error: BaseException | None = None
        self.finished_at = 0.0

    def run(self) -> None:
        try:
            self.status, _, _ = self.peel.get(self.target, timeout=self.timeout)
        except Exception as exc:  # the cut request: reset, closed, or a bad status line
            self.error = exc
        self.finished_at = time.monotonic()


def cut(client: Client) -> bool:
    """The request did not get the upstream's answer: the connection broke, or the gateway
    answered 5xx itself (uvicorn's shutdown answers a cancelled request 500)."""
    return client.status is None or client.status >= 500


def in_flight(peel: PeelServe, echo: ScriptedUpstream, target: str) -> Client:
    before = len(echo.seen)
    client = Client(peel, target)
    client.start()
    wait_for(lambda: any(s.target == target for s in echo.seen[before:]), 15,
             f"{target} to reach the upstream")
    return client


# -- a config version that cannot be loaded ----------------------------------------------------


def test_an_unloadable_config_version_is_logged_once_and_the_previous_table_serves(
        tmp_path: Path, echo: ScriptedUpstream) -> None:
    peel = with_server_settings(PeelServe(tmp_path), poll_interval=0.05)
    store = peel.store()
    store.upgrade()
    peel.commit(document(echo.url, 1))
    peel.start()
    try:
        assert served_version(peel) == "1"
        commit_unloadable(peel.url, 2, echo.url)
        failed = "config version 2 could not be loaded"
        wait_for(lambda: failed in peel.log.read_text(), 15, "the failure to be logged")
        # Many polls later (50 ms apart) version 1 still serves and the gateway stays ready.
        watch_until = time.monotonic() + 1.5
        while time.monotonic() < watch_until:
            assert served_version(peel) == "1"
        assert peel.get("/readyz", port=peel.admin_port)[0] == 200
        # A good version after it is loaded as usual (commit with a summary: the stored latest
        # document cannot be read to diff against).
        store.commit(Document.parse(document(echo.url, 3)), actor="test", reason="fix",
                     summary="fixed")
        wait_for(lambda: served_version(peel) == "3", 15, "version 3 to serve")
        log = peel.log.read_text()
        assert log.count(failed) == 1, log
        assert "still serving version 1" in log
    finally:
        store.close()
        assert peel.stop() == 0


# -- the store lost after start ------------------------------------------------------------------


@pytest.mark.postgres
def test_the_store_lost_after_start_leaves_the_last_table_serving(
        tmp_path: Path, echo: ScriptedUpstream, pg_url: str) -> None:  # noqa: F811
    host, port = re.search(r"@([\d.]+):(\d+)/", pg_url).groups()  # type: ignore[union-attr]
    relay = Relay((host, int(port)))
    via_relay = pg_url.replace(f"{host}:{port}", f"127.0.0.1:{relay.port}")
    peel = with_server_settings(PeelServe(tmp_path, url=via_relay), poll_interval=0.05)
    store = peel.store()
    store.upgrade()
    store.close()
    peel.commit(document(echo.url, 1))
    peel.start()
    try:
        assert served_version(peel) == "1"
        relay.cut()
        wait_for(lambda: "store unreachable, serving config version 1" in peel.log.read_text(), 30,
                 "the lost store to be noticed")
        watch_until = time.monotonic() + 1.5
        while time.monotonic() < watch_until:
            assert served_version(peel) == "1"
        assert peel.get("/readyz", port=peel.admin_port)[0] == 200
        # said when the error changes (the cut connection, then refused connects), not per poll
        said = [line.partition("ERROR")[2] for line in peel.log.read_text().splitlines()
                if "store unreachable" in line]
        assert 1 <= len(said) <= 3 and len(set(said)) == len(said), said
    finally:
        relay.cut()
        assert peel.stop() == 0


# -- signals during a drain ----------------------------------------------------------------------


def test_a_second_sigterm_does_not_cut_the_drain(tmp_path: Path, echo: ScriptedUpstream) -> None:
    peel = PeelServe(tmp_path)
    peel.store().upgrade()
    peel.commit(document(echo.url, 1))
    peel.start()
    try:
        client = in_flight(peel, echo, "/slow/2")
        peel.signal(signal.SIGTERM)
        wait_for(lambda: "draining" in peel.log.read_text(), 10, "the drain to begin")
        assert peel.process is not None and peel.process.poll() is None
        peel.signal(signal.SIGTERM)  # e.g. a process-group kill after the one to the main process
        client.join(30)
        assert (client.status, client.error) == (200, None)
        assert peel.process.wait(20) == 0
        assert "forced stop" not in peel.log.read_text()
    finally:
        peel.stop()


@pytest.mark.parametrize("first", [signal.SIGTERM, signal.SIGINT])
def test_a_second_ctrl_c_forces_the_stop_and_cuts_requests_in_flight(
        tmp_path: Path, echo: ScriptedUpstream, first: signal.Signals) -> None:
    peel = PeelServe(tmp_path)  # grace period 10 s: only forcing ends the slow request early
    peel.store().upgrade()
    peel.commit(document(echo.url, 1))
    peel.start()
    try:
        client = in_flight(peel, echo, "/slow/30")
        peel.signal(first)
        wait_for(lambda: "draining" in peel.log.read_text(), 10, "the drain to begin")
        peel.signal(signal.SIGINT)
        assert peel.process is not None
        assert peel.process.wait(20) == 0
        client.join(10)
        assert not client.is_alive() and cut(client), (client.status, client.error)
        assert "forced stop: in-flight requests are cut" in peel.log.read_text()
    finally:
        peel.stop()


def test_the_grace_period_running_out_cuts_the_request_and_the_process_exits(
        tmp_path: Path, echo: ScriptedUpstream) -> None:
    grace = 1.0
    peel = with_server_settings(PeelServe(tmp_path), grace_period=grace)
    peel.store().upgrade()
    peel.commit(document(echo.url, 1))
    peel.start()
    try:
        client = in_flight(peel, echo, "/slow/30")
        peel.signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert peel.process is not None
        assert peel.process.wait(grace + 15) == 0  # margin for a loaded machine, far below 30 s
        exited = time.monotonic()
        client.join(10)
        assert not client.is_alive() and cut(client), (client.status, client.error)
        # the request had its grace period before it was cut
        assert exited - signalled >= grace * 0.9
        assert client.finished_at - signalled >= grace * 0.9
    finally:
        peel.stop()


# -- systemd notify --------------------------------------------------------------------------------


@pytest.fixture
def notify_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd's, named by NOTIFY_SOCKET for `peel serve`."""
    directory = Path(tempfile.mkdtemp(prefix="peel-notify-"))  # short: sun_path holds 108 bytes
    path = directory / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(30)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()
    path.unlink(missing_ok=True)
    directory.rmdir()


def messages(sock: socket.socket) -> Iterator[dict[str, str]]:
    while True:
        fields = sock.recv(4096).decode().split("\n")
        yield dict(field.split("=", 1) for field in fields)


@pytest.mark.parametrize("workers", [1, 2])
def test_systemd_hears_ready_reloading_ready_stopping_in_order(
        tmp_path: Path, echo: ScriptedUpstream, notify_socket: socket.socket, workers: int) -> None:
    peel = PeelServe(tmp_path, workers=workers)
    peel.store().upgrade()
    peel.commit(document(echo.url, 1))
    peel.start()
    heard = messages(notify_socket)
    try:
        ready = next(heard)
        assert ready == {"READY": "1", "STATUS": "serving config version 1"}
        if workers > 1:
            wait_for(lambda: len(peel.children()) == workers, 15, "the workers")
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        peel.signal(signal.SIGHUP)
        reloading = next(heard)
        assert reloading.keys() == {"RELOADING", "MONOTONIC_USEC"} and reloading["RELOADING"] == "1"
        assert before <= int(reloading["MONOTONIC_USEC"]) <= time.clock_gettime_ns(
            time.CLOCK_MONOTONIC) // 1000
        assert next(heard) == {"READY": "1"}
        peel.signal(signal.SIGTERM)
        assert next(heard) == {"STOPPING": "1"}
        assert peel.process is not None and peel.process.wait(30) == 0
        # nothing more: workers never speak to systemd, and STOPPING is said once
        notify_socket.settimeout(0.2)
        with pytest.raises(TimeoutError):
            notify_socket.recv(4096)
    finally:
        peel.stop()


# -- restart backoff -------------------------------------------------------------------------------


def test_a_worker_that_keeps_dying_is_started_again_after_growing_pauses(
        tmp_path: Path, echo: ScriptedUpstream) -> None:
    peel = PeelServe(tmp_path, workers=2)
    peel.store().upgrade()
    peel.commit(document(echo.url, 1))
    peel.start()
    try:
        wait_for(lambda: len(peel.children()) == 2, 15, "two workers")
        victim = peel.children()[0]
        delays: list[float] = []
        for _ in range(3):
            known = set(peel.children())
            signal_at = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda known=known: bool(set(peel.children()) - known), 30,  # type: ignore[misc]
                     "the worker to be started again")
            delays.append(time.monotonic() - signal_at)
            (victim,) = set(peel.children()) - known
            assert served_version(peel) == "1"  # the other worker served meanwhile
        # documented: the pause doubles from 1 s (capped at 30 s); the check runs every 0.5 s
        pauses = [float(p) for p in re.findall(r"starting it again in ([\d.]+) s", peel.log.read_text())]
        assert pauses == [1.0, 2.0, 4.0]
        for delay, pause in zip(delays, pauses, strict=True):
            assert delay >= pause, (delays, pauses)
        assert delays[2] > delays[0]
    finally:
        assert peel.stop() == 0
