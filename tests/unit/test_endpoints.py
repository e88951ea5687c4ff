"""Endpoint and service state (gateway/upstream/endpoints.py): latency estimate, outlier ejection, health
verdicts, circuit-breaker counters, reconciliation across tables and the JSON snapshot."""

from __future__ import annotations

import json
import random

import pytest
import yaml

from gateway.upstream.endpoints import DEFAULT_LATENCY, EndpointState, ServiceState, Upstreams
from routes.compiler import compile_document
from routes.model import Document
from routes.policies import Balancer, CircuitBreaker, HealthCheck, OutlierDetection
from tests.unit.test_balancer import Clock, Svc, Table, eps, host, service

OUTLIER = OutlierDetection(consecutive_5xx=3, consecutive_failures=2, base_ejection=10.0,
                           max_ejection=25.0, max_ejected_percent=50)


def fail(state: EndpointState, clock: Clock, times: int, outcome: str = "5xx") -> None:
    for _ in range(times):
        state.begin()
        state.end(0.01, outcome, clock.now)  # type: ignore[arg-type]


def ok(state: EndpointState, clock: Clock, latency: float = 0.01) -> None:
    state.begin()
    state.end(latency, "ok", clock.now)


# -- latency: peak EWMA ---------------------------------------------------------------------------

def test_a_slower_sample_replaces_the_estimate_and_a_faster_one_is_blended_by_elapsed_time() -> None:
    clock = Clock()
    svc = service(eps(2), clock, balancer=Balancer(decay=10.0))
    e = svc.endpoints[0]
    assert e.ewma == DEFAULT_LATENCY and e.samples == 0
    ok(e, clock, 0.002)
    assert e.ewma == 0.002  # the first sample replaces the neutral start value
    ok(e, clock, 0.050)
    assert e.ewma == 0.050  # a peak, at once
    clock.now += 10.0  # one time constant: the old estimate keeps exp(-1) of its weight
    ok(e, clock, 0.010)
    assert e.ewma == pytest.approx(0.050 * 0.3679 + 0.010 * 0.6321, rel=1e-3)


def test_the_estimate_read_by_the_balancer_decays_between_samples() -> None:
    clock = Clock()
    e = service(eps(2), clock, balancer=Balancer(decay=5.0)).endpoints[0]
    ok(e, clock, 0.100)
    clock.now += 5.0
    assert e.latency(clock.now) == pytest.approx(0.100 * 0.3679, rel=1e-3)
    assert e.ewma == 0.100  # what the admin API shows: the last estimate
    assert e.score(clock.now) == pytest.approx(e.latency(clock.now))
    e.begin()
    assert e.score(clock.now) == pytest.approx(2 * e.latency(clock.now))


def test_a_failure_never_makes_an_endpoint_look_faster() -> None:
    clock = Clock()
    e = service(eps(2), clock, outlier=None).endpoints[0]
    ok(e, clock, 0.080)
    clock.now += 30
    e.begin()
    e.end(0.001, "5xx", clock.now)  # a fast error page
    e.begin()
    e.end(None, "failure", clock.now)  # connection refused
    assert e.ewma == 0.080
    assert e.latency(clock.now) == 0.080  # refreshed: it does not decay towards zero either
    e.begin()
    e.end(0.300, "failure", clock.now)  # a timeout is a peak
    assert e.ewma == 0.300


# -- outlier detection ----------------------------------------------------------------------------

def test_consecutive_5xx_eject_for_the_base_time_and_a_success_resets_the_count() -> None:
    clock = Clock()
    svc = service(eps(4), clock, outlier=OUTLIER)
    e = svc.endpoints[0]
    fail(e, clock, 2)
    ok(e, clock)
    fail(e, clock, 2)
    assert e.available(clock.now)
    fail(e, clock, 1)
    assert not e.available(clock.now)
    assert e.ejected_until == clock.now + 10.0
    assert (e.ejections, svc.ejections_total) == (1, 1)
    assert e not in {svc.pick() for _ in range(50)}
    clock.now += 10.0
    assert e.available(clock.now)
    assert e in {svc.pick() for _ in range(50)}


