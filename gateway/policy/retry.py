"""When a failed attempt may be tried again, and how long to wait first (pure; clock and random injected).

The proxy asks, for each failed attempt of a request on a route with a `RetryPolicy`:
`condition(policy, failure)` (is this failure one the route retries on?), `method_may_retry(...)`
(is the request safe to send twice?), then `RetryBudget.try_spend()` (may one more retry go out
now without retries multiplying load in an outage?), and waits `backoff(...)` — or the upstream's
`Retry-After` (`retry_after()`) when that is longer and still fits the deadline. The rules that
need the proxy's own state (no response byte went downstream, the body fits `max_body`, another
endpoint is preferred) stay in the proxy.

The budget follows Linkerd's and Finagle's retry budgets: retries may be at most `percent` % of the
requests of a sliding window, plus a floor of `min_per_second` retries per second so that a route
with little traffic can still retry at all.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable, Container
from datetime import UTC
from functools import lru_cache
from typing import Final

from gateway.core.errors import (
    ConnectError,
    DeadlineExceeded,
    ProtocolError,
    UpstreamError,
    UpstreamReset,
    UpstreamTimeout,
    UpstreamTlsConfig,
)
from routes.grammar import IDEMPOTENT_METHODS as IDEMPOTENT_METHODS  # the forwarder reads it here
from routes.policies import RetryPolicy

Headers = list[tuple[bytes, bytes]]

# Failures that are not statuses (see routes.policies.RETRY_ON).
FAILURES: Final = ("connect-failure", "reset", "timeout")
_BUCKETS: Final = 10
# 2 ** 62 * any sane base is beyond every cap: no need to compute bigger powers (or overflow floats).
_MAX_DOUBLINGS: Final = 62


def backoff(retry: int, base: float, cap: float, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait before retry number `retry` (1 for the first retry): full jitter.

    Uniform in [0, min(cap, base * 2 ** (retry - 1))] ("Exponential Backoff And Jitter", AWS
    Architecture Blog, 2015): spreading retries over the whole interval, rather than around its end,
    is what keeps many clients that failed together from retrying together.
    """
    doublings = min(max(retry, 1) - 1, _MAX_DOUBLINGS)
    ceiling = min(cap, base * (1 << doublings))
    return max(ceiling, 0.0) * rand()


def retry_after(value: bytes, now: float | None = None) -> float | None:
    """The seconds from now that a `Retry-After` value asks for; None when it is not one.

    RFC 9110 section 10.2.3: delay-seconds or an HTTP-date. A negative delay or a date in the past
    is 0 (go now); anything else (empty, a fraction, garbage) is None, as if it were absent. `now`
    is wall-clock seconds since the epoch (`time.time()` by default), which HTTP-dates are in.
    """
    text = value.strip()
    if text.isdigit():
        # float(), not int(): a 5,000-digit value is a (huge) number, not an exception
        return float(text)
    if text.startswith(b"-") and text[1:].isdigit():
        return 0.0
    try:
        date = email.utils.parsedate_to_datetime(text.decode("ascii"))
    except (ValueError, TypeError, IndexError, OverflowError, UnicodeDecodeError):
        return None
    if date.tzinfo is None:  # "-0000" zones: RFC 5322 says UTC with no claim about the local zone
        date = date.replace(tzinfo=UTC)
    wall = time.time() if now is None else now
    return max(date.timestamp() - wall, 0.0)


@lru_cache(maxsize=64)
def _header_name(name: str) -> bytes:
    """The ASGI (lower-case bytes) form of a configured header name; a handful per process."""
    return name.lower().encode("latin-1")


def method_may_retry(method: str, headers: Headers, policy: RetryPolicy) -> bool:
    """Whether a request may be sent twice: an idempotent method, or an idempotency key.

    A POST or PATCH is retried only when it carries the policy's `idempotency_header` with a
    non-empty value (the upstream then deduplicates by it, as with Stripe's `Idempotency-Key`);
    with an empty header name in the policy such requests are never retried.
    """
    if method in IDEMPOTENT_METHODS:
        return True
    if not policy.idempotency_header:
        return False
    wanted = _header_name(policy.idempotency_header)
    return any(name == wanted and value.strip() for name, value in headers)


def condition(policy: RetryPolicy, failure: str | int) -> bool:
    """Whether the policy retries on this failure.

    `failure` is "connect-failure", "reset" (before any response byte), "timeout", or the status
    of an upstream answer: retried when the policy lists it in `retry_on` ("502", "503", "504")
    or in `statuses`.
    """
    if isinstance(failure, int):
        return failure in policy.statuses or str(failure) in policy.retry_on
    return failure in policy.retry_on


