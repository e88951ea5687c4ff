"""Active health checks against real upstream sockets: thresholds both ways, hanging, refusing and
garbage endpoints, an upstream that ignores `Connection: close`, and https with a self-signed cert."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.upstream.dial import Dialer
from gateway.upstream.endpoints import EndpointState, Upstreams
from gateway.upstream.health import HealthChecker, check_endpoint
from routes.model import Endpoint
from routes.policies import HealthCheck
from tests.sockets.faults import FaultUpstream, Refuse
from tests.unit.test_health import table

POLICY = HealthCheck(path="/healthz", interval=0.2, timeout=0.5, healthy_threshold=2,
                     unhealthy_threshold=3, statuses=(200, 204))


@pytest.fixture
def upstream() -> Iterator[FaultUpstream]:
    with FaultUpstream("orders") as up:
        yield up


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 30))


async def until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.002)


def endpoint(url: str) -> Endpoint:
    return Endpoint.parse(url, "endpoint")


def state_of(upstreams: Upstreams, service: str, url: str) -> EndpointState:
    found = upstreams.get(service)
    assert found is not None
    return next(e for e in found.endpoints if e.endpoint.url == url)


# -- one check ----------------------------------------------------------------------------------------

def test_a_check_sends_a_short_get_and_reads_the_status(upstream: FaultUpstream) -> None:
    async def go() -> None:
        started = time.monotonic()
        result = await check_endpoint(endpoint(upstream.url), POLICY, None)
        # FaultUpstream keeps connections open whatever the client asks: the check still ends as
        # soon as the announced body is read, not at its timeout.
        assert time.monotonic() - started < POLICY.timeout / 2
        assert result.ok and result.status == 200
        await until(lambda: upstream.open_connections == 0, what="the check's connection closed")
        upstream.set("status", status=503)
        result = await check_endpoint(endpoint(upstream.url), POLICY, None)
        assert not result.ok and result.status == 503 and result.describe() == "answered 503"
        result = await check_endpoint(endpoint(upstream.url), replace(POLICY, host="orders.internal"), None)
        assert not result.ok

    run(go)
    first, _, third = upstream.received
    assert (first.method, first.path, first.body) == ("GET", "/healthz", b"")
    assert first.header("Host") == f"127.0.0.1:{upstream.port}"
    assert first.header("User-Agent") == "peel-health"
    assert first.header("Connection") == "close"
    assert third.header("Host") == "orders.internal"
    # Each check came on a new connection (never a pooled one).
    assert len({r.connection for r in upstream.received}) == 3


def test_a_hanging_endpoint_times_out(upstream: FaultUpstream) -> None:
    upstream.set("hang_before_headers")
    policy = replace(POLICY, timeout=0.3)

    async def go() -> None:
        started = time.monotonic()
        result = await check_endpoint(endpoint(upstream.url), policy, None)
        elapsed = time.monotonic() - started
        assert not result.ok and result.error == "no answer within 0.3 s"
        assert 0.29 <= elapsed < 0.3 + 1.5  # the timeout, with a margin for a loaded machine
        await until(lambda: upstream.open_connections == 0, what="the timed-out connection closed")

    run(go)


def test_a_refusing_and_a_garbage_endpoint_fail() -> None:
    refuse = Refuse()
    try:
        with FaultUpstream("garbage") as garbage:
            garbage.set("garbage")

            async def go() -> None:
                refused = await check_endpoint(endpoint(refuse.url), POLICY, None)
                assert not refused.ok and refused.error is not None
                assert refused.error.startswith("connection failed")
                bad = await check_endpoint(endpoint(garbage.url), POLICY, None)
                assert not bad.ok and bad.error is not None and bad.error.startswith("bad answer")

            run(go)
    finally:
        refuse.stop()


def test_a_reset_before_the_answer_fails(upstream: FaultUpstream) -> None:
    upstream.set("reset")

    async def go() -> None:
        result = await check_endpoint(endpoint(upstream.url), POLICY, None)
        assert not result.ok and result.status is None

    run(go)


async def answering(payload: bytes, *, close: bool) -> tuple[asyncio.Server, str]:
    """A loopback server on the running loop that answers every request with `payload`."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(payload)
            await writer.drain()
            if not close:
                await reader.read()  # keep the connection until the client goes
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


