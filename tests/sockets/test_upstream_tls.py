"""Upstream TLS per service, over real sockets: HTTPS upstreams (Python ssl, in threads) with
certificates from a test CA, and Peel in its own process with the services' `tls` blocks.

The service's `ca` is what makes the upstream trusted (without it, the system's CAs: 502
upstream-tls-failed); `server_name` is the SNI the upstream sees and the name verified; a client
certificate is presented when configured (the upstream requires one); files that cannot be loaded
answer 502 upstream-tls-config; connections made under one service's TLS are never reused by
another's for the same URL; the health check dials with the same TLS.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from gateway.upstream.dial import Dialer
from gateway.upstream.health import check_endpoint
from routes.model import Endpoint, Service
from routes.policies import HealthCheck, ServiceTls
from tests.access_log import records
from tests.fakes.tls import TestCA
from tests.sockets.conftest import Proxy, start_proxy, stop_proxy, wait_for

SETTINGS = """
[proxy]
connect_timeout = 5.0
response_timeout = 5.0
"""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the proxy pools these connections
    server: _TlsServer

    def do_GET(self) -> None:
        peer = self.connection.getpeercert()  # type: ignore[attr-defined]
        client = None
        if peer:
            client = dict(item[0] for item in peer["subject"])["commonName"]
        with self.server.lock:
            self.server.clients.append(client)
        body = json.dumps({"client": client}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _TlsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.sni: list[str | None] = []
        self.clients: list[str | None] = []
        self.failed_handshakes = 0
        context.sni_callback = self._sni
        # The handshake runs in the request's thread (its first read), not in accept().
        self.socket = context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    def _sni(self, sock: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
        with self.lock:
            self.sni.append(name)

    def handle_error(self, request: Any, client_address: Any) -> None:
        with self.lock:
            self.failed_handshakes += 1  # a client that refused us, or one we refused

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class HttpsUpstream:
    """An HTTPS upstream in a thread whose certificate names `payments.internal` only (not
    127.0.0.1); with `client_ca` it requires a client certificate signed by that CA."""

    def __init__(self, ca: TestCA, directory: Path, client_ca: Path | None = None) -> None:
        leaf = ca.issue(directory / "upstream", ["payments.internal"])
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(leaf.cert, leaf.key)
        if client_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cafile=client_ca)
        self.server = _TlsServer(context)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.url = f"https://127.0.0.1:{self.server.port}"

    def __enter__(self) -> HttpsUpstream:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


class Files:
    def __init__(self, root: Path) -> None:
        self.ca = TestCA("Payments CA")
        self.ca_pem = self.ca.pem_path(root)
        client_ca_dir = root / "clients"
        client_ca_dir.mkdir()
        self.client_ca = TestCA("Peel Clients CA")
        self.client_ca_pem = self.client_ca.pem_path(client_ca_dir)
        self.client = self.client_ca.issue(root / "peel-client", ["peel-gateway"], client=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    return Files(tmp_path_factory.mktemp("upstream-tls"))


@pytest.fixture(scope="module")
def plain_tls(files: Files, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpsUpstream]:
    with HttpsUpstream(files.ca, tmp_path_factory.mktemp("plain")) as upstream:
        yield upstream


@pytest.fixture(scope="module")
def mutual_tls(files: Files, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpsUpstream]:
    with HttpsUpstream(files.ca, tmp_path_factory.mktemp("mutual"), files.client_ca_pem) as upstream:
        yield upstream


@pytest.fixture(scope="module")
def proxy(files: Files, plain_tls: HttpsUpstream, mutual_tls: HttpsUpstream,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    ca = str(files.ca_pem)
    services: list[dict[str, Any]] = [
        {"name": "trusted", "endpoints": [plain_tls.url],
         "tls": {"ca": ca, "server_name": "payments.internal"}},
        {"name": "system", "endpoints": [plain_tls.url]},  # the system's CAs
        {"name": "by-address", "endpoints": [plain_tls.url], "tls": {"ca": ca}},
        {"name": "wrong-name", "endpoints": [plain_tls.url],
         "tls": {"ca": ca, "server_name": "other.internal"}},
        {"name": "mutual", "endpoints": [mutual_tls.url],
         "tls": {"ca": ca, "server_name": "payments.internal", "client_cert": str(files.client.cert),
                 "client_key": str(files.client.key), "min_version": "1.3"}},
        {"name": "no-client-cert", "endpoints": [mutual_tls.url],
         "tls": {"ca": ca, "server_name": "payments.internal", "min_version": "1.3"}},
        {"name": "missing-files", "endpoints": [plain_tls.url],
         "tls": {"ca": str(files.ca_pem.parent / "no-such-ca.pem")}},
    ]
    document = {"services": services,
                "routes": [{"name": s["name"], "match": {"path_prefix": f"/{s['name']}"},
                            "service": s["name"]} for s in services]}
    running = start_proxy(tmp_path_factory.mktemp("proxy"), document, SETTINGS)
    yield running
    stop_proxy(running)


def get(proxy: Proxy, path: str) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of a GET; for a problem, `detail` is replaced by the access log's
    (the client is told a generic text, the log keeps the specifics)."""
    response, body = proxy.request("GET", path)
    answer = json.loads(body)
    if response.status >= 400:
        answer["detail"] = logged_detail(proxy, response.headers["x-request-id"])
    return response.status, answer


