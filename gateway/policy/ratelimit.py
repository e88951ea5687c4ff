"""Local rate limiting: a token bucket per key of a route, in one process (pure; clock injected).

A route's `rate_limit` (`routes.policies.RateLimit`) admits `requests` per `per` seconds per key,
with bursts of up to `burst` (default `requests`). The key is the client address, or the value of
the policy's `header` (requests without it share one bucket). Buckets refill continuously, so a
client that waits 1/rate seconds may send one more request: there are no window edges where twice
the rate gets through.

Every verdict carries the headers of the IETF draft "RateLimit header fields for HTTP"
(draft-ietf-httpapi-ratelimit-headers-11, sections 3 and 4), structured-field lists:

    RateLimit-Policy: "<route>";q=<quota>;w=<window seconds>
    RateLimit: "<route>";r=<available>;t=<seconds>

and a refusal also gets `Retry-After` (whole seconds, at least 1), which the draft (section 6)
says must not point before the end of the effective window `t`: on a refusal both are the time
until the next token.

Memory is bounded: at most `max_keys` buckets per limiter. When a new key arrives at the bound,
a full bucket among the least recently used is dropped — a full bucket is the same as a fresh
one, so forgetting it changes nothing — or, failing that, the least recently used one.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Container, Iterable
from functools import lru_cache
from itertools import islice
from typing import Final, NamedTuple

from routes.policies import RateLimit

Headers = list[tuple[bytes, bytes]]

POLICY_HEADER: Final = b"ratelimit-policy"
LIMIT_HEADER: Final = b"ratelimit"
RETRY_AFTER: Final = b"retry-after"
# How many of the least recently used buckets are looked at for a full one before evicting.
_EVICTION_SCAN: Final = 8
# Header values longer than this are keyed by their digest: a bucket's key stays small even when
# a client sends 60 KiB values, and distinct values still get distinct buckets.
_MAX_KEY: Final = 128


class Verdict(NamedTuple):
    """One request's verdict: `allowed`, the response headers to add (RateLimit fields, and
    Retry-After on a refusal), and `retry_after`: seconds until a request would be allowed
    (0.0 when allowed)."""

    allowed: bool
    headers: Headers
    retry_after: float


def _whole_seconds(seconds: float) -> int:
    """Seconds rounded up to a whole number, at least 1 (fields and Retry-After are whole seconds).

    A nanosecond of float noise (1.4 - 1.0 tokens is 0.39999...) must not add a whole second.
    """
    return max(math.ceil(seconds - 1e-9), 1)


def sf_string(text: str) -> bytes:
    """`text` as a structured-field String (RFC 9651 section 3.3.3): quoted, with `"` and `\\`
    escaped; characters outside printable ASCII, which a String cannot hold, become `?`."""
    out = bytearray(b'"')
    for char in text:
        code = ord(char)
        if char in '"\\':
            out += b"\\" + char.encode("ascii")
        elif 0x20 <= code <= 0x7E:
            out.append(code)
        else:
            out.append(0x3F)
    out.append(0x22)
    return bytes(out)


def policy_value(policy: RateLimit, name: str) -> bytes:
    """The `RateLimit-Policy` value of a route's policy.

    The draft's window `w` is whole seconds (not zero), so a sub-second or fractional `per` is
    advertised as the quota of the next whole number of seconds at the same rate; a `burst`
    other than `requests` is added as the vendor parameter `peel-burst`.
    """
    window = max(math.ceil(policy.per), 1)
    quota = int(policy.requests * window / policy.per)
    value = b"%s;q=%d;w=%d" % (sf_string(name), quota, window)
    if policy.burst is not None and policy.burst != policy.requests:
        value += b";peel-burst=%d" % policy.burst
    return value


class RateLimiter:
    """The token buckets of one route's `rate_limit` in this process.

    `take(key)` costs one dict lookup and a little arithmetic; `name` (the route's name) names
    the policy in the RateLimit fields.
    """

    __slots__ = ("_buckets", "_capacity", "_clock", "_label", "_max_keys", "_policy_header", "_rate",
                 "name", "policy")

    def __init__(self, policy: RateLimit, name: str, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 100_000) -> None:
        if policy.requests < 1 or policy.per <= 0:
            raise ValueError("a rate limit needs requests >= 1 and per > 0")
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.policy = policy
        self.name = name
        self._rate = policy.requests / policy.per
        self._capacity = float(policy.burst if policy.burst is not None else policy.requests)
        if self._capacity < 1:
            raise ValueError("a burst below 1 would refuse every request")
        self._clock = clock
        self._max_keys = max_keys
        self._label = sf_string(name)
        self._policy_header = (POLICY_HEADER, policy_value(policy, name))
        # key -> [tokens, when they were counted]; order: least recently used first
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> Verdict:
        """Spend one token of `key`'s bucket if it has one."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._evict(now)
            bucket = [self._capacity, now]
            self._buckets[key] = bucket
            tokens = self._capacity
        else:
            self._buckets.move_to_end(key)
            # a clock that goes back refills nothing (and takes nothing back)
            tokens = min(self._capacity, bucket[0] + max(now - bucket[1], 0.0) * self._rate)
        bucket[1] = now
        # float noise a nanosecond short of a token counts as the token: a client that waited
        # exactly Retry-After must get in
        if tokens >= 1.0 - 1e-9:
            tokens = max(tokens - 1.0, 0.0)
            bucket[0] = tokens
            return Verdict(True, [self._policy_header, self._limit_header(tokens)], 0.0)
        bucket[0] = tokens
        wait = (1.0 - tokens) / self._rate
        seconds = _whole_seconds(wait)
        return Verdict(False, [self._policy_header, (LIMIT_HEADER, b"%s;r=0;t=%d" % (self._label, seconds)),
                               (RETRY_AFTER, b"%d" % seconds)], wait)

    def _limit_header(self, tokens: float) -> tuple[bytes, bytes]:
        """`RateLimit` after a granted request: `r` whole tokens left; `t` the seconds until the
        next whole token, the time during which `r` really is all the client can use.

        (After a grant the bucket is never full, so the next token is always on its way.)"""
        available = int(tokens)
        seconds = _whole_seconds((available + 1.0 - tokens) / self._rate)
        return (LIMIT_HEADER, b"%s;r=%d;t=%d" % (self._label, available, seconds))

    def _evict(self, now: float) -> None:
        """Make room for one bucket: a full one among the least recently used, else the LRU."""
        for key in islice(self._buckets, _EVICTION_SCAN):
            tokens, stamp = self._buckets[key]
            if tokens + max(now - stamp, 0.0) * self._rate >= self._capacity:
                del self._buckets[key]
                return
        self._buckets.popitem(last=False)


@lru_cache(maxsize=64)
def _header_name(name: str) -> bytes:
    return name.lower().encode("latin-1")


def rate_key(policy: RateLimit, headers: Iterable[tuple[bytes, bytes]], client: str | None) -> str:
    """The bucket key of a request: the client address, or the value of the policy's header.

    Requests without the header, or without a known client address, share the key "".
    """
    if policy.header is None:
        return client or ""
    wanted = _header_name(policy.header)
    for name, value in headers:
        if name == wanted:
            if len(value) > _MAX_KEY:
                return "#" + hashlib.blake2b(value, digest_size=16).hexdigest()
            return value.decode("latin-1")
    return ""


class RateLimiters:
    """The rate limiter of each route of one process, kept across route-table swaps.

    A route keeps its buckets while its name and `rate_limit` stay the same; a changed policy
    starts fresh buckets. `prune` forgets routes that left the table (or lost their limit).
    """

    __slots__ = ("_clock", "_limiters", "_max_keys")

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000) -> None:
        self._clock = clock
        self._max_keys = max_keys
        self._limiters: dict[str, RateLimiter] = {}

    def get(self, route: str, policy: RateLimit) -> RateLimiter:
        limiter = self._limiters.get(route)
        if limiter is not None and (limiter.policy is policy or limiter.policy == policy):
            return limiter
        limiter = RateLimiter(policy, route, self._clock, self._max_keys)
        self._limiters[route] = limiter
        return limiter

    def prune(self, routes: Container[str]) -> None:
        """Forget the limiters of routes not in `routes` (those with a rate limit in the new table)."""
        for name in [n for n in self._limiters if n not in routes]:
            del self._limiters[name]
