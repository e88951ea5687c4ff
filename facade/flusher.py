"""Writes what a serving process counted to the store every few seconds, off the request path.

    flusher = CountsFlusher(store, counts, instance=instance_id(), interval=2.0)
    task = asyncio.create_task(flusher.run())      # next to the route-table watcher
    ...
    await flusher.flush()                          # once more on shutdown

`Flusher` is the loop every kind of count shares (traffic counts here, the guard's samples, the
shadow's counts, the dependency graph's edges): take the deltas, write them in a thread, and when
the write fails (the store is down) put them back, so the next flush carries them: the counts are
late, never lost while the process lives. Each kind says what it takes, puts back and writes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Generic, Protocol, TypeVar

from facade.counts import TrafficCounts
from routes.errors import StoreError
from routes.store import CountDeltas

log = logging.getLogger("peel.facade")

D = TypeVar("D")


class CountsStore(Protocol):
    """What flushing needs from the store (`routes.store.Store` is one)."""

    def add_traffic(self, instance: str, deltas: CountDeltas) -> None: ...


def instance_id() -> str:
    """This serving process: host name and process id (each worker counts on its own)."""
    return f"{socket.gethostname()}:{os.getpid()}"[:128]


class Flusher(Generic[D]):
    """Every `interval` seconds: `take()` the deltas (None or empty: nothing to write), `write` them
    in a thread, and on a `StoreError` `put_back` them for the next flush, logging the first failure
    and every 30th. `what` names the counts in that log line."""

    what = "counts"

    def __init__(self, *, instance: str, interval: float) -> None:
        self.instance = instance
        self.interval = interval
        self.failures = 0

    def take(self) -> D | None:
        raise NotImplementedError

    def put_back(self, deltas: D) -> None:
        raise NotImplementedError

    def write(self, deltas: D) -> None:
        """Blocking: runs in a thread."""
        raise NotImplementedError

    async def flush(self) -> bool:
        """Write what was counted since the last flush; False (and kept for later) when it failed."""
        deltas = self.take()
        if not deltas:
            return True
        try:
            await asyncio.to_thread(self.write, deltas)
        except StoreError as exc:
            self.put_back(deltas)
            self.failures += 1
            if self.failures == 1 or self.failures % 30 == 0:
                log.warning("%s not written (kept for the next try): %s", self.what, exc)
            return False
        self.failures = 0
        return True

    async def run(self) -> None:
        """Flush every `interval` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()


class CountsFlusher(Flusher[CountDeltas]):
    """Takes the deltas of `counts` every `interval` seconds and adds them to the store."""

    what = "traffic counts"

    def __init__(self, store: CountsStore, counts: TrafficCounts, *, instance: str,
                 interval: float = 2.0) -> None:
        super().__init__(instance=instance, interval=interval)
        self.store = store
        self.counts = counts

    def take(self) -> CountDeltas | None:
        return self.counts.take()

    def put_back(self, deltas: CountDeltas) -> None:
        self.counts.put_back(deltas)

    def write(self, deltas: CountDeltas) -> None:
        self.store.add_traffic(self.instance, deltas)
