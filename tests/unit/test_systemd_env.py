"""What `peel serve` reads from systemd's environment: passed sockets (sd_listen_fds) and the
watchdog period (sd_watchdog_enabled), gateway/server/systemd.py."""

from __future__ import annotations

import asyncio
import socket
import tempfile
from pathlib import Path

import pytest

from gateway.server import systemd

PID = 4242


@pytest.mark.parametrize(("environ", "expected"), [
    ({"LISTEN_PID": "4242", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "public:admin"},
     [("public", 3), ("admin", 4)]),
    ({"LISTEN_PID": "4242", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "public"}, [("public", 3)]),
    # another process's sockets (a child that inherited the environment): not ours
    ({"LISTEN_PID": "4243", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "public:admin"}, []),
    ({"LISTEN_FDS": "2", "LISTEN_FDNAMES": "public:admin"}, []),
    ({"LISTEN_PID": "4242", "LISTEN_FDS": "0"}, []),
    ({"LISTEN_PID": "4242", "LISTEN_FDS": "-1"}, []),
    ({"LISTEN_PID": "4242", "LISTEN_FDS": "two"}, []),
    ({"LISTEN_PID": "4242"}, []),
    ({}, []),
    # names missing or not one per descriptor: "unknown", as libsystemd says
    ({"LISTEN_PID": "4242", "LISTEN_FDS": "2"}, [("unknown", 3), ("unknown", 4)]),
    ({"LISTEN_PID": "4242", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "public"},
     [("unknown", 3), ("unknown", 4)]),
    ({"LISTEN_PID": "4242", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "public:"},
     [("unknown", 3), ("unknown", 4)]),
    ({"LISTEN_PID": " 4242\n", "LISTEN_FDS": "3", "LISTEN_FDNAMES": "public:admin:redirect"},
     [("public", 3), ("admin", 4), ("redirect", 5)]),
])
def test_listen_fds(environ: dict[str, str], expected: list[tuple[str, int]]) -> None:
    assert systemd.listen_fds(environ, PID) == expected


def test_forget_listen_fds_removes_only_the_listen_variables() -> None:
    environ = {"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "public", "PATH": "/bin"}
    systemd.forget_listen_fds(environ)
    assert environ == {"PATH": "/bin"}
    systemd.forget_listen_fds(environ)  # twice is fine
    assert environ == {"PATH": "/bin"}


@pytest.mark.parametrize(("environ", "expected"), [
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
    ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "4242"}, 0.1),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # another process is watched
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({"WATCHDOG_USEC": ""}, None),
    ({}, None),
])
def test_watchdog_period(environ: dict[str, str], expected: float | None) -> None:
    assert systemd.watchdog_period(environ, PID) == expected


def test_watchdog_pings_until_cancelled(monkeypatch: pytest.MonkeyPatch) -> None:
    directory = Path(tempfile.mkdtemp(prefix="peel-wd-"))  # short: sun_path holds 108 bytes
    path = directory / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(10)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))

        async def run() -> None:
            task = asyncio.create_task(systemd.watchdog(0.01))
            heard = [await asyncio.to_thread(sock.recv, 100) for _ in range(3)]
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert heard == [b"WATCHDOG=1"] * 3

        asyncio.run(run())
        sock.settimeout(0.3)
        while True:  # drain what was sent before the cancel; then nothing more comes
            try:
                sock.recv(100)
            except TimeoutError:
                break
    path.unlink()
    directory.rmdir()
