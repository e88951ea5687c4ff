"""Live state of services and their endpoints, kept across route-table swaps, one registry per process.

`Upstreams.update(table)` reconciles the registry with a new route table: services by name and
endpoints by URL keep their state (latency, in-flight count, ejection, health), new ones are created,
removed ones dropped. The request path then does, with no `await` between the first three:

    state = upstreams.service(route.service)      # one dict lookup
    if not state.admit(): ...                     # circuit breaker: 503 + Retry-After
    endpoint = state.pick(key, exclude=tried)     # NoEndpoint when the service has none
    endpoint.begin()
    ...                                           # forward
    endpoint.end(latency, "ok" | "5xx" | "failure", now)

Everything runs on the event loop thread of one process (the hot path is single-threaded), so
there are no locks; each worker process has its own registry and its own view of its endpoints.

Latency is a peak EWMA (Finagle/Linkerd): a sample above the estimate replaces it at once, one
below is blended in with weight 1 - exp(-elapsed / decay), and between samples the estimate read by
the balancer relaxes towards zero with the same time constant, so an endpoint that was slow is
tried again after a while instead of being starved forever. A failed attempt never lowers the
estimate: an endpoint that fails fast must not look fast.

Outlier detection is passive: `consecutive_5xx` 5xx answers, or `consecutive_failures` connect
failures, resets or timeouts, in a row (counted separately; a success resets both) eject the
endpoint for `base_ejection` * its ejection count, at most `max_ejection`. The count decays by one
for every `base_ejection` that passes without an ejection. No ejection happens while
floor(`max_ejected_percent` % of the endpoints) are already ejected.

Slow start: an endpoint added to a service that already had endpoints, or coming back from
ejection or from failing its health checks, gets a share that ramps linearly from 10 % to 100 %
over `balancer.slow_start` seconds.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Final, Literal

from gateway.core.errors import NoEndpoint
from gateway.upstream.balancer import Picker, make_picker
from routes.model import Endpoint
from routes.policies import Balancer, CircuitBreaker, HealthCheck, OutlierDetection

if TYPE_CHECKING:
    from routes.table import CompiledService, RouteTable

# failure: connect failure, reset, timeout, garbage. cancelled: the attempt ended for a reason that
# says nothing about the endpoint (the downstream went away, the request's own deadline cut the
# wait): only the in-flight counts change.
Outcome = Literal["ok", "5xx", "failure", "cancelled"]

# The latency estimate of an endpoint of a service that has no other endpoint to compare with.
DEFAULT_LATENCY: Final = 0.01
# Scores never go below this latency, so that in-flight counts still order endpoints whose
# estimates have decayed to nothing.
LATENCY_FLOOR: Final = 1e-5
MIN_DECAY: Final = 0.001
SLOW_START_MIN: Final = 0.1  # the share of an endpoint at the start of its ramp


def _policies(compiled: CompiledService) -> tuple[Balancer, HealthCheck | None, OutlierDetection | None,
                                                   CircuitBreaker]:
    """A compiled service's balancer, health check, outlier detection and circuit breaker.

    Read leniently (a missing attribute is the default) so that callers and tests holding
    service-like objects without every policy still work; the one place to change if that goes.
    """
    return (getattr(compiled, "balancer", None) or Balancer(), getattr(compiled, "health_check", None),
            getattr(compiled, "outlier", OutlierDetection()),
            getattr(compiled, "circuit_breaker", None) or CircuitBreaker())


def _weight(endpoint: Endpoint) -> int:
    return int(getattr(endpoint, "weight", 1))


class EndpointState:
    """One endpoint of one service; survives table swaps while the service keeps its URL.

    `ewma` is the latency estimate in seconds (stored, not decayed) and `stamp` when it was last
    updated; `healthy` is the active checks' verdict (True when the service has none);
    `ejected_until` is the monotonic time an ejection ends (0: never ejected); the slow-start ramp
    runs from `ramp_start` to `ramp_end`.
    """

    __slots__ = ("_checked", "_checks_bad", "_checks_ok", "_failures", "_fivexx", "decay", "ejected_until",
                 "ejections", "endpoint", "ewma", "healthy", "in_flight", "ramp_end", "ramp_start",
                 "rr_current", "samples", "service", "stamp", "weight")

    def __init__(self, endpoint: Endpoint, service: ServiceState, now: float, latency: float,
                 weight: int = 1, decay: float = 10.0) -> None:
        self.endpoint = endpoint
        self.service = service
        self.weight = weight
        self.decay = max(decay, MIN_DECAY)
        self.in_flight = 0
        self.ewma = latency
        self.stamp = now
        self.samples = 0
        self.healthy = True
        self.ejected_until = 0.0
        self.ejections = 0
        self.ramp_start = 0.0
        self.ramp_end = 0.0
        self.rr_current = 0.0
        self._fivexx = 0
        self._failures = 0
        self._checks_ok = 0
        self._checks_bad = 0
        self._checked = False

    # -- the request path ------------------------------------------------------------------------

    def begin(self) -> None:
        """An attempt goes to this endpoint (counts towards the service's circuit breaker)."""
        self.in_flight += 1
        self.service.in_flight += 1

    def end(self, latency: float | None, outcome: Outcome, now: float) -> None:
        """The attempt begun by `begin()` ended (call exactly once). `latency`: seconds from sending to
        the response head (None when there is none, e.g. the connection was refused; for a timeout
        pass the time waited, so that it counts as a peak); `now`: the clock of `Upstreams`."""
        self.in_flight -= 1
        service = self.service
        service.in_flight -= 1
        if outcome == "ok":
            if latency is not None:
                self._observe(latency, now)
            if self._fivexx or self._failures:
                self._fivexx = self._failures = 0
            return
        if outcome == "cancelled":
            return
        # A failure never lowers the estimate, and refreshes it so that it does not decay.
        self._observe(self.ewma if latency is None or latency < self.ewma else latency, now)
        outlier = service.outlier
        if outlier is None or self.ejected_until > now:
            return  # off, or already ejected: attempts that were in flight do not extend it
        if outcome == "5xx":
            self._fivexx += 1
        else:
            self._failures += 1
        if ((0 < outlier.consecutive_5xx <= self._fivexx)
                or (0 < outlier.consecutive_failures <= self._failures)) and service.may_eject(now):
            self._eject(outlier, now)
            service.ejections_total += 1

    def _eject(self, outlier: OutlierDetection, now: float) -> None:
        count = self.ejection_count(now) + 1
        self.ejections = count
        self.ejected_until = now + min(outlier.base_ejection * count, outlier.max_ejection)
        self._fivexx = self._failures = 0
        # Back from ejection it ramps up again (a no-op without slow start).
        self.start_ramp(self.ejected_until)

    def _observe(self, rtt: float, now: float) -> None:
        if self.samples == 0 or rtt >= self.ewma:
            self.ewma = rtt  # the first sample replaces the neutral start value; a peak replaces at once
        else:
            elapsed = now - self.stamp
            keep = math.exp(-elapsed / self.decay) if elapsed > 0 else 1.0
            self.ewma = self.ewma * keep + rtt * (1.0 - keep)
        self.stamp = now
        self.samples += 1

    def latency(self, now: float) -> float:
        """The latency estimate as the balancer reads it at `now`: decayed since the last sample."""
        elapsed = now - self.stamp
        if elapsed > 0:
            return self.ewma * math.exp(-elapsed / self.decay)
        return self.ewma

    def score(self, now: float) -> float:
        """The balancer's cost of sending one more request here (lower is better): the decayed latency
        estimate * (in-flight + 1), divided by the slow-start share while ramping."""
        cost = self.ewma
        elapsed = now - self.stamp
        if elapsed > 0:
            cost *= math.exp(-elapsed / self.decay)  # inlined latency(): this is the hot path
        if cost < LATENCY_FLOOR:
            cost = LATENCY_FLOOR
        cost *= self.in_flight + 1
        if now < self.ramp_end:
            cost /= self.ramp(now)
        return cost

    def ramp(self, now: float) -> float:
        """The slow-start share at `now` (call only while `now < ramp_end`): 0.1 rising to 1."""
        start = self.ramp_start
        if now <= start:
            return SLOW_START_MIN
        return SLOW_START_MIN + (1.0 - SLOW_START_MIN) * (now - start) / (self.ramp_end - start)

    def available(self, now: float) -> bool:
        return self.healthy and self.ejected_until <= now

    def start_ramp(self, start: float) -> None:
        """Begin a slow-start ramp at `start` (a no-op when the service has no slow start)."""
        span = self.service.balancer.slow_start
        if span > 0:
            self.ramp_start = start
            self.ramp_end = start + span

    # -- health ----------------------------------------------------------------------------------

    def report_check(self, ok: bool, now: float) -> None:
        """The result of one active health check. Thresholds come from the service's `health_check`.

        An endpoint starts healthy (a reload must not take every endpoint out until its first
        check), but the first check that fails marks it unhealthy at once: nothing ever vouched
        for it. After that `unhealthy_threshold` failures in a row take it out and
        `healthy_threshold` successes in a row bring it back, with slow start.
        """
        policy = self.service.health_check
        if policy is None:
            return
        if ok:
            self._checks_bad = 0
            self._checks_ok += 1
            if not self.healthy and self._checks_ok >= policy.healthy_threshold:
                self.healthy = True
                self.start_ramp(now)
        else:
            self._checks_ok = 0
            self._checks_bad += 1
            if self.healthy and (not self._checked or self._checks_bad >= policy.unhealthy_threshold):
                self.healthy = False
        self._checked = True

    def reset_health(self) -> None:
        """Forget check results (the service's health checks were turned off or changed)."""
        self.healthy = True
        self._checks_ok = self._checks_bad = 0
        self._checked = False

    # -- ejection --------------------------------------------------------------------------------

    def ejection_count(self, now: float) -> int:
        """The ejection count after its decay: one less per `base_ejection` without an ejection."""
        count = self.ejections
        outlier = self.service.outlier
        if count and outlier is not None and outlier.base_ejection > 0 and now > self.ejected_until:
            count = max(0, count - int((now - self.ejected_until) // outlier.base_ejection))
        return count

    def snapshot(self, now: float) -> dict[str, object]:
        """This endpoint as JSON (`GET /api/v1/services/{name}`)."""
        ejected = self.ejected_until > now
        return {
            "url": self.endpoint.url,
            "weight": self.weight,
            "state": "ejected" if ejected else "up" if self.healthy else "unhealthy",
            "healthy": self.healthy,
            "ejected": ejected,
            "ejected_for": round(self.ejected_until - now, 3) if ejected else None,
            "ejections": self.ejection_count(now),
            "in_flight": self.in_flight,
            "latency_ewma_ms": round(self.ewma * 1000, 3) if self.samples else None,
            "slow_start": round(self.ramp(now), 3) if now < self.ramp_end else None,
            "consecutive_5xx": self._fivexx,
            "consecutive_failures": self._failures,
        }

    def __repr__(self) -> str:
        return f"EndpointState({self.endpoint.url!r}, in_flight={self.in_flight}, ewma={self.ewma:.4f})"


class ServiceState:
    """One service's endpoints, balancer and circuit breaker in this process.

    `in_flight` counts attempts between `EndpointState.begin()` and `end()`; `pending` counts
    attempts waiting for a new upstream connection, between `begin_pending()` and `end_pending()`.
    `admit()` only checks (begin() takes the slot), so the proxy calls admit(), pick() and begin()
    with no `await` in between.
    """

    __slots__ = ("_by_url", "_clock", "_picker", "_rand", "_shape", "balancer", "circuit_breaker",
                 "circuit_open_total", "ejections_total", "endpoints", "health_check", "in_flight",
                 "name", "outlier", "panic_total", "pending")

    def __init__(self, name: str, clock: Callable[[], float], rand: random.Random) -> None:
        self.name = name
        self._clock = clock
        self._rand = rand
        self.endpoints: tuple[EndpointState, ...] = ()
        self._by_url: dict[str, EndpointState] = {}
        self._shape: object = None
        self._picker: Picker = make_picker(Balancer(), (), rand)
        self.balancer = Balancer()
        self.health_check: HealthCheck | None = None
        self.outlier: OutlierDetection | None = OutlierDetection()
        self.circuit_breaker = CircuitBreaker()
        self.in_flight = 0
        self.pending = 0
        self.ejections_total = 0
        self.circuit_open_total = 0
        self.panic_total = 0

    def configure(self, compiled: CompiledService, now: float) -> None:
        """Take the compiled service's endpoints and policies, keeping the state of endpoints by URL.

        New endpoints start with the median latency estimate of the others (so they get traffic
        without being flooded) and, when the service already had endpoints, with slow start.
        """
        balancer, self.health_check, self.outlier, self.circuit_breaker = _policies(compiled)
        self.balancer = balancer
        if self.health_check is None:
            # Checks turned off: their last verdicts no longer hold. (A changed check keeps them
            # until the new checks decide.)
            for state in self.endpoints:
                state.reset_health()
        shape = (tuple((e.url, _weight(e)) for e in compiled.endpoints), balancer)
        if shape == self._shape:
            for endpoint in compiled.endpoints:
                self._by_url[endpoint.url].endpoint = endpoint
            return
        warm_new = bool(self.endpoints)
        neutral = self._neutral_latency(now)
        decay = balancer.decay
        states: dict[str, EndpointState] = {}
        for endpoint in compiled.endpoints:
            url = endpoint.url
            if url in states:
                continue  # a duplicate URL is one endpoint
            known = self._by_url.get(url)
            if known is None:
                state = EndpointState(endpoint, self, now, neutral)
                if warm_new:
                    state.start_ramp(now)
            else:
                state = known
            state.endpoint = endpoint
            state.weight = _weight(endpoint)
            state.decay = max(decay, MIN_DECAY)
            states[url] = state
        self._by_url = states
        self.endpoints = tuple(states.values())
        self._shape = shape
        self._picker = make_picker(balancer, self.endpoints, self._rand)

    def _neutral_latency(self, now: float) -> float:
        if not self.endpoints:
            return DEFAULT_LATENCY
        return max(statistics.median(e.latency(now) for e in self.endpoints), LATENCY_FLOOR)

    def pick(self, key: bytes | None = None, exclude: Collection[EndpointState] = ()) -> EndpointState:
        """An endpoint for one attempt; `key` is the hash key (`balancer.hash_key`) for `hash`
        services, `exclude` the endpoints this request already tried (avoided when another is
        usable). Raises `NoEndpoint` only when the service has no endpoints at all."""
        endpoints = self.endpoints
        if len(endpoints) == 1:
            return endpoints[0]
        if not endpoints:
            raise NoEndpoint(f"service {self.name!r} has no endpoints")
        now = self._clock()
        chosen = self._picker.pick(endpoints, now, key, exclude)
        if not chosen.healthy or chosen.ejected_until > now:
            self.panic_total += 1
        return chosen

    def admit(self) -> bool:
        """Whether one more request may go to this service now; False (counted) when `max_requests`
        attempts are in flight: the proxy answers 503 with Retry-After instead of queueing."""
        if self.in_flight >= self.circuit_breaker.max_requests:
            self.circuit_open_total += 1
            return False
        return True

    def begin_pending(self) -> bool:
        """Before opening a new upstream connection: False (counted) when `max_pending` attempts are
        already waiting for one; otherwise counts this one until `end_pending()`."""
        if self.pending >= self.circuit_breaker.max_pending:
            self.circuit_open_total += 1
            return False
        self.pending += 1
        return True

    def end_pending(self) -> None:
        """The connection attempt started by a successful `begin_pending()` finished (either way)."""
        self.pending -= 1

    def may_eject(self, now: float) -> bool:
        """Whether one more endpoint may be ejected: fewer than floor(`max_ejected_percent` % of the
        endpoints) are. When not, the endpoint keeps its counters and its next failure asks again."""
        outlier = self.outlier
        if outlier is None:
            return False
        limit = len(self.endpoints) * outlier.max_ejected_percent // 100
        return sum(1 for e in self.endpoints if e.ejected_until > now) < limit

    def snapshot(self, now: float) -> dict[str, object]:
        """This service's live state as JSON (`GET /api/v1/services/{name}`)."""
        return {
            "name": self.name,
            "balancer": self.balancer.policy,
            "in_flight": self.in_flight,
            "pending": self.pending,
            "max_requests": self.circuit_breaker.max_requests,
            "max_pending": self.circuit_breaker.max_pending,
            "ejections_total": self.ejections_total,
            "circuit_open_total": self.circuit_open_total,
            "panic_total": self.panic_total,
            "endpoints": [e.snapshot(now) for e in self.endpoints],
        }

    def __repr__(self) -> str:
        return f"ServiceState({self.name!r}, {len(self.endpoints)} endpoints, in_flight={self.in_flight})"


class Upstreams:
    """The registry of service and endpoint state of one serving process.

    `update(table)` after each table swap, on the event loop thread. A request that still reads the
    previous table meanwhile gets the state of the same service name; a service the registry does
    not know yet (a request on a new table before `update`) is created on first use.
    """

    __slots__ = ("_clock", "_rand", "_services")

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 rand: random.Random | None = None) -> None:
        self._clock = clock
        self._rand = rand if rand is not None else random.Random()
        self._services: dict[str, ServiceState] = {}

    @property
    def clock(self) -> Callable[[], float]:
        """The clock whose readings `EndpointState.end(..., now)` and `report_check` expect."""
        return self._clock

    def update(self, table: RouteTable) -> None:
        """Reconcile with a new route table by service name and endpoint URL."""
        now = self._clock()
        services: dict[str, ServiceState] = {}
        for compiled in table.services.values():
            state = self._services.get(compiled.name)
            if state is None:
                state = ServiceState(compiled.name, self._clock, self._rand)
            state.configure(compiled, now)
            services[compiled.name] = state
        self._services = services

    def service(self, compiled: CompiledService) -> ServiceState:
        """The state of a compiled service (hot path: one dict lookup)."""
        state = self._services.get(compiled.name)
        if state is None:
            state = ServiceState(compiled.name, self._clock, self._rand)
            state.configure(compiled, self._clock())
            self._services[compiled.name] = state
        return state

    def get(self, name: str) -> ServiceState | None:
        return self._services.get(name)

    def services(self) -> list[ServiceState]:
        return list(self._services.values())
