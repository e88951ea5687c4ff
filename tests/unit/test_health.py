"""Active health checks without sockets: the check request, status parsing, TLS context choice, and the
checker's task bookkeeping and transitions with a scripted probe and fake endpoint states."""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

import pytest

from gateway.upstream.dial import Dial, Dialer, ssl_context_for
from gateway.upstream.endpoints import Upstreams
from gateway.upstream.health import (
    CheckResult,
    HealthChecker,
    body_length,
    check_request,
    parse_status,
)
from routes.model import Endpoint
from routes.policies import HealthCheck

# -- fakes of the gateway.upstream.endpoints seam (Upstreams / ServiceState / EndpointState) -----


@dataclass
class FakeEndpointState:
    """Counts consecutive results against the policy's thresholds, as `EndpointState.report_check`."""

    endpoint: Endpoint
    policy: HealthCheck | None
    healthy: bool = True
    reports: list[tuple[bool, float]] = field(default_factory=list)
    _passes: int = 0
    _fails: int = 0

    def report_check(self, ok: bool, now: float) -> None:
        self.reports.append((ok, now))
        policy = self.policy or HealthCheck()
        if ok:
            self._passes, self._fails = self._passes + 1, 0
            if not self.healthy and self._passes >= policy.healthy_threshold:
                self.healthy = True
        else:
            self._passes, self._fails = 0, self._fails + 1
            if self.healthy and self._fails >= policy.unhealthy_threshold:
                self.healthy = False


@dataclass
class FakeServiceState:
    name: str
    endpoints: tuple[FakeEndpointState, ...]
    health_check: HealthCheck | None


