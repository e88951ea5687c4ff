"""Which endpoint of a service a request goes to: the three balancer policies, and the hash key.

A picker belongs to one `gateway.upstream.endpoints.ServiceState` and is rebuilt when the service's endpoints
or balancer change; it only reads the endpoints' live state (availability, latency, in-flight count,
slow-start ramp), except round-robin, which keeps its running weights on the endpoints.

- `ewma` (`EwmaPicker`): power of two choices. Two distinct endpoints are drawn at random and the
  one with the lower score wins, the score being the peak-EWMA latency * (in-flight + 1) (see
  `EndpointState.score`). Comparing two random endpoints instead of scanning all of them keeps a
  pick O(1) and avoids the herd that "always the best one" causes when many workers share stale
  estimates (Mitzenmacher; Finagle and Linkerd's default).
- `round_robin` (`RoundRobinPicker`): nginx's smooth weighted round-robin: over a cycle of
  sum(weights) picks each endpoint is chosen exactly `weight` times, interleaved, not in runs.
- `hash` (`HashPicker`): a consistent-hash ring with `POINTS_PER_WEIGHT` virtual nodes per unit of
  weight, so a key keeps its endpoint while it lives and adding an endpoint moves ~1/n of the keys.
  A request without a key is balanced by `ewma`. Slow start does not apply: ramping a share on a
  ring would move keys back and forth.

Every picker prefers, in order: available endpoints not yet tried by this request; available
endpoints; then, when nothing is available (every endpoint ejected or failing its checks), "panic
mode": any endpoint, untried first. Refusing every request when all endpoints look bad would turn a
partial failure into a total one, and the usual cause of "all bad at once" is shared (a dependency,
a wrong health-check path) rather than every endpoint being down; Envoy's panic threshold makes the
same trade. A panic pick is counted on the service (`panic_total`).
"""

from __future__ import annotations

import random
from bisect import bisect_left
from collections.abc import Collection, Sequence
from functools import lru_cache
from hashlib import blake2b
from typing import TYPE_CHECKING, Final, Protocol

from routes.grammar import cookie_value
from routes.policies import Balancer, HashOn

if TYPE_CHECKING:
    from gateway.upstream.endpoints import EndpointState

# Virtual nodes per unit of weight on the hash ring, and a cap on the ring's size so that heavy
# weights cannot make a reload slow (each point costs one blake2b).
POINTS_PER_WEIGHT: Final = 128
MAX_RING_POINTS: Final = 65_536


class Picker(Protocol):
    """Chooses one of a service's endpoints (there are at least two; `now` is the clock's reading)."""

    def pick(self, endpoints: Sequence[EndpointState], now: float, key: bytes | None,
             exclude: Collection[EndpointState]) -> EndpointState: ...


def make_picker(balancer: Balancer, endpoints: Sequence[EndpointState], rand: random.Random) -> Picker:
    """The picker of a balancer policy over these endpoints (an unknown policy balances by `ewma`)."""
    if balancer.policy == "round_robin":
        return RoundRobinPicker()
    if balancer.policy == "hash":
        return HashPicker(endpoints, rand)
    return EwmaPicker(rand)


def usable(endpoints: Sequence[EndpointState], now: float,
           exclude: Collection[EndpointState]) -> Sequence[EndpointState]:
    """The endpoints a request may go to: available and untried, else available, else (panic) untried,
    else all. Never empty when `endpoints` is not."""
    available = [e for e in endpoints if e.healthy and e.ejected_until <= now]
    if available:
        if exclude:
            untried = [e for e in available if e not in exclude]
            if untried:
                return untried
        return available
    if exclude:
        untried = [e for e in endpoints if e not in exclude]
        if untried:
            return untried
    return endpoints


class EwmaPicker:
    """Power of two choices over `EndpointState.score` (peak-EWMA latency * (in-flight + 1))."""

    __slots__ = ("_random",)

    def __init__(self, rand: random.Random) -> None:
        self._random = rand.random

    def pick(self, endpoints: Sequence[EndpointState], now: float, key: bytes | None,
             exclude: Collection[EndpointState]) -> EndpointState:
        a, b = self._two(len(endpoints))
        first = endpoints[a]
        second = endpoints[b]
        # The common case (both drawn endpoints usable) allocates nothing.
        if first.healthy and second.healthy and first.ejected_until <= now and \
                second.ejected_until <= now and \
                (not exclude or (first not in exclude and second not in exclude)):
            return first if first.score(now) <= second.score(now) else second
        pool = usable(endpoints, now, exclude)
        if len(pool) == 1:
            return pool[0]
        a, b = self._two(len(pool))
        first = pool[a]
        second = pool[b]
        return first if first.score(now) <= second.score(now) else second

    def _two(self, n: int) -> tuple[int, int]:
        """Two distinct indices below n (n >= 2), uniformly. random() * n < n for every n < 2**53."""
        rnd = self._random
        a = int(rnd() * n)
        b = int(rnd() * (n - 1))
        if b >= a:
            b += 1
        return a, b


