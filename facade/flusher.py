"""Writes a serving process's traffic counts to the store every few seconds, off the request path.

    flusher = CountsFlusher(store, counts, instance=instance_id(), interval=2.0)
    task = asyncio.create_task(flusher.run())      # next to the route-table watcher
    ...
    await flusher.flush()                          # once more on shutdown

A write that fails (the store is down) puts the deltas back, so the next flush carries them: the
counts are late, never lost while the process lives.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Protocol

from facade.counts import TrafficCounts
from routes.errors import StoreError
from routes.store import CountDeltas

log = logging.getLogger("peel.facade")


class CountsStore(Protocol):
    """What flushing needs from the store (`routes.store.Store` is one)."""

    def add_traffic(self, instance: str, deltas: CountDeltas) -> None: ...


def instance_id() -> str:
    """This serving process: host name and process id (each worker counts on its own)."""
    return f"{socket.gethostname()}:{os.getpid()}"[:128]


class CountsFlusher:
    """Takes the deltas of `counts` every `interval` seconds and adds them to the store."""

    def __init__(self, store: CountsStore, counts: TrafficCounts, *, instance: str,
                 interval: float = 2.0) -> None:
        self.store = store
        self.counts = counts
        self.instance = instance
        self.interval = interval
        self.failures = 0

    async def flush(self) -> bool:
        """Write what was counted since the last flush; False (and kept for later) when it failed."""
        deltas = self.counts.take()
        if not deltas:
            return True
        try:
            await asyncio.to_thread(self.store.add_traffic, self.instance, deltas)
        except StoreError as exc:
            self.counts.put_back(deltas)
            self.failures += 1
            if self.failures == 1 or self.failures % 30 == 0:
                log.warning("traffic counts not written (kept for the next try): %s", exc)
            return False
        self.failures = 0
        return True

    async def run(self) -> None:
        """Flush every `interval` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()
