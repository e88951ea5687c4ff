"""Sparse latency histograms ({bucket: count}, merged by adding counts): the bucket at a quantile.

The guard's windows (`facade.window`: buckets 10 % apart, read as their upper bound) and the
inventory's templates (`facade.inventory`: about 5 % apart, read as their middle and clamped to
what was seen) bucket durations each their own way; both read a quantile as the first bucket, in
order, whose running count reaches that share of the whole.
"""

from __future__ import annotations

from collections.abc import Mapping


def quantile_bucket(histogram: Mapping[int, int], q: float) -> int | None:
    """The bucket of the `q` quantile (0.99: the p99) of `histogram`; None when it is empty."""
    total = sum(histogram.values())
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= rank:
            return bucket
    return max(histogram)  # pragma: no cover - the running count ends at the total
