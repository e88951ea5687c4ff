"""Rotation under load, between real processes (issue 12's Proof, item 6): a control plane
(`peel serve` with the CA made by `peel ca init`, admin over TLS), gateway B (`peel join` as
orders; a strict inbound listener) and gateway A (`peel join` as billing; its service `orders` is
B's inbound listener, dialled with upstream mTLS). A steady load goes through A to B, every request
on a new mTLS connection (`[proxy] max_idle_per_endpoint = 0`), so each one is a full handshake
with both gateways' current certificates. Leaves live 1 minute.

- leaf rotation through a CA outage: two renewals of both gateways, the second after the CA (the
  control plane's admin API) was out of reach for longer than a renewal period (its process
  stopped, then restarted behind a cut relay until the end of the outage); 0 failed requests and
  0 refused handshakes; new serials; the certificate metric falls during the outage; renewal
  resumes when the CA is back, before the certificates expire; requests served after the joined
  certificates expired (so the renewed ones were presented);
- root rotation: `peel ca rotate`, both gateways renew onto the new root (the two-root bundle
  reaches each one before a peer presents a leaf of the new root), `peel ca rotate --finish`, both
  renew again and keep only the new root; 0 failed requests; `openssl verify` of the renewed leaves.

The tests take about 1.5 and 2.3 minutes (1-minute leaves renew 27-33 s after issue). The measured
results are in docs/identity.md, "Proofs".
"""

from __future__ import annotations

import http.client
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from tests.fakes.relay import Relay
from tests.fakes.tls import TestCA
from tests.sockets.conftest import ROOT
from tests.sockets.serve_harness import PeelServe, free_port
from tests.sockets.test_join import peel
from tests.sockets.test_tls import TlsPeel
from tests.sockets.upstreams import ScriptedUpstream

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")

TD = "peel.internal"
LIFETIME = 60  # seconds: renewed 27-33 s after issue
ORDERS, BILLING = f"spiffe://{TD}/svc/orders", f"spiffe://{TD}/svc/billing"