class FakeUpstreams:
    """Keeps endpoint states by service name and URL across tables, like `Upstreams.update`."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.states: dict[str, FakeServiceState] = {}
        self.clock = clock

    def update(self, table: FakeTable) -> None:
        for name, compiled in table.services.items():
            old = {e.endpoint.url: e for e in self.states[name].endpoints} if name in self.states else {}
            kept = []
            for endpoint in compiled.endpoints:
                state = old.get(endpoint.url) or FakeEndpointState(endpoint, compiled.health_check)
                state.policy = compiled.health_check
                kept.append(state)
            self.states[name] = FakeServiceState(name, tuple(kept), compiled.health_check)
        for name in [n for n in self.states if n not in table.services]:
            del self.states[name]

    def services(self) -> list[FakeServiceState]:
        return list(self.states.values())

    def endpoint(self, service: str, url: str) -> FakeEndpointState:
        return next(e for e in self.states[service].endpoints if e.endpoint.url == url)


@dataclass(frozen=True)
class FakeCompiled:
    name: str
    endpoints: tuple[Endpoint, ...]
    health_check: HealthCheck | None


@dataclass(frozen=True)
class FakeTable:
    services: dict[str, FakeCompiled]


def table(**services: tuple[list[str], HealthCheck | None]) -> FakeTable:
    return FakeTable({name: FakeCompiled(name, tuple(Endpoint.parse(u, "e") for u in urls), check)
                      for name, (urls, check) in services.items()})


# -- pure parts ---------------------------------------------------------------------------------------

EP = Endpoint("http", "10.0.0.7", 9000)


def test_check_request_defaults() -> None:
    assert check_request(HealthCheck(), EP) == (
        b"GET /healthz HTTP/1.1\r\nHost: 10.0.0.7:9000\r\nUser-Agent: peel-health\r\nAccept: */*\r\n"
        b"Connection: close\r\n\r\n")


@pytest.mark.parametrize(("endpoint", "policy", "host"), [
    (Endpoint("https", "api.internal", 443), HealthCheck(), b"api.internal:443"),
    (Endpoint("http", "::1", 8080), HealthCheck(), b"[::1]:8080"),
    (EP, HealthCheck(host="orders.internal"), b"orders.internal"),
])
def test_check_request_host(endpoint: Endpoint, policy: HealthCheck, host: bytes) -> None:
    assert b"\r\nHost: " + host + b"\r\n" in check_request(policy, endpoint)


@pytest.mark.parametrize("policy", [
    HealthCheck(path="healthz"), HealthCheck(path="/a b"), HealthCheck(path="/x\r\nEvil: 1"),
    HealthCheck(host="a b"), HealthCheck(host="x\r\nEvil: 1"),
])
def test_check_request_refuses_what_cannot_go_on_the_wire(policy: HealthCheck) -> None:
    with pytest.raises(ValueError):
        check_request(policy, EP)


@pytest.mark.parametrize(("head", "status"), [
    (b"HTTP/1.1 200 OK\r\n\r\n", 200),
    (b"HTTP/1.0 503 Service Unavailable\r\nX: y\r\n\r\n", 503),
    (b"HTTP/1.1 204\r\n\r\n", 204),
    (b"HTTP/1.1 103 Early Hints\r\n\r\n", 103),
])
def test_parse_status(head: bytes, status: int) -> None:
    assert parse_status(head) == status


@pytest.mark.parametrize("head", [
    b"SSH-2.0-OpenSSH_9.2\r\n\r\n", b"HTTP/2 200\r\n\r\n", b"HTTP/1.1 20 OK\r\n\r\n",
    b"HTTP/1.1 600 X\r\n\r\n", b"HTTP/1.1 200OK\r\n\r\n", b"", b"\x16\x03\x01\x02\x00",
])
def test_parse_status_refuses_what_is_not_http(head: bytes) -> None:
    with pytest.raises(ValueError):
        parse_status(head)


@pytest.mark.parametrize(("status", "head", "length"), [
    (200, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", 2),
    (200, b"HTTP/1.1 200 OK\r\ncontent-length:  17 \r\n\r\n", 17),
    (200, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n", None),
    (200, b"HTTP/1.1 200 OK\r\n\r\n", None),
    (204, b"HTTP/1.1 204 No Content\r\n\r\n", 0),
    (304, b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", 0),
])
def test_body_length(status: int, head: bytes, length: int | None) -> None:
    assert body_length(status, head) == length


def test_ssl_context_is_chosen_as_the_pool_does() -> None:
    default = ssl.create_default_context()
    mine = ssl.create_default_context()
    https = Endpoint("https", "a", 443)
    # No factory: https verifies with the default context, http has none.
    assert ssl_context_for(https, None, lambda: default) is default
    assert ssl_context_for(EP, None, lambda: default) is None
    # A factory's context wins; a factory without one for an https endpoint falls back.
    assert ssl_context_for(https, lambda e: mine, lambda: default) is mine
    assert ssl_context_for(https, lambda e: None, lambda: default) is default
    assert ssl_context_for(EP, lambda e: None, lambda: default) is None


# -- the checker, with a scripted probe ----------------------------------------------------------------

Script = Callable[[Endpoint], CheckResult]


class ScriptedProbe:
    """Answers each check from `script(endpoint)` and records (endpoint url, loop time)."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.calls: list[tuple[str, float]] = []
        self.dialers: list[Dial] = []

    async def __call__(self, endpoint: Endpoint, policy: HealthCheck, dialer: Dial) -> CheckResult:
        self.calls.append((endpoint.url, asyncio.get_running_loop().time()))
        self.dialers.append(dialer)
        return self.script(endpoint)

    def count(self, url: str) -> int:
        return sum(1 for u, _ in self.calls if u == url)


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.002)


FAST = HealthCheck(interval=0.01, timeout=0.5, healthy_threshold=2, unhealthy_threshold=3)
A, B, C = "http://10.0.0.1:80", "http://10.0.0.2:80", "http://10.0.0.3:80"


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 20))


def test_sync_checks_only_services_with_a_health_check() -> None:
    async def go() -> None:
        ups = FakeUpstreams()
        probe = ScriptedProbe(lambda e: CheckResult(True, 200))
        checker = HealthChecker(ups, probe=probe)
        t = table(orders=([A, B], FAST), legacy=([C], None))
        ups.update(t)
        checker.sync()
        assert checker.watched() == [("orders", A), ("orders", B)]
        await wait_until(lambda: probe.count(A) >= 2 and probe.count(B) >= 2)
        assert probe.count(C) == 0
        await checker.close()
    run(go)


def test_checks_dial_through_the_dialer_they_were_given() -> None:
    async def go() -> None:
        ups = FakeUpstreams()
        probe = ScriptedProbe(lambda e: CheckResult(True, 200))
        mine = Dialer()
        checker = HealthChecker(ups, probe=probe, dialer=mine)
        ups.update(table(orders=([A], FAST)))
        checker.sync()
        await wait_until(lambda: probe.count(A) >= 2)
        await checker.close()
        assert probe.dialers and all(d is mine for d in probe.dialers)
    run(go)