class RoundRobinPicker:
    """nginx's smooth weighted round-robin; the running weight lives on each endpoint (`rr_current`).

    Each pick adds every candidate's effective weight (its weight * its slow-start share) to its
    running weight, takes the largest, and subtracts the total from the winner.
    """

    __slots__ = ()

    def pick(self, endpoints: Sequence[EndpointState], now: float, key: bytes | None,
             exclude: Collection[EndpointState]) -> EndpointState:
        pool = endpoints
        for e in endpoints:
            if not e.healthy or e.ejected_until > now or (exclude and e in exclude):
                pool = usable(endpoints, now, exclude)
                break
        best = pool[0]
        best_current = float("-inf")
        total = 0.0
        for e in pool:
            weight = float(e.weight)
            if now < e.ramp_end:
                weight *= e.ramp(now)
            current = e.rr_current + weight
            e.rr_current = current
            total += weight
            if current > best_current:
                best = e
                best_current = current
        best.rr_current -= total
        return best


def _hash64(data: bytes) -> int:
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big")


class HashPicker:
    """A consistent-hash ring over the endpoints' URLs; a request without a key goes by `ewma`.

    Points are keyed by endpoint URL, so rings built from different tables agree on every endpoint
    they share: adding or removing one endpoint moves only the keys it takes or held.
    """

    __slots__ = ("_fallback", "_hashes", "_owners")

    def __init__(self, endpoints: Sequence[EndpointState], rand: random.Random) -> None:
        self._fallback = EwmaPicker(rand)
        total_weight = sum(max(e.weight, 0) for e in endpoints) or 1
        per_weight = max(1, min(POINTS_PER_WEIGHT, MAX_RING_POINTS // total_weight))
        points: list[tuple[int, int]] = []
        for index, e in enumerate(endpoints):
            url = e.endpoint.url
            for virtual in range(per_weight * max(e.weight, 0)):
                points.append((_hash64(f"{url}#{virtual}".encode()), index))
        points.sort()
        self._hashes = [h for h, _ in points]
        self._owners = [i for _, i in points]

    def pick(self, endpoints: Sequence[EndpointState], now: float, key: bytes | None,
             exclude: Collection[EndpointState]) -> EndpointState:
        hashes = self._hashes
        if key is None or not hashes:
            return self._fallback.pick(endpoints, now, key, exclude)
        owners = self._owners
        at = bisect_left(hashes, _hash64(key))
        if at == len(owners):
            at = 0
        e = endpoints[owners[at]]
        if e.healthy and e.ejected_until <= now and not (exclude and e in exclude):
            return e
        # Walk clockwise to the next point whose endpoint may be used.
        allowed = set(usable(endpoints, now, exclude))
        size = len(owners)
        for step in range(1, size):
            e = endpoints[owners[(at + step) % size]]
            if e in allowed:
                return e
        return next(iter(allowed))  # only endpoints without points (weight 0) are allowed


@lru_cache(maxsize=256)
def _header_name(name: str) -> bytes:
    return name.lower().encode("latin-1")


def hash_key(hash_on: HashOn, headers: Sequence[tuple[bytes, bytes]], client: str | None) -> bytes | None:
    """The consistent-hash key of a request: the named header's (first) value, the named cookie's value
    or the client address; None when the request has none (it is then balanced by `ewma`).

    `headers` is the ASGI header list (names lower-case); `client` the downstream address as Peel
    determined it (after forwarded-header trust), without port.
    """
    if hash_on.header is not None:
        name = _header_name(hash_on.header)
        for key, value in headers:
            if key == name:
                return value
        return None
    if hash_on.cookie is not None:
        cookie = cookie_value(headers, hash_on.cookie)
        return None if cookie is None else cookie.encode("latin-1")
    if hash_on.client and client:
        return client.encode("latin-1")
    return None
