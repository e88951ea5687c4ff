"""Local rate limiting: token buckets per key, the RateLimit fields, Retry-After, bounded memory."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.policy.ratelimit import RateLimiter, RateLimiters, policy_value, rate_key, sf_string
from routes.policies import RateLimit

H = list[tuple[bytes, bytes]]


class Clock:
    """A simulated monotonic clock."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def header(headers: H, name: bytes) -> bytes | None:
    found = [v for n, v in headers if n == name]
    assert len(found) <= 1
    return found[0] if found else None


def allowed_in_a_row(limiter: RateLimiter, key: str = "k", limit: int = 10_000) -> int:
    count = 0
    while count < limit and limiter.take(key).allowed:
        count += 1
    return count


# --- the bucket ------------------------------------------------------------------------------

def test_a_burst_of_requests_then_429_with_retry_after() -> None:
    clock = Clock()
    limiter = RateLimiter(RateLimit(requests=5, per=1.0), "orders", clock)
    verdicts = [limiter.take("10.0.0.1") for _ in range(6)]
    assert [v.allowed for v in verdicts] == [True] * 5 + [False]
    refused = verdicts[-1]
    assert refused.retry_after == pytest.approx(0.2)
    assert header(refused.headers, b"retry-after") == b"1"  # whole seconds, at least 1
    assert header(refused.headers, b"ratelimit") == b'"orders";r=0;t=1'
    assert header(refused.headers, b"ratelimit-policy") == b'"orders";q=5;w=1'
    assert header(verdicts[0].headers, b"retry-after") is None
    assert verdicts[0].retry_after == 0.0


def test_tokens_refill_continuously() -> None:
    clock = Clock()
    limiter = RateLimiter(RateLimit(requests=5, per=1.0), "r", clock)
    assert allowed_in_a_row(limiter) == 5
    clock.now += 0.19
    assert not limiter.take("k").allowed  # 0.95 of a token (the refused request spent none)
    clock.now += 0.01
    assert limiter.take("k").allowed
    assert not limiter.take("k").allowed
    clock.now += 10.0
    assert allowed_in_a_row(limiter) == 5  # never more than the bucket holds


def test_burst_caps_the_bucket_and_retry_after_counts_whole_seconds() -> None:
    clock = Clock()
    limiter = RateLimiter(RateLimit(requests=10, per=60.0, burst=3), "orders", clock)
    verdicts = [limiter.take("k") for _ in range(4)]
    assert [v.allowed for v in verdicts] == [True, True, True, False]
    assert [header(v.headers, b"ratelimit") for v in verdicts] == [
        b'"orders";r=2;t=6', b'"orders";r=1;t=6', b'"orders";r=0;t=6', b'"orders";r=0;t=6']
    assert header(verdicts[3].headers, b"retry-after") == b"6"
    assert header(verdicts[0].headers, b"ratelimit-policy") == b'"orders";q=10;w=60;peel-burst=3'
    clock.now += 5.9
    assert not limiter.take("k").allowed
    clock.now += 0.1
    assert limiter.take("k").allowed


def test_effective_window_is_the_time_to_the_next_token() -> None:
    clock = Clock()
    limiter = RateLimiter(RateLimit(requests=2, per=10.0), "slow", clock)
    assert header(limiter.take("k").headers, b"ratelimit") == b'"slow";r=1;t=5'
    clock.now += 2.0
    # 1.4 tokens: one left, the second whole token in 3 s
    assert header(limiter.take("k").headers, b"ratelimit") == b'"slow";r=0;t=3'
    refused = limiter.take("k")
    assert header(refused.headers, b"ratelimit") == b'"slow";r=0;t=3'
    assert header(refused.headers, b"retry-after") == b"3"  # never before the window's end
    clock.now += 3.0
    assert limiter.take("k").allowed  # a client that waited Retry-After gets in


