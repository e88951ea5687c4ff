"""Trusted networks: whether a downstream address lies in the networks a setting lists (pure).

Several settings say whom Peel believes: `proxy.trusted_proxies` (forwarded headers),
`deadlines.trusted_networks` (deadline headers), `tracing.trusted_networks` (trace context),
`facade.trusted_networks` (plain beta values). Each is a `TrustedNetworks`; what an empty list
means is the caller's rule (`bool()` tells whether any network is configured).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# Peers are few (proxies, load balancers, an office); the bound only keeps a scan of the address
# space from growing the cache without end.
CACHE_SIZE = 4096


class TrustedNetworks:
    """The networks of one setting, parsed once, with every client address's verdict cached.

    `contains(client)` is on the request path: for an address seen before it is one dict lookup.
    The cache holds at most `cache_size` verdicts and is cleared when full (cheaper on a hit than
    an LRU, and a refill costs one parse per peer). An address that does not parse (a Unix socket
    peer, say) and `None` (no peer address) are in no network.
    """

    __slots__ = ("_cache", "_cache_size", "networks")

    def __init__(self, networks: Iterable[str], cache_size: int = CACHE_SIZE) -> None:
        self.networks: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n, strict=False) for n in networks)
        self._cache: dict[str, bool] = {}
        self._cache_size = cache_size

    def __bool__(self) -> bool:
        """Whether any network is configured."""
        return bool(self.networks)

    def __repr__(self) -> str:
        return f"TrustedNetworks({[str(n) for n in self.networks]!r})"

    def contains(self, client: str | None) -> bool:
        """Whether the address `client` (an IP address string) is in one of the networks."""
        if client is None or not self.networks:
            return False
        known = self._cache.get(client)
        if known is not None:
            return known
        return self._learn(client)

    def cached(self) -> int:
        """How many verdicts the cache holds (at most `cache_size`)."""
        return len(self._cache)

    def _learn(self, client: str) -> bool:
        try:
            address = ipaddress.ip_address(client)
        except ValueError:
            verdict = False
        else:
            verdict = any(address in net for net in self.networks)
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[client] = verdict
        return verdict


__all__ = ["CACHE_SIZE", "IPNetwork", "TrustedNetworks"]
