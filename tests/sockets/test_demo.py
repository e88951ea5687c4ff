"""`peel demo` for real: the gateway, the monolith and the orders service as processes on free ports.

What an operator does with the demo: read the banner, curl through the gateway, run the printed
`peel routes set orders ...` and see `/orders` move to the new service, then Ctrl-C and find nothing
left running.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

try:
    import gateway.cli
    import gateway.server.serve  # noqa: F401
except ImportError as exc:  # pragma: no cover - only while those modules are being written
    pytest.skip(f"peel demo needs gateway.cli and gateway.server.serve: {exc}", allow_module_level=True)

pytestmark = pytest.mark.timeout(240)
BANNER_END = "Ctrl-C stops everything."
STARTUP_SECONDS = 120.0


def free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_for(what: str, condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {seconds} s")
        time.sleep(0.05)


class DemoProcess:
    """`peel demo` as a subprocess, its output collected line by line."""

    def __init__(self, directory: Path, ports: list[int]) -> None:
        self.ports = ports
        env = {k: v for k, v in os.environ.items() if not k.startswith("PEEL_")}
        args = ["--dir", str(directory), "--public-port", str(ports[0]), "--admin-port", str(ports[1]),
                "--monolith-port", str(ports[2]), "--orders-port", str(ports[3])]
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "demo", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**env, "PYTHONUNBUFFERED": "1"}, cwd=str(directory.parent))
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_banner(self) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        while BANNER_END not in self.lines:
            if self.proc.poll() is not None:
                self.reader.join(5)
                pytest.fail(f"peel demo exited with {self.proc.returncode} before its banner:\n{self.output}")
            if time.monotonic() > deadline:
                pytest.fail(f"no banner within {STARTUP_SECONDS} s:\n{self.output}")
            time.sleep(0.05)

    def line_with(self, text: str) -> str:
        found = [line for line in self.lines if text in line]
        assert found, f"no line with {text!r} in:\n{self.output}"
        return found[0]

    def child_pids(self) -> dict[str, int]:
        """The pids the sample apps and the gateway report at start (`[name] ... process [pid]`)."""
        pids = {}
        for line in self.lines:
            m = re.match(r"\[(\w+)\] .*Started server process \[(\d+)\]", line)
            if m:
                pids.setdefault(m.group(1), int(m.group(2)))
        return pids

    def wait_exit(self, seconds: float) -> int:
        try:
            code = self.proc.wait(seconds)
        except subprocess.TimeoutExpired:
            pytest.fail(f"peel demo did not exit within {seconds} s:\n{self.output}")
        self.reader.join(5)
        return code

    def cleanup(self) -> None:
        """After a failed test: stop the demo; only if it had to be killed, its children by pid."""
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(20)
            return
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pid in self.child_pids().values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[DemoProcess]:
    process = DemoProcess(tmp_path / "demo", free_ports(4))
    try:
        yield process
    finally:
        process.cleanup()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_demo_peels_orders_off_the_monolith_and_stops_cleanly(demo: DemoProcess) -> None:
    demo.wait_for_banner()
    public, admin = demo.ports[0], demo.ports[1]
    with httpx.Client(base_url=f"http://127.0.0.1:{public}", timeout=10) as client:
        home = client.get("/")
        assert home.status_code == 200
        assert home.headers["x-served-by"] == "legacy-monolith"
        listing = client.get("/orders")
        assert listing.headers["x-served-by"] == "legacy-monolith"
        assert listing.json()["count"] == 3
        one = client.get("/orders/1")
        assert one.headers["x-served-by"] == "legacy-monolith"
        assert one.json()["id"] == 1

        # The banner's export line and step 3, run as printed (with this interpreter for `peel`).
        exports = dict(part.split("=", 1) for part in shlex.split(demo.line_with("PEEL_ADMIN_TOKEN="))[1:])
        assert exports["PEEL_ADMIN_URL"] == f"http://127.0.0.1:{admin}"
        assert exports["PEEL_ADMIN_TOKEN"] in demo.line_with("admin token")
        dashboard = demo.line_with("dashboard  ").split()[-1]
        assert dashboard == f"http://127.0.0.1:{admin}/dashboard#token={exports['PEEL_ADMIN_TOKEN']}"
        assert httpx.get(dashboard.split("#")[0], timeout=10).status_code == 200
        step = shlex.split(demo.line_with("routes set orders"), comments=True)
        command = step[step.index("routes"):]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PEEL_")}
        done = subprocess.run([sys.executable, "-m", "gateway.cli", *command], capture_output=True,
                              text=True, env={**env, **exports}, timeout=60)
        assert done.returncode == 0, done.stderr

        wait_for("/orders answered by orders-service",
                 lambda: client.get("/orders").headers.get("x-served-by") == "orders-service", 5)
        moved = client.get("/orders/1")
        assert moved.headers["x-served-by"] == "orders-service"
        assert moved.json()["served_by"] == "orders-service"
        assert client.get("/").headers["x-served-by"] == "legacy-monolith"

        # Step 9, as printed: the access log's templates, and the route that answers each now.
        step = shlex.split(demo.line_with(" inventory "), comments=True)
        command = step[step.index("inventory"):]

        def inventory() -> str:
            done = subprocess.run([sys.executable, "-m", "gateway.cli", *command], capture_output=True,
                                  text=True, env={**env, **exports}, timeout=60)
            assert done.returncode == 0, done.stderr
            return done.stdout

        wait_for("the access log to hold /orders/1 twice", lambda: re.search(
            r"^GET +/orders/\{int\} +2 ", inventory(), re.MULTILINE) is not None, 10)
        rows = {tuple(line.split()[:2]): line for line in inventory().splitlines()[2:]}
        # /orders/1 once from the monolith, once from the orders service since step 3
        assert rows[("GET", "/orders/{int}")].split()[2] == "2"
        assert rows[("GET", "/orders/{int}")].split()[8] == "50.0%"
        assert rows[("GET", "/orders/{int}")].endswith("orders: orders")
        assert rows[("GET", "/")].split()[2] == "2" and rows[("GET", "/")].split()[8] == "100.0%"

    pids = demo.child_pids()
    assert set(pids) == {"monolith", "orders", "peel"}, demo.output
    demo.proc.send_signal(signal.SIGINT)
    assert demo.wait_exit(60) == 0, demo.output
    assert "peel demo: stopped" in demo.output
    for port in demo.ports:
        assert not listening(port), f"something still listens on {port}"
    for name, pid in pids.items():
        assert not pid_alive(pid), f"{name} (pid {pid}) is still running"


def test_a_child_that_dies_stops_the_demo_with_the_reason(demo: DemoProcess) -> None:
    demo.wait_for_banner()
    pids = demo.child_pids()
    os.kill(pids["orders"], signal.SIGKILL)
    assert demo.wait_exit(60) == 1, demo.output
    assert re.search(r"orders \(pid \d+\) was killed by signal SIGKILL", demo.output), demo.output
    for port in demo.ports:
        assert not listening(port), f"something still listens on {port}"
    for name, pid in pids.items():
        assert not pid_alive(pid), f"{name} (pid {pid}) is still running"


def test_a_busy_port_is_named_with_the_option_to_change_it(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        others = free_ports(3)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PEEL_")}
        done = subprocess.run([sys.executable, "-m", "gateway.cli", "demo", "--dir", str(tmp_path / "d"),
                               "--public-port", str(others[0]), "--admin-port", str(taken),
                               "--monolith-port", str(others[1]), "--orders-port", str(others[2])],
                              capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 1
    assert f"port {taken} for the admin API is busy" in done.stderr
    assert "--admin-port" in done.stderr
    assert not (tmp_path / "d" / "peel.db").exists()