def test_sync_stops_removed_and_restarts_changed_checks() -> None:
    async def go() -> None:
        ups = FakeUpstreams()
        probe = ScriptedProbe(lambda e: CheckResult(True, 200))
        checker = HealthChecker(ups, probe=probe)
        first = table(orders=([A, B], FAST), legacy=([C], FAST))
        ups.update(first)
        checker.sync()
        tasks = {key: w.task for key, w in checker._watches.items()}
        # B leaves orders, legacy loses its check, orders' check changes path: A restarts.
        second = table(orders=([A], replace(FAST, path="/ready")), legacy=([C], None))
        ups.update(second)
        checker.sync()
        assert checker.watched() == [("orders", A)]
        await asyncio.sleep(0)
        assert tasks[("orders", B)].cancelled() or tasks[("orders", B)].done()
        assert tasks[("legacy", C)].done()
        assert tasks[("orders", A)].done()
        assert checker._watches[("orders", A)].task is not tasks[("orders", A)]
        # The same table again changes nothing.
        kept = checker._watches[("orders", A)].task
        checker.sync()
        assert checker._watches[("orders", A)].task is kept
        # Everything goes away: no checks, and no more probes.
        ups.update(table())
        checker.sync()
        assert checker.watched() == []
        await asyncio.sleep(0)
        before = len(probe.calls)
        await asyncio.sleep(0.05)
        assert len(probe.calls) == before
        await checker.close()
    run(go)


def test_a_service_recreated_gets_a_fresh_check() -> None:
    async def go() -> None:
        ups = FakeUpstreams()
        checker = HealthChecker(ups, probe=ScriptedProbe(lambda e: CheckResult(True, 200)))
        t = table(orders=([A], FAST))
        ups.update(t)
        checker.sync()
        old = checker._watches[("orders", A)]
        # A new state object for the same name and URL (the service was deleted and re-added in
        # between): the check must report to the new one.
        ups.states.clear()
        ups.update(t)
        checker.sync()
        assert checker._watches[("orders", A)].state is ups.endpoint("orders", A)
        assert checker._watches[("orders", A)] is not old
        await checker.close()
    run(go)


def test_thresholds_and_transitions_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    failing = {A}

    async def go() -> None:
        ups = FakeUpstreams()
        probe = ScriptedProbe(lambda e: CheckResult(False, error="connection refused")
                              if e.url in failing else CheckResult(True, 200))
        checker = HealthChecker(ups, probe=probe)
        t = table(orders=([A, B], FAST))
        ups.update(t)
        checker.sync()
        a = ups.endpoint("orders", A)
        await wait_until(lambda: len(a.reports) >= 8)
        assert not a.healthy and ups.endpoint("orders", B).healthy
        failing.clear()
        n = len(a.reports)
        await wait_until(lambda: len(a.reports) >= n + 8)
        assert a.healthy
        await checker.close()

    with caplog.at_level(logging.INFO, logger="peel.health"):
        run(go)
    messages = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "peel.health"]
    assert messages == [
        (logging.WARNING, f"endpoint {A} of service orders is unhealthy after 3 failed checks: "
                          "connection refused"),
        (logging.INFO, f"endpoint {A} of service orders is healthy again after 2 passed checks"),
    ]


def test_a_crashing_check_counts_as_failure_and_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    def boom(endpoint: Endpoint) -> CheckResult:
        raise RuntimeError("bug in a check")

    async def go() -> None:
        ups = FakeUpstreams()
        checker = HealthChecker(ups, probe=ScriptedProbe(boom))
        t = table(orders=([A], FAST))
        ups.update(t)
        checker.sync()
        a = ups.endpoint("orders", A)
        await wait_until(lambda: len(a.reports) >= 5)
        assert not a.healthy and all(not ok for ok, _ in a.reports)
        task = checker._watches[("orders", A)].task
        assert not task.done()  # still checking
        await checker.close()

    with caplog.at_level(logging.INFO, logger="peel.health"):
        run(go)
    crashes = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(crashes) == 1 and crashes[0].exc_info is not None