def test_a_cancelled_attempt_only_releases_its_in_flight_slot() -> None:
    clock = Clock()
    svc = service(eps(4), clock, outlier=OUTLIER)
    e = svc.endpoints[0]
    ok(e, clock, 0.05)
    fail(e, clock, 2)
    for _ in range(10):
        e.begin()
        e.end(0.001, "cancelled", clock.now)
    assert (e.in_flight, svc.in_flight, e.ewma, e.samples) == (0, 0, 0.05, 3)
    assert e.snapshot(clock.now)["consecutive_5xx"] == 2  # neither reset nor counted
    assert e.available(clock.now)


def test_connect_failures_have_their_own_count() -> None:
    clock = Clock()
    svc = service(eps(4), clock, outlier=OUTLIER)
    e = svc.endpoints[0]
    fail(e, clock, 2, "5xx")
    fail(e, clock, 1, "failure")
    assert e.available(clock.now)
    fail(e, clock, 1, "failure")
    assert not e.available(clock.now)


def test_ejection_time_multiplies_with_the_count_up_to_the_cap_and_the_count_decays() -> None:
    clock = Clock()
    svc = service(eps(4), clock, outlier=OUTLIER)
    e = svc.endpoints[0]
    durations = []
    for _ in range(4):
        fail(e, clock, 3)
        durations.append(e.ejected_until - clock.now)
        clock.now = e.ejected_until
    assert durations == [10.0, 20.0, 25.0, 25.0]
    assert e.ejection_count(clock.now) == 4
    clock.now += 25.0  # two base times without an ejection: the count drops by two
    assert e.ejection_count(clock.now) == 2
    fail(e, clock, 3)
    assert e.ejected_until - clock.now == 25.0  # 3 * 10, capped
    clock.now = e.ejected_until + 1000
    fail(e, clock, 3)
    assert e.ejected_until - clock.now == 10.0


def test_no_more_than_the_maximum_percentage_is_ejected_at_once() -> None:
    clock = Clock()
    svc = service(eps(5), clock, outlier=OUTLIER)  # 50 % of 5: two at most
    first, second, third = svc.endpoints[:3]
    for e in (first, second, third):
        fail(e, clock, 3)
    assert [e.available(clock.now) for e in svc.endpoints] == [False, False, True, True, True]
    assert svc.ejections_total == 2
    clock.now = first.ejected_until  # one comes back: the next failure of the third ejects it
    fail(third, clock, 1)
    assert not third.available(clock.now)


def test_a_single_endpoint_is_never_ejected_and_outlier_off_never_ejects() -> None:
    clock = Clock()
    alone = service(eps(1), clock, outlier=OUTLIER).endpoints[0]
    fail(alone, clock, 50)
    assert alone.available(clock.now)
    off = service(eps(4), clock, outlier=None).endpoints[0]
    fail(off, clock, 50, "failure")
    assert off.available(clock.now)


def test_attempts_in_flight_when_ejected_do_not_extend_the_ejection() -> None:
    clock = Clock()
    e = service(eps(4), clock, outlier=OUTLIER).endpoints[0]
    for _ in range(5):
        e.begin()
    for _ in range(3):
        e.end(0.01, "5xx", clock.now)
    until = e.ejected_until
    clock.now += 1
    e.end(0.01, "5xx", clock.now)
    e.end(0.01, "5xx", clock.now)
    assert (e.ejected_until, e.ejections, e.in_flight) == (until, 1, 0)


def test_an_endpoint_back_from_ejection_ramps_up_with_slow_start() -> None:
    clock = Clock()
    svc = service(eps(2), clock, outlier=OutlierDetection(consecutive_5xx=1, max_ejected_percent=50),
                  balancer=Balancer(policy="round_robin", slow_start=20.0))
    e = svc.endpoints[0]
    fail(e, clock, 1)
    clock.now = e.ejected_until
    assert e.ramp(clock.now) == pytest.approx(0.1)
    clock.now += 10
    assert e.ramp(clock.now) == pytest.approx(0.55)
    picks = [svc.pick() for _ in range(155)]
    assert picks.count(e) == pytest.approx(55, abs=1)


# -- active health verdicts -----------------------------------------------------------------------

