"""The noise baseline of shadow comparisons, as Diffy does it, and the per-route report. Pure.

Diffy (opendiffy/diffy) sends each request to a primary and a secondary (both the old code) and to
the candidate: what differs between primary and secondary is noise (ids, timestamps, ordering),
what differs only between primary and candidate is signal. Peel does the same with a sampled
second copy to `from`: per field (`Difference.field`, `$.items[*].price`) it counts in how many
old-vs-new pairs the field differed and in how many old-vs-old pairs it did, and compares the two
proportions.

The comparison is Newcombe's hybrid score interval for a difference of two independent proportions
(Newcombe 1998, "Interval estimation for the difference between independent proportions",
Statistics in Medicine 17:873-890, method 10), built from Wilson score intervals (Wilson 1927,
JASA 22:209-212). Wilson behaves at 0 and 100 % and at small n, where the textbook normal interval
collapses to a point (a field that always differs, or never). For a field with old-vs-new rate p1
over n1 pairs and old-vs-old rate p2 over n2 pairs, and a `margin` (an absolute difference in rate,
0.03 by default; Diffy's filter also has an absolute and a relative threshold):

- regression: the interval's lower bound exceeds the margin (the new side differs more, surely);
- noise: the upper bound is within the margin and the old side differed too (p2 > 0): the field
  differs about as often between two runs of the old code;
- below-margin: the upper bound is within the margin but the old side never differed (rare
  differences, or no baseline was sampled);
- inconclusive: neither, yet (too few pairs on one side).

Without any baseline pair the old-vs-old rate is taken as 0, not unknown: every field differing
beyond the margin is then a regression, and nothing is called noise.

Memory is bounded: at most `max_fields` fields per window slot; differences in fields beyond the cap
are counted under `OTHER`. Each field is counted at most once per pair, so every rate is <= 1.
`ShadowCounts` merge by addition, so counts from several workers and gateways can be summed.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from facade.compare import Comparison, Difference

Verdict = Literal["regression", "inconclusive", "below-margin", "noise"]
OTHER = "(other)"
DEFAULT_MAX_FIELDS = 200
DEFAULT_MAX_EXAMPLES = 3
DEFAULT_MARGIN = 0.03
Z_95 = 1.959963984540054
_RANK: dict[Verdict, int] = {"regression": 0, "inconclusive": 1, "below-margin": 2, "noise": 3}
Interval = tuple[float, float]


def wilson(k: int, n: int, z: float = Z_95) -> Interval:
    """Wilson's score interval for k successes in n trials; (0, 1) when n is 0."""
    if n <= 0:
        return (0.0, 1.0)
    k = min(max(k, 0), n)
    p = k / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # Exact ends: rounding would otherwise leave 3e-18 where the bound is 0.
    return (0.0 if k <= 0 else max(0.0, centre - half), 1.0 if k >= n else min(1.0, centre + half))


def newcombe(k1: int, n1: int, k2: int, n2: int, z: float = Z_95) -> Interval:
    """Newcombe's hybrid score interval (method 10) for p1 - p2; an empty side counts as unknown."""
    p1 = k1 / n1 if n1 else 0.0
    p2 = k2 / n2 if n2 else 0.0
    l1, u1 = wilson(k1, n1, z)
    l2, u2 = wilson(k2, n2, z)
    d = p1 - p2
    return (d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))


@dataclass(slots=True)
class ShadowCounts:
    """Counts of one route over some time: pairs (old vs new), baseline pairs (old vs old), and per
    field `[differed old-vs-new, differed old-vs-old]`."""

    pairs: int = 0
    mismatched: int = 0
    baseline_pairs: int = 0
    baseline_mismatched: int = 0
    fields: dict[str, list[int]] = field(default_factory=dict)
    max_fields: int = DEFAULT_MAX_FIELDS

    def add(self, comparison: Comparison, *, baseline: bool = False) -> None:
        """Count one pair: old vs new, or (`baseline`) old vs old."""
        side = 1 if baseline else 0
        if baseline:
            self.baseline_pairs += 1
            self.baseline_mismatched += not comparison.same
        else:
            self.pairs += 1
            self.mismatched += not comparison.same
        # In the comparison's order, so which fields the cap keeps does not depend on set order.
        seen = dict.fromkeys(self._key(d.field) for d in comparison.differences)
        if comparison.truncated:
            # Differences past the comparison's bound were counted but not kept: their fields are
            # unknown, and counted here.
            seen[OTHER] = None
        for key in seen:
            self.fields.setdefault(key, [0, 0])[side] += 1

    def _key(self, name: str) -> str:
        if name in self.fields or len(self.fields) < self.max_fields:
            return name
        return OTHER

    def merge(self, other: ShadowCounts) -> None:
        """Add `other`'s counts. Fields beyond the cap go to `OTHER`, where a pair may count more
        than once: its counts are clamped to the pairs, so it stays a rate (an overstated one)."""
        self.pairs += other.pairs
        self.mismatched += other.mismatched
        self.baseline_pairs += other.baseline_pairs
        self.baseline_mismatched += other.baseline_mismatched
        for name, (new, old) in other.fields.items():
            counts = self.fields.setdefault(self._key(name), [0, 0])
            counts[0] += new
            counts[1] += old
        other_counts = self.fields.get(OTHER)
        if other_counts is not None:
            other_counts[0] = min(other_counts[0], self.pairs)
            other_counts[1] = min(other_counts[1], self.baseline_pairs)


