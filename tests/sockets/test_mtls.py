"""The inbound listener and upstream mTLS between real `peel serve` processes, with certificates
from Peel's own CA (issue 12, items 8-11): strict refuses plaintext, other CAs, expired
certificates and (by policy) other identities; permissive serves and counts both; authorization
allow / deny / dry_run; a gateway dials a peer's inbound listener and checks its identity; renewed
files are picked up without a restart or a dropped connection; `openssl s_client` handshakes.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.identity import certs
from gateway.identity.ca import CertificateAuthority
from gateway.identity.files import KEY_MODE, PUBLIC_MODE, private_dir, write_atomic
from gateway.identity.spiffe import service_id
from tests.access_log import records
from tests.sockets.conftest import wait_for
from tests.sockets.serve_harness import PeelServe, free_port
from tests.sockets.upstreams import ScriptedUpstream

TD = "peel.internal"


@dataclass
class Identity:
    directory: Path
    serial: int

    @property
    def cert(self) -> Path:
        return self.directory / "cert.pem"

    @property
    def key(self) -> Path:
        return self.directory / "key.pem"

    @property
    def bundle(self) -> Path:
        return self.directory / "bundle.pem"


def write_identity(ca: CertificateAuthority, directory: Path, service: str, *,
                   now: datetime | None = None, lifetime: timedelta = timedelta(hours=24)) -> Identity:
    """What `peel join` leaves in a state directory, issued by `ca` for `service`."""
    now = now or datetime.now(UTC)
    key = certs.new_key()
    leaf = ca.issue(certs.build_csr(key, service_id(ca.trust_domain, service)), service, now=now,
                    lifetime=lifetime)
    private_dir(directory)
    write_atomic(directory / "key.pem", certs.key_pem(key), KEY_MODE)
    write_atomic(directory / "cert.pem", certs.cert_pem(leaf, ca.current.intermediate), PUBLIC_MODE)
    write_atomic(directory / "bundle.pem", ca.bundle_pem(), PUBLIC_MODE)
    info = {"spiffe_id": str(service_id(ca.trust_domain, service)), "serial": str(leaf.serial_number),
            "not_before": leaf.not_valid_before_utc.isoformat(),
            "not_after": leaf.not_valid_after_utc.isoformat(), "control": "https://127.0.0.1:1"}
    write_atomic(directory / "identity.json", json.dumps(info).encode(), PUBLIC_MODE)
    return Identity(directory, leaf.serial_number)


def client_context(identity: Identity | None, bundle: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # the inbound listener is named by a SPIFFE ID
    context.load_verify_locations(str(bundle))
    if identity is not None:
        context.load_cert_chain(str(identity.cert), str(identity.key))
    return context


def get(port: int, path: str, context: ssl.SSLContext | None = None,
        timeout: float = 10) -> tuple[int, bytes]:
    conn: http.client.HTTPConnection = (
        http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=timeout)
        if context is not None else http.client.HTTPConnection("127.0.0.1", port, timeout=timeout))
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def document(echo: str) -> dict[str, object]:
    return {"services": [{"name": "echo", "endpoints": [echo]}],
            "routes": [
                {"name": "open", "match": {"path_prefix": "/open"}, "service": "echo"},
                {"name": "allowed", "match": {"path_prefix": "/allowed"}, "service": "echo",
                 "authorization": {"allow_from": ["billing"]}},
                {"name": "denied", "match": {"path_prefix": "/denied"}, "service": "echo",
                 "authorization": {"deny_from": [f"spiffe://{TD}/svc/billing"]}},
                {"name": "dry", "match": {"path_prefix": "/dry"}, "service": "echo",
                 "authorization": {"allow_from": ["payments"], "mode": "dry_run"}},
            ]}


@dataclass
class World:
    tmp: Path
    ca: CertificateAuthority
    billing: Identity
    echo: ScriptedUpstream


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("mtls")
    ca, _ = CertificateAuthority.init(tmp / "ca", TD, now=datetime.now(UTC))
    echo = ScriptedUpstream()
    echo.start()
    try:
        yield World(tmp, ca, write_identity(ca, tmp / "billing", "billing"), echo)
    finally:
        echo.stop()


def inbound_gateway(world: World, name: str, mode: str, service: str = "orders") -> tuple[PeelServe, int]:
    tmp = world.tmp / name
    tmp.mkdir()
    identity = write_identity(world.ca, tmp / "identity", service)
    port = free_port()
    peel = PeelServe(tmp, extra_settings=(
        f'[listeners.inbound]\nbind = "127.0.0.1:{port}"\nmtls = "{mode}"\n'
        f'[identity]\nstate_dir = "{identity.directory}"\n'))
    peel.upgrade_with_token()
    peel.commit(document(world.echo.url))
    return peel.start(), port


def refused(port: int, context: ssl.SSLContext) -> bool:
    """The handshake (or, in TLS 1.3, the first read after it) fails."""
    try:
        get(port, "/open", context)
    except (ssl.SSLError, ConnectionError, http.client.RemoteDisconnected):
        return True
    return False


def metrics(peel: PeelServe, token: str) -> str:
    status, body = peel.admin_get("/metrics", token)
    assert status == 200
    return body.decode()


def readiness_cli(peel: PeelServe, token: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEEL_")}
    env.update(PEEL_ADMIN_URL=f"http://127.0.0.1:{peel.admin_port}", PEEL_ADMIN_TOKEN=token)
    return subprocess.run([sys.executable, "-m", "gateway.cli", "mtls", "readiness", "--window", "1h",
                           *extra], env=env, text=True, capture_output=True, timeout=60)


def test_strict_refuses_plaintext_foreign_expired_and_other_identities(world: World) -> None:
    peel, port = inbound_gateway(world, "strict", "strict")
    try:
        status, body = get(port, "/allowed")
        assert status == 403 and json.loads(body)["code"] == "mtls-required"
        # no client certificate, one of another CA, an expired one: no handshake
        assert refused(port, client_context(None, world.billing.bundle))
        other, _ = CertificateAuthority.init(world.tmp / "other-ca", TD, now=datetime.now(UTC))
        foreign = write_identity(other, world.tmp / "foreign", "billing")
        assert refused(port, client_context(foreign, world.billing.bundle))
        expired = write_identity(world.ca, world.tmp / "expired", "billing",
                                 now=datetime.now(UTC) - timedelta(hours=3), lifetime=timedelta(hours=1))
        assert refused(port, client_context(expired, world.billing.bundle))
        billing = client_context(world.billing, world.billing.bundle)
        assert get(port, "/allowed/x", billing)[0] == 200
        status, body = get(port, "/denied", billing)
        problem = json.loads(body)
        assert status == 403 and problem["code"] == "forbidden-identity"
        assert "route denied" in problem["detail"]
        # strict: a route without a policy is refused (default deny)
        status, body = get(port, "/open", billing)
        assert status == 403 and json.loads(body)["code"] == "forbidden-identity"
        # dry run: served, counted
        assert get(port, "/dry", billing)[0] == 200
        token = peel.upgrade_with_token("metrics")
        text = metrics(peel, token)
        assert 'peel_authz_dry_run_denials_total{route="dry"} 1.0' in text
        assert 'peel_authz_denials_total{route="denied"} 1.0' in text
        assert 'peel_inbound_refused_total{listener="inbound",reason="plaintext"} 1.0' in text
        assert 'peel_inbound_refused_total{listener="inbound",reason="handshake"} 3.0' in text

        def allowed_peers() -> set[str]:
            return {line["peer"] for line in records(peel.tmp / "access.log") if line["route"] == "allowed"}

        # the writer thread writes every 50 ms: a loaded machine may not have run it yet
        wait_for(lambda: allowed_peers() != set(), 10, "the access log line of /allowed/x")
        assert allowed_peers() == {f"spiffe://{TD}/svc/billing"}
    finally:
        peel.stop()


def test_permissive_serves_both_counts_them_and_sighup_makes_it_strict(world: World) -> None:
    peel, port = inbound_gateway(world, "permissive", "permissive")
    try:
        assert get(port, "/open")[0] == 200
        assert get(port, "/open", client_context(world.billing, world.billing.bundle))[0] == 200
        # a client certificate is optional in permissive mode, but one that is presented must verify
        assert get(port, "/open", client_context(None, world.billing.bundle))[0] == 200
        other, _ = CertificateAuthority.init(world.tmp / "other-ca-2", TD, now=datetime.now(UTC))
        assert refused(port, client_context(write_identity(other, world.tmp / "f2", "billing"),
                                            world.billing.bundle))
        token = peel.upgrade_with_token("metrics")
        text = metrics(peel, token)
        assert ('peel_inbound_requests_total{listener="inbound",mtls="false",source="127.0.0.1"} 1.0'
                in text)
        assert (f'peel_inbound_requests_total{{listener="inbound",mtls="true",source="spiffe://{TD}/svc/'
                'billing"} 1.0' in text)
        assert re.search(r'mtls="true",source="127.0.0.1"\} 1.0', text)  # TLS without a certificate
        done = readiness_cli(peel, token)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "127.0.0.1" in done.stdout and "spoke plaintext" in done.stdout
        answer = json.loads(readiness_cli(peel, token, "--json").stdout)
        assert [r["source"] for r in answer["plaintext"]] == ["127.0.0.1"]
        assert f"spiffe://{TD}/svc/billing" in [r["source"] for r in answer["mtls"]]
        peel.config.write_text(peel.config.read_text().replace('mtls = "permissive"', 'mtls = "strict"'))
        peel.signal(signal.SIGHUP)
        wait_for(lambda: get(port, "/open")[0] == 403, 10, "strict mode after SIGHUP")
    finally:
        peel.stop()


def test_renewed_files_are_picked_up_without_dropping_an_open_connection(world: World) -> None:
    peel, port = inbound_gateway(world, "renewal", "permissive")
    try:
        context = client_context(world.billing, world.billing.bundle)
        kept = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
        kept.request("GET", "/open")
        response = kept.getresponse()
        assert response.status == 200
        response.read()
        assert kept.sock is not None
        before = kept.sock.getpeercert(binary_form=True)
        renewed = write_identity(world.ca, peel.tmp / "identity", "orders")

        def serial_now() -> int:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                    context.wrap_socket(raw) as tls:
                der = tls.getpeercert(binary_form=True)
            from cryptography import x509
            assert der is not None
            return x509.load_der_x509_certificate(der).serial_number

        wait_for(lambda: serial_now() == renewed.serial, 20, "the renewed certificate served")
        kept.request("GET", "/open")  # the connection made before the renewal still serves
        response = kept.getresponse()
        assert response.status == 200
        response.read()
        assert kept.sock.getpeercert(binary_form=True) == before
        kept.close()
        assert peel.stop() == 0  # the inbound listener drains and the process exits cleanly
        assert "Traceback" not in peel.log.read_text()
    finally:
        peel.stop()


def test_a_gateway_dials_a_peers_inbound_with_mtls_and_checks_its_identity(world: World) -> None:
    peer, port = inbound_gateway(world, "peer", "strict", service="orders")
    tmp = world.tmp / "caller"
    tmp.mkdir()
    write_identity(world.ca, tmp / "identity", "billing")
    caller = PeelServe(tmp, extra_settings=f'[identity]\nstate_dir = "{tmp / "identity"}"\n')
    caller.upgrade_with_token()
    inbound = f"https://127.0.0.1:{port}"
    caller.commit({
        "services": [{"name": "orders", "endpoints": [inbound], "identity": f"spiffe://{TD}/svc/orders"},
                     {"name": "impostor", "endpoints": [inbound],
                      "identity": f"spiffe://{TD}/svc/payments"}],
        "routes": [{"name": "to-orders", "match": {"path_prefix": "/allowed"}, "service": "orders"},
                   {"name": "to-impostor", "match": {"path_prefix": "/impostor"}, "service": "impostor",
                    "rewrite": {"path_prefix": "/allowed"}}]})
    caller.start()
    try:
        status, _, _ = caller.get("/allowed/thing")
        assert status == 200
        status, _, body = caller.get("/impostor")
        assert status == 502 and json.loads(body)["code"] == "upstream-identity-mismatch"
    finally:
        caller.stop()
        peer.stop()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_openssl_s_client_handshakes_with_the_inbound_listener(world: World) -> None:
    peel, port = inbound_gateway(world, "openssl", "strict")
    try:
        done = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}",
                               "-cert", str(world.billing.cert), "-key", str(world.billing.key),
                               "-CAfile", str(world.billing.bundle), "-verify_return_error"],
                              input="", text=True, capture_output=True, timeout=30)
        assert "Verify return code: 0 (ok)" in done.stdout, done.stdout + done.stderr
        assert re.search(r"New, TLSv1\.[23]", done.stdout)
    finally:
        peel.stop()


def test_websocket_handshakes_on_the_inbound_listener_carry_the_peer(world: World) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    from tests.sockets.test_websocket import WsUpstream

    ws = WsUpstream().start()
    tmp = world.tmp / "ws"
    tmp.mkdir()
    identity = write_identity(world.ca, tmp / "identity", "orders")
    port = free_port()
    peel = PeelServe(tmp, extra_settings=(
        f'[listeners.inbound]\nbind = "127.0.0.1:{port}"\nmtls = "strict"\n'
        f'[identity]\nstate_dir = "{identity.directory}"\n'))
    peel.upgrade_with_token()
    peel.commit({"services": [{"name": "ws", "endpoints": [ws.url]}],
                 "routes": [{"name": "ws-billing", "match": {"path_prefix": "/billing"}, "service": "ws",
                             "websocket": True, "authorization": {"allow_from": ["billing"]}},
                            {"name": "ws-payments", "match": {"path_prefix": "/payments"}, "service": "ws",
                             "websocket": True, "authorization": {"allow_from": ["payments"]}},
                            {"name": "ws-open", "match": {"path_prefix": "/open"}, "service": "ws",
                             "websocket": True}]})
    peel.start()
    try:
        context = client_context(world.billing, world.billing.bundle)
        with connect(f"wss://127.0.0.1:{port}/billing", ssl=context, open_timeout=10) as client:
            client.send("hello")
            assert client.recv(timeout=10) == "hello"
        for path in ("/payments", "/open"):  # another identity; no policy in strict mode
            with pytest.raises(InvalidStatus) as refused:
                connect(f"wss://127.0.0.1:{port}{path}", ssl=context, open_timeout=10)
            assert refused.value.response.status_code == 403
    finally:
        peel.stop()
        ws.stop()
