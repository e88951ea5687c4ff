"""Socket-tier fixtures: scripted upstreams in threads, the data plane in its own process."""

from __future__ import annotations

import asyncio
import http.client
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
import yaml

from gateway.admin.app import build_admin_app
from gateway.core.settings import Settings
from routes.store import Store
from tests.sockets.upstreams import Upstreams

ROOT = Path(__file__).resolve().parents[2]


def wait_for(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll `condition` until true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


@dataclass
class Proxy:
    """A running `tests.sockets.run_proxy` process."""

    port: int
    process: subprocess.Popen[bytes]
    access_log: Path

    def connection(self, source: str | None = None, timeout: float = 10.0) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout,
                                          source_address=(source, 0) if source else None)

    def request(self, method: str, target: str, body: bytes | None = None,
                headers: dict[str, str] | None = None,
                source: str | None = None) -> tuple[http.client.HTTPResponse, bytes]:
        conn = self.connection(source)
        try:
            conn.request(method, target, body=body, headers=headers or {})
            response = conn.getresponse()
            return response, response.read()
        finally:
            conn.close()

    def rss_kib(self, field: str = "VmRSS") -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith(field + ":"))
        return int(line.split()[1])


def start_proxy(tmp: Path, document: dict[str, object], settings: str = "") -> Proxy:
    """Bind a free port here, hand the socket to a new proxy process, return once it answers."""
    doc_path = tmp / "document.yaml"
    doc_path.write_text(yaml.safe_dump(document))
    log_path = tmp / "access.log"
    settings_path = tmp / "settings.toml"
    settings_path.write_text(f'[access_log]\ntarget = "{log_path}"\n{settings}')
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEEL_")}
    with open(tmp / "proxy.err", "wb") as err:  # the child keeps its own copy of the fd
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.sockets.run_proxy", "--document", str(doc_path),
             "--settings", str(settings_path), "--fd", str(sock.fileno())],
            cwd=ROOT, env=env, pass_fds=[sock.fileno()], stderr=err)
    sock.close()
    proxy = Proxy(port, process, log_path)
    # The socket listens already: the first request waits in the backlog until the app runs.
    conn = proxy.connection(timeout=30)
    try:
        conn.request("GET", "/__not_routed__")
        conn.getresponse().read()
    finally:
        conn.close()
    return proxy


def stop_proxy(proxy: Proxy) -> None:
    proxy.process.terminate()
    try:
        proxy.process.wait(15)
    except subprocess.TimeoutExpired:
        proxy.process.kill()
        proxy.process.wait()


@pytest.fixture(scope="module")
def upstreams() -> Iterator[Upstreams]:
    ups = Upstreams().start()
    yield ups
    ups.stop()


def standard_document(urls: dict[str, str]) -> dict[str, object]:
    services = [{"name": name, "endpoints": [url]} for name, url in sorted(urls.items())]
    routes: list[dict[str, object]] = [
        {"name": "echo", "match": {"path_prefix": "/e"}, "service": "echo",
         "rewrite": {"path_prefix": "/"}},
        {"name": "edits", "match": {"path_prefix": "/edit"}, "service": "echo",
         "rewrite": {"path_prefix": "/", "host": "upstream.example",
                     "request_headers": {"set": {"X-Added": "a"}},
                     "response_headers": {"set": {"X-Resp": "b"}}}},
        {"name": "known-host", "match": {"hosts": ["known.example"], "path_prefix": "/"},
         "service": "echo"},
    ]
    for name in ("hanging", "reset", "garbage", "refusing"):
        routes.append({"name": name, "match": {"path_prefix": f"/{name}"}, "service": name})
    return {"services": services, "routes": routes}


PROXY_SETTINGS = """
[server]
keepalive_timeout = 1.0
[proxy]
trusted_proxies = ["127.0.0.2/32"]
connect_timeout = 1.0
response_timeout = 1.0
idle_timeout = 2.0
"""


@pytest.fixture(scope="module")
def proxy(upstreams: Upstreams, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    running = start_proxy(tmp_path_factory.mktemp("proxy"), standard_document(upstreams.urls()),
                          PROXY_SETTINGS)
    yield running
    stop_proxy(running)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str, Store]]:
    """(database URL, admin URL, store): an admin API on a free loopback port, served by uvicorn in
    a thread over a SQLite store in `tmp_path` (`peel` commands and a browser talk to it)."""
    url = f"sqlite:///{tmp_path / 'peel.db'}"
    store = Store(url)
    store.upgrade()
    app = build_admin_app(store, ready=lambda: True, settings=Settings())
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", proxy_headers=False))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the admin API did not start"
        assert thread.is_alive(), "the admin API thread died"
        time.sleep(0.01)
    yield url, f"http://127.0.0.1:{port}", store
    server.should_exit = True
    thread.join(10)
    sock.close()
    store.close()
