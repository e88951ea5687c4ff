"""Edge TLS on a real `peel serve` (issue 12 item 1, issue 11 item 12): certificates from a test
CA, real clients (curl, openssl s_client, Python's ssl), SNI to two hostnames, reloads, the
redirect listener, admin over TLS with the CLI."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.fakes.tls import Leaf, TestCA
from tests.sockets.conftest import ROOT, wait_for
from tests.sockets.serve_harness import PeelServe
from tests.sockets.upstreams import ScriptedUpstream

pytestmark = pytest.mark.skipif(not (shutil.which("curl") and shutil.which("openssl")),
                                reason="needs curl and openssl (Debian packages; .ci/run installs them)")


@pytest.fixture(scope="module")
def echo() -> Iterator[ScriptedUpstream]:
    server = ScriptedUpstream().start()
    yield server
    server.stop()


@dataclass
class Site:
    ca: TestCA
    ca_file: Path
    shop: Leaf
    api: Leaf


@pytest.fixture
def site(tmp_path: Path) -> Site:
    ca = TestCA()
    tls = tmp_path / "tls"
    tls.mkdir()
    return Site(ca, ca.pem_path(tls), ca.issue(tls / "shop", ["shop.example"]),
                ca.issue(tls / "api", ["api.example", "*.api.example"]))


def pairs(*leaves: Leaf) -> str:
    return "[" + ", ".join(f'{{cert = "{leaf.cert}", key = "{leaf.key}"}}' for leaf in leaves) + "]"


class TlsPeel(PeelServe):
    """`peel serve` whose listeners take extra keys; readiness asked over TLS when the admin has it."""

    def __init__(self, tmp: Path, *, public: str = "", admin: str = "", admin_bind: str = "127.0.0.1",
                 extra: str = "", workers: int = 1, admin_ca: Path | None = None) -> None:
        super().__init__(tmp, workers=workers, extra_settings=extra)
        text = self.config.read_text()
        text = text.replace(f'bind = "127.0.0.1:{self.public_port}"\n',
                            f'bind = "127.0.0.1:{self.public_port}"\n{public}\n')
        text = text.replace(f'bind = "127.0.0.1:{self.admin_port}"\n',
                            f'bind = "{admin_bind}:{self.admin_port}"\n{admin}\n')
        self.config.write_text(text)
        self.admin_ca = admin_ca

    def ready(self) -> bool:
        if self.admin_ca is None:
            return super().ready()
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"peel serve exited with {self.process.returncode}:\n"
                                 + self.log.read_text())
        context = ssl.create_default_context(cafile=str(self.admin_ca))
        conn = http.client.HTTPSConnection("127.0.0.1", self.admin_port, timeout=1, context=context)
        try:
            conn.request("GET", "/readyz")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()


def der(leaf: Leaf) -> bytes:
    return leaf.certificate.public_bytes(serialization.Encoding.DER)


def tls_connect(port: int, server_name: str, ca_file: Path) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(ca_file))
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    return context.wrap_socket(sock, server_hostname=server_name)


def request(sock: ssl.SSLSocket, target: str, host: str) -> http.client.HTTPResponse:
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    response = http.client.HTTPResponse(sock)  # type: ignore[arg-type]
    response.begin()
    return response


def curl(port: int, host: str, path: str, ca_file: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "-v", "--max-time", "20", "--cacert", str(ca_file),
         "--resolve", f"{host}:{port}:127.0.0.1", *extra, f"https://{host}:{port}{path}"],
        capture_output=True, text=True, timeout=30)


def s_client(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args],
                          input="", capture_output=True, text=True, timeout=30)


def route_all(peel: PeelServe, echo: ScriptedUpstream) -> None:
    peel.store().upgrade()
    peel.commit({"services": [{"name": "echo", "endpoints": [echo.url]}],
                 "routes": [{"name": "all", "match": {"path_prefix": "/"}, "service": "echo"}]})


@pytest.mark.parametrize("workers", [1, 2])
def test_curl_gets_the_certificate_of_each_sni_name_and_the_upstream_hears_https(
        tmp_path: Path, site: Site, echo: ScriptedUpstream, workers: int) -> None:
    peel = TlsPeel(tmp_path, public=f"tls_certificates = {pairs(site.shop, site.api)}\n"
                                    "hsts_max_age = 31536000", workers=workers)
    route_all(peel, echo)
    peel.start()
    try:
        for host, common_name in (("shop.example", "shop.example"), ("api.example", "api.example"),
                                  ("v2.api.example", "api.example")):
            done = curl(peel.public_port, host, "/who", site.ca_file)
            assert done.returncode == 0, done.stderr  # curl verifies the name against the CA
            assert f"subject: CN={common_name}" in done.stderr
            seen = json.loads(done.stdout)
            headers = {name.lower(): value for name, value in seen["headers"]}
            assert headers["x-forwarded-proto"] == "https"
            assert "proto=https" in headers["forwarded"]
            assert "strict-transport-security: max-age=31536000" in done.stderr.lower()
        # A name no certificate has gets the first (default) one, which curl rightly refuses.
        other = curl(peel.public_port, "other.example", "/", site.ca_file)
        assert other.returncode == 60 and "shop.example" in other.stderr
        with pytest.raises((http.client.HTTPException, OSError)):
            peel.get("/plain", timeout=5)  # plain HTTP on the TLS listener is no answer
    finally:
        assert peel.stop() == 0


def test_openssl_sees_tls13_alpn_resumption_and_no_tls11(tmp_path: Path, site: Site,
                                                         echo: ScriptedUpstream) -> None:
    peel = TlsPeel(tmp_path, public=f"tls_certificates = {pairs(site.shop, site.api)}")
    route_all(peel, echo)
    peel.start()
    port, ca = peel.public_port, str(site.ca_file)
    try:
        new = s_client(port, "-servername", "api.example", "-alpn", "http/1.1", "-CAfile", ca)
        assert "New, TLSv1.3" in new.stdout, new.stdout + new.stderr
        assert "ALPN protocol: http/1.1" in new.stdout
        assert "Verify return code: 0 (ok)" in new.stdout
        assert "CN = api.example" in new.stdout
        h2_only = s_client(port, "-servername", "api.example", "-alpn", "h2", "-CAfile", ca)
        assert "No ALPN negotiated" in h2_only.stdout
        # TLS 1.2: an ECDHE AEAD suite, and a resumed session from the saved one.
        session = tmp_path / "session.pem"
        first = s_client(port, "-tls1_2", "-servername", "shop.example", "-CAfile", ca,
                         "-sess_out", str(session))
        assert "New, TLSv1.2, Cipher is ECDHE-" in first.stdout and "GCM" in first.stdout
        again = s_client(port, "-tls1_2", "-servername", "shop.example", "-CAfile", ca,
                         "-sess_in", str(session))
        assert "Reused, TLSv1.2" in again.stdout, again.stdout
        # The same client at its lowest security level speaks 1.2 here, but 1.1 is refused.
        weak = ("-cipher", "DEFAULT@SECLEVEL=0", "-servername", "shop.example")
        assert "New, TLSv1.2" in s_client(port, "-tls1_2", *weak).stdout
        old = s_client(port, "-tls1_1", *weak)
        assert old.returncode != 0 and "Cipher is (NONE)" in old.stdout, old.stdout
        # A TLS 1.2 cipher without forward secrecy is refused.
        rsa_kx = s_client(port, "-tls1_2", "-cipher", "AES128-GCM-SHA256", "-servername", "shop.example")
        assert rsa_kx.returncode != 0 and "Cipher is (NONE)" in rsa_kx.stdout
    finally:
        assert peel.stop() == 0


@pytest.mark.parametrize("trigger", ["sighup", "poll"])
def test_new_certificates_are_served_while_an_old_connection_finishes(
        tmp_path: Path, site: Site, echo: ScriptedUpstream, trigger: str) -> None:
    peel = TlsPeel(tmp_path, public=f"tls_certificates = {pairs(site.shop)}")
    route_all(peel, echo)
    peel.start()
    try:
        old = tls_connect(peel.public_port, "shop.example", site.ca_file)
        assert old.getpeercert(binary_form=True) == der(site.shop)
        size = 2 * 1024 * 1024  # dripped 1 KiB at a time: still running after the reload
        response = request(old, f"/drip/{size}", "shop.example")
        assert response.status == 200
        first = response.read(4096)
        # New files in place (written aside, then renamed, as certbot and friends do).
        staged = site.ca.issue(tmp_path / "staged", ["shop.example"])
        os.replace(staged.key, site.shop.key)
        os.replace(staged.cert, site.shop.cert)
        if trigger == "sighup":
            peel.signal(signal.SIGHUP)

        def serves_new() -> bool:
            with tls_connect(peel.public_port, "shop.example", site.ca_file) as fresh:
                return fresh.getpeercert(binary_form=True) == der(staged)

        wait_for(serves_new, 30, "the new certificate to be served")
        with tls_connect(peel.public_port, "shop.example", site.ca_file) as fresh:
            assert request(fresh, "/after", "shop.example").status == 200
        rest = response.read()
        assert len(first) + len(rest) == size  # the old connection was never cut
        assert old.getpeercert(binary_form=True) == der(site.shop)
        old.close()
        assert "certificates loaded" in peel.log.read_text()
    finally:
        assert peel.stop() == 0


def test_a_bad_reload_keeps_the_running_certificate(tmp_path: Path, site: Site,
                                                    echo: ScriptedUpstream) -> None:
    peel = TlsPeel(tmp_path, public=f"tls_certificates = {pairs(site.shop)}")
    route_all(peel, echo)
    peel.start()
    try:
        site.shop.key.write_text("not a key\n")
        peel.signal(signal.SIGHUP)
        wait_for(lambda: "certificates refused, keeping the running ones" in peel.log.read_text(), 20,
                 "the refusal to be logged")
        assert "listeners.public.tls_certificates[0].key" in peel.log.read_text()
        with tls_connect(peel.public_port, "shop.example", site.ca_file) as conn:
            assert conn.getpeercert(binary_form=True) == der(site.shop)
            assert request(conn, "/still", "shop.example").status == 200
    finally:
        assert peel.stop() == 0


def test_a_missing_key_stops_peel_serve_naming_the_setting(tmp_path: Path, site: Site) -> None:
    missing = tmp_path / "tls" / "nowhere.key"
    peel = TlsPeel(tmp_path, public="tls_certificates = " + pairs(site.shop)[:-1]
                   + f', {{cert = "{site.api.cert}", key = "{missing}"}}]')
    peel.store().upgrade()
    peel.start(wait=False)
    assert peel.process is not None
    assert peel.process.wait(30) == 1
    log = peel.log.read_text()
    assert "listeners.public.tls_certificates[1].key" in log and str(missing) in log, log


def test_the_redirect_listener_answers_308_to_https(tmp_path: Path, site: Site) -> None:
    from tests.sockets.serve_harness import free_port

    redirect_port = free_port()
    peel = TlsPeel(tmp_path, public=f"tls_certificates = {pairs(site.shop)}",
                   extra=f'[listeners.redirect]\nbind = "127.0.0.1:{redirect_port}"')
    peel.store().upgrade()
    peel.start()
    try:
        for host in ("shop.example", f"shop.example:{redirect_port}"):
            status, headers, body = peel.get("/cart/1?x=y", port=redirect_port, headers={"Host": host})
            assert status == 308 and body == b""
            assert headers["location"] == f"https://shop.example:{peel.public_port}/cart/1?x=y"
        status, _, _ = peel.get("/", port=redirect_port, headers={"Host": "bad host"})
        assert status == 400
        # curl follows it to the TLS listener with SNI.
        done = subprocess.run(
            ["curl", "-sS", "-L", "-o", "/dev/null", "-w", "%{http_code} %{url_effective}",
             "--cacert", str(site.ca_file), "--resolve", f"shop.example:{redirect_port}:127.0.0.1",
             "--resolve", f"shop.example:{peel.public_port}:127.0.0.1",
             f"http://shop.example:{redirect_port}/nothing"], capture_output=True, text=True, timeout=30)
        assert done.stdout == f"404 https://shop.example:{peel.public_port}/nothing", done.stderr
    finally:
        assert peel.stop() == 0


def test_admin_over_tls_with_the_cli(tmp_path: Path, site: Site) -> None:
    admin = site.ca.issue(tmp_path / "tls" / "admin", ["admin.example"], ips=["127.0.0.1"])
    peel = TlsPeel(tmp_path, admin=f"tls_certificates = {pairs(admin)}", admin_ca=site.ca_file)
    token = peel.upgrade_with_token()
    peel.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEEL_")}
    env["PEEL_ADMIN_TOKEN"] = token
    url = f"https://127.0.0.1:{peel.admin_port}"

    def cli(*args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=ROOT,
                              env={**env, **(extra_env or {})}, capture_output=True, text=True, timeout=60)

    try:
        listed = cli("routes", "list", "--admin", url, "--cacert", str(site.ca_file), "--json")
        assert listed.returncode == 0, listed.stderr
        assert cli("routes", "list", "--admin", url,
                   extra_env={"PEEL_ADMIN_CA": str(site.ca_file)}).returncode == 0
        # The settings file alone names an https admin URL.
        by_config = cli("routes", "list", "--config", str(peel.config), "--cacert", str(site.ca_file))
        assert by_config.returncode == 0, by_config.stderr
        untrusted = cli("routes", "list", "--admin", url)
        assert untrusted.returncode == 1
        assert "--cacert" in untrusted.stderr and "PEEL_ADMIN_CA" in untrusted.stderr
        plain = cli("routes", "list", "--admin", f"http://127.0.0.1:{peel.admin_port}")
        assert plain.returncode == 1
        assert "INSECURE" not in peel.log.read_text()
    finally:
        assert peel.stop() == 0


def test_a_plaintext_admin_beyond_loopback_is_a_loud_warning(tmp_path: Path) -> None:
    peel = TlsPeel(tmp_path, admin_bind="0.0.0.0")
    peel.store().upgrade()
    peel.start()
    try:
        lines = [line for line in peel.log.read_text().splitlines() if "INSECURE" in line]
        assert len(lines) == 1 and " WARNING " in lines[0]
        assert f"0.0.0.0:{peel.admin_port}" in lines[0] and "without TLS" in lines[0]
    finally:
        assert peel.stop() == 0
