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

log: Final = logging.getLogger("peel.edge")


class BatchedWriter:
    """Writes to one transport; a whole message may wait in the loop's `WriteBatch`.

    `write_whole` takes a message complete in itself (a whole response, a whole request): after
    anything held, it goes out at once when it is the iteration's first, and otherwise is held and
    written at the iteration's end with the others. `write` takes a part of a message (a streamed
    body's): at once, after anything held. The edge's `CoalescingWriter` and the upstream pool's
    connections both write through one.

    A whole message may come as its head and a large body (`APART_FROM` bytes or more, often a
    view of the upstream's read): the two then go out in one vectored write (`writelines`), the
    body never copied after the head.
    """

    __slots__ = ("_batch", "_held", "_held_body", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._held: bytes | None = None
        self._held_body: bytes | memoryview | None = None  # a large body held after `_held`
        self._batch = batch_for(loop)

    def write(self, data: bytes) -> None:
        if self._held is not None:
            self.flush()
        self._transport.write(data)

    def write_whole(self, data: bytes, body: bytes | memoryview | None = None) -> None:
        held = self._held
        if held is not None:
            self._held = None
            held_body = self._held_body
            if body is None and held_body is None:
                self._transport.write(held + data)
                return
            self._held_body = None
            parts: list[bytes | memoryview] = [held] if held_body is None else [held, held_body]
            parts.append(data)
            if body is not None:
                parts.append(body)
            self._transport.writelines(parts)
            return
        batch = self._batch
        if batch.busy:
            self._held = data
            self._held_body = body
            batch.hold(self)
        else:
            batch.wrote()
            if body is None:
                self._transport.write(data)
            else:
                self._transport.writelines((data, body))

    def flush(self) -> None:
        """Write what is held (nothing when the transport closed meanwhile)."""
        held = self._held
        if held is not None:
            self._held = None
            body = self._held_body
            if body is not None:
                self._held_body = None
            if not self._transport.is_closing():
                if body is None:
                    self._transport.write(held)
                else:
                    self._transport.writelines((held, body))


# A body at least this large goes after its head in one vectored write rather than copied after it
# (and an upstream's response body that large, read with its head, is handed on as a view of the
# read: gateway.http.http1.ResponseReader.feed). Below it a copy costs less than the vector.
APART_FROM: Final = 8 * 1024


class WriteBatch:
    """One event loop's writers holding a whole message until the end of the iteration."""

    __slots__ = ("_due", "_held", "_loop", "busy")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._held: list[BatchedWriter] = []
        self._due = False  # a flush is scheduled
        # A whole message went out in this iteration: the next ones are held to its end.
        self.busy = False

    def wrote(self) -> None:
        """A whole message went out at once: until the iteration ends, the next ones are held."""
        self.busy = True
        if not self._due:
            self._due = True
            self._loop.call_soon(self.flush)

    def hold(self, holder: BatchedWriter) -> None:
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
