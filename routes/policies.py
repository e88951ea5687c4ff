"""Resilience policies of services and routes, as values (pure).

A service declares how its endpoints are balanced, health-checked, ejected and protected
(`balancer`, `health_check`, `outlier`, `circuit_breaker`) and the default `retries` and `timeouts`
of its routes; a route may override `retries` and `timeouts` (the whole block) and adds its own
`rate_limit`. Durations are seconds (floats) here; the document also takes "250ms", "5s", "2m".

Every policy has defaults that an operator would expect from a production gateway, chosen so that a
route that declares nothing pays nothing it does not use on the request path.
"""

from __future__ import annotations

from dataclasses import dataclass

BALANCER_POLICIES = ("ewma", "round_robin", "hash")
# Conditions under which an attempt may be retried (see RetryPolicy).
RETRY_ON = ("connect-failure", "reset", "timeout", "502", "503", "504")


@dataclass(frozen=True, slots=True)
class HashOn:
    """The key of consistent hashing: exactly one of a header, a cookie or the client address."""

    header: str | None = None
    cookie: str | None = None
    client: bool = False


@dataclass(frozen=True, slots=True)
class Balancer:
    """How a service picks an endpoint.

    `ewma` (default): power of two choices over peak-EWMA latency * (in-flight + 1);
    `round_robin`: smooth weighted round-robin over the endpoints' weights;
    `hash`: consistent hashing (a ring) on `hash_on`, so a key sticks to one endpoint while it lives.
    `slow_start`: seconds over which a new or recovered endpoint's share ramps up (0: off).
    `decay`: the time constant of the latency average, seconds.
    """

    policy: str = "ewma"
    hash_on: HashOn | None = None
    slow_start: float = 0.0
    decay: float = 10.0


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """Active HTTP checks of every endpoint of a service (absent: no active checks)."""

    path: str = "/healthz"
    interval: float = 5.0
    timeout: float = 1.0
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3
    statuses: tuple[int, ...] = (200,)
    # the Host header of a check; None: the endpoint's host:port
    host: str | None = None


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    """Passive ejection: an endpoint that fails in a row is left out for a while.

    `consecutive_5xx` 5xx answers or `consecutive_failures` connect failures, resets or timeouts in a
    row eject it for `base_ejection` * its ejection count, at most `max_ejection`; at most
    `max_ejected_percent` of a service's endpoints are ejected at once (rounded down), so outlier
    detection alone never empties a service.
    """

    consecutive_5xx: int = 5
    consecutive_failures: int = 5
    base_ejection: float = 30.0
    max_ejection: float = 300.0
    max_ejected_percent: int = 50


@dataclass(frozen=True, slots=True)
class CircuitBreaker:
    """Per service and per gateway process: beyond these, an immediate 503 with `Retry-After`.

    `max_requests`: requests in flight to the service; `max_pending`: requests waiting for an
    upstream connection to open.
    """

    max_requests: int = 1024
    max_pending: int = 1024


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When a failed attempt is tried again (on another endpoint when there is one).

    `attempts` counts the first try. Only idempotent methods, or requests carrying
    `idempotency_header` (empty: none), are retried; never after a response byte went downstream,
    never with a body larger than `max_body`. Backoff is exponential with full jitter between
    `backoff_base` and `backoff_max`; a `Retry-After` is honoured within the deadline. The budget:
    retries are at most `budget_percent` of the requests of the last 10 s, plus `budget_min`
    retries per second.
    """

    attempts: int = 2
    retry_on: tuple[str, ...] = ("connect-failure", "reset")
    statuses: tuple[int, ...] = ()
    idempotency_header: str = "Idempotency-Key"
    backoff_base: float = 0.025
    backoff_max: float = 0.25
    max_body: int = 64 * 1024
    budget_percent: float = 20.0
    budget_min: float = 3.0


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-attempt and total limits, seconds; None: the `[proxy]` setting (total: none)."""

    connect: float | None = None
    response: float | None = None
    idle: float | None = None
    total: float | None = None


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket per key: `requests` per `per` seconds, bursts of up to `burst`.

    The key is the client address, or the value of `header` (requests without it share one bucket).
    """

    requests: int
    per: float = 1.0
    burst: int | None = None  # None: `requests`
    header: str | None = None