@pytest.mark.parametrize(("payload", "close", "ok", "status"), [
    # Interim 103 Early Hints, then the final answer.
    (b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", False, True, 204),
    # Chunked, and the connection stays open: the check ends at its timeout but keeps the status.
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", False, True, 200),
    # Delimited by close.
    (b"HTTP/1.1 503 Busy\r\n\r\nbusy", True, False, 503),
    # A head larger than 16 KiB is not a health answer.
    (b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * 20000 + b"\r\n\r\n", False, False, None),
    # Cut in the middle of the head.
    (b"HTTP/1.1 200 OK\r\nContent-Le", True, False, None),
])
def test_answers_of_every_shape(payload: bytes, close: bool, ok: bool, status: int | None) -> None:
    async def go() -> None:
        server, url = await answering(payload, close=close)
        try:
            result = await check_endpoint(endpoint(url), replace(POLICY, timeout=0.3), None)
            assert (result.ok, result.status) == (ok, status), result
        finally:
            server.close()

    run(go)


# -- the checker over time ------------------------------------------------------------------------------

def test_failing_healthz_goes_unhealthy_after_threshold_then_recovers(upstream: FaultUpstream) -> None:
    async def go() -> None:
        ups = Upstreams()
        checker = HealthChecker(ups)
        t = table(orders=([upstream.url], POLICY))
        ups.update(t)
        checker.sync()
        state = state_of(ups, "orders", upstream.url)
        try:
            await until(lambda: upstream.count(path="/healthz") >= 2, what="two passing checks")
            assert state.healthy
            # Switch right after a check arrived, so that no check races the switch.
            seen = upstream.count()
            await until(lambda: upstream.count() > seen, what="another check")
            upstream.clear()
            upstream.set("status", status=500)
            await until(lambda: not state.healthy, what="unhealthy")
            assert [r.mode for r in upstream.received] == ["status"] * POLICY.unhealthy_threshold
            seen = upstream.count()
            await until(lambda: upstream.count() > seen, what="another check")
            assert not state.healthy  # stays down while failing
            upstream.clear()
            upstream.set("ok")
            await until(lambda: state.healthy, what="healthy again")
            assert [r.mode for r in upstream.received] == ["ok"] * POLICY.healthy_threshold
        finally:
            await checker.close()
        # No check leaves a connection behind.
        await until(lambda: upstream.open_connections == 0, what="check connections closed")

    run(go)


def test_a_hanging_endpoint_goes_unhealthy_and_others_are_not_held_up(upstream: FaultUpstream) -> None:
    with FaultUpstream("hangs") as hanging:

        # Checks every 0.2 s that hang for 0.5 s each: the schedule skips the slots they overran,
        # and the other endpoint's checks keep their pace.
        async def go() -> None:
            ups = Upstreams()
            checker = HealthChecker(ups)
            t = table(orders=([upstream.url, hanging.url], POLICY))
            ups.update(t)
            checker.sync()
            try:
                bad = state_of(ups, "orders", hanging.url)
                good = state_of(ups, "orders", upstream.url)
                await until(lambda: hanging.count() >= 2, what="two passing checks")
                seen = hanging.count()
                await until(lambda: hanging.count() > seen, what="another check")
                hanging.clear()
                upstream.clear()
                hanging.set("hang_before_headers")
                started = time.monotonic()
                await until(lambda: not bad.healthy, what="the hanging endpoint unhealthy")
                elapsed = time.monotonic() - started
                # Three checks that each waited their whole timeout, one slot apart at least.
                assert hanging.count() == POLICY.unhealthy_threshold
                assert elapsed >= 2 * POLICY.interval + POLICY.timeout
                assert good.healthy and upstream.count() >= int(elapsed / POLICY.interval) - 1
            finally:
                await checker.close()
            await until(lambda: hanging.open_connections == 0, what="hung checks closed")

        run(go)


# -- https -----------------------------------------------------------------------------------------------

def self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "peel health test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class TlsHealthz:
    """An https upstream on the test's own loop: answers every request 200 and records Host and SNI."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.sni: list[str | None] = []
        self.hosts: list[str] = []
        self.context.sni_callback = self._sni
        self.server: asyncio.Server | None = None
        self.port = 0

    def _sni(self, sock: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
        self.sni.append(name)

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            for line in head.decode("latin-1").split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.lower() == "host":
                    self.hosts.append(value.strip())
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass  # a client that refused our certificate
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def test_https_endpoint_with_a_self_signed_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    trusting = ssl.create_default_context(cafile=str(cert))

    async def go() -> None:
        server = TlsHealthz(cert, key)
        await server.start()
        url = f"https://127.0.0.1:{server.port}"
        try:
            # Trusted through the pool's factory: healthy, over TLS.
            result = await check_endpoint(endpoint(url), POLICY, Dialer(lambda e: trusting))
            assert result.ok and result.status == 200
            # The default context (no factory, as the pool without one) refuses the certificate.
            ups = Upstreams()
            checker = HealthChecker(ups, dialer=Dialer())
            t = table(secure=([url], replace(POLICY, interval=0.05)))
            ups.update(t)
            checker.sync()
            state = state_of(ups, "secure", url)
            await until(lambda: not state.healthy, what="an untrusted certificate failing checks")
            await checker.close()
            plain = await check_endpoint(endpoint(url), POLICY, Dialer())
            assert not plain.ok and plain.error is not None and "certificate" in plain.error
            # With the factory the pool uses, the checker trusts what requests trust.
            factory_calls: list[Endpoint] = []

            def factory(e: Endpoint) -> ssl.SSLContext | None:
                factory_calls.append(e)
                return trusting

            ups = Upstreams()
            checker = HealthChecker(ups, dialer=Dialer(factory))
            ups.update(t)
            checker.sync()
            state = state_of(ups, "secure", url)
            await until(lambda: len(factory_calls) >= 3, what="three checks")
            await checker.close()
            assert state.healthy  # the first failing check would have marked it unhealthy at once
            assert factory_calls[0].url == url
        finally:
            await server.stop()
        assert server.hosts[0] == f"127.0.0.1:{server.port}"
        # SNI is not sent for an IP address (RFC 6066); the certificate is still checked against it.
        assert server.sni[0] is None

    run(go)


def test_peel_serve_runs_the_checks_and_routes_around_an_unhealthy_endpoint(tmp_path: Path) -> None:
    """Wired end to end: the checks start with the table, the verdict shows in `live`, and the
    balancer leaves the failing endpoint out until it passes again."""
    import json

    from tests.sockets.conftest import wait_for
    from tests.sockets.serve_harness import PeelServe

    with FaultUpstream("sick") as sick, FaultUpstream("well") as well:
        peel = PeelServe(tmp_path)
        token = peel.upgrade_with_token("ops")
        peel.commit({"services": [{"name": "orders", "endpoints": [sick.url, well.url],
                                   "health_check": {"path": "/healthz", "interval": "200ms",
                                                    "timeout": "500ms", "healthy_threshold": 2,
                                                    "unhealthy_threshold": 2}}],
                     "routes": [{"name": "orders", "match": {"path_prefix": "/"}, "service": "orders"}]})
        peel.start()
        try:
            def healthy(url: str) -> bool:
                _, body = peel.admin_get("/api/v1/services/orders", token, timeout=5)
                live = json.loads(body).get("live")
                return bool(live) and live["endpoints"][url]["healthy"] is True

            wait_for(lambda: sick.count(path="/healthz") >= 2, 10, "checks of the sick endpoint")
            sick.set("status", status=503)
            wait_for(lambda: not healthy(sick.url), 10, "the sick endpoint to be unhealthy")
            before = sick.count(path="/orders/1")
            for _ in range(20):
                assert peel.get("/orders/1")[0] == 200
            assert sick.count(path="/orders/1") == before  # every request went to the well one
            sick.set("ok")
            wait_for(lambda: healthy(sick.url), 10, "the sick endpoint to recover")
            assert healthy(well.url)
        finally:
            assert peel.stop() == 0
