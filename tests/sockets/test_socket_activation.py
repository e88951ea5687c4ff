"""`peel serve` under systemd socket activation and the watchdog (gateway/server/serve.py `bind`,
gateway/server/systemd.py), with real processes: a socket bound here is passed the way systemd
passes it (fd 3, LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES), and it outlives each process that serves
it, so a request made while no Peel runs waits in its queue and is answered by the next one."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sockets.conftest import ROOT, wait_for
from tests.sockets.serve_harness import PeelServe
from tests.sockets.test_serve import document
from tests.sockets.upstreams import ScriptedUpstream

# LISTEN_PID must be the pid of `peel serve` itself: this wrapper learns its own, moves the passed
# descriptor to 3 and becomes Peel with exec, which keeps the pid (as systemd does after its fork).
WRAPPER = """
import os, sys
fd = int(os.environ.pop("PASSED_FD"))
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ["LISTEN_PID"] = os.environ["WATCHDOG_PID"] = str(os.getpid())
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


@pytest.fixture(scope="module")
def echo() -> Iterator[ScriptedUpstream]:
    server = ScriptedUpstream()
    server.start()
    yield server
    server.stop()


def listening_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    return sock


def start_activated(peel: PeelServe, passed: socket.socket, **env: str) -> subprocess.Popen[bytes]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PEEL_", "LISTEN_"))}
    environ.update(LISTEN_FDS="1", LISTEN_FDNAMES="public", PASSED_FD=str(passed.fileno()), **env)
    with open(peel.log, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", WRAPPER, "-m", "gateway.cli", "serve", "--config", str(peel.config)],
            cwd=ROOT, env=environ, stdout=log, stderr=subprocess.STDOUT, pass_fds=(passed.fileno(),),
            start_new_session=True)
    peel.process = process
    return process


def get(port: int, timeout: float = 30, connected: list[float] | None = None) -> tuple[int, str | None]:
    """GET /x: (status, X-Version); the seconds the TCP connect took are appended to `connected`."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        start = time.monotonic()
        conn.connect()
        if connected is not None:
            connected.append(time.monotonic() - start)
        conn.request("GET", "/x")
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("X-Version")
    finally:
        conn.close()


def test_peel_serves_the_passed_socket_and_the_next_process_answers_what_queued_meanwhile(
        tmp_path: Path, echo: ScriptedUpstream) -> None:
    peel = PeelServe(tmp_path)
    peel.store().upgrade()
    peel.commit(document(echo.url, 1))
    # Held here, as systemd holds it: `peel serve` could not bind this port itself (EADDRINUSE),
    # so every answer below comes through the passed socket.
    passed = listening_socket(peel.public_port)
    try:
        first = start_activated(peel, passed)
        wait_for(peel.ready, 30, f"peel serve to be ready (log: {peel.log})")
        assert get(peel.public_port) == (200, "1")
        log = peel.log.read_text()
        assert "public listener: socket passed by systemd" in log
        assert "cannot listen" not in log

        first.send_signal(signal.SIGTERM)
        assert first.wait(30) == 0
        assert "systemd keeps the listening socket" in peel.log.read_text()
        # No Peel runs now. A client connects and waits: it must be answered by the next process,
        # not refused. Its handshake completes at once and it waits in the queue: the draining
        # process put no drop-every-packet filter on a socket systemd holds (gateway/edge/drain.py;
        # with one, the connect waited for the kernel's SYN retransmissions, 1 s then 3 s, until
        # the next process detached it).
        peel.commit(document(echo.url, 2))
        answered: list[tuple[int, str | None]] = []
        connected: list[float] = []
        client = threading.Thread(target=lambda: answered.append(get(peel.public_port,
                                                                     connected=connected)))
        client.start()
        wait_for(lambda: bool(connected), 30, "the client's connect to complete while no Peel runs")
        second = start_activated(peel, passed)
        client.join(60)
        assert answered == [(200, "2")], peel.log.read_text()
        assert connected[0] < 0.5, connected
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    finally:
        peel.stop()
        passed.close()


def test_watchdog_pings_come_from_the_serving_process(
        tmp_path: Path, echo: ScriptedUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = Path(tempfile.mkdtemp(prefix="peel-notify-"))  # short: sun_path holds 108 bytes
    path = directory / "notify"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(path))
    notify.settimeout(30)
    peel = PeelServe(tmp_path)
    peel.store().upgrade()
    peel.commit(document(echo.url, 1))
    passed = listening_socket(peel.public_port)
    try:
        start_activated(peel, passed, NOTIFY_SOCKET=str(path), WATCHDOG_USEC="200000")
        heard = [notify.recv(4096) for _ in range(4)]
        assert heard[0].startswith(b"READY=1\n")
        assert heard[1:] == [b"WATCHDOG=1"] * 3
    finally:
        peel.stop()
        passed.close()
        notify.close()
        path.unlink()
        directory.rmdir()
