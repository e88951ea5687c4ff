"""Whole messages written together at the end of the event loop's iteration.

A write to a loopback peer that sleeps in `epoll_wait` wakes it: within the sender's `write`
system call the kernel delivers the bytes and wakes the receiver, on another core with an
inter-processor interrupt, which a VM pays for dearly (a tenth of a saturated gateway's CPU,
`perf` said: bench/README.md, "Writes together"). When a gateway is busy, one iteration of its
loop completes many requests; written one by one between the callbacks that produce them, each
write wakes the client (or the upstream) again, because it went back to sleep in between. Written
together, a few microseconds apart, the later writes find it awake.

So the first whole message of an iteration (a whole response downstream, a whole request
upstream) goes out at once, as before, and the ones after it are held and written in order at the
end of the iteration (the next turn of the loop's ready queue). A lone request (one connection, a
quiet gateway) never waits; nothing waits longer than one iteration; each holder keeps its own
bytes in order (a holder writes what it holds before anything written after it).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from mypy_extensions import trait

log: Final = logging.getLogger("peel.edge")


@trait
class Held:
    """A writer whose bytes a `WriteBatch` may hold: `flush` writes them."""

    def flush(self) -> None:
        raise NotImplementedError


class WriteBatch:
    """One event loop's writers holding a whole message until the end of the iteration."""

    __slots__ = ("_due", "_held", "_loop", "busy")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._held: list[Held] = []
        self._due = False  # a flush is scheduled
        # A whole message went out in this iteration: the next ones are held to its end.
        self.busy = False

    def wrote(self) -> None:
        """A whole message went out at once: until the iteration ends, the next ones are held."""
        self.busy = True
        if not self._due:
            self._due = True
            self._loop.call_soon(self.flush)

    def hold(self, holder: Held) -> None:
        """`holder` holds bytes: flush it at the end of this iteration."""
        self._held.append(holder)
        if not self._due:
            self._due = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._due = False
        self.busy = False
        held = self._held
        if not held:
            return
        self._held = []
        for holder in held:
            try:
                holder.flush()
            except Exception:  # one writer's failure must not keep the others' bytes
                log.exception("a held write failed")


_BATCH: Final[list[WriteBatch]] = []  # the batch of the loop that made the last one


def batch_for(loop: asyncio.AbstractEventLoop) -> WriteBatch:
    """The write batch of `loop` (one process serves on one loop; tests make many in turn)."""
    if _BATCH:
        batch = _BATCH[0]
        if batch._loop is loop:
            return batch
        _BATCH.clear()
    batch = WriteBatch(loop)
    _BATCH.append(batch)
    return batch
