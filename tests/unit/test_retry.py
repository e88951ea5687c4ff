"""Retry rules: full-jitter backoff, Retry-After, which methods and failures retry, the budget."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.policy.retry import (
    RetryBudget,
    RetryBudgets,
    backoff,
    condition,
    method_may_retry,
    retry_after,
)
from routes.policies import RetryPolicy

POLICY = RetryPolicy()


class Clock:
    """A simulated monotonic clock."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- backoff ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("retry", "ceiling"), [
    (1, 0.025), (2, 0.05), (3, 0.1), (4, 0.2), (5, 0.25), (6, 0.25), (50, 0.25), (10_000, 0.25),
])
def test_backoff_ceiling_doubles_up_to_the_cap(retry: int, ceiling: float) -> None:
    assert backoff(retry, 0.025, 0.25, rand=lambda: 1.0) == pytest.approx(ceiling)


def test_backoff_is_jittered_over_the_whole_interval() -> None:
    assert backoff(3, 0.025, 0.25, rand=lambda: 0.0) == 0.0
    assert backoff(3, 0.025, 0.25, rand=lambda: 0.5) == pytest.approx(0.05)
    rng = random.Random(7)
    waits = [backoff(4, 0.025, 0.25, rand=rng.random) for _ in range(2000)]
    # full jitter: spread over [0, 0.2], not bunched near the ceiling
    assert min(waits) < 0.01 and max(waits) > 0.19
    assert 0.09 < sum(waits) / len(waits) < 0.11


def test_backoff_first_retry_below_one_counts_as_first() -> None:
    assert backoff(0, 0.025, 0.25, rand=lambda: 1.0) == pytest.approx(0.025)
    assert backoff(-3, 0.025, 0.25, rand=lambda: 1.0) == pytest.approx(0.025)


@given(retry=st.integers(min_value=1, max_value=100_000),
       base=st.floats(min_value=0.0, max_value=10.0),
       cap=st.floats(min_value=0.0, max_value=60.0),
       seed=st.integers(min_value=0, max_value=2**32))
def test_backoff_stays_within_zero_and_the_exponential_ceiling(retry: int, base: float, cap: float,
                                                               seed: int) -> None:
    wait = backoff(retry, base, cap, rand=random.Random(seed).random)
    assert 0.0 <= wait <= min(cap, base * 2.0 ** min(retry - 1, 1000)) + 1e-12


# --- Retry-After -----------------------------------------------------------------------------

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(("value", "seconds"), [
    (b"120", 120.0), (b"0", 0.0), (b" 7 ", 7.0), (b"-5", 0.0), (b"-0", 0.0),
    (b"Sat, 01 Mar 2025 12:00:30 GMT", 30.0),                 # IMF-fixdate
    (b"Saturday, 01-Mar-25 12:01:00 GMT", 60.0),              # obsolete RFC 850
    (b"Sat Mar  1 12:00:05 2025", 5.0),                       # asctime: UTC by definition
    (b"Sat, 01 Mar 2025 11:00:00 GMT", 0.0),                  # in the past: go now
    (b"Sat, 01 Mar 2025 12:00:10 -0000", 10.0),
])
def test_retry_after_values(value: bytes, seconds: float) -> None:
    assert retry_after(value, now=NOW) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [
    b"", b" ", b"soon", b"1.5", b"12abc", b"+3", b"0x10", b"--5", b"Mon, 99 Foo 2025 00:00:00 GMT",
    b"\xff\xfe", b"1 2",
])
def test_retry_after_garbage_is_none(value: bytes) -> None:
    assert retry_after(value, now=NOW) is None


def test_retry_after_huge_delay_is_a_number_not_an_exception() -> None:
    assert retry_after(b"9" * 5000, now=NOW) == float("inf")


def test_retry_after_date_uses_the_wall_clock_by_default() -> None:
    soon = format_datetime(datetime.now(UTC).replace(microsecond=0), usegmt=True).encode()
    value = retry_after(soon)
    assert value is not None and value <= 1.0