class RetryBudget:
    """Retries of one route in one process: at most `percent` % of the requests of the last
    `window` seconds, plus `min_per_second` retries per second.

    Counts live in a ring of ten buckets of `window / 10` seconds each, with running totals, so
    `request()` and `try_spend()` cost the same whatever the traffic (at most ten bucket resets
    when the clock jumped). The window slides by one bucket: it covers the current bucket and the
    nine before it, i.e. between 0.9 and 1.0 times `window` of history.
    """

    __slots__ = ("_clock", "_floor", "_ratio", "_requests", "_retries", "_tick", "_total_requests",
                 "_total_retries", "_width")

    def __init__(self, percent: float, min_per_second: float, window: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if window <= 0:
            raise ValueError("window must be positive")
        if percent < 0 or min_per_second < 0:
            raise ValueError("percent and min_per_second must not be negative")
        self._ratio = percent / 100.0
        self._floor = min_per_second * window
        self._width = window / _BUCKETS
        self._clock = clock
        self._requests = [0] * _BUCKETS
        self._retries = [0] * _BUCKETS
        self._total_requests = 0
        self._total_retries = 0
        self._tick = int(clock() // self._width)

    def _slot(self) -> int:
        """The current bucket's index, after emptying the buckets that fell out of the window."""
        tick = int(self._clock() // self._width)
        gap = tick - self._tick
        if gap > 0:  # a clock that stands still or (wrongly) goes back keeps the current bucket
            if gap >= _BUCKETS:
                self._requests = [0] * _BUCKETS
                self._retries = [0] * _BUCKETS
                self._total_requests = self._total_retries = 0
            else:
                for step in range(self._tick + 1, tick + 1):
                    slot = step % _BUCKETS
                    self._total_requests -= self._requests[slot]
                    self._total_retries -= self._retries[slot]
                    self._requests[slot] = self._retries[slot] = 0
            self._tick = tick
        return self._tick % _BUCKETS

    def request(self) -> None:
        """Count one request (a first attempt; retries are counted by `try_spend`)."""
        self._requests[self._slot()] += 1
        self._total_requests += 1

    def try_spend(self) -> bool:
        """May one retry go out now? When it may, it is counted."""
        slot = self._slot()
        if self._total_retries >= self._ratio * self._total_requests + self._floor:
            return False
        self._retries[slot] += 1
        self._total_retries += 1
        return True

    def counts(self) -> tuple[int, int]:
        """(requests, retries) in the window, for metrics and the admin view."""
        self._slot()
        return self._total_requests, self._total_retries


class RetryBudgets:
    """The retry budget of each route of one process, kept across route-table swaps.

    A route keeps its budget (and its history) while its name and budget settings stay the same;
    a changed `budget_percent` or `budget_min` starts a fresh budget. `prune` forgets routes that
    left the table.
    """

    __slots__ = ("_budgets", "_clock")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._budgets: dict[str, tuple[float, float, RetryBudget]] = {}

    def get(self, route: str, policy: RetryPolicy) -> RetryBudget:
        entry = self._budgets.get(route)
        if entry is not None and entry[0] == policy.budget_percent and entry[1] == policy.budget_min:
            return entry[2]
        budget = RetryBudget(policy.budget_percent, policy.budget_min, clock=self._clock)
        self._budgets[route] = (policy.budget_percent, policy.budget_min, budget)
        return budget

    def prune(self, routes: Container[str]) -> None:
        """Forget the budgets of routes not in `routes` (the names in the new table)."""
        for name in [n for n in self._budgets if n not in routes]:
            del self._budgets[name]


@lru_cache(maxsize=256)
def retry_statuses(policy: RetryPolicy) -> frozenset[int]:
    """The response statuses after which `policy` tries again (its `statuses` and 502/503/504 tokens)."""
    return frozenset(policy.statuses) | frozenset(int(c) for c in policy.retry_on if c.isdigit())


def failure_kind(exc: UpstreamError) -> str | None:
    """The `retry_on` condition an attempt's error meets, if any."""
    if isinstance(exc, DeadlineExceeded):
        return None
    if isinstance(exc, UpstreamTimeout):
        return "timeout"
    if isinstance(exc, UpstreamReset):
        return "reset"
    if isinstance(exc, ProtocolError):
        return "502"  # garbage from the upstream is answered 502
    # A TLS handshake that failed is a connect failure (no request byte went out); TLS files this
    # process cannot load fail every endpoint of the service alike: no retry.
    if isinstance(exc, UpstreamTlsConfig):
        return None
    return "connect-failure" if isinstance(exc, ConnectError) else None


def may_retry_after(policy: RetryPolicy, failure: UpstreamError | None) -> bool:
    """Whether `failure` (None: a status that `retry_statuses` intercepted) meets `retry_on`."""
    if failure is None:
        return True
    kind = failure_kind(failure)
    return kind is not None and condition(policy, int(kind) if kind.isdigit() else kind)
