"""Work in steps: a generator that yields between its parts, run whole or one part per loop turn.

The work a config change causes in a serving process (decoding the new version, compiling its
table) holds the GIL. Run in a worker thread it does not block the event loop, yet the loop pays for
it all the same: uvloop runs libuv without the GIL and takes it back for every callback (each read,
each write completion), and each time waits up to the interpreter's switch interval (5 ms) while
the thread computes. A 20 ms compile in a thread added 30-60 ms to the requests in flight
(bench/README.md, "A change to a large table"). Written as steps, the same work runs on the loop
itself, one step per turn (`run_on_loop`): a request that arrives meanwhile waits for one step, a
few milliseconds at most on a 10,000-route table, never for the GIL. `run` does it all at once,
for threads, tools and tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator, Iterator
from itertools import compress, count, repeat
from operator import is_
from typing import Any, TypeVar

T = TypeVar("T")

# Work that yields (None) between its parts and returns T.
Steps = Generator[None, None, T]


def run(steps: Steps[T]) -> T:
    """All the steps at once; their result."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


async def run_on_loop(steps: Steps[T]) -> T:
    """One step per turn of the running event loop; their result."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        await asyncio.sleep(0)


def missing(items: list[Any]) -> Iterator[int]:
    """The indexes of the Nones in `items`, found by identity in C: few among many (an item the
    caller fills in behind the iterator is not seen again). `list.index(None)` compared each item
    with `==`: a call of a dataclass's `__eq__` in bytecode for each of 10,000 routes."""
    return compress(count(), map(is_, items, repeat(None)))