# --- which requests and failures retry -------------------------------------------------------

@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"])
def test_idempotent_methods_may_retry(method: str) -> None:
    assert method_may_retry(method, [], POLICY)


@pytest.mark.parametrize(("method", "headers", "policy", "expected"), [
    ("POST", [], POLICY, False),
    ("PATCH", [], POLICY, False),
    ("CONNECT", [], POLICY, False),
    ("POST", [(b"idempotency-key", b"abc-123")], POLICY, True),
    ("PATCH", [(b"accept", b"*/*"), (b"idempotency-key", b"k")], POLICY, True),
    ("POST", [(b"idempotency-key", b"")], POLICY, False),
    ("POST", [(b"idempotency-key", b"   ")], POLICY, False),
    ("POST", [(b"x-idempotency-key", b"k")], POLICY, False),
    ("POST", [(b"x-request-key", b"k")], replace(POLICY, idempotency_header="X-Request-Key"), True),
    ("POST", [(b"idempotency-key", b"k")], replace(POLICY, idempotency_header="X-Request-Key"), False),
    ("POST", [(b"idempotency-key", b"k")], replace(POLICY, idempotency_header=""), False),
    ("get", [], POLICY, False),  # methods are case-sensitive (RFC 9110 section 9.1)
])
def test_non_idempotent_methods_need_the_idempotency_header(method: str, headers: list[tuple[bytes, bytes]],
                                                           policy: RetryPolicy, expected: bool) -> None:
    assert method_may_retry(method, headers, policy) is expected


@pytest.mark.parametrize(("policy", "failure", "expected"), [
    (POLICY, "connect-failure", True),
    (POLICY, "reset", True),
    (POLICY, "timeout", False),
    (POLICY, 502, False),
    (replace(POLICY, retry_on=("timeout",)), "timeout", True),
    (replace(POLICY, retry_on=("timeout",)), "reset", False),
    (replace(POLICY, retry_on=("502", "503")), 503, True),
    (replace(POLICY, retry_on=("502", "503")), 504, False),
    (replace(POLICY, retry_on=("502", "503")), 500, False),
    (replace(POLICY, statuses=(409, 429)), 429, True),
    (replace(POLICY, statuses=(409, 429)), 404, False),
    (replace(POLICY, retry_on=()), "connect-failure", False),
])
def test_condition(policy: RetryPolicy, failure: str | int, expected: bool) -> None:
    assert condition(policy, failure) is expected


# --- the budget ------------------------------------------------------------------------------

def spend_all(budget: RetryBudget, limit: int = 10_000) -> int:
    spent = 0
    while spent < limit and budget.try_spend():
        spent += 1
    return spent


def test_floor_allows_min_per_second_times_window_without_traffic() -> None:
    budget = RetryBudget(20.0, 3.0, window=10.0, clock=Clock())
    assert spend_all(budget) == 30
    assert not budget.try_spend()


def test_retries_are_a_percentage_of_requests() -> None:
    budget = RetryBudget(20.0, 0.0, clock=Clock())
    for _ in range(100):
        budget.request()
    assert spend_all(budget) == 20
    budget.request()
    budget.request()
    budget.request()
    budget.request()
    budget.request()
    assert spend_all(budget) == 1  # 105 requests: 21 retries
    assert budget.counts() == (105, 21)


def test_percentage_and_floor_add_up() -> None:
    budget = RetryBudget(10.0, 0.5, window=10.0, clock=Clock())
    for _ in range(50):
        budget.request()
    assert spend_all(budget) == 10  # 10 % of 50 + 0.5/s * 10 s


def test_zero_budget_refuses_every_retry() -> None:
    budget = RetryBudget(0.0, 0.0, clock=Clock())
    for _ in range(1000):
        budget.request()
    assert not budget.try_spend()