def peel_started(*args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEEL_")}
    return subprocess.Popen([sys.executable, "-m", "gateway.cli", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_until(condition: Callable[[], bool], timeout: float, what: str, every: float = 0.2) -> None:
    """Poll `condition` every `every` seconds until true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


@dataclass
class Held:
    """What a gateway's state directory holds at one moment."""

    serial: int
    issuer: x509.Name
    not_after: datetime
    roots: list[x509.Certificate]


def held(state: Path) -> Held | None:
    """The leaf and bundle in `state`; None when caught between two renames of a renewal."""
    try:
        chain = x509.load_pem_x509_certificates((state / "cert.pem").read_bytes())
        roots = x509.load_pem_x509_certificates((state / "bundle.pem").read_bytes())
    except (OSError, ValueError):
        return None
    return Held(chain[0].serial_number, chain[0].issuer, chain[0].not_valid_after_utc, roots)


def consistent(state: Path) -> Held:
    deadline = time.monotonic() + 10
    while (found := held(state)) is None:
        assert time.monotonic() < deadline, f"no consistent identity in {state} for 10 s"
        time.sleep(0.05)
    return found


@dataclass
class Load:
    """Threads sending GET /orders/... to gateway A, each on a new connection, until stopped."""

    port: int
    threads: int = 2
    sent: int = 0
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    last_ok: float = 0.0  # time.time() of the last success
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        for n in range(self.threads):
            worker = threading.Thread(target=self._run, args=(n,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def _run(self, n: int) -> None:
        i = 0
        while not self._stop.is_set():
            i += 1
            outcome = self._one(f"/orders/{n}/{i}")
            with self._lock:
                self.sent += 1
                if outcome is None:
                    self.ok += 1
                    self.last_ok = time.time()
                else:
                    self.failures.append(f"{datetime.now(UTC):%H:%M:%S.%f} {outcome}")
            self._stop.wait(0.01)  # pacing: about 50 requests a second per thread at most

    def _one(self, target: str) -> str | None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            conn.request("GET", target)
            response = conn.getresponse()
            body = response.read()
            return None if response.status == 200 else f"{response.status} {body[:300]!r}"
        except OSError as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(30)

    def wait_ok(self, after: float, timeout: float = 30) -> None:
        """Until a request sent after time.time() `after` has succeeded."""
        try:
            wait_until(lambda: self.last_ok > after, timeout, "a request to succeed")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; failures: {self.failures[-3:]}") from None


@dataclass
class Fleet:
    tmp: Path
    ca_dir: Path
    control: TlsPeel
    a: PeelServe
    b: PeelServe
    a_token: str
    b_token: str
    inbound_port: int
    echo: ScriptedUpstream
    relay: Relay | None = None

    @property
    def a_state(self) -> Path:
        return self.a.tmp / "identity"

    @property
    def b_state(self) -> Path:
        return self.b.tmp / "identity"

    def holding(self) -> tuple[Held, Held]:
        """What A and B hold now (read again while caught between a renewal's renames)."""
        return consistent(self.a_state), consistent(self.b_state)

    def metric(self, gateway: PeelServe, prefix: str) -> float | None:
        token = self.a_token if gateway is self.a else self.b_token
        status, body = gateway.admin_get("/metrics", token)
        assert status == 200
        for line in body.decode().splitlines():
            if line.startswith(prefix):
                return float(line.split()[-1])
        return None

    def expiry(self, gateway: PeelServe, identity: str) -> float:
        value = self.metric(gateway, f'peel_certificate_expiry_seconds{{identity="{identity}"}}')
        assert value is not None
        return value

    def handshakes_refused(self) -> float:
        return self.metric(self.b, 'peel_inbound_refused_total{listener="inbound",reason="handshake"}') or 0.0

    def renewals(self, gateway: PeelServe) -> int:
        return gateway.log.read_text().count(" renewed: certificate ")

    def stop(self) -> None:
        for server in (self.a, self.b, self.control):
            if server.process is not None:
                server.stop()
        self.echo.stop()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    ca_dir = tmp_path / "ca"
    peel("ca", "init", "--dir", str(ca_dir), "--trust-domain", TD)
    # bound before the servers pick their free ports, so that it cannot take one of them
    relay = Relay(("127.0.0.1", 0))
    site = TestCA()
    admin = site.issue(tmp_path / "admin", ["admin.example"], ips=["127.0.0.1"])
    cafile = site.pem_path(tmp_path)
    (tmp_path / "cp").mkdir()
    pair = f'tls_certificates = [{{cert = "{admin.cert}", key = "{admin.key}"}}]'
    control = TlsPeel(tmp_path / "cp", admin=pair, admin_ca=cafile,
                      extra=f'[identity]\nca_dir = "{ca_dir}"\ncertificate_lifetime = {LIFETIME}\n')
    control.upgrade_with_token()
    echo = ScriptedUpstream()
    echo.start()
    inbound_port = free_port()
    nodes: dict[str, PeelServe] = {}
    for name, extra in (("b", f'[listeners.inbound]\nbind = "127.0.0.1:{inbound_port}"\nmtls = "strict"\n'),
                        ("a", "[proxy]\nmax_idle_per_endpoint = 0\n")):
        (tmp_path / name).mkdir()
        nodes[name] = PeelServe(tmp_path / name, extra_settings=(
            f'{extra}[identity]\nstate_dir = "{tmp_path / name / "identity"}"\n'
            f'control_cacert = "{cafile}"\n'))
    a, b = nodes["a"], nodes["b"]
    fleet = Fleet(tmp_path, ca_dir, control, a, b, a.upgrade_with_token(), b.upgrade_with_token(),
                  inbound_port, echo)
    b.commit({"services": [{"name": "echo", "endpoints": [echo.url]}],
              "routes": [{"name": "orders", "match": {"path_prefix": "/orders"}, "service": "echo",
                          "authorization": {"allow_from": ["billing"]}}]})
    a.commit({"services": [{"name": "orders", "endpoints": [f"https://127.0.0.1:{inbound_port}"],
                            "identity": ORDERS}],
              "routes": [{"name": "to-orders", "match": {"path_prefix": "/orders"}, "service": "orders"}]})
    relay.target = ("127.0.0.1", control.admin_port)
    fleet.relay = relay
    try:
        control.start()
        # the gateways reach the control plane through a relay the outage test cuts
        url = f"https://127.0.0.1:{relay.port}"
        tokens = [peel("join-token", "create", "--service", service, "--ttl", "15m",
                       "--config", str(control.config)).stdout.strip() for service in ("orders", "billing")]
        # both join at once, so that their renewals come due together (27-33 s later)
        joins = [peel_started("join", "--token", token, "--control", url, "--cacert", str(cafile),
                              "--config", str(node.config))
                 for node, token in zip((b, a), tokens, strict=True)]
        for join in joins:
            out, err = join.communicate(timeout=60)
            assert join.returncode == 0, (out, err)
        b.start()
        a.start()
        yield fleet
    finally:
        relay.cut()
        fleet.stop()


def generation_of(ca_dir: Path, issuer: x509.Name) -> int:
    for directory in (ca_dir / "generations").iterdir():
        intermediate = x509.load_pem_x509_certificate((directory / "intermediate.pem").read_bytes())
        if intermediate.subject == issuer:
            return int(directory.name)
    raise AssertionError(f"no generation of the CA issued {issuer}")


def report(name: str, load: Load, **facts: object) -> None:
    """The measured results, one line on stdout (`pytest -s` shows them; docs/identity.md quotes them)."""
    extra = " ".join(f"{k}={v}" for k, v in facts.items())
    print(f"\n[{name}] requests={load.sent} ok={load.ok} failed={len(load.failures)} {extra}")


def fingerprints(certificates: list[x509.Certificate]) -> frozenset[bytes]:
    return frozenset(c.fingerprint(hashes.SHA256()) for c in certificates)


def openssl_verify(bundle: Path, chain: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", "verify", "-CAfile", str(bundle), "-untrusted", str(chain), str(chain)],
                          capture_output=True, text=True, timeout=30)


def test_root_rotation_under_load_with_no_failed_request(fleet: Fleet) -> None:
    (old_root,) = x509.load_pem_x509_certificates((fleet.ca_dir / "bundle.pem").read_bytes())
    old_chain = fleet.tmp / "old-chain.pem"
    shutil.copyfile(fleet.a_state / "cert.pem", old_chain)
    # every sample of both state directories: (generation of A's leaf, of B's, roots each trusts)
    timeline: list[tuple[int, int, frozenset[bytes], frozenset[bytes]]] = []

    def sample() -> tuple[Held, Held]:
        a, b = fleet.holding()
        timeline.append((generation_of(fleet.ca_dir, a.issuer), generation_of(fleet.ca_dir, b.issuer),
                         fingerprints(a.roots), fingerprints(b.roots)))
        return a, b

    load = Load(fleet.a.public_port).start()
    try:
        load.wait_ok(0)
        started = time.monotonic()
        peel("ca", "rotate", "--dir", str(fleet.ca_dir), "--overlap", "4m")
        bundle = x509.load_pem_x509_certificates((fleet.ca_dir / "bundle.pem").read_bytes())
        assert len(bundle) == 2 and bundle[1] == old_root
        new_root = bundle[0]
        wait_until(lambda: sample() and timeline[-1][:2] == (2, 2), 2 * LIFETIME + 60,
                   "both gateways to renew onto the new root")
        on_new = time.monotonic() - started
        # Nobody presents a leaf of the old root any more: retire it (before the overlap's end: --force).
        peel("ca", "rotate", "--finish", "--force", "--dir", str(fleet.ca_dir))
        assert x509.load_pem_x509_certificates((fleet.ca_dir / "bundle.pem").read_bytes()) == [new_root]
        assert not (fleet.ca_dir / "generations" / "1" / "intermediate.key").exists()
        wait_until(lambda: all(h.roots == [new_root] for h in sample()), LIFETIME + 30,
                   "both gateways to renew and trust only the new root")
        load.wait_ok(time.time())
        retired = time.monotonic() - started
    finally:
        load.stop()
    report("root rotation", load, renewals_a=fleet.renewals(fleet.a), renewals_b=fleet.renewals(fleet.b),
           both_on_new_root_after_s=round(on_new), old_root_gone_after_s=round(retired),
           refused=fleet.handshakes_refused())
    assert load.failures == [], load.failures[:10]
    assert load.ok >= 200, load.ok
    assert fleet.handshakes_refused() == 0
    # When the first leaf of the new root appeared, both gateways already trusted the new root.
    new = new_root.fingerprint(hashes.SHA256())
    first = next(t for t in timeline if 2 in t[:2])
    assert new in first[2] and new in first[3], first
    # Issued certificates verify against the bundle that holds only the new root; the old root's do not.
    for state in (fleet.a_state, fleet.b_state):
        done = openssl_verify(state / "bundle.pem", state / "cert.pem")
        assert done.returncode == 0 and ": OK" in done.stdout, done.stdout + done.stderr
    assert openssl_verify(fleet.a_state / "bundle.pem", old_chain).returncode != 0


def test_leaf_rotation_under_load_through_a_ca_outage_longer_than_a_renewal_period(fleet: Fleet) -> None:
    """Two renewals of both gateways under load, the second after the CA was stopped for longer
    than a renewal period: 0 failed requests, 0 refused handshakes, new serials."""
    joined_a, joined_b = fleet.holding()
    joined = {joined_a.serial, joined_b.serial}
    load = Load(fleet.a.public_port).start()
    try:
        load.wait_ok(0)
        # Both joined within seconds of each other, so both renew about 30 s later: stop the CA
        # just after, when both certificates are young.
        wait_until(lambda: all(h.serial not in joined for h in fleet.holding()), LIFETIME + 30,
                   "the first renewal of both gateways")
        before_a, before_b = fleet.holding()
        failed_before = [g.log.read_text().count("renewal failed") for g in (fleet.a, fleet.b)]
        assert fleet.relay is not None
        fleet.relay.cut()
        stopped = time.monotonic()
        assert fleet.control.stop() == 0
        expiry_at_stop = fleet.expiry(fleet.a, BILLING), fleet.expiry(fleet.b, ORDERS)
        # The CA stays down 15 s, then starts again behind the cut relay (a start takes seconds on a
        # loaded machine): the gateways reach it again when the relay is restored, at a known moment.
        wait_until(lambda: time.monotonic() - stopped > 15, 30, "15 s with the CA stopped")
        fleet.control.start()
        # Longer than a renewal period (at most 55 % of the life, 33 s): both renewals came due and failed.
        wait_until(lambda: time.monotonic() - stopped > 0.55 * LIFETIME + 2
                   and all(g.log.read_text().count("renewal failed") > n
                           for g, n in zip((fleet.a, fleet.b), failed_before, strict=True)),
                   LIFETIME, "renewals to fail while the CA is down")
        outage_a, outage_b = fleet.holding()
        assert (outage_a.serial, outage_b.serial) == (before_a.serial, before_b.serial)  # serving on them
        load.wait_ok(time.time())
        expiry_late = fleet.expiry(fleet.a, BILLING), fleet.expiry(fleet.b, ORDERS)
        assert expiry_late[0] < expiry_at_stop[0] - 20 and expiry_late[1] < expiry_at_stop[1] - 20
        assert min(expiry_late) > 0, expiry_late
        fleet.relay.restore()
        outage = time.monotonic() - stopped
        wait_until(lambda: all(h.serial not in (before_a.serial, before_b.serial) for h in fleet.holding()),
                   min(expiry_late) + 5, "renewal to resume when the CA is back")
        after_a, after_b = fleet.holding()
        # every request is a new handshake: one served after the joined certificates expired shows
        # that both sides presented renewed ones (the other side refuses an expired one)
        load.wait_ok(max(joined_a.not_after, joined_b.not_after).timestamp() + 1)
    finally:
        load.stop()
    # each renewal is logged just after its files are written (the serials above)
    wait_until(lambda: fleet.renewals(fleet.a) >= 2 and fleet.renewals(fleet.b) >= 2, 10,
               "both renewals of both gateways in their logs")
    failed = [g.log.read_text().count("renewal failed") - n
              for g, n in zip((fleet.a, fleet.b), failed_before, strict=True)]
    report("leaf rotation and CA outage", load, renewals=[fleet.renewals(fleet.a), fleet.renewals(fleet.b)],
           outage_s=round(outage), failed_renewals=failed, expiry_at_stop=[round(x) for x in expiry_at_stop],
           expiry_before_return=[round(x) for x in expiry_late], refused=fleet.handshakes_refused())
    assert load.failures == [], load.failures[:10]
    assert load.ok >= 200, load.ok  # a steady load, not a handful (about 20 a second measured)
    assert fleet.handshakes_refused() == 0
    assert len({joined_a.serial, before_a.serial, after_a.serial}) == 3
    assert len({joined_b.serial, before_b.serial, after_b.serial}) == 3
    # renewed before the certificates expired, and the metric rose again
    assert after_a.not_after > before_a.not_after and after_b.not_after > before_b.not_after
    assert min(fleet.expiry(fleet.a, BILLING), fleet.expiry(fleet.b, ORDERS)) > min(expiry_late)
    for gateway in (fleet.a, fleet.b):
        assert "Traceback" not in gateway.log.read_text()
