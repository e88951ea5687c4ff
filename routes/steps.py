"""Work in steps: a generator that yields between its parts, run whole or one part per loop turn.

The work a config change causes in a serving process (decoding the new version, compiling its
table) holds the GIL. Run in a worker thread it does not block the event loop, yet the loop pays for
it all the same: uvloop runs libuv without the GIL and takes it back for every callback (each read,
each write completion), and each time waits up to the interpreter's switch interval (5 ms) while
the thread computes. A 20 ms compile in a thread added 30-60 ms to the requests in flight
(bench/README.md, "A change to a large table"). Written as steps, the same work runs on the loop
itself, one step at a time with the loop free between them (`run_on_loop`, `STEP_GAP`): a request
that arrives meanwhile waits for one step, about a millisecond at most on a 10,000-route table (a
pass over every route in C is split too: `map_steps`, `ids_steps`, `split_steps`), never for the
GIL. `run` does it all at once, for threads, tools and tests.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Sequence
from itertools import compress, count, repeat
from operator import is_
from typing import Any, TypeVar

T = TypeVar("T")

# Work that yields (None) between its parts and returns T.
Steps = Generator[None, None, T]

# Items one step of a pass over a large table takes: a pass in C over 10,000 routes (the lines of a
# text cut, looked up, their ids gathered) holds the loop for 0.3-0.6 ms, and for two to three
# times that on a loaded machine; a quarter of it is the step a request can wait behind.
PASS_PER_STEP = 2500
# Characters one step of `split_steps` cuts: some 3,500 lines of a stored document.
CHARS_PER_STEP = 1 << 18
# Seconds of the event loop's time left to requests between two steps of `run_on_loop`. A request
# needs several turns of the loop (its head read, the upstream's answer read, the answer written),
# each an upstream round trip after the one before; steps one per turn (a gap of 0) met such a
# request at each of those turns, so it waited behind most of a change's steps (7 steps, 2.7 ms
# in all, for one route of a 10,000-route table), not behind one. With 2 ms between steps the
# `PUT` run's p99 fell from 2.28 to 1.91 x the quiet one, per-round medians with 2 workers
# (bench/README.md, "A change to a large table"); a change is served a few milliseconds later.
STEP_GAP = 0.002


def run(steps: Steps[T]) -> T:
    """All the steps at once; their result."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


async def run_on_loop(steps: Steps[T], gap: float = STEP_GAP) -> T:
    """One step, then `gap` seconds of the running event loop for everything else; their result."""
    import asyncio  # here: the CLI decodes documents in steps too (`run`), and has no event loop

    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        await asyncio.sleep(gap)


def map_steps(function: Callable[[Any], T], items: Sequence[Any],
              per_step: int = PASS_PER_STEP) -> Steps[list[T]]:
    """`list(map(function, items))`, `per_step` items a step (each still a pass in C)."""
    out: list[T] = list(map(function, items[:per_step]))
    for start in range(per_step, len(items), per_step):
        yield
        out.extend(map(function, items[start:start + per_step]))
    return out


def split_steps(text: str, sep: str, start: int = 0, end: int | None = None,
                per_step: int = CHARS_PER_STEP) -> Steps[list[str]]:
    """`text[start:end].split(sep)`, about `per_step` characters a step."""
    end = len(text) if end is None else end
    out: list[str] = []
    while end - start > per_step:
        cut = text.find(sep, start + per_step, end)
        if cut < 0:
            break
        out.extend(text[start:cut].split(sep))
        start = cut + len(sep)
        yield
    out.extend(text[start:end].split(sep))
    return out


def ids_steps(items: Sequence[Any], per_step: int = PASS_PER_STEP) -> Steps[set[int]]:
    """The set of the ids of `items`, `per_step` items a step."""
    ids = set(map(id, items[:per_step]))
    for start in range(per_step, len(items), per_step):
        yield
        ids.update(map(id, items[start:start + per_step]))
    return ids


def missing(items: list[Any]) -> Iterator[int]:
    """The indexes of the Nones in `items`, found by identity in C: few among many (an item the
    caller fills in behind the iterator is not seen again). `list.index(None)` compared each item
    with `==`: a call of a dataclass's `__eq__` in bytecode for each of 10,000 routes."""
    return compress(count(), map(is_, items, repeat(None)))