def test_keys_have_their_own_buckets() -> None:
    limiter = RateLimiter(RateLimit(requests=2, per=1.0), "r", Clock())
    assert allowed_in_a_row(limiter, "a") == 2
    assert allowed_in_a_row(limiter, "b") == 2
    assert allowed_in_a_row(limiter, "") == 2
    assert len(limiter) == 3


def test_a_clock_going_back_refills_nothing() -> None:
    clock = Clock(50.0)
    limiter = RateLimiter(RateLimit(requests=1, per=1.0), "r", clock)
    assert limiter.take("k").allowed
    clock.now = 10.0
    assert not limiter.take("k").allowed
    clock.now = 11.0
    assert limiter.take("k").allowed


@pytest.mark.parametrize("policy", [RateLimit(requests=0), RateLimit(requests=5, per=0.0),
                                    RateLimit(requests=5, per=-1.0), RateLimit(requests=5, burst=0)])
def test_impossible_policies_are_refused(policy: RateLimit) -> None:
    with pytest.raises(ValueError):
        RateLimiter(policy, "r")


takes = st.lists(st.integers(min_value=0, max_value=700), min_size=1, max_size=300)  # ms between requests


@given(gaps=takes, requests=st.integers(min_value=1, max_value=20),
       per=st.sampled_from([0.5, 1.0, 3.0, 60.0]), burst=st.one_of(st.none(), st.integers(1, 30)))
def test_no_interval_lets_more_through_than_burst_plus_rate(gaps: list[int], requests: int, per: float,
                                                             burst: int | None) -> None:
    clock = Clock(0.0)
    limiter = RateLimiter(RateLimit(requests=requests, per=per, burst=burst), "r", clock)
    capacity = burst if burst is not None else requests
    granted: list[float] = []
    now = 0.0
    for gap in gaps:
        now += gap / 1000
        clock.now = now
        if limiter.take("k").allowed:
            granted.append(now)
    for i, start in enumerate(granted):
        for j in range(i, len(granted)):
            # grants i..j happened within granted[j] - start seconds
            assert j - i + 1 <= capacity + requests / per * (granted[j] - start) + 1e-6


@given(gaps=takes)
def test_steady_clients_below_the_rate_are_never_refused(gaps: list[int]) -> None:
    clock = Clock(0.0)
    limiter = RateLimiter(RateLimit(requests=10, per=1.0), "r", clock)
    now = 0.0
    for gap in gaps:
        now += max(gap, 100) / 1000  # at most 10 per second
        clock.now = now
        assert limiter.take("k").allowed


# --- bounded memory --------------------------------------------------------------------------

def test_memory_is_bounded_by_max_keys() -> None:
    limiter = RateLimiter(RateLimit(requests=1, per=60.0), "r", Clock(), max_keys=100)
    for i in range(5000):
        limiter.take(f"client-{i}")
        assert len(limiter) <= 100


def test_eviction_prefers_an_idle_full_bucket_over_a_drained_one() -> None:
    clock = Clock()
    limiter = RateLimiter(RateLimit(requests=1, per=60.0), "r", clock, max_keys=3)
    assert limiter.take("drained").allowed    # least recently used, and empty
    clock.now += 1.0
    limiter._buckets["idle-full"] = [1.0, clock.now]  # a key seen but never charged: a full bucket
    assert limiter.take("busy").allowed
    assert limiter.take("newcomer").allowed   # room made by dropping the full bucket
    assert "idle-full" not in limiter._buckets
    assert not limiter.take("drained").allowed  # its empty bucket was kept: no free reset


def test_with_no_full_bucket_the_least_recently_used_goes() -> None:
    clock = Clock()
    limiter = RateLimiter(RateLimit(requests=1, per=60.0), "r", clock, max_keys=2)
    assert limiter.take("a").allowed
    assert limiter.take("b").allowed
    assert not limiter.take("a").allowed      # "a" is now the most recently used
    assert limiter.take("c").allowed          # evicts "b", the least recently used
    assert not limiter.take("a").allowed
    assert len(limiter) == 2