def test_health_checks_take_an_endpoint_out_and_bring_it_back_with_thresholds() -> None:
    clock = Clock()
    svc = service(eps(3), clock, health_check=HealthCheck(healthy_threshold=2, unhealthy_threshold=3))
    e = svc.endpoints[0]
    assert e.healthy  # nothing checked yet: a reload does not take every endpoint out
    e.report_check(True, clock.now)
    for _ in range(2):
        e.report_check(False, clock.now)
    assert e.healthy
    e.report_check(False, clock.now)
    assert not e.healthy
    assert e not in {svc.pick() for _ in range(50)}
    e.report_check(True, clock.now)
    assert not e.healthy
    e.report_check(True, clock.now)
    assert e.healthy


def test_the_first_failed_check_marks_an_endpoint_unhealthy_at_once() -> None:
    clock = Clock()
    e = service(eps(3), clock, health_check=HealthCheck(unhealthy_threshold=3)).endpoints[0]
    e.report_check(False, clock.now)
    assert not e.healthy


def test_turning_checks_off_makes_every_endpoint_healthy_again() -> None:
    clock = Clock()
    upstreams = Upstreams(clock, random.Random(1))
    checked = Svc("orders", eps(2), health_check=HealthCheck())
    upstreams.update(Table({"orders": checked}))  # type: ignore[arg-type]
    svc = upstreams.get("orders")
    assert svc is not None
    svc.endpoints[0].report_check(False, clock.now)
    assert not svc.endpoints[0].healthy
    upstreams.update(Table({"orders": Svc("orders", eps(2))}))  # type: ignore[arg-type]
    assert svc.endpoints[0].healthy
    svc.endpoints[0].report_check(False, clock.now)  # a late result of a stopped check
    assert svc.endpoints[0].healthy


# -- circuit breaker ------------------------------------------------------------------------------

def test_admit_refuses_and_counts_once_max_requests_are_in_flight() -> None:
    clock = Clock()
    svc = service(eps(2), clock, circuit_breaker=CircuitBreaker(max_requests=3, max_pending=1))
    for _ in range(3):
        assert svc.admit()
        svc.pick().begin()
    assert not svc.admit()
    assert not svc.admit()
    assert (svc.in_flight, svc.circuit_open_total) == (3, 2)
    busy = max(svc.endpoints, key=lambda e: e.in_flight)
    busy.end(0.01, "ok", clock.now)
    assert svc.admit()


def test_pending_connections_are_capped_and_released() -> None:
    clock = Clock()
    svc = service(eps(2), clock, circuit_breaker=CircuitBreaker(max_pending=2))
    assert svc.begin_pending() and svc.begin_pending()
    assert not svc.begin_pending()
    assert (svc.pending, svc.circuit_open_total) == (2, 1)
    svc.end_pending()
    assert svc.begin_pending()


# -- the registry across tables -------------------------------------------------------------------

def test_update_keeps_state_by_service_name_and_endpoint_url() -> None:
    clock = Clock()
    upstreams = Upstreams(clock, random.Random(1))
    upstreams.update(Table({"orders": Svc("orders", eps(3)), "legacy": Svc("legacy", eps(1))}))  # type: ignore[arg-type]
    orders = upstreams.get("orders")
    assert orders is not None
    kept = orders.endpoints[1]
    kept.begin()
    ok(kept, clock, 0.04)
    orders.circuit_open_total = 5
    # the first endpoint goes, a fourth comes, legacy goes, billing comes
    upstreams.update(Table({  # type: ignore[arg-type]
        "orders": Svc("orders", eps(4)[1:], balancer=Balancer(policy="round_robin")),
        "billing": Svc("billing", eps(2))}))
    assert upstreams.get("orders") is orders
    assert [host(e) for e in orders.endpoints] == ["10.0.0.2", "10.0.0.3", "10.0.0.4"]
    assert orders.endpoints[0] is kept
    assert (kept.in_flight, kept.ewma, orders.in_flight, orders.circuit_open_total) == (1, 0.04, 1, 5)
    assert orders.balancer.policy == "round_robin"
    assert sorted(s.name for s in upstreams.services()) == ["billing", "orders"]


