"""The admin API's work in worker threads, with the event loop served first.

The admin API shares its process (and its GIL) with the data plane: a change's commit, a large
read or an answer's encoding runs in a worker thread so the event loop is not blocked, but while
that thread computes, the loop has to take the GIL back for each of its callbacks, and waits up to
the interpreter's switch interval each time (`peel serve` sets 1 ms: gateway.server.serve). A
request needs several callbacks (its read, its upstream write, the upstream's answer, its write),
so a proxied request that arrived during a 5 ms commit waited 3-6 ms more (bench/README.md, "A
change to a large table"). `run_in_threadpool` here is Starlette's with the switch interval
lowered to `LOOP_FIRST` for as long as any admin work runs in a thread: the loop asks for the GIL
after 0.1 ms and the thread hands it over at its next bytecode boundary. The worker threads get
a little slower; the data plane's requests no longer wait for them. The interval is process-wide,
so it is counted: the last thread to finish restores what was set before the first began.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final, ParamSpec, TypeVar

from starlette.concurrency import run_in_threadpool as _starlette_run_in_threadpool

P = ParamSpec("P")
T = TypeVar("T")

# The switch interval while admin work computes in a thread (seconds).
LOOP_FIRST: Final = 0.0001

_lock = threading.Lock()
_running = 0
_saved = 0.0


@contextmanager
def loop_first() -> Iterator[None]:
    """Lower the switch interval to `LOOP_FIRST` while the block runs (counted across threads)."""
    global _running, _saved
    with _lock:
        if _running == 0:
            _saved = sys.getswitchinterval()
            sys.setswitchinterval(min(_saved, LOOP_FIRST))
        _running += 1
    try:
        yield None
    finally:
        with _lock:
            _running -= 1
            if _running == 0:
                sys.setswitchinterval(_saved)


async def run_in_threadpool(func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`starlette.concurrency.run_in_threadpool`, the event loop served first meanwhile."""
    def call() -> T:
        with loop_first():
            return func(*args, **kwargs)

    return await _starlette_run_in_threadpool(call)
