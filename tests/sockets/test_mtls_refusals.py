"""Refusals on the dialling side of upstream mTLS (issue 12's Proof), between real processes with
certificates from Peel's own CA: gateway A dials peer B's inbound listener; B presents an expired
certificate, then one of another CA (same trust domain), and A refuses both handshakes (502
`upstream-tls-failed`, the reason in A's access log) until B has a valid one again; a client with a
valid certificate of the wrong identity is refused by B's policy. (Refused client certificates,
expired and of another CA, and a server of the wrong identity: tests/sockets/test_mtls.py.)
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.identity.ca import CertificateAuthority
from gateway.identity.files import PUBLIC_MODE, write_atomic
from tests.access_log import records
from tests.sockets.serve_harness import PeelServe, free_port
from tests.sockets.test_mtls import client_context, get, write_identity
from tests.sockets.test_rotation import wait_until
from tests.sockets.upstreams import ScriptedUpstream

TD = "peel.internal"


def last_line(peel: PeelServe) -> dict[str, object]:
    lines = records(peel.tmp / "access.log")
    return lines[-1] if lines else {}


def test_a_gateway_refuses_a_peer_with_an_expired_or_foreign_certificate(tmp_path: Path) -> None:
    ca, _ = CertificateAuthority.init(tmp_path / "ca", TD, now=datetime.now(UTC))
    other, _ = CertificateAuthority.init(tmp_path / "other-ca", TD, now=datetime.now(UTC))
    echo = ScriptedUpstream()
    echo.start()
    port = free_port()
    (tmp_path / "b").mkdir()
    b_state = tmp_path / "b" / "identity"
    write_identity(ca, b_state, "orders")
    b = PeelServe(tmp_path / "b", extra_settings=(
        f'[listeners.inbound]\nbind = "127.0.0.1:{port}"\nmtls = "strict"\n'
        f'[identity]\nstate_dir = "{b_state}"\n'))
    b.upgrade_with_token()
    b.commit({"services": [{"name": "echo", "endpoints": [echo.url]}],
              "routes": [{"name": "orders", "match": {"path_prefix": "/orders"}, "service": "echo",
                          "authorization": {"allow_from": ["billing"]}}]})
    (tmp_path / "a").mkdir()
    a_state = tmp_path / "a" / "identity"
    billing = write_identity(ca, a_state, "billing")
    a = PeelServe(tmp_path / "a", extra_settings=(
        f'[proxy]\nmax_idle_per_endpoint = 0\n[identity]\nstate_dir = "{a_state}"\n'))
    a.upgrade_with_token()
    a.commit({"services": [{"name": "orders", "endpoints": [f"https://127.0.0.1:{port}"],
                            "identity": f"spiffe://{TD}/svc/orders"}],
              "routes": [{"name": "to-orders", "match": {"path_prefix": "/orders"}, "service": "orders"}]})
    try:
        b.start()
        a.start()
        assert a.get("/orders/1")[0] == 200

        def refused_with(reason: str) -> bool:
            status, _, body = a.get("/orders/2")
            if status != 502:
                return False
            assert json.loads(body)["code"] == "upstream-tls-failed"
            detail = str(last_line(a).get("detail"))
            return reason in detail

        # B's certificate expired (A's bundle trusts its CA): A refuses the handshake
        write_identity(ca, b_state, "orders", now=datetime.now(UTC) - timedelta(hours=3),
                       lifetime=timedelta(hours=1))
        wait_until(lambda: refused_with("certificate has expired"), 30, "A to refuse B's expired certificate")
        # B's certificate from another CA of the same trust domain (B still trusts A's CA)
        write_identity(other, b_state, "orders")
        write_atomic(b_state / "bundle.pem", ca.bundle_pem(), PUBLIC_MODE)
        wait_until(lambda: refused_with("unable to get local issuer certificate"), 30,
                   "A to refuse B's certificate of another CA")
        # a valid certificate again: served, so the refusals came from the certificates
        write_identity(ca, b_state, "orders")
        wait_until(lambda: a.get("/orders/3")[0] == 200, 30, "A to accept B's valid certificate")

        # a client with a valid certificate of the wrong identity: B's policy refuses it
        payments = write_identity(ca, tmp_path / "payments", "payments")
        status, body = get(port, "/orders/4", client_context(payments, payments.bundle))
        assert status == 403 and json.loads(body)["code"] == "forbidden-identity"
        assert get(port, "/orders/5", client_context(billing, billing.bundle))[0] == 200
    finally:
        for server in (a, b):
            if server.process is not None:
                server.stop()
        echo.stop()
