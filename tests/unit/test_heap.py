"""`gateway.core.heap.release_free_heap`: free C-heap pages go back to the operating system."""

from __future__ import annotations

import re
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
