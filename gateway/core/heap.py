"""Handing the C allocator's free memory back to the operating system (`release_free_heap`,
`one_arena`).

CPython asks the C library's `malloc` for every object above 512 bytes (dicts' tables, lists' item
arrays, long strings). What a serving process frees after
start-up (settings, the document the first table was compiled from, what the store's first reads
decoded) stays in glibc's heap, free but counted in the process's resident memory: glibc returns
only the top of its heap on its own. `malloc_trim(0)` gives back every whole free page, wherever it
is. Measured on the bench's one-process gateway: 63.2 -> 61.1 MiB right after start, in about a
third of a millisecond. A serving process does it again a second after each new route table
(`gateway.server.serve.Settler`): a change to a 10,000-route table copies its maps and its text
(0.3-0.7 MB each) and drops them, and glibc kept that space: 79 MiB at start, 93 after ten one-route
changes, 83 with the trim.

glibc also gives each thread that allocates an arena of its own (up to 8 per core), whose free
memory stays with it: the access-log writer, the span exporter and the store's threads held 1.1 MiB
after load in the one-process gateway. Its threads allocate while holding the GIL, so there is no
contention to avoid: `one_arena` keeps them all in the main one (62.3-62.4 -> 61.7-61.9 MiB).

Only glibc has `malloc_trim` and this `mallopt` setting; elsewhere (musl, macOS) this does nothing.
An operator's `MALLOC_ARENA_MAX` in the environment is glibc's own setting, and left alone.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Callable

log = logging.getLogger("peel.heap")


def _libc(name: str, *argtypes: type) -> Callable[..., int] | None:
    """The C library's function `name` returning an int, typed; None where it has none."""
    try:
        function = getattr(ctypes.CDLL(None), name)
    except (AttributeError, OSError):
        return None
    function.argtypes = list(argtypes)
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


_trim: Callable[[int], int] | None = _libc("malloc_trim", ctypes.c_size_t)
_set: Callable[[int, int], int] | None = _libc("mallopt", ctypes.c_int, ctypes.c_int)
if _trim is None:
    log.debug("no malloc_trim in this C library: free heap memory stays with the process")
# mallopt's parameter (glibc's malloc.h)
M_ARENA_MAX = -8


def release_free_heap() -> bool:
    """Return the C heap's free pages to the OS; False where the C library cannot (not glibc)."""
    if _trim is None:
        return False
    _trim(0)  # (ctypes releases the GIL for the call)
    return True


def one_arena() -> bool:
    """Have every thread allocate from glibc's main arena (see the module's docstring); call it
    before threads start. False where the C library cannot, or the environment already sets it."""
    if _set is None or "MALLOC_ARENA_MAX" in os.environ:
        return False
    return _set(M_ARENA_MAX, 1) == 1
