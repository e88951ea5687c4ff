"""gateway/admin/threads.py: admin work in a worker thread runs with the event loop served first,
and the switch interval comes back once the last such thread is done."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Iterator

import pytest

from gateway.admin.threads import LOOP_FIRST, loop_first, run_in_threadpool


@pytest.fixture
def interval() -> Iterator[None]:
    saved = sys.getswitchinterval()
    sys.setswitchinterval(0.001)  # what `peel serve` sets
    yield None
    sys.setswitchinterval(saved)


def test_the_interval_is_lowered_while_the_work_runs_and_restored_after(interval: object) -> None:
    seen: list[float] = []

    def work(a: int, *, b: int) -> int:
        seen.append(sys.getswitchinterval())
        return a + b

    assert asyncio.run(run_in_threadpool(work, 1, b=2)) == 3
    assert seen == [pytest.approx(LOOP_FIRST)]
    assert sys.getswitchinterval() == pytest.approx(0.001)


def test_overlapping_work_restores_the_interval_only_when_the_last_one_ends(interval: object) -> None:
    first_in, second_in, release_first = threading.Event(), threading.Event(), threading.Event()
    during: list[float] = []

    def first() -> None:
        with loop_first():
            first_in.set()
            release_first.wait(5)

    def second() -> None:
        first_in.wait(5)
        with loop_first():
            second_in.set()
        during.append(sys.getswitchinterval())  # the first still runs: still lowered

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    assert second_in.wait(5)
    threads[1].join(5)
    assert during == [pytest.approx(LOOP_FIRST)]
    release_first.set()
    threads[0].join(5)
    assert sys.getswitchinterval() == pytest.approx(0.001)


def test_an_exception_in_the_work_still_restores_the_interval(interval: object) -> None:
    def fails() -> None:
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        asyncio.run(run_in_threadpool(fails))
    assert sys.getswitchinterval() == pytest.approx(0.001)


def test_an_interval_already_shorter_is_left_as_it_is() -> None:
    saved = sys.getswitchinterval()
    sys.setswitchinterval(0.00005)  # already shorter than LOOP_FIRST: left as it is
    try:
        with loop_first():
            assert sys.getswitchinterval() == pytest.approx(0.00005, abs=2e-6)
        assert sys.getswitchinterval() == pytest.approx(0.00005, abs=2e-6)
    finally:
        sys.setswitchinterval(saved)