def test_a_failing_report_does_not_stop_the_checks(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(FakeEndpointState):
        def report_check(self, ok: bool, now: float) -> None:
            self.reports.append((ok, now))
            raise KeyError("state gone")

    async def go() -> None:
        ups = FakeUpstreams()
        probe = ScriptedProbe(lambda e: CheckResult(True, 200))
        checker = HealthChecker(ups, probe=probe)
        t = table(orders=([A], FAST))
        ups.update(t)
        ups.states["orders"] = FakeServiceState("orders", (Broken(Endpoint.parse(A, "e"), FAST),), FAST)
        checker.sync()
        await wait_until(lambda: probe.count(A) >= 3)
        await checker.close()

    with caplog.at_level(logging.ERROR, logger="peel.health"):
        run(go)
    assert any("recording a health check" in r.getMessage() for r in caplog.records)


def test_first_check_at_a_random_offset_then_every_interval() -> None:
    class Fixed(random.Random):
        def __init__(self, fraction: float) -> None:
            super().__init__(0)
            self.fraction = fraction

        def uniform(self, a: float, b: float) -> float:
            return a + (b - a) * self.fraction

    policy = replace(FAST, interval=0.2)

    async def go() -> None:
        ups = FakeUpstreams()
        probe = ScriptedProbe(lambda e: CheckResult(True, 200))
        checker = HealthChecker(ups, probe=probe, rand=Fixed(0.5))
        t = table(orders=([A], policy))
        ups.update(t)
        start = asyncio.get_running_loop().time()
        checker.sync()
        await wait_until(lambda: probe.count(A) >= 3)
        await checker.close()
        times = [at - start for _, at in probe.calls[:3]]
        assert 0.09 <= times[0] < 0.2   # half the interval, not at once
        assert times[1] - times[0] == pytest.approx(0.2, abs=0.05)
        assert times[2] - times[1] == pytest.approx(0.2, abs=0.05)
    run(go)


def test_the_clock_of_the_upstreams_stamps_reports() -> None:
    async def go() -> None:
        ups = FakeUpstreams(clock=lambda: 1234.5)
        checker = HealthChecker(ups, probe=ScriptedProbe(lambda e: CheckResult(True, 200)))
        t = table(orders=([A], FAST))
        ups.update(t)
        checker.sync()
        a = ups.endpoint("orders", A)
        await wait_until(lambda: len(a.reports) >= 1)
        assert a.reports[0] == (True, 1234.5)
        await checker.close()
    run(go)


def test_close_stops_everything_and_later_syncs_start_nothing() -> None:
    async def go() -> None:
        ups = FakeUpstreams()
        probe = ScriptedProbe(lambda e: CheckResult(True, 200))
        checker = HealthChecker(ups, probe=probe)
        t = table(orders=([A, B], FAST))
        ups.update(t)
        checker.sync()
        tasks = [w.task for w in checker._watches.values()]
        await checker.close()
        assert all(task.done() for task in tasks)
        checker.sync()
        assert checker.watched() == []
    run(go)


def test_with_the_real_endpoint_state(caplog: pytest.LogCaptureFixture) -> None:
    # gateway.upstream.endpoints.Upstreams is what the process runs: an endpoint nothing ever vouched for is
    # out at its first failed check, and the message says how many checks it took.
    async def go() -> None:
        ups = Upstreams()
        probe = ScriptedProbe(lambda e: CheckResult(e.url == A, 200 if e.url == A else 503))
        checker = HealthChecker(ups, probe=probe)
        ups.update(table(orders=([A, B], FAST), legacy=([C], None)))  # type: ignore[arg-type]
        checker.sync()
        assert checker.watched() == [("orders", A), ("orders", B)]
        orders = ups.get("orders")
        assert orders is not None
        a, b = orders.endpoints
        await wait_until(lambda: probe.count(B) >= 1 and probe.count(A) >= 1)
        await wait_until(lambda: not b.healthy)
        assert a.healthy
        # The service drops its check: checks stop and the verdicts are forgotten.
        ups.update(table(orders=([A, B], None)))  # type: ignore[arg-type]
        checker.sync()
        assert checker.watched() == [] and b.healthy
        await checker.close()

    with caplog.at_level(logging.INFO, logger="peel.health"):
        run(go)
    assert [r.getMessage() for r in caplog.records if r.name == "peel.health"] == [
        f"endpoint {B} of service orders is unhealthy after 1 failed check: answered 503"]
