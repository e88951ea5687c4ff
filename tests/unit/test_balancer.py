"""The balancers (gateway/upstream/balancer.py) on a simulated clock with seeded randomness.

A discrete-event simulation sends requests at a steady rate to a `ServiceState`; each request
takes its endpoint's current latency, then `end()`s. What is asserted is what an operator would
see: where the traffic goes.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.errors import NoEndpoint
from gateway.upstream.balancer import POINTS_PER_WEIGHT, hash_key
from gateway.upstream.endpoints import EndpointState, ServiceState, Upstreams
from routes.policies import Balancer, CircuitBreaker, HashOn, HealthCheck, OutlierDetection


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Ep:
    """An endpoint as the registry reads it: a URL and a weight."""

    url: str
    weight: int = 1


@dataclass
class Svc:
    """A compiled service as the registry reads it (`routes.table.CompiledService`'s attributes)."""

    name: str
    endpoints: tuple[Ep, ...]
    balancer: Balancer = field(default_factory=Balancer)
    health_check: HealthCheck | None = None
    outlier: OutlierDetection | None = field(default_factory=OutlierDetection)
    circuit_breaker: CircuitBreaker = field(default_factory=CircuitBreaker)


@dataclass
class Table:
    services: dict[str, Svc]


def eps(n: int, weights: tuple[int, ...] | None = None) -> tuple[Ep, ...]:
    return tuple(Ep(f"http://10.0.0.{i + 1}:80", weights[i] if weights else 1) for i in range(n))


def service(endpoints: tuple[Ep, ...], clock: Clock, seed: int = 7, **policies: object) -> ServiceState:
    upstreams = Upstreams(clock, random.Random(seed))
    svc = Svc("orders", endpoints, **policies)  # type: ignore[arg-type]
    upstreams.update(Table({"orders": svc}))  # type: ignore[arg-type]
    return upstreams.service(svc)  # type: ignore[arg-type]


def host(state: EndpointState) -> str:
    return state.endpoint.url.split("//")[1].split(":")[0]


def simulate(svc: ServiceState, clock: Clock, requests: int, latency: Callable[[str], float],
             interval: float = 0.002) -> list[str]:
    """Send `requests` requests, one every `interval` s; each takes `latency(host)` s. Returns the
    hosts picked, in order; requests still running at the end are completed."""
    running: list[tuple[float, int, EndpointState, float]] = []
    picked: list[str] = []
    for n in range(requests):
        while running and running[0][0] <= clock.now:
            done, _, state, started = heapq.heappop(running)
            state.end(done - started, "ok", done)
        chosen = svc.pick()
        chosen.begin()
        picked.append(host(chosen))
        heapq.heappush(running, (clock.now + latency(host(chosen)), n, chosen, clock.now))
        clock.now += interval
    for done, _, state, started in sorted(running):
        clock.now = max(clock.now, done)
        state.end(done - started, "ok", done)
    return picked


# -- ewma: power of two choices over peak-EWMA latency * (in-flight + 1) ----------------------------

def test_traffic_leaves_an_endpoint_whose_latency_rises_tenfold() -> None:
    clock = Clock()
    svc = service(eps(4), clock)
    latencies = {"10.0.0.1": 0.010, "10.0.0.2": 0.010, "10.0.0.3": 0.010, "10.0.0.4": 0.010}
    before = Counter(simulate(svc, clock, 2000, latencies.__getitem__))
    assert all(350 < before[h] < 650 for h in latencies), before

    latencies["10.0.0.2"] = 0.100
    after = simulate(svc, clock, 400, latencies.__getitem__)
    # Until its first slow answer comes back (100 ms = 50 requests) only its growing in-flight
    # count holds it back; after that the peak EWMA takes it out of the rotation.
    assert after[:200].count("10.0.0.2") < 20, Counter(after[:200])
    assert after[200:].count("10.0.0.2") <= 2, Counter(after[200:])


def test_a_slow_endpoint_is_tried_again_once_its_estimate_has_decayed_and_wins_back_when_fast() -> None:
    clock = Clock()
    svc = service(eps(2), clock, balancer=Balancer(decay=10.0))
    latencies = {"10.0.0.1": 0.010, "10.0.0.2": 0.100}
    simulate(svc, clock, 500, latencies.__getitem__)
    latencies["10.0.0.2"] = 0.010
    # ln(100 ms / 10 ms) * 10 s = 23 s until the slow estimate decays below the fast one's.
    picks = simulate(svc, clock, 20_000, latencies.__getitem__, interval=0.005)
    late = Counter(picks[-4000:])
    assert late["10.0.0.2"] > 1000, late


def test_equal_endpoints_share_evenly() -> None:
    clock = Clock()
    svc = service(eps(5), clock)
    picks = Counter(simulate(svc, clock, 10_000, lambda h: 0.004))
    assert all(1700 < picks[h] < 2300 for h in picks), picks
    assert len(picks) == 5


def test_in_flight_counts_steer_traffic_away() -> None:
    clock = Clock()
    svc = service(eps(3), clock)
    simulate(svc, clock, 300, lambda h: 0.010)
    busy = svc.endpoints[0]
    for _ in range(4):
        busy.begin()
    picks = Counter(host(svc.pick()) for _ in range(300))
    assert picks[host(busy)] == 0, picks
    assert svc.in_flight == 4


def test_a_single_endpoint_needs_no_randomness() -> None:
    clock = Clock()
    svc = service(eps(1), clock)
    assert {svc.pick() for _ in range(10)} == {svc.endpoints[0]}


def test_a_service_without_endpoints_raises_no_endpoint() -> None:
    with pytest.raises(NoEndpoint, match="orders"):
        service((), Clock()).pick()


def test_a_new_endpoint_starts_at_the_median_latency_and_gets_traffic() -> None:
    clock = Clock()
    upstreams = Upstreams(clock, random.Random(3))
    latencies = {"10.0.0.1": 0.010, "10.0.0.2": 0.020, "10.0.0.3": 0.030, "10.0.0.4": 0.020}
    upstreams.update(Table({"orders": Svc("orders", eps(3))}))  # type: ignore[arg-type]
    svc = upstreams.get("orders")
    assert svc is not None
    simulate(svc, clock, 600, latencies.__getitem__, interval=0.01)
    upstreams.update(Table({"orders": Svc("orders", eps(4))}))  # type: ignore[arg-type]
    new = svc.endpoints[3]
    assert new.latency(clock.now) == pytest.approx(svc.endpoints[1].latency(clock.now), rel=0.05)
    picks = Counter(simulate(svc, clock, 1000, latencies.__getitem__, interval=0.01))
    assert picks["10.0.0.4"] > 150, picks


# -- exclusion and panic mode ---------------------------------------------------------------------

@pytest.mark.parametrize("policy", ["ewma", "round_robin", "hash"])
def test_endpoints_already_tried_are_avoided_while_another_exists(policy: str) -> None:
    clock = Clock()
    svc = service(eps(3), clock, balancer=Balancer(policy=policy, hash_on=HashOn(header="x-user")))
    tried = [svc.endpoints[0]]
    for key in (None, b"alice", b"bob", b"carol"):
        assert all(svc.pick(key, exclude=tried) is not tried[0] for _ in range(50))
    tried = list(svc.endpoints)
    assert svc.pick(b"alice", exclude=tried) in tried  # nothing else left: any endpoint


@pytest.mark.parametrize("policy", ["ewma", "round_robin", "hash"])
def test_panic_mode_when_every_endpoint_is_out(policy: str) -> None:
    clock = Clock()
    svc = service(eps(3), clock, balancer=Balancer(policy=policy, hash_on=HashOn(client=True)))
    for state in svc.endpoints:
        state.ejected_until = clock.now + 30
    svc.endpoints[2].healthy = False
    picks = {svc.pick(b"10.1.1.1") for _ in range(60)}
    assert picks  # never NoEndpoint while the service has endpoints
    assert svc.panic_total == 60
    # the untried ones are still preferred in panic
    assert all(svc.pick(None, exclude=svc.endpoints[:2]) is svc.endpoints[2] for _ in range(20))


def test_unavailable_endpoints_are_skipped_before_panic() -> None:
    clock = Clock()
    svc = service(eps(3), clock)
    svc.endpoints[0].ejected_until = clock.now + 30
    svc.endpoints[1].healthy = False
    assert {svc.pick() for _ in range(50)} == {svc.endpoints[2]}
    assert svc.panic_total == 0
    # a request that already tried the only available one goes back to it rather than to a broken one
    assert svc.pick(exclude=[svc.endpoints[2]]) is svc.endpoints[2]


# -- round robin ----------------------------------------------------------------------------------

def test_weighted_round_robin_follows_the_weights_exactly_and_smoothly() -> None:
    clock = Clock()
    svc = service(eps(3, (5, 1, 1)), clock, balancer=Balancer(policy="round_robin"))
    picks = [host(svc.pick()) for _ in range(70)]
    # nginx's smooth sequence: the heavy endpoint interleaved, not in a run of five
    assert picks[:7] == ["10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.3", "10.0.0.1",
                         "10.0.0.1"]
    for cycle in range(10):
        counts = Counter(picks[cycle * 7:(cycle + 1) * 7])
        assert counts == {"10.0.0.1": 5, "10.0.0.2": 1, "10.0.0.3": 1}


def test_round_robin_skips_an_ejected_endpoint_and_takes_it_back() -> None:
    clock = Clock()
    svc = service(eps(3), clock, balancer=Balancer(policy="round_robin"))
    svc.endpoints[1].ejected_until = clock.now + 10
    assert Counter(host(svc.pick()) for _ in range(10)) == {"10.0.0.1": 5, "10.0.0.3": 5}
    clock.now += 10
    assert Counter(host(svc.pick()) for _ in range(9)) == {"10.0.0.1": 3, "10.0.0.2": 3, "10.0.0.3": 3}


# -- consistent hashing ---------------------------------------------------------------------------

def keys(n: int) -> list[bytes]:
    return [f"user-{i}".encode() for i in range(n)]


def test_a_key_sticks_to_its_endpoint_and_keys_spread() -> None:
    clock = Clock()
    svc = service(eps(3), clock, balancer=Balancer(policy="hash", hash_on=HashOn(header="x-user")))
    owner = {k: svc.pick(k) for k in keys(3000)}
    assert all(svc.pick(k) is owner[k] for k in keys(3000))
    spread = Counter(host(e) for e in owner.values())
    assert all(700 < n < 1300 for n in spread.values()), spread


def test_adding_an_endpoint_moves_about_one_key_in_n_and_only_to_it() -> None:
    clock = Clock()
    upstreams = Upstreams(clock, random.Random(1))
    hashing = Balancer(policy="hash", hash_on=HashOn(cookie="session"))
    upstreams.update(Table({"orders": Svc("orders", eps(3), balancer=hashing)}))  # type: ignore[arg-type]
    svc = upstreams.get("orders")
    assert svc is not None
    before = {k: host(svc.pick(k)) for k in keys(4000)}
    upstreams.update(Table({"orders": Svc("orders", eps(4), balancer=hashing)}))  # type: ignore[arg-type]
    after = {k: host(svc.pick(k)) for k in keys(4000)}
    moved = [k for k in before if before[k] != after[k]]
    assert 0.17 < len(moved) / 4000 < 0.33
    assert {after[k] for k in moved} == {"10.0.0.4"}
    # and removing it again puts every key back where it was
    upstreams.update(Table({"orders": Svc("orders", eps(3), balancer=hashing)}))  # type: ignore[arg-type]
    assert {k: host(svc.pick(k)) for k in keys(4000)} == before


def test_weights_scale_a_hash_endpoints_share_of_keys() -> None:
    clock = Clock()
    svc = service(eps(2, (3, 1)), clock, balancer=Balancer(policy="hash", hash_on=HashOn(client=True)))
    spread = Counter(host(svc.pick(k)) for k in keys(4000))
    assert 2600 < spread["10.0.0.1"] < 3400, spread


def test_an_ejected_key_owner_hands_its_keys_to_the_next_on_the_ring_until_it_returns() -> None:
    clock = Clock()
    svc = service(eps(3), clock, balancer=Balancer(policy="hash", hash_on=HashOn(client=True)))
    owner = {k: svc.pick(k) for k in keys(600)}
    out = svc.endpoints[0]
    out.ejected_until = clock.now + 5
    during = {k: svc.pick(k) for k in keys(600)}
    assert out not in during.values()
    assert all(during[k] is owner[k] for k in owner if owner[k] is not out)  # the others keep theirs
    clock.now += 5
    assert {k: svc.pick(k) for k in keys(600)} == owner


def test_a_request_without_a_key_is_balanced_by_ewma() -> None:
    clock = Clock()
    svc = service(eps(3), clock, balancer=Balancer(policy="hash", hash_on=HashOn(header="x-user")))
    assert len(Counter(simulate(svc, clock, 600, lambda h: 0.01))) == 3


def test_the_ring_has_points_per_unit_of_weight() -> None:
    clock = Clock()
    svc = service(eps(2, (2, 1)), clock, balancer=Balancer(policy="hash", hash_on=HashOn(client=True)))
    assert len(svc._picker._hashes) == 3 * POINTS_PER_WEIGHT  # type: ignore[attr-defined]


def test_hash_key_reads_the_header_cookie_or_client() -> None:
    headers = [(b"host", b"shop"), (b"x-user", b"alice"), (b"cookie", b"a=1; session=s3cr3t; b=2")]
    assert hash_key(HashOn(header="X-User"), headers, "10.1.1.1") == b"alice"
    assert hash_key(HashOn(header="x-tenant"), headers, "10.1.1.1") is None
    assert hash_key(HashOn(cookie="session"), headers, None) == b"s3cr3t"
    assert hash_key(HashOn(cookie="other"), headers, None) is None
    assert hash_key(HashOn(client=True), headers, "10.1.1.1") == b"10.1.1.1"
    assert hash_key(HashOn(client=True), headers, None) is None
    assert hash_key(HashOn(), headers, "10.1.1.1") is None


# -- slow start -----------------------------------------------------------------------------------

def test_round_robin_slow_start_ramps_a_new_endpoints_weight_from_a_tenth() -> None:
    clock = Clock()
    upstreams = Upstreams(clock, random.Random(1))
    ramp = Balancer(policy="round_robin", slow_start=60.0)
    upstreams.update(Table({"orders": Svc("orders", eps(2), balancer=ramp)}))  # type: ignore[arg-type]
    svc = upstreams.get("orders")
    assert svc is not None
    assert all(e.ramp_end == 0.0 for e in svc.endpoints)  # no ramp for the first table
    upstreams.update(Table({"orders": Svc("orders", eps(3), balancer=ramp)}))  # type: ignore[arg-type]

    def share_of_new(picks: int = 2000) -> float:
        return Counter(host(svc.pick()) for _ in range(picks))["10.0.0.3"] / picks

    assert share_of_new() == pytest.approx(0.1 / 2.1, abs=0.01)
    clock.now += 30
    assert share_of_new() == pytest.approx(0.55 / 2.55, abs=0.01)
    clock.now += 30
    assert share_of_new() == pytest.approx(1 / 3, abs=0.01)


def test_ewma_slow_start_holds_a_new_endpoint_back_then_lets_it_take_its_share() -> None:
    clock = Clock()
    upstreams = Upstreams(clock, random.Random(5))
    ramp = Balancer(slow_start=30.0)
    upstreams.update(Table({"orders": Svc("orders", eps(3), balancer=ramp)}))  # type: ignore[arg-type]
    svc = upstreams.get("orders")
    assert svc is not None
    simulate(svc, clock, 1000, lambda h: 0.02)
    upstreams.update(Table({"orders": Svc("orders", eps(4), balancer=ramp)}))  # type: ignore[arg-type]
    # 20 ms each at 1 ms intervals: about 20 requests in flight, 5 per endpoint
    shares = []
    for _ in range(4):
        picks = simulate(svc, clock, 10_000, lambda h: 0.02, interval=0.001)
        shares.append(picks.count("10.0.0.4") / len(picks))
    assert shares[0] < 0.12
    assert shares[0] < shares[1] < shares[2]
    assert shares[3] == pytest.approx(0.25, abs=0.04)


# -- properties -----------------------------------------------------------------------------------

@given(st.lists(st.integers(1, 20), min_size=2, max_size=6))
@settings(max_examples=60, deadline=None)
def test_smooth_round_robin_gives_each_endpoint_its_weight_in_every_cycle(weights: list[int]) -> None:
    svc = service(eps(len(weights), tuple(weights)), Clock(), balancer=Balancer(policy="round_robin"))
    cycle = sum(weights)
    for _ in range(3):
        counts = Counter(svc.pick() for _ in range(cycle))
        assert [counts[e] for e in svc.endpoints] == weights


@given(policy=st.sampled_from(["ewma", "round_robin", "hash"]),
       states=st.lists(st.tuples(st.booleans(), st.booleans(), st.booleans()), min_size=2, max_size=6),
       key=st.one_of(st.none(), st.binary(max_size=8)))
@settings(max_examples=200, deadline=None)
def test_a_pick_prefers_available_untried_endpoints_and_never_fails(
        policy: str, states: list[tuple[bool, bool, bool]], key: bytes | None) -> None:
    clock = Clock()
    svc = service(eps(len(states)), clock, balancer=Balancer(policy=policy, hash_on=HashOn(client=True)))
    tried = []
    for e, (healthy, ejected, was_tried) in zip(svc.endpoints, states, strict=True):
        e.healthy = healthy
        e.ejected_until = clock.now + 1 if ejected else 0.0
        if was_tried:
            tried.append(e)
    chosen = svc.pick(key, exclude=tried)
    available = [e for e in svc.endpoints if e.available(clock.now)]
    if [e for e in available if e not in tried]:
        assert chosen in available and chosen not in tried
    elif available:
        assert chosen in available
    elif len(tried) < len(svc.endpoints):
        assert chosen not in tried
