"""The bucket at a quantile of a sparse histogram (facade/histogram.py), shared by the guard's
windows and the inventory."""

from __future__ import annotations

import math
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from facade.histogram import quantile_bucket


def test_an_empty_histogram_has_no_quantile() -> None:
    assert quantile_bucket({}, 0.5) is None
    assert quantile_bucket({3: 0}, 0.5) is None


def test_the_quantile_is_the_first_bucket_whose_running_count_reaches_it() -> None:
    histogram = {7: 50, 2: 49, 40: 1}  # in any order
    assert quantile_bucket(histogram, 0.0) == 2
    assert quantile_bucket(histogram, 0.49) == 2
    assert quantile_bucket(histogram, 0.5) == 7
    assert quantile_bucket(histogram, 0.99) == 7
    assert quantile_bucket(histogram, 0.991) == 40
    assert quantile_bucket(histogram, 1.0) == 40


@given(st.lists(st.integers(-50, 50), min_size=1, max_size=300),
       st.floats(0.001, 1.0, allow_nan=False))
def test_it_is_the_nearest_rank_quantile_of_the_values_it_counts(values: list[int], q: float) -> None:
    ordered = sorted(values)
    assert quantile_bucket(Counter(values), q) == ordered[max(0, math.ceil(q * len(values)) - 1)]
