"""A real `peel serve` process on free loopback ports, with its own store in a temp dir."""

from __future__ import annotations

import http.client
import os
import random
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from routes.model import Document
from routes.store import Store
from tests.sockets.conftest import ROOT, wait_for

_handed_out: set[int] = set()
_LOWEST = 10000  # ports below are left to well-known and registered services


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (its source ports for outgoing connections)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    """A loopback port nothing listens on, never one this process handed out before.

    The port is returned closed and bound later by the process under test, so two things could take
    it in between: another `free_port()` (binding port 0 twice in a row may give the same ephemeral
    port once the first socket is closed; a CI run got one port for a gateway's public and admin
    listeners that way), and an outgoing connection of any test, whose source port the kernel takes
    from the same ephemeral range. So ports come from below that range, at random, checked by
    binding.
    """
    rng = random.Random()
    high = _ephemeral_low()
    for _ in range(1000):
        port = rng.randrange(_LOWEST, high) if high - _LOWEST >= 1000 else 0
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no free loopback port found in 1,000 tries")


@dataclass
class PeelServe:
    """`peel serve` with a store at `url` (a temp SQLite file unless given)."""

    tmp: Path
    url: str = ""
    workers: int = 1
    extra_settings: str = ""
    public_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.url = self.url or f"sqlite:///{self.tmp / 'peel.db'}"
        self.config = self.tmp / "peel.toml"
        self.config.write_text(
            f'[database]\nurl = "{self.url}"\n'
            f'[listeners.public]\nbind = "127.0.0.1:{self.public_port}"\n'
            f'[listeners.admin]\nbind = "127.0.0.1:{self.admin_port}"\n'
            f'[server]\nworkers = {self.workers}\nsnapshot_path = "{self.tmp / "snapshot.json"}"\n'
            f'run_dir = "{self.tmp / "run"}"\n'
            f"grace_period = 10\n{self.extra_settings}\n"
            f'[access_log]\ntarget = "{self.tmp / "access.log"}"\n')
        self.log = self.tmp / "serve.log"

    def store(self) -> Store:
        return Store(self.url)

    def upgrade_with_token(self, name: str = "test") -> str:
        """Migrate the store and create an admin token named `name`; returns its secret."""
        store = self.store()
        try:
            store.upgrade()
            return store.create_token(name)
        finally:
            store.close()

    def admin_get(self, path: str, token: str, *, timeout: float = 10) -> tuple[int, bytes]:
        """GET `path` on the admin listener with `token`: (status, body)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=timeout)
        try:
            conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def commit(self, document: dict[str, Any], reason: str = "test") -> int:
        store = self.store()
        try:
            return store.commit(Document.parse(document), actor="test", reason=reason).version
        finally:
            store.close()

    def start(self, *, wait: bool = True) -> PeelServe:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PEEL_")}
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve", "--config", str(self.config)],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if wait:
            wait_for(self.ready, 30, f"peel serve to be ready (log: {self.log})")
        return self

    def ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"peel serve exited with {self.process.returncode}:\n"
                                 + self.log.read_text())
        try:
            status, _, _ = self.get("/readyz", port=self.admin_port, timeout=1)
        except OSError:
            return False
        return status == 200

    def get(self, target: str, *, port: int | None = None, timeout: float = 10,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port or self.public_port, timeout=timeout)
        try:
            conn.request("GET", target, headers=headers or {})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def stop(self, timeout: float = 30) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode

    def children(self) -> list[int]:
        assert self.process is not None
        try:
            text = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text()
        except OSError:
            return []
        return [int(pid) for pid in text.split()]
