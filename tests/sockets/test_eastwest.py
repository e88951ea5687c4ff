"""East-west through real sidecars (issue 14 items 1-2): unmodified clients (curl, Python urllib)
call a service by name through the outbound listener (`HTTP_PROXY`, Host header, a local port per
service); the call crosses to the peer sidecar's inbound listener with mTLS and reaches the local
app; an unregistered host is refused (never an open proxy); the `Proxy` header never reaches the
app; `CONNECT` only to the allow-list.

Two `peel serve --role sidecar` processes on one store: `monolith` (outbound listener only) and
`orders` (inbound listener, strict mTLS, in front of a scripted app; its outbound on too).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.identity.ca import CertificateAuthority
from tests.access_log import records
from tests.sockets.conftest import ROOT, wait_for
from tests.sockets.serve_harness import PeelServe, free_port
from tests.sockets.test_mtls import TD, client_context, write_identity
from tests.sockets.upstreams import ScriptedUpstream

pytestmark = pytest.mark.timeout(240)


def accepting(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


class Sidecar(PeelServe):
    """`peel serve --role sidecar`: no admin listener, so ready once its own ports accept."""

    ports: tuple[int, ...] = ()

    def start(self, *, wait: bool = True) -> Sidecar:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PEEL_")}
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve", "--role", "sidecar", "--config",
                 str(self.config)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        wait_for(lambda: self._alive() and all(accepting(p) for p in self.ports), 60,
                 f"the sidecar to accept (log: {self.log})")
        return self

    def _alive(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"peel serve exited with {self.process.returncode}:\n"
                                 + self.log.read_text())
        return True


@dataclass
class Mesh:
    tmp: Path
    app: ScriptedUpstream
    monolith: Sidecar
    orders: Sidecar
    outbound: int  # the monolith sidecar's outbound listener
    orders_port: int  # its local port for service orders
    inbound: int  # the orders sidecar's inbound listener
    tunnel_target: int  # a TCP listener on the CONNECT allow-list
    tunnel_listener: socket.socket
    closed_port: int  # on the CONNECT allow-list, nothing listens
    ca: CertificateAuthority


def _tcp_echo() -> tuple[socket.socket, int]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    return server, int(server.getsockname()[1])


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("eastwest")
    ca, _ = CertificateAuthority.init(tmp / "ca", TD, now=datetime.now(UTC))
    app = ScriptedUpstream()
    app.start()
    db = f"sqlite:///{tmp / 'peel.db'}"
    outbound, orders_port, inbound, orders_outbound = free_port(), free_port(), free_port(), free_port()
    echo, echo_port = _tcp_echo()
    closed_port = free_port()
    (tmp / "monolith").mkdir()
    (tmp / "orders").mkdir()
    mono_id = write_identity(ca, tmp / "monolith" / "identity", "monolith")
    orders_id = write_identity(ca, tmp / "orders" / "identity", "orders")
    monolith = Sidecar(tmp / "monolith", url=db, extra_settings=(
        f'[listeners.outbound]\nbind = "127.0.0.1:{outbound}"\nservice_ports = {{orders = {orders_port}}}\n'
        f'connect_allow = ["127.0.0.1:{echo_port}", "127.0.0.1:{closed_port}"]\n'
        f'[identity]\nstate_dir = "{mono_id.directory}"\n'))
    monolith.ports = (outbound, orders_port)
    orders = Sidecar(tmp / "orders", url=db, extra_settings=(
        f'[listeners.outbound]\nbind = "127.0.0.1:{orders_outbound}"\n'
        f'[listeners.inbound]\nbind = "127.0.0.1:{inbound}"\nmtls = "strict"\napp = "{app.url}"\n'
        f'[identity]\nstate_dir = "{orders_id.directory}"\n'
        # nobody by address: the deadline and trace context are believed from the mTLS peer only
        '[tracing]\ntrusted_networks = []\n[deadlines]\ntrusted_networks = []\n'))
    orders.ports = (inbound, orders_outbound)
    monolith.upgrade_with_token()
    monolith.commit({
        "services": [
            {"name": "legacy", "endpoints": [app.url]},
            {"name": "orders", "endpoints": [f"https://127.0.0.1:{inbound}"],
             "identity": f"spiffe://{TD}/svc/orders"},
        ],
        "routes": [
            # a host-less default: an unknown Host must not fall through to it on the outbound
            {"name": "default", "match": {"path_prefix": "/"}, "service": "legacy"},
            # who may call orders: enforced by the orders sidecar's strict inbound listener
            {"name": "orders-callers", "match": {"hosts": ["orders"]}, "service": "orders",
             "authorization": {"allow_from": ["monolith"]}},
        ]})
    started: list[Sidecar] = []
    try:
        started.append(orders.start())
        started.append(monolith.start())
        yield Mesh(tmp, app, monolith, orders, outbound, orders_port, inbound, echo_port, echo,
                   closed_port, ca)
    finally:
        codes = [sidecar.stop() for sidecar in started]
        app.stop()
        echo.close()
    assert codes == [0, 0], f"a sidecar did not drain and exit 0 on SIGTERM: {codes}"


def _echo(body: bytes) -> dict[str, object]:
    data = json.loads(body)
    assert isinstance(data, dict)
    return data


def _headers(seen: dict[str, object]) -> dict[str, str]:
    pairs = seen["headers"]
    assert isinstance(pairs, list)
    return {str(n).lower(): str(v) for n, v in pairs}


def proxy_env(port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    url = f"http://127.0.0.1:{port}"
    env.update(http_proxy=url, HTTP_PROXY=url)
    return env


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_with_http_proxy_reaches_the_service_over_mtls_and_proxy_is_stripped(mesh: Mesh) -> None:
    before = len(mesh.app.seen)
    result = subprocess.run(
        ["curl", "-sS", "-H", "Proxy: http://evil.example:1", "-H", "Proxy-Authorization: Basic eA==",
         "-H", "Peel-Timeout-Ms: 5000",
         "-w", "\n%{http_code}", "http://orders/orders/7?x=1"],
        env=proxy_env(mesh.outbound), capture_output=True, text=True, timeout=60)
    body, _, status = result.stdout.rpartition("\n")
    assert status == "200", result
    seen = _echo(body.encode())
    assert seen["target"] == "/orders/7?x=1"
    headers = _headers(seen)
    assert "proxy" not in headers and "proxy-authorization" not in headers
    assert headers["host"] == "orders"
    # the remaining deadline crossed both hops (the orders sidecar trusts no network, only its peer)
    assert 0 < int(headers["peel-timeout-ms"]) <= 5000
    assert len(mesh.app.seen) == before + 1
    # It crossed the orders sidecar's inbound listener with the monolith's identity.
    def line(sidecar: Sidecar) -> dict[str, object] | None:
        return next((found for found in records(sidecar.tmp / "access.log") if found["path"] == "/orders/7"),
                    None)

    wait_for(lambda: line(mesh.orders) is not None and line(mesh.monolith) is not None, 30,
             "both sidecars' access log lines")
    inbound, outbound = line(mesh.orders), line(mesh.monolith)
    assert inbound is not None and outbound is not None
    assert inbound["peer"] == f"spiffe://{TD}/svc/monolith" and inbound["route"] == "orders-callers"
    assert outbound["route"] == "orders-callers" and outbound["service"] == "orders"
    # one trace spans both hops
    assert inbound["trace_id"] == outbound["trace_id"] and inbound["trace_id"]


def test_python_urllib_with_http_proxy_reaches_the_service(mesh: Mesh) -> None:
    program = ("import urllib.request, sys\n"
               "with urllib.request.urlopen('http://orders/from-urllib', timeout=30) as r:\n"
               "    sys.stdout.write(str(r.status) + ' ' + r.read().decode())\n")
    result = subprocess.run([sys.executable, "-c", program], env=proxy_env(mesh.outbound),
                            capture_output=True, text=True, timeout=60)
    status, _, body = result.stdout.partition(" ")
    assert status == "200", result
    assert _echo(body.encode())["target"] == "/from-urllib"


def _request(port: int, method: str, target: str, headers: dict[str, str] | None = None,
             context: object = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, target, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_unregistered_hosts_are_refused_not_an_open_proxy(mesh: Mesh) -> None:
    before = len(mesh.app.seen)
    for target, headers in (("http://example.com/", {}), ("http://legacy.example/x", {}),
                            ("/x", {"Host": "example.com"})):
        status, body = _request(mesh.outbound, "GET", target, headers)
        problem = json.loads(body)
        assert status == 403 and problem["code"] == "unknown-destination", (target, body)
    assert len(mesh.app.seen) == before  # nothing reached the legacy default route's app
    # A registered service by name in the Host header (origin form) goes through.
    status, body = _request(mesh.outbound, "GET", "/by-host", {"Host": "orders"})
    assert status == 200 and _echo(body)["target"] == "/by-host"


def test_a_local_port_per_service(mesh: Mesh) -> None:
    status, body = _request(mesh.orders_port, "GET", "/by-port", {"Host": "whatever.example"})
    assert status == 200
    seen = _echo(body)
    assert seen["target"] == "/by-port" and _headers(seen)["host"] == "orders"


def test_the_inbound_listener_refuses_plaintext_and_checks_the_callers_identity(mesh: Mesh) -> None:
    status, body = _request(mesh.inbound, "GET", "/x", {"Host": "orders"})
    assert status == 403 and json.loads(body)["code"] == "mtls-required"
    billing = write_identity(mesh.ca, mesh.tmp / "billing", "billing")
    monolith = write_identity(mesh.ca, mesh.tmp / "monolith-client", "monolith")
    for identity, expected in ((billing, 403), (monolith, 200)):
        conn = http.client.HTTPSConnection("127.0.0.1", mesh.inbound, timeout=30,
                                           context=client_context(identity, identity.bundle))
        try:
            conn.request("GET", "/direct", headers={"Host": "orders"})
            response = conn.getresponse()
            assert response.status == expected, response.read()
            response.read()
        finally:
            conn.close()


def _connect(port: int, authority: str) -> tuple[bytes, socket.socket]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return head, sock


def test_connect_only_to_the_allow_list(mesh: Mesh) -> None:
    head, sock = _connect(mesh.outbound, "example.com:443")
    answer = head + _rest(sock)
    assert head.startswith(b"HTTP/1.1 403") and b"connect-refused" in answer, answer
    head, sock = _connect(mesh.outbound, f"127.0.0.1:{mesh.tunnel_target}")
    try:
        assert head.startswith(b"HTTP/1.1 200"), head
        mesh.tunnel_listener.settimeout(30)
        echo, _ = mesh.tunnel_listener.accept()
        sock.sendall(b"ping through the tunnel")
        assert echo.recv(100) == b"ping through the tunnel"
        echo.sendall(b"pong")
        assert sock.recv(100) == b"pong"
        echo.close()
    finally:
        sock.close()
    head, sock = _connect(mesh.outbound, f"127.0.0.1:{mesh.closed_port}")
    answer = head + _rest(sock)
    assert head.startswith(b"HTTP/1.1 502") and b"upstream-connect-failed" in answer, answer
    head, sock = _connect(mesh.outbound, "no-port-here")
    answer = head + _rest(sock)
    assert head.startswith(b"HTTP/1.1 400") and b"bad-request" in answer, answer
    # the orders sidecar has no allow-list: CONNECT is not offered there
    head, sock = _connect(mesh.orders.ports[1], f"127.0.0.1:{mesh.tunnel_target}")
    sock.close()
    assert head.startswith(b"HTTP/1.1 405")



def _rest(sock: socket.socket) -> bytes:
    """What the listener sends until it closes (a refusal's body)."""
    out = b""
    with sock:
        while chunk := sock.recv(4096):
            out += chunk
    return out


def test_the_gateway_role_runs_the_outbound_listener_when_enabled(mesh: Mesh) -> None:
    """A gateway (public and admin listeners) with `listeners.outbound.enabled = true`."""
    outbound = free_port()
    tmp = mesh.tmp / "gateway"
    tmp.mkdir()
    gateway = PeelServe(tmp, url=mesh.monolith.url, extra_settings=(
        f'[listeners.outbound]\nenabled = true\nbind = "127.0.0.1:{outbound}"\n'
        f'[identity]\nstate_dir = "{mesh.tmp / "monolith" / "identity"}"\n'))
    gateway.start()
    try:
        wait_for(lambda: accepting(outbound), 30, "the gateway's outbound listener")
        status, body = _request(outbound, "GET", "http://orders/from-gateway")
        assert status == 200 and _echo(body)["target"] == "/from-gateway"
        # the public listener is as before: the route table, and absolute form only for route hosts
        status, _, body = gateway.get("/public")
        assert status == 200 and _echo(body)["target"] == "/public"
        status, _, body = gateway.get("http://example.com/")
        assert status == 400 and json.loads(body)["code"] == "not-an-open-proxy"
        # the outbound listener's refusals are in the gateway's /metrics
        status, body = _request(outbound, "GET", "http://example.com/")
        assert status == 403
        token = gateway.upgrade_with_token("outbound-metrics")
        expected = b'peel_outbound_refused_total{code="unknown-destination",listener="outbound"} 1.0'
        wait_for(lambda: expected in gateway.admin_get("/metrics", token)[1], 30, "the refusal in /metrics")
    finally:
        assert gateway.stop() == 0
