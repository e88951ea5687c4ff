"""The guard's measurements: per guarded route, side and one-second slice, requests, errors and latency.

    samples = GuardSamples()
    samples.add("orders", "to", error=False, seconds=0.012, now=time.time())   # the request path
    deltas = samples.take()                  # every few seconds, written by `SamplesFlusher`
    side = SideWindow.of(rows)               # the leader sums a window's slices over the fleet
    side.p99_ms()

The request path pays a dict lookup, two increments and one logarithm per request of a guarded
migration. Latency goes into a log-scale histogram (`RATIO` = 1.1 between bucket bounds, from
`FIRST_MS` up to ~10 minutes), kept sparse ({bucket: count}) so a slice costs what it holds; a
percentile read from it is the upper bound of its bucket, at most 10 % above the true value, on
both sides alike. Errors are 5xx answers and upstream failures (connect errors, timeouts), as
`facade.guard.SideStats` counts them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from facade.flusher import Flusher
from facade.histogram import quantile_bucket
from routes.guard_records import GuardDeltas

log = logging.getLogger("peel.facade")

FIRST_MS = 0.1
RATIO = 1.1
_LOG_RATIO = math.log(RATIO)
MAX_BUCKET = 160  # FIRST_MS x 1.1^160 ~ 40 minutes: everything slower lands in the last bucket

# (route, side, slice)
SampleKey = tuple[str, str, int]


def bucket_of(ms: float) -> int:
    """The histogram bucket of a latency in milliseconds: 0 holds up to `FIRST_MS`."""
    if ms <= FIRST_MS:
        return 0
    return min(MAX_BUCKET, math.ceil(math.log(ms / FIRST_MS) / _LOG_RATIO - 1e-9))


def bucket_bound(index: int) -> float:
    """The upper bound of a bucket, in milliseconds."""
    return FIRST_MS * RATIO ** index


@dataclass(slots=True)
class SideWindow:
    """One side of a route over a window: the sums of its slices (over processes and gateways)."""

    requests: int = 0
    errors: int = 0
    histogram: dict[int, int] = field(default_factory=dict)

    def add(self, requests: int, errors: int, histogram: Mapping[int, int]) -> None:
        self.requests += requests
        self.errors += errors
        for index, n in histogram.items():
            self.histogram[index] = self.histogram.get(index, 0) + n

    @classmethod
    def of(cls, rows: Iterable[tuple[int, int, Mapping[int, int]]]) -> SideWindow:
        out = cls()
        for requests, errors, hist in rows:
            out.add(requests, errors, hist)
        return out

    def percentile_ms(self, q: float) -> float | None:
        """The `q` quantile (0.99: the p99) in milliseconds, as its bucket's upper bound; None when
        nothing was measured."""
        index = quantile_bucket(self.histogram, q)
        return None if index is None else round(bucket_bound(index), 3)

    def p99_ms(self) -> float | None:
        return self.percentile_ms(0.99)


class GuardSamples:
    """The measurements of one serving process since its last flush, per (route, side, slice).

    Only the event loop's thread adds, and `take` swaps the dict in one step, so no lock is needed.
    """

    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data: dict[SampleKey, SideWindow] = {}

    def add(self, route: str, side: str, *, error: bool, seconds: float, now: float) -> None:
        key = (route, side, int(now))
        entry = self._data.get(key)
        if entry is None:
            entry = self._data[key] = SideWindow()
        entry.requests += 1
        if error:
            entry.errors += 1
        hist = entry.histogram
        index = bucket_of(seconds * 1000.0)
        hist[index] = hist.get(index, 0) + 1

    def take(self) -> dict[SampleKey, tuple[int, int, dict[int, int]]]:
        """What was measured since the last take, which starts again from nothing."""
        taken, self._data = self._data, {}
        return {k: (v.requests, v.errors, v.histogram) for k, v in taken.items()}

    def put_back(self, deltas: GuardDeltas) -> None:
        """Return deltas that could not be written, so the next flush carries them."""
        for key, (requests, errors, hist) in deltas.items():
            self._data.setdefault(key, SideWindow()).add(requests, errors, hist)


T = TypeVar("T")


async def measured(samples: GuardSamples | None, route: str, side: str, answer: Awaitable[T],
                   status: Callable[[T], int]) -> T:
    """Await `answer` and, with `samples`, record it as one answer of `side`: an error when it
    raises (not when cancelled) or its `status` is a 5xx. For answers that are not the request's
    own, such as the shadow stage's copies to `to`."""
    if samples is None:
        return await answer
    started = time.perf_counter()
    try:
        result = await answer
    except asyncio.CancelledError:
        raise
    except Exception:
        samples.add(route, side, error=True, seconds=time.perf_counter() - started, now=time.time())
        raise
    samples.add(route, side, error=status(result) >= 500, seconds=time.perf_counter() - started,
                now=time.time())
    return result


class SamplesStore(Protocol):
    """What flushing needs from the store (`routes.store.Store` is one)."""

    def add_guard_samples(self, instance: str, deltas: GuardDeltas) -> None: ...


class SamplesFlusher(Flusher[GuardDeltas]):
    """Writes a process's guard samples to the store every `interval` seconds (`Flusher`)."""

    what = "guard samples"

    def __init__(self, store: SamplesStore, samples: GuardSamples, *, instance: str,
                 interval: float = 2.0) -> None:
        super().__init__(instance=instance, interval=interval)
        self.store = store
        self.samples = samples

    def take(self) -> GuardDeltas | None:
        return self.samples.take()

    def put_back(self, deltas: GuardDeltas) -> None:
        self.samples.put_back(deltas)

    def write(self, deltas: GuardDeltas) -> None:
        self.store.add_guard_samples(self.instance, deltas)