def test_the_window_slides_bucket_by_bucket() -> None:
    clock = Clock(0.0)
    budget = RetryBudget(50.0, 0.0, window=10.0, clock=clock)
    for _ in range(10):
        budget.request()         # t=0: 10 requests
    assert spend_all(budget) == 5
    clock.now = 5.0
    for _ in range(10):
        budget.request()         # t=5: 10 more, 20 in the window
    assert spend_all(budget) == 5
    clock.now = 9.99
    assert budget.counts() == (20, 10)
    clock.now = 10.0             # t=0's bucket (requests and retries) left the window
    assert budget.counts() == (10, 5)
    assert not budget.try_spend()  # 5 retries >= 50 % of 10
    budget.request()
    budget.request()
    assert spend_all(budget) == 1
    clock.now = 15.0             # t=5's bucket left too; t=10's stays
    assert budget.counts() == (2, 1)
    clock.now = 20.0
    assert budget.counts() == (0, 0)
    assert not budget.try_spend()


def test_a_clock_jump_beyond_the_window_empties_it() -> None:
    clock = Clock(100.0)
    budget = RetryBudget(20.0, 1.0, window=10.0, clock=clock)
    for _ in range(500):
        budget.request()
    assert spend_all(budget) == 110
    clock.now = 1e6
    assert budget.counts() == (0, 0)
    assert spend_all(budget) == 10


def test_a_clock_going_back_keeps_the_current_bucket() -> None:
    clock = Clock(100.0)
    budget = RetryBudget(20.0, 0.0, clock=clock)
    for _ in range(10):
        budget.request()
    clock.now = 95.0
    assert budget.counts() == (10, 0)
    assert spend_all(budget) == 2


def test_budget_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="window"):
        RetryBudget(20.0, 3.0, window=0.0)
    with pytest.raises(ValueError, match="negative"):
        RetryBudget(-1.0, 3.0)


events = st.lists(st.tuples(st.integers(min_value=0, max_value=3000),     # ms since the last event
                            st.sampled_from(["request", "request", "retry"])),
                  max_size=400)


@given(events=events, percent=st.sampled_from([0.0, 5.0, 20.0, 50.0, 100.0]),
       floor=st.sampled_from([0.0, 0.1, 1.0, 3.0]))
def test_budget_never_exceeds_percent_plus_floor_over_a_window(events: list[tuple[int, str]], percent: float,
                                                               floor: float) -> None:
    """Checked against a log of every event, not against the budget's own counters: at each retry
    granted at t, the retries granted in the last 9 s (the part of the window the ring always
    covers) stay below percent % of the requests of the last 10 s plus the floor, plus this one."""
    ms = 0
    clock = Clock(0.0)
    budget = RetryBudget(percent, floor, window=10.0, clock=clock)
    requests: list[int] = []
    retries: list[int] = []
    for gap, kind in events:
        ms += gap
        clock.now = ms / 1000
        if kind == "request":
            budget.request()
            requests.append(ms)
        elif budget.try_spend():
            retries.append(ms)
            recent_retries = sum(1 for t in retries if t >= ms - 9000)
            recent_requests = sum(1 for t in requests if t > ms - 10_000)
            assert recent_retries < percent / 100 * recent_requests + floor * 10 + 1


def test_budgets_survive_table_swaps_while_their_settings_do() -> None:
    budgets = RetryBudgets(clock=Clock())
    first = budgets.get("orders", POLICY)
    assert budgets.get("orders", replace(POLICY, attempts=5)) is first
    assert budgets.get("users", POLICY) is not first
    changed = budgets.get("orders", replace(POLICY, budget_percent=50.0))
    assert changed is not first
    for _ in range(10):
        changed.request()
    assert spend_all(changed) == 35  # 50 % of 10 + 3/s * 10 s: the new settings apply
    budgets.prune({"users"})
    assert budgets.get("orders", replace(POLICY, budget_percent=50.0)) is not changed