def logged_detail(proxy: Proxy, request_id: str) -> str:
    def line() -> dict[str, Any] | None:
        for record in records(proxy.access_log):
            if record["request_id"] == request_id:
                return record
        return None

    wait_for(lambda: line() is not None, what="the access log line")
    record = line()
    assert record is not None and isinstance(record["detail"], str), record
    return record["detail"]


def test_the_services_ca_and_server_name_make_the_upstream_trusted(
        proxy: Proxy, plain_tls: HttpsUpstream) -> None:
    status, body = get(proxy, "/trusted/x")
    assert status == 200 and body == {"client": None}
    # the name verified is the SNI the upstream saw
    assert "payments.internal" in plain_tls.server.sni


def test_without_the_ca_the_systems_cas_refuse_it_even_after_a_trusted_connection(
        proxy: Proxy) -> None:
    assert get(proxy, "/trusted/warm")[0] == 200  # a kept-alive connection under `trusted`'s TLS
    status, body = get(proxy, "/system/x")
    # never that pooled connection: the same URL under other TLS is another endpoint
    assert status == 502 and body["code"] == "upstream-tls-failed"
    assert "certificate" in body["detail"]


def test_the_name_verified_is_the_server_name_else_the_endpoints_host(proxy: Proxy) -> None:
    status, body = get(proxy, "/wrong-name/x")
    assert status == 502 and body["code"] == "upstream-tls-failed"
    assert "other.internal" in body["detail"]
    # without server_name, the certificate must name 127.0.0.1, which it does not
    status, body = get(proxy, "/by-address/x")
    assert status == 502 and body["code"] == "upstream-tls-failed"


def test_a_client_certificate_is_presented_when_configured(proxy: Proxy, mutual_tls: HttpsUpstream) -> None:
    status, body = get(proxy, "/mutual/x")
    assert status == 200 and body == {"client": "peel-gateway"}
    before = len(mutual_tls.server.clients)
    # the upstream requires one: without it, no request gets through
    # (TLS 1.3: the upstream's refusal arrives as an alert on the first read, upstream-reset)
    status, body = get(proxy, "/no-client-cert/x")
    assert status == 502 and "certificate required" in body["detail"], body
    assert len(mutual_tls.server.clients) == before


def test_files_that_cannot_be_loaded_answer_upstream_tls_config_and_the_rest_serves(proxy: Proxy) -> None:
    status, body = get(proxy, "/missing-files/x")
    assert status == 502 and body["code"] == "upstream-tls-config"
    assert "no-such-ca.pem" in body["detail"]
    assert get(proxy, "/trusted/x")[0] == 200


def test_the_health_check_dials_with_the_services_tls(files: Files, mutual_tls: HttpsUpstream) -> None:
    policy = HealthCheck(path="/healthz", timeout=5.0)

    def endpoint(tls: ServiceTls) -> Endpoint:
        return Service("mutual", (Endpoint.parse(mutual_tls.url, "e"),), tls=tls).endpoints[0]

    full = ServiceTls(ca=str(files.ca_pem), client_cert=str(files.client.cert),
                      client_key=str(files.client.key), server_name="payments.internal")
    without_ca = ServiceTls(client_cert=str(files.client.cert), client_key=str(files.client.key),
                            server_name="payments.internal")

    async def go() -> None:
        dialer = Dialer()
        ok = await check_endpoint(endpoint(full), policy, dialer)
        assert ok.ok and ok.status == 200
        refused = await check_endpoint(endpoint(without_ca), policy, dialer)
        assert not refused.ok and refused.error is not None and refused.error.startswith("TLS: ")
        broken = await check_endpoint(endpoint(ServiceTls(ca="/no/such/ca.pem")), policy, dialer)
        assert not broken.ok and broken.error is not None
        assert broken.error.startswith("TLS configuration:") and "/no/such/ca.pem" in broken.error

    asyncio.run(asyncio.wait_for(go(), 30))
    assert "peel-gateway" in mutual_tls.server.clients