def test_buckets_that_refilled_while_idle_count_as_full() -> None:
    clock = Clock()
    limiter = RateLimiter(RateLimit(requests=1, per=10.0), "r", clock, max_keys=2)
    assert limiter.take("old").allowed
    clock.now += 11.0                         # "old" refilled while nobody looked
    assert limiter.take("recent").allowed
    assert limiter.take("new").allowed        # "old" goes: the LRU and full anyway
    assert set(limiter._buckets) == {"recent", "new"}
    assert not limiter.take("recent").allowed  # the drained one stayed


# --- keys, field values, registry ------------------------------------------------------------

@pytest.mark.parametrize(("policy", "headers", "client", "key"), [
    (RateLimit(requests=5), [], "10.0.0.1", "10.0.0.1"),
    (RateLimit(requests=5), [(b"x-api-key", b"k1")], "::1", "::1"),
    (RateLimit(requests=5), [], None, ""),
    (RateLimit(requests=5, header="X-Api-Key"), [(b"x-api-key", b"k1")], "10.0.0.1", "k1"),
    (RateLimit(requests=5, header="X-Api-Key"), [(b"accept", b"*/*")], "10.0.0.1", ""),
    (RateLimit(requests=5, header="x-api-key"), [(b"x-api-key", b"")], "10.0.0.1", ""),
    (RateLimit(requests=5, header="X-Api-Key"), [(b"x-api-key", b"a"), (b"x-api-key", b"b")], None, "a"),
    (RateLimit(requests=5, header="X-User"), [(b"x-user", b"caf\xc3\xa9")], None, "caf\xc3\xa9"),
])
def test_rate_key(policy: RateLimit, headers: H, client: str | None, key: str) -> None:
    assert rate_key(policy, headers, client) == key


def test_long_header_values_make_short_distinct_keys() -> None:
    policy = RateLimit(requests=5, header="X-Api-Key")
    one = rate_key(policy, [(b"x-api-key", b"a" * 60_000)], None)
    two = rate_key(policy, [(b"x-api-key", b"a" * 59_999 + b"b")], None)
    assert len(one) < 64 and len(two) < 64 and one != two
    assert one == rate_key(policy, [(b"x-api-key", b"a" * 60_000)], "10.9.9.9")


@pytest.mark.parametrize(("text", "value"), [
    ("orders", b'"orders"'), ('say "hi"', b'"say \\"hi\\""'), ("a\\b", b'"a\\\\b"'), ("caf\u00e9", b'"caf?"'),
    ("tab\there", b'"tab?here"'), ("", b'""'),
])
def test_policy_names_are_structured_field_strings(text: str, value: bytes) -> None:
    assert sf_string(text) == value


@pytest.mark.parametrize(("policy", "value"), [
    (RateLimit(requests=100, per=60.0), b'"r";q=100;w=60'),
    (RateLimit(requests=5, per=0.5), b'"r";q=10;w=1'),
    (RateLimit(requests=3, per=1.5), b'"r";q=4;w=2'),
    (RateLimit(requests=5, burst=5), b'"r";q=5;w=1'),
    (RateLimit(requests=5, burst=20), b'"r";q=5;w=1;peel-burst=20'),
])
def test_policy_value(policy: RateLimit, value: bytes) -> None:
    assert policy_value(policy, "r") == value


def test_limiters_survive_table_swaps_while_the_policy_does() -> None:
    limiters = RateLimiters(clock=Clock(), max_keys=10)
    policy = RateLimit(requests=1, per=60.0)
    first = limiters.get("orders", policy)
    assert first.take("k").allowed
    same = limiters.get("orders", RateLimit(requests=1, per=60.0))  # an equal policy from a new table
    assert same is first and not same.take("k").allowed
    changed = limiters.get("orders", RateLimit(requests=2, per=60.0))
    assert changed is not first and changed.take("k").allowed
    assert limiters.get("users", policy) is not first
    limiters.prune({"users"})
    assert limiters.get("orders", RateLimit(requests=2, per=60.0)) is not changed