def test_slow_start_applies_to_endpoints_added_later_not_to_new_services() -> None:
    clock = Clock()
    upstreams = Upstreams(clock, random.Random(1))
    ramp = Balancer(slow_start=30.0)
    upstreams.update(Table({"orders": Svc("orders", eps(2), balancer=ramp)}))  # type: ignore[arg-type]
    upstreams.update(Table({"orders": Svc("orders", eps(3), balancer=ramp),  # type: ignore[arg-type]
                            "billing": Svc("billing", eps(2), balancer=ramp)}))
    orders, billing = upstreams.get("orders"), upstreams.get("billing")
    assert orders is not None and billing is not None
    assert [e.ramp_end for e in orders.endpoints] == [0.0, 0.0, clock.now + 30.0]
    assert [e.ramp_end for e in billing.endpoints] == [0.0, 0.0]


def test_a_service_the_registry_has_not_seen_is_created_on_first_use() -> None:
    clock = Clock()
    upstreams = Upstreams(clock, random.Random(1))
    compiled = Svc("orders", eps(2))
    state = upstreams.service(compiled)  # type: ignore[arg-type]
    assert isinstance(state, ServiceState) and len(state.endpoints) == 2
    assert upstreams.service(compiled) is state  # type: ignore[arg-type]


def test_a_compiled_table_brings_its_policies_and_weights() -> None:
    document = Document.parse(yaml.safe_load("""
services:
  - name: orders
    endpoints: [http://10.0.0.7:9000, {url: "http://10.0.0.8:9000", weight: 3}]
    balancer: {policy: round_robin, slow_start: 20s}
    health_check: {path: /ready}
    outlier: false
    circuit_breaker: {max_requests: 7}
routes:
  - {name: orders, match: {path_prefix: /orders}, service: orders}
"""))
    table = compile_document(document, 1)
    upstreams = Upstreams(Clock(), random.Random(1))
    upstreams.update(table)
    state = upstreams.service(table.services["orders"])
    assert [(e.endpoint.url, e.weight) for e in state.endpoints] == [
        ("http://10.0.0.7:9000", 1), ("http://10.0.0.8:9000", 3)]
    assert (state.balancer.policy, state.balancer.slow_start) == ("round_robin", 20.0)
    assert state.health_check is not None and state.health_check.path == "/ready"
    assert state.outlier is None
    assert state.circuit_breaker.max_requests == 7
    assert [host(state.pick()) for _ in range(4)].count("10.0.0.8") == 3


def test_a_duplicate_endpoint_url_is_one_endpoint() -> None:
    clock = Clock()
    svc = service((eps(2)[0], eps(2)[0], eps(2)[1]), clock)
    assert len(svc.endpoints) == 2


# -- snapshot -------------------------------------------------------------------------------------

def test_snapshot_shows_health_ejection_latency_and_in_flight_as_json() -> None:
    clock = Clock()
    svc = service(eps(3), clock, outlier=OUTLIER, health_check=HealthCheck(),
                  balancer=Balancer(slow_start=10.0))
    a, b, c = svc.endpoints
    ok(a, clock, 0.0123)
    a.begin()
    fail(b, clock, 3)
    c.report_check(False, clock.now)
    svc.admit()
    snap = json.loads(json.dumps(svc.snapshot(clock.now)))
    assert {k: v for k, v in snap.items() if k != "endpoints"} == {
        "name": "orders", "balancer": "ewma", "in_flight": 1, "pending": 0, "max_requests": 1024,
        "max_pending": 1024, "ejections_total": 1, "circuit_open_total": 0, "panic_total": 0}
    assert snap["endpoints"][0] == {
        "url": "http://10.0.0.1:80", "weight": 1, "state": "up", "healthy": True, "ejected": False,
        "ejected_for": None, "ejections": 0, "in_flight": 1, "latency_ewma_ms": 12.3,
        "slow_start": None, "consecutive_5xx": 0, "consecutive_failures": 0}
    assert snap["endpoints"][1]["state"] == "ejected"
    assert snap["endpoints"][1]["ejected_for"] == 10.0
    assert snap["endpoints"][1]["ejections"] == 1
    assert snap["endpoints"][2]["state"] == "unhealthy"
    assert snap["endpoints"][2]["latency_ewma_ms"] is None
    clock.now = b.ejected_until + 5
    assert svc.snapshot(clock.now)["endpoints"][1]["slow_start"] == 0.55  # type: ignore[index]
