"""`gateway.core.heap`: free C-heap pages go back to the operating system, large blocks keep mappings
of their own, and threads share the main arena."""

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


PROBE = """
import re, sys
from gateway.core import heap
fixed = heap.fix_mmap_threshold() if sys.argv[1] == "fixed" else False
big = bytes(8 << 20)  # served by a mapping; freeing it raises glibc's threshold to 8 MiB
del big
block = bytes(512 << 10)  # above 128 KiB, below 8 MiB
maps = open("/proc/self/maps").read()
heaps = [[int(x, 16) for x in line.split()[0].split("-")] for line in maps.splitlines()
         if line.endswith("[heap]")]
print(fixed, any(lo <= id(block) < hi for lo, hi in heaps))
"""


def _probe(mode: str, script: str = PROBE, **env: str) -> str:
    """What `script` prints in a fresh interpreter (glibc's settings are made once per process)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | env
    done = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True,
                          env=environ, check=True, timeout=60)
    return done.stdout.strip()


@pytest.mark.skipif(not GLIBC, reason="mallopt's mmap threshold is glibc's")
def test_a_large_block_keeps_a_mapping_of_its_own_after_larger_ones_were_freed() -> None:
    # glibc alone: the freed 8 MiB block raised the threshold, the 512 KiB one came from the heap
    assert _probe("glibc") == "False True"
    assert _probe("fixed") == "True False"


@pytest.mark.skipif(not GLIBC, reason="mallopt's mmap threshold is glibc's")
def test_the_operators_own_threshold_is_left_alone() -> None:
    assert _probe("fixed", MALLOC_MMAP_THRESHOLD_="1048576") == "False True"


def test_without_mallopt_it_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap, "_set", None)
    assert heap.fix_mmap_threshold() is False


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
