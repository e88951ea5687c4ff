"""Revocation pushed with the config version, and the inbound mode switched by one config version,
between real `peel serve` processes with certificates from Peel's own CA (issue 12, items 7, 8).

`peel ca revoke` (through the admin API) of a serial, then of an identity: new handshakes with the
revoked certificate are refused within 10 s and an open keep-alive connection from it is closed
within 30 s, while other peers (and a certificate issued after an identity's revocation) are served;
a gateway's mTLS dial refuses a peer whose certificate is revoked; `peel apply` of a document with
`mesh.inbound_mtls: strict` makes the inbound listener strict without a signal, and back.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.identity.ca import CertificateAuthority
from tests.sockets.conftest import ROOT, wait_for
from tests.sockets.serve_harness import PeelServe, free_port
from tests.sockets.test_mtls import (
    TD,
    Identity,
    World,
    client_context,
    document,
    get,
    inbound_gateway,
    metrics,
    refused,
    write_identity,
)
from tests.sockets.upstreams import ScriptedUpstream


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("revocation")
    ca, _ = CertificateAuthority.init(tmp / "ca", TD, now=datetime.now(UTC))
    echo = ScriptedUpstream()
    echo.start()
    try:
        yield World(tmp, ca, write_identity(ca, tmp / "billing-0", "billing"), echo)
    finally:
        echo.stop()


def cli(peel: PeelServe, token: str, *args: str,
        stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEEL_")}
    env.update(PEEL_ADMIN_URL=f"http://127.0.0.1:{peel.admin_port}", PEEL_ADMIN_TOKEN=token)
    done = subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=ROOT, env=env, text=True,
                          input=stdin, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


class KeptConnection:
    """A TLS keep-alive connection to the inbound listener that has served one request."""

    def __init__(self, port: int, identity: Identity) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock = client_context(identity, identity.bundle).wrap_socket(raw)
        self.sock.sendall(b"GET /open HTTP/1.1\r\nHost: inbound\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(65536)
            assert chunk, "closed before answering"
            head += chunk
        assert head.startswith(b"HTTP/1.1 200"), head[:200]
        headers, _, body = head.partition(b"\r\n\r\n")
        length = int(next(line.split(b":", 1)[1] for line in headers.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        while len(body) < length:
            body += self.sock.recv(65536)

    def closed_by_server(self) -> bool:
        """Whether the server closed it (EOF or a reset), without sending anything."""
        self.sock.settimeout(0.2)
        try:
            return self.sock.recv(1) == b""
        except (TimeoutError, ssl.SSLWantReadError):
            return False
        except (ssl.SSLError, OSError):
            return True

    def close(self) -> None:
        self.sock.close()


def timed(condition: Any, limit: float, what: str) -> float:
    """Wait for `condition` (generously: a loaded machine) and return how long it took."""
    start = time.monotonic()
    wait_for(condition, limit * 3, what)
    return time.monotonic() - start


def serial_hex(identity: Identity) -> str:
    return format(identity.serial, "x")


def test_revoking_a_serial_then_an_identity_refuses_handshakes_and_closes_open_connections(
        world: World) -> None:
    peel, port = inbound_gateway(world, "inbound", "permissive")
    token = peel.upgrade_with_token("operator")
    billing = write_identity(world.ca, world.tmp / "billing", "billing")
    payments = write_identity(world.ca, world.tmp / "payments", "payments")
    try:
        kept_billing = KeptConnection(port, billing)
        kept_payments = KeptConnection(port, payments)
        assert get(port, "/open", client_context(billing, billing.bundle))[0] == 200

        cli(peel, token, "ca", "revoke", "--serial", serial_hex(billing), "--reason", "key leaked")
        took = timed(lambda: refused(port, client_context(billing, billing.bundle)), 10,
                     "new handshakes with the revoked serial refused")
        assert took < 10, took
        # a probe that raced the revocation may have been cut as an open connection
        # (revoked_open); one made now is refused at the handshake (revoked)
        assert refused(port, client_context(billing, billing.bundle))
        took = timed(kept_billing.closed_by_server, 30, "the revoked serial's open connection closed")
        assert took < 30, took
        # the others are untouched: a new handshake and the kept connection of payments
        assert get(port, "/open", client_context(payments, payments.bundle))[0] == 200
        assert not kept_payments.closed_by_server()
        assert get(port, "/open")[0] == 200  # permissive: plaintext still served

        cli(peel, token, "ca", "revoke", "--identity", f"spiffe://{TD}/svc/payments")
        revoked_at = datetime.now(UTC)
        took = timed(lambda: refused(port, client_context(payments, payments.bundle)), 10,
                     "new handshakes with the revoked identity refused")
        assert took < 10, took
        assert refused(port, client_context(payments, payments.bundle))
        took = timed(kept_payments.closed_by_server, 30, "the revoked identity's open connection closed")
        assert took < 30, took
        # a VM that joins again gets a certificate issued after the revocation: served
        wait_for(lambda: datetime.now(UTC) >= revoked_at + timedelta(seconds=1), 5, "the next second")
        rejoined = write_identity(world.ca, world.tmp / "payments-again", "payments")
        assert get(port, "/open", client_context(rejoined, rejoined.bundle))[0] == 200

        listed = json.loads(cli(peel, token, "ca", "revocations", "--json").stdout)
        # by time, to the second: two revocations within one second are in their canonical order
        # (an identity's before a serial's), not necessarily in the order they were made
        assert sorted(r.get("serial") or r.get("identity") for r in listed["revocations"]) == \
            sorted([serial_hex(billing), f"spiffe://{TD}/svc/payments"])
        exported = yaml.safe_load(cli(peel, token, "export").stdout)
        assert len(exported["revocations"]) == 2
        history = cli(peel, token, "config", "history").stdout
        assert "revoke serial" in history and "key leaked" in history

        text = metrics(peel, peel.upgrade_with_token("metrics"))
        refusals = {line.split("}")[0].split('reason="')[1].rstrip('"'): float(line.split()[-1])
                    for line in text.splitlines()
                    if line.startswith('peel_inbound_refused_total{listener="inbound",reason="revoked')}
        # at least the two probes made after each revocation was in force, and the two kept
        # connections; a probe that raced a revocation counts as one or the other
        assert refusals["revoked"] >= 2 and refusals["revoked_open"] >= 2, refusals
        assert refusals["revoked"] + refusals["revoked_open"] >= 6, refusals
        kept_billing.close()
        kept_payments.close()
        assert "Traceback" not in peel.log.read_text()
    finally:
        peel.stop()


def test_an_mtls_dial_refuses_a_peer_whose_certificate_is_revoked(world: World) -> None:
    peer, port = inbound_gateway(world, "peer", "strict", service="orders")
    orders = peer.tmp / "identity"
    tmp = world.tmp / "caller"
    tmp.mkdir()
    write_identity(world.ca, tmp / "identity", "billing")
    caller = PeelServe(tmp, extra_settings=f'[identity]\nstate_dir = "{tmp / "identity"}"\n')
    caller.upgrade_with_token()
    services = [{"name": "orders", "endpoints": [f"https://127.0.0.1:{port}"],
                 "identity": f"spiffe://{TD}/svc/orders"}]
    routes = [{"name": "to-orders", "match": {"path_prefix": "/allowed"}, "service": "orders"}]
    info = json.loads((orders / "identity.json").read_text())
    caller.commit({"services": services, "routes": routes,
                   "revocations": [{"serial": format(int(info["serial"]), "x"),
                                    "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}]})
    caller.start()
    try:
        status, _, body = caller.get("/allowed/thing")
        problem = json.loads(body)
        assert status == 502 and problem["code"] == "upstream-tls-failed", problem
        # the peer itself served nothing: the caller closed right after the handshake
        caller.commit({"services": services, "routes": routes})  # the revocation taken back
        wait_for(lambda: caller.get("/allowed/thing")[0] == 200, 10, "served again")
        # revoked again while the caller holds a pooled connection to the peer: the table closes
        # it, so the next request dials anew and is refused (reused, it would still get 200)
        assert caller.get("/allowed/thing")[0] == 200
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        caller.commit({"services": services, "routes": routes,
                       "revocations": [{"identity": f"spiffe://{TD}/svc/orders", "at": now}]})
        wait_for(lambda: caller.get("/allowed/thing")[0] == 502, 10, "the pooled connection closed")
        assert "closing an upstream mTLS connection" in caller.log.read_text()
    finally:
        caller.stop()
        peer.stop()


def test_peel_apply_of_mesh_inbound_mtls_switches_the_mode_without_a_signal(world: World) -> None:
    peel, port = inbound_gateway(world, "switch", "permissive")
    token = peel.upgrade_with_token("operator")
    billing = write_identity(world.ca, world.tmp / "billing-switch", "billing")
    try:
        assert get(port, "/open")[0] == 200
        strict = {**document(world.echo.url), "mesh": {"inbound_mtls": "strict"}}
        cli(peel, token, "apply", "-f", "-", "--reason", "the fleet goes strict",
            stdin=yaml.safe_dump(strict))
        took = timed(lambda: get(port, "/open")[0] == 403, 10, "plaintext refused in strict mode")
        assert took < 10, took
        assert json.loads(get(port, "/open")[1])["code"] == "mtls-required"
        assert refused(port, client_context(None, billing.bundle))  # TLS without a certificate
        assert get(port, "/allowed", client_context(billing, billing.bundle))[0] == 200
        # without mesh the settings' mode (permissive) applies again
        cli(peel, token, "apply", "-f", "-", stdin=yaml.safe_dump(document(world.echo.url)))
        wait_for(lambda: get(port, "/open")[0] == 200, 30, "permissive again")
        assert "now strict" in peel.log.read_text()
    finally:
        peel.stop()


def _listening_inode(port: int) -> str:
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":  # LISTEN
            return fields[9]
    raise AssertionError(f"nothing listens on port {port}")


def _holds_socket(pid: int, inode: str) -> bool:
    """Whether process `pid` has the socket `inode` open; a descriptor closed while we look is skipped."""
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd) == f"socket:[{inode}]":
                return True
        except FileNotFoundError:  # the worker closed it (a client connection) between listing and reading
            continue
    return False


def test_the_inbound_listener_with_two_workers_follows_revocations_and_the_mode(world: World) -> None:
    tmp = world.tmp / "workers"
    tmp.mkdir()
    identity = write_identity(world.ca, tmp / "identity", "orders")
    port = free_port()
    peel = PeelServe(tmp, workers=2, extra_settings=(
        f'[listeners.inbound]\nbind = "127.0.0.1:{port}"\nmtls = "permissive"\n'
        f'[identity]\nstate_dir = "{identity.directory}"\n'))
    token = peel.upgrade_with_token("operator")
    peel.commit(document(world.echo.url))
    billing = write_identity(world.ca, world.tmp / "billing-workers", "billing")
    peel.start()
    try:
        wait_for(lambda: len(peel.children()) == 2, 30, "two workers")
        inode = _listening_inode(port)
        wait_for(lambda: all(_holds_socket(pid, inode) for pid in peel.children()), 10,
                 "both workers accepting on the inbound socket")
        context = client_context(billing, billing.bundle)

        def served() -> bool:
            try:
                return get(port, "/open", context, timeout=2)[0] == 200
            except OSError:
                return False

        # the first process is ready before its workers accept (slow to start on a loaded machine)
        wait_for(served, 60, "a worker serving the inbound listener")
        assert all(get(port, "/open", context)[0] == 200 for _ in range(20))
        assert all(get(port, "/open")[0] == 200 for _ in range(10))

        def plaintext_seen() -> int:
            status, body = peel.admin_get("/api/v1/mtls/readiness?window=1h", token)
            assert status == 200, body
            return sum(r["requests"] for r in json.loads(body)["plaintext"])

        # the readiness view merges the workers' counts
        wait_for(lambda: plaintext_seen() == 10, 30, "both workers' plaintext counts in readiness")
        kept = [KeptConnection(port, billing) for _ in range(6)]  # spread over the workers

        cli(peel, token, "ca", "revoke", "--serial", serial_hex(billing))
        # every worker follows the table: no new handshake of the serial gets through any of them
        wait_for(lambda: all(refused(port, context) for _ in range(10)), 30, "refused by every worker")
        wait_for(lambda: all(k.closed_by_server() for k in kept), 90, "every open connection closed")

        strict = {**document(world.echo.url), "mesh": {"inbound_mtls": "strict"}}
        cli(peel, token, "apply", "-f", "-", stdin=yaml.safe_dump(strict))
        wait_for(lambda: all(get(port, "/open")[0] == 403 for _ in range(10)), 30, "strict in every worker")
        for k in kept:
            k.close()
        assert peel.stop() == 0
        assert "Traceback" not in peel.log.read_text()
    finally:
        peel.stop()
