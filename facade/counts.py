"""Live traffic counts per migrated route, kept in memory by each serving process.

The proxy adds to them on the request path (a dict lookup and an increment); a background task
takes the deltas every few seconds and the store adds them to the `traffic_counts` table, so
`peel migrate status` sums over workers and gateways. Counts are keyed by (route, config version
of the route table that served the request): the status of a migration sums the rows from its last
transition's config version on.
"""

from __future__ import annotations

from collections.abc import Mapping

SIDES = ("to", "from", "fallback", "retired_misses")
TO, FROM, FALLBACK, RETIRED_MISSES = range(4)
Key = tuple[str, int]


class TrafficCounts:
    """Counters per (route, config version): requests to `to`, to `from`, fallbacks, retired misses.

    A request answered by `from` after `to` failed counts once as `to` (where it was sent) and once
    as a fallback. Only the event loop's thread adds, and `take` swaps the dict in one step, so no
    lock is needed.
    """

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[Key, list[int]] = {}

    def add(self, route: str, version: int, side: int) -> None:
        key = (route, version)
        counts = self._counts.get(key)
        if counts is None:
            counts = self._counts[key] = [0, 0, 0, 0]
        counts[side] += 1

    def take(self) -> Mapping[Key, tuple[int, int, int, int]]:
        """The counts since the last take, which start again from zero."""
        taken, self._counts = self._counts, {}
        return {k: (v[0], v[1], v[2], v[3]) for k, v in taken.items()}

    def put_back(self, deltas: Mapping[Key, tuple[int, int, int, int]]) -> None:
        """Return deltas that could not be written, so the next flush carries them."""
        for (route, version), values in deltas.items():
            counts = self._counts.setdefault((route, version), [0, 0, 0, 0])
            for i, value in enumerate(values):
                counts[i] += value
