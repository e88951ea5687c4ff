"""Bounded memos of pure functions on the request path (pure).

The data plane remembers what it read from values that repeat (Host headers, header names, an
upstream's response lines, endpoint URLs) in a plain dict per function. Every such memo has the same
bound: `remember` empties it once it holds `limit` entries, so no stream of distinct values (a
hostile client's, a chatty upstream's) can grow it, and the values that repeat are back after one
miss each.
"""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


def remember(memo: dict[K, V], key: K, value: V, limit: int) -> V:
    """Keep `value` under `key` in `memo` (emptied first when it holds `limit` entries); return it."""
    if len(memo) >= limit:
        memo.clear()
    memo[key] = value
    return value


__all__ = ["remember"]