class NoiseWindow:
    """A sliding window of `ShadowCounts` for one route: `slots` slots of `window / slots` seconds.

    The clock is injected (`now`, seconds); memory is at most `slots` x `max_fields` fields, plus
    the latest `max_examples` old-vs-new differences of each of at most `max_fields` fields (their
    excerpts are bounded and credential headers redacted by `facade.compare`).
    """

    __slots__ = ("_examples", "_slots", "max_examples", "max_fields", "slots", "width")

    def __init__(self, window: float = 600.0, slots: int = 10, max_fields: int = DEFAULT_MAX_FIELDS,
                 max_examples: int = DEFAULT_MAX_EXAMPLES) -> None:
        if window <= 0 or slots < 1:
            raise ValueError("window and slots must be positive")
        self.width = window / slots
        self.slots = slots
        self.max_fields = max_fields
        self.max_examples = max_examples
        self._slots: dict[int, ShadowCounts] = {}
        self._examples: dict[str, deque[Difference]] = {}

    def _current(self, now: float) -> ShadowCounts:
        slot = math.floor(now / self.width)
        counts = self._slots.get(slot)
        if counts is None:
            for old in [s for s in self._slots if s <= slot - self.slots]:
                del self._slots[old]
            counts = self._slots[slot] = ShadowCounts(max_fields=self.max_fields)
        return counts

    def add(self, now: float, candidate: Comparison | None = None,
            baseline: Comparison | None = None) -> None:
        """Count a shadowed request: its old-vs-new comparison, and the old-vs-old one if sampled."""
        counts = self._current(now)
        if candidate is not None:
            counts.add(candidate)
            self._keep_examples(candidate)
        if baseline is not None:
            counts.add(baseline, baseline=True)

    def _keep_examples(self, comparison: Comparison) -> None:
        if self.max_examples <= 0:
            return
        for difference in comparison.differences:
            kept = self._examples.get(difference.field)
            if kept is None:
                if len(self._examples) >= self.max_fields:
                    continue
                kept = self._examples[difference.field] = deque(maxlen=self.max_examples)
            kept.append(difference)

    def examples(self) -> dict[str, tuple[Difference, ...]]:
        """The latest old-vs-new differences kept per field, oldest first."""
        return {name: tuple(kept) for name, kept in self._examples.items()}

    def counts(self, now: float) -> ShadowCounts:
        """The sum of the slots inside the window ending at `now`."""
        slot = math.floor(now / self.width)
        total = ShadowCounts(max_fields=self.max_fields)
        for s, counts in self._slots.items():
            if slot - self.slots < s <= slot:
                total.merge(counts)
        return total


@dataclass(frozen=True, slots=True)
class FieldReport:
    """One differing field: its counts, rates, the interval of (new rate - old rate), the verdict."""

    field: str
    new_diffs: int
    old_diffs: int
    new_rate: float
    old_rate: float
    excess: Interval
    verdict: Verdict
    examples: tuple[Difference, ...] = ()


@dataclass(frozen=True, slots=True)
class RouteReport:
    """What a route's shadow shows over a window.

    `mismatch_rate` and its Wilson `interval`: pairs with any difference. `excess` is the widest
    interval of (new rate - old rate) over the fields: `excess[0]` the highest lower bound (some
    field is surely worse by that much), `excess[1]` the highest upper bound (no field is worse by
    more): what the guard gates on.
    """

    pairs: int
    mismatched: int
    mismatch_rate: float
    interval: Interval
    baseline_pairs: int
    baseline_mismatched: int
    baseline_rate: float
    baseline_interval: Interval
    regressions: int
    excess: Interval
    fields: tuple[FieldReport, ...]


def classify(new: int, pairs: int, old: int, baseline_pairs: int, margin: float = DEFAULT_MARGIN,
             z: float = Z_95) -> tuple[Interval, Verdict]:
    """The interval of (old-vs-new rate - old-vs-old rate) of one field, and its verdict."""
    # No baseline: the old side's rate is taken as 0, exactly (see the module's docstring).
    low, high = newcombe(new, pairs, old, baseline_pairs, z) if baseline_pairs else wilson(new, pairs, z)
    if low > margin:
        return (low, high), "regression"
    if high <= margin:
        return (low, high), "noise" if old > 0 else "below-margin"
    return (low, high), "inconclusive"


def report(counts: ShadowCounts, *, margin: float = DEFAULT_MARGIN, z: float = Z_95, top: int = 10,
           examples: Mapping[str, tuple[Difference, ...]] | None = None) -> RouteReport:
    """The report of one route's counts: rates with intervals, and the `top` fields, regressions first,
    each with its `examples` (from `NoiseWindow.examples()`) when given."""
    fields: list[FieldReport] = []
    for name, (new, old) in counts.fields.items():
        if new == 0 and old == 0:
            continue
        excess, verdict = classify(new, counts.pairs, old, counts.baseline_pairs, margin, z)
        fields.append(FieldReport(name, new, old, new / counts.pairs if counts.pairs else 0.0,
                                  old / counts.baseline_pairs if counts.baseline_pairs else 0.0,
                                  excess, verdict, () if examples is None else examples.get(name, ())))
    floor, _ = classify(0, counts.pairs, 0, counts.baseline_pairs, margin, z)
    lows = [f.excess[0] for f in fields] + [floor[0]]
    highs = [f.excess[1] for f in fields] + [floor[1]]
    fields.sort(key=lambda f: (_RANK[f.verdict], -f.excess[0], -f.new_diffs, f.field))
    return RouteReport(
        counts.pairs, counts.mismatched, counts.mismatched / counts.pairs if counts.pairs else 0.0,
        wilson(counts.mismatched, counts.pairs, z),
        counts.baseline_pairs, counts.baseline_mismatched,
        counts.baseline_mismatched / counts.baseline_pairs if counts.baseline_pairs else 0.0,
        wilson(counts.baseline_mismatched, counts.baseline_pairs, z),
        sum(f.verdict == "regression" for f in fields), (max(lows), max(highs)), tuple(fields[:top]))

