"""`gateway.core.heap`: free C-heap pages go back to the operating system, and threads share the main
arena."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.core import heap

GLIBC = heap.release_free_heap()


def resident_kib() -> int:
    match = re.search(r"VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text())
    assert match is not None
    return int(match.group(1))


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's; this C library has none")
def test_memory_freed_in_the_middle_of_the_heap_leaves_the_process() -> None:
    # 40 MiB of 64 KiB blocks (below glibc's mmap threshold: from the heap), all freed but the last,
    # which keeps glibc from giving the freed space back on its own (it trims only the heap's top)
    blocks = [bytearray(64 * 1024) for _ in range(640)]
    last = blocks.pop()
    del blocks
    freed = resident_kib()
    assert heap.release_free_heap()
    released = resident_kib()
    assert freed - released >= 30 * 1024, (freed, released)
    assert len(last) == 64 * 1024


def test_without_malloc_trim_it_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap, "_trim", None)
    assert heap.release_free_heap() is False


def _probe(mode: str, script: str, **env: str) -> str:
    """What `script` prints in a fresh interpreter (glibc's settings are made once per process)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | env
    done = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True,
                          env=environ, check=True, timeout=60)
    return done.stdout.strip()


THREAD_PROBE = """
import sys, threading
from gateway.core import heap
one = heap.one_arena() if sys.argv[1] == "one" else False
where = []
def allocate():
    block = bytes(64 << 10)  # below the mmap threshold: from the thread's arena
    maps = open("/proc/self/maps").read()
    heaps = [[int(x, 16) for x in line.split()[0].split("-")] for line in maps.splitlines()
             if line.endswith("[heap]")]
    where.append(any(lo <= id(block) < hi for lo, hi in heaps))
thread = threading.Thread(target=allocate)
thread.start()
thread.join()
print(one, where[0])
"""


@pytest.mark.skipif(not GLIBC, reason="mallopt's arena count is glibc's")
def test_a_threads_blocks_come_from_the_main_arena() -> None:
    assert _probe("glibc", THREAD_PROBE) == "False False"  # an arena of the thread's own
    assert _probe("one", THREAD_PROBE) == "True True"
    assert _probe("one", THREAD_PROBE, MALLOC_ARENA_MAX="4") == "False False"  # the operator's own


def test_without_mallopt_the_arenas_stay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap, "_set", None)
    assert heap.one_arena() is False
