"""The current route table of this process, replaced whole, read once per request; and the one
list of table followers: everything that reacts to a new table registers here once.

    holder.follow(fn)   # fn(table) after every swap, in registration order (now, if one is loaded)
    holder.swap(table)  # assign, then call each follower once
    holder.table        # what a request reads, once
    await holder.served(version, timeout)   # until the live table is that version or later

Swaps happen on the event loop (the watcher compiles in a thread and swaps on the loop), so no
request sees a table before every follower (endpoint state, health checks, retry budgets, rate
limiters, metrics) has taken it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from routes.table import RouteTable

log = logging.getLogger("peel.watcher")

Follower = Callable[["RouteTable"], None]


class TableHolder:
    """Holds the live `RouteTable`. Assignment is atomic; a request reads `holder.table` once.

    `table` is None until the first table is compiled (from the store or the disk snapshot); the
    data plane answers 503 then, and readiness stays false. Only `swap` assigns it.
    """

    __slots__ = ("_followers", "_waiting", "loaded_at", "table")

    def __init__(self) -> None:
        self.table: RouteTable | None = None
        self.loaded_at: float = 0.0
        self._followers: list[Follower] = []
        # `served` calls waiting for a version: resolved by the swap that brings it
        self._waiting: list[tuple[int, asyncio.Future[bool]]] = []

    def follow(self, follower: Follower) -> None:
        """Call `follower(table)` after every swap; at once when a table is already loaded."""
        self._followers.append(follower)
        if self.table is not None:
            follower(self.table)

    def swap(self, table: RouteTable) -> None:
        """Make `table` the live table and tell every follower, once each, in order.

        A follower that fails is logged and the others still run: the new table serves either way.
        """
        self.table = table
        self.loaded_at = time.time()
        for follower in self._followers:
            try:
                follower(table)
            except Exception:
                log.exception("a follower of route table version %d failed", table.version)
        if self._waiting:
            waiting, self._waiting = self._waiting, []
            for version, waiter in waiting:
                if table.version < version:
                    self._waiting.append((version, waiter))
                elif not waiter.done():
                    waiter.set_result(True)

    async def served(self, version: int, timeout: float) -> bool:
        """Wait until the live table is config version `version` or a later one (its followers
        done), at most `timeout` seconds; whether it is. On the event loop, as `swap`."""
        if self.table is not None and self.table.version >= version:
            return True
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        entry = (version, waiter)
        self._waiting.append(entry)
        try:
            return await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            return False
        finally:
            if entry in self._waiting:
                self._waiting.remove(entry)
