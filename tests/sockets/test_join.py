"""Join and renewal between real processes (issue 12 items 5 and 6): `peel ca init`, a control
plane (`peel serve`, admin over TLS), `peel join` from another process, `openssl verify` of the
issued chain, a gateway with 1-minute certificates that renews before expiry and keeps answering,
and keeps serving (logging the failures) once the control plane is gone."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes.tls import TestCA
from tests.sockets.conftest import ROOT, wait_for
from tests.sockets.serve_harness import PeelServe
from tests.sockets.test_tls import TlsPeel

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def peel(*args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEEL_")}
    done = subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=60)
    assert done.returncode == expect, (args, done.stdout, done.stderr)
    return done


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def serial(state: Path) -> str:
    return str(json.loads((state / "identity.json").read_text())["serial"])


def test_join_then_renewal_and_serving_through_a_control_plane_outage(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    peel("ca", "init", "--dir", str(ca_dir), "--trust-domain", "peel.internal")
    site = TestCA()
    (tmp_path / "cp").mkdir()
    admin = site.issue(tmp_path / "admin", ["admin.example"], ips=["127.0.0.1"])
    cafile = site.pem_path(tmp_path)
    pair = f'tls_certificates = [{{cert = "{admin.cert}", key = "{admin.key}"}}]'
    control = TlsPeel(tmp_path / "cp", admin=pair,
                      admin_ca=cafile,
                      extra=f'[identity]\nca_dir = "{ca_dir}"\ncertificate_lifetime = 60\n')
    control.upgrade_with_token()
    control.start()
    node_dir = tmp_path / "node"
    node_dir.mkdir()
    state = node_dir / "identity"
    node = PeelServe(node_dir, extra_settings=f'[identity]\nstate_dir = "{state}"\n'
                                              f'control_cacert = "{cafile}"\n')
    metrics_token = node.upgrade_with_token()
    url = f"https://127.0.0.1:{control.admin_port}"
    try:
        token = peel("join-token", "create", "--service", "orders", "--ttl", "15m",
                     "--config", str(control.config)).stdout.strip()
        assert token.startswith("peel_join.")
        listed = json.loads(peel("join-token", "list", "--json", "--config", str(control.config)).stdout)
        assert [(t["service"], t["status"]) for t in listed] == [("orders", "active")]
        assert token not in json.dumps(listed)

        done = peel("join", "--token", token, "--control", url, "--cacert", str(cafile),
                    "--config", str(node.config))
        assert "spiffe://peel.internal/svc/orders" in done.stdout
        files = sorted(p.name for p in state.iterdir())
        assert files == ["bundle.pem", "cert.pem", "identity.json", "key.pem"]
        assert mode(state) == 0o700 and mode(state / "key.pem") == 0o600
        info = json.loads((state / "identity.json").read_text())
        assert info["spiffe_id"] == "spiffe://peel.internal/svc/orders" and info["control"] == url
        assert set(info) == {"spiffe_id", "serial", "not_before", "not_after", "control"}
        verified = subprocess.run(["openssl", "verify", "-CAfile", str(state / "bundle.pem"), "-untrusted",
                                   str(state / "cert.pem"), str(state / "cert.pem")],
                                  capture_output=True, text=True, timeout=30)
        assert verified.returncode == 0 and ": OK" in verified.stdout, verified.stdout + verified.stderr
        pub = subprocess.run(["openssl", "pkey", "-in", str(state / "key.pem"), "-pubout"],
                             capture_output=True, text=True, timeout=30).stdout
        cert_pub = subprocess.run(["openssl", "x509", "-in", str(state / "cert.pem"), "-noout", "-pubkey"],
                                  capture_output=True, text=True, timeout=30).stdout
        assert pub and pub == cert_pub
        # the token worked once
        again = peel("join", "--token", token, "--control", url, "--cacert", str(cafile),
                     "--config", str(node.config), expect=1)
        assert "join-token-used" in again.stderr

        first = serial(state)
        node.start()
        # 1-minute certificates renew about 30 s after issue, before they expire
        wait_for(lambda: serial(state) != first, 90, "the node to renew its certificate")
        assert node.get("/readyz", port=node.admin_port)[0] == 200
        status, body = node.admin_get("/metrics", metrics_token)
        assert status == 200
        line = next(x for x in body.decode().splitlines()
                    if x.startswith('peel_certificate_expiry_seconds{identity="spiffe://peel.internal/svc/orders"}'))
        assert 0 < float(line.split()[-1]) <= 60

        assert control.stop() == 0
        renewed = serial(state)
        wait_for(lambda: "renewal failed" in node.log.read_text(), 90, "a logged failed renewal")
        assert serial(state) == renewed
        assert node.get("/readyz", port=node.admin_port)[0] == 200
    finally:
        if node.process is not None:
            node.stop()
        control.stop()
