"""facade.noise: Wilson and Newcombe intervals, field verdicts, the bounded window, the route report."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facade.compare import CompareRules, Comparison, Difference, Reply, compare
from facade.noise import OTHER, NoiseWindow, ShadowCounts, classify, newcombe, report, wilson


@pytest.mark.parametrize(("k", "n", "low", "high"), [
    # Newcombe 1998 (single proportion), Table I, method 3 (Wilson score)
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
    (0, 0, 0.0, 1.0),
])
def test_wilson_matches_the_published_values(k: int, n: int, low: float, high: float) -> None:
    got = wilson(k, n)
    assert got == pytest.approx((low, high), abs=5e-5)


@pytest.mark.parametrize(("k1", "n1", "k2", "n2", "low", "high"), [
    # Newcombe 1998 (difference of proportions), Table II, method 10
    (56, 70, 48, 80, 0.0524, 0.3339),
    (9, 10, 3, 10, 0.1705, 0.8090),
    (6, 7, 2, 7, 0.0582, 0.8062),
    (5, 56, 0, 29, -0.0381, 0.1926),
])
def test_newcombe_matches_the_published_values(k1: int, n1: int, k2: int, n2: int, low: float,
                                               high: float) -> None:
    assert newcombe(k1, n1, k2, n2) == pytest.approx((low, high), abs=5e-5)


@given(st.integers(0, 500), st.integers(1, 500))
def test_wilson_holds_the_estimate(k: int, n: int) -> None:
    k = min(k, n)
    low, high = wilson(k, n)
    assert 0 <= low <= k / n <= high <= 1


@pytest.mark.parametrize(("new", "pairs", "old", "baseline", "verdict"), [
    (1000, 1000, 500, 500, "noise"),          # a random id: differs in every pair, both sides
    (100, 1000, 0, 500, "regression"),        # 10 % old-vs-new, never old-vs-old
    (1000, 1000, 0, 0, "regression"),         # no baseline: taken as 0, never noise
    (1, 5000, 0, 0, "below-margin"),          # rare, no baseline
    (2, 5000, 0, 2000, "below-margin"),       # rare, and the old side never differed
    (3, 10, 2, 10, "inconclusive"),           # too few pairs to tell
    (1000, 1000, 10, 10, "inconclusive"),     # too few baseline pairs to call it noise
    (600, 1000, 200, 500, "regression"),      # noisy, but much more so old-vs-new
])
def test_classify(new: int, pairs: int, old: int, baseline: int, verdict: str) -> None:
    assert classify(new, pairs, old, baseline)[1] == verdict


@given(st.floats(0.05, 1.0), st.floats(-2.0, 2.0), st.floats(-2.0, 2.0))
@settings(max_examples=300)
def test_a_field_as_noisy_on_both_sides_is_noise(p: float, jitter_new: float, jitter_old: float) -> None:
    # Counts within two standard deviations of the same rate p on both sides.
    n1, n2 = 20_000, 10_000
    k1 = min(n1, max(1, round(p * n1 + jitter_new * math.sqrt(n1 * p * (1 - p)))))
    k2 = min(n2, max(1, round(p * n2 + jitter_old * math.sqrt(n2 * p * (1 - p)))))
    assert classify(k1, n1, k2, n2)[1] == "noise"


@given(st.floats(0.1, 1.0), st.floats(0.0, 0.02), st.integers(1000, 20_000))
@settings(max_examples=300)
def test_a_field_that_differs_only_old_vs_new_is_a_regression(q: float, noise: float, n: int) -> None:
    k_old = round(noise * n)
    assert classify(round(q * n), n, k_old, n)[1] == "regression"


def comparison(*fields: str, total: int | None = None) -> Comparison:
    diffs = tuple(Difference(f, f, "value") for f in fields)
    return Comparison(diffs, len(diffs) if total is None else total, "json")


def test_counts_count_a_field_once_per_pair() -> None:
    counts = ShadowCounts()
    counts.add(Comparison((Difference("$.a[0]", "$.a[*]", "value"), Difference("$.a[1]", "$.a[*]", "value")),
                          2, "json"))
    counts.add(comparison())
    counts.add(comparison("$.a[*]"), baseline=True)
    assert (counts.pairs, counts.mismatched) == (2, 1)
    assert (counts.baseline_pairs, counts.baseline_mismatched) == (1, 1)
    assert counts.fields == {"$.a[*]": [1, 1]}


def test_fields_are_capped_and_the_rest_counted_as_other() -> None:
    counts = ShadowCounts(max_fields=3)
    for i in range(100):
        counts.add(comparison(f"$.f{i}"))
    assert len(counts.fields) == 4
    assert counts.fields[OTHER] == [97, 0]
    # a truncated comparison counts what it could not keep under OTHER
    capped = ShadowCounts()
    capped.add(comparison("$.a", total=5))
    assert capped.fields == {"$.a": [1, 0], OTHER: [1, 0]}


def test_merge_sums() -> None:
    a, b = ShadowCounts(), ShadowCounts()
    a.add(comparison("$.x"))
    b.add(comparison("$.x", "$.y"))
    b.add(comparison("$.x"), baseline=True)
    a.merge(b)
    assert (a.pairs, a.mismatched, a.baseline_pairs) == (2, 2, 1)
    assert a.fields == {"$.x": [2, 1], "$.y": [1, 0]}


def test_the_window_slides() -> None:
    window = NoiseWindow(window=60, slots=6)
    window.add(0.0, comparison("$.old"))
    window.add(30.0, comparison("$.mid"), comparison("$.mid"))
    assert window.counts(59.0).pairs == 2
    at_61 = window.counts(61.0)   # the slot [0, 10) has left the window
    assert (at_61.pairs, at_61.baseline_pairs, set(at_61.fields)) == (1, 1, {"$.mid"})
    assert window.counts(200.0).pairs == 0
    window.add(200.0, comparison("$.new"))
    assert len(window._slots) == 1   # expired slots are dropped, not kept


def test_the_window_is_bounded() -> None:
    window = NoiseWindow(window=60, slots=6, max_fields=10)
    for t in range(600):
        window.add(float(t), comparison(*(f"$.f{t}-{i}" for i in range(5))))
    assert len(window._slots) <= 6
    assert all(len(s.fields) <= 11 for s in window._slots.values())
    assert len(window.counts(599.0).fields) <= 11


def _reply(doc: dict[str, Any]) -> Reply:
    return Reply(200, ((b"content-type", b"application/json"),), json.dumps(doc).encode())


def test_noise_and_a_regression_through_real_comparisons() -> None:
    """A random id on every answer is noise; a price that `to` gets wrong in 10 % of answers is a
    regression; a field that never differs is not reported."""
    rnd = random.Random(15)
    rules = CompareRules.build()
    window = NoiseWindow(window=600, slots=10)

    def answer(price: int) -> Reply:
        return _reply({"request_id": rnd.randrange(1 << 30), "price": price, "name": "tea"})

    for i in range(3000):
        primary = answer(10)
        candidate = answer(11 if rnd.random() < 0.1 else 10)
        secondary = answer(10) if i % 2 == 0 else None   # a sampled second copy to `from`
        window.add(float(i) / 10, compare(primary, candidate, rules),
                   None if secondary is None else compare(primary, secondary, rules))
    got = report(window.counts(300.0))
    verdicts = {f.field: f.verdict for f in got.fields}
    assert verdicts == {"$.price": "regression", "$.request_id": "noise"}
    assert got.fields[0].field == "$.price"           # regressions first
    assert got.pairs == 3000 and got.baseline_pairs == 1500
    assert got.mismatch_rate == 1.0                    # every pair differs somewhere (the id)...
    assert got.regressions == 1                        # ...but only one field is a regression
    low, high = got.excess
    assert 0.03 < low < 0.1 < high < 0.15              # the price's excess, about 10 %


def test_report_of_a_clean_shadow_bounds_the_excess() -> None:
    counts = ShadowCounts()
    for _ in range(1000):
        counts.add(comparison())
    got = report(counts)
    assert got.fields == () and got.regressions == 0
    assert got.excess[0] <= 0 and 0 < got.excess[1] == pytest.approx(wilson(0, 1000)[1])
    assert got.interval == wilson(0, 1000)


def test_report_keeps_the_top_fields() -> None:
    counts = ShadowCounts()
    for i in range(50):
        counts.add(comparison(*(f"$.f{j}" for j in range(i % 20))))
    assert len(report(counts, top=5).fields) == 5


def test_examples_are_the_latest_few_per_field_and_redacted() -> None:
    window = NoiseWindow(max_fields=2, max_examples=2)
    rules = CompareRules.build(headers=["authorization"])
    for i in range(5):
        primary = Reply(200, ((b"content-type", b"application/json"), (b"authorization", b"Bearer a")),
                        json.dumps({"price": 10, "n": 0}).encode())
        candidate = Reply(200, ((b"content-type", b"application/json"), (b"authorization", b"Bearer b")),
                          json.dumps({"price": 10 + i + 1, "n": 1, "extra": i}).encode())
        window.add(float(i), compare(primary, candidate, rules))
    kept = window.examples()
    assert set(kept) == {"headers.authorization", "$.price"}          # capped at max_fields
    assert [d.candidate for d in kept["$.price"]] == ["14", "15"]      # the latest two
    assert all(d.primary == d.candidate == "<redacted>" for d in kept["headers.authorization"])
    got = report(window.counts(5.0), examples=kept)
    by_field = {f.field: f for f in got.fields}
    assert by_field["$.price"].examples == kept["$.price"]
    assert set(by_field) == {"headers.authorization", "$.price", OTHER}   # $.n and $.extra: capped
    assert by_field[OTHER].examples == ()
    assert by_field[OTHER].new_diffs == 5                                   # once per pair, at most
    assert "Bearer" not in repr(got)


def test_merging_into_a_smaller_cap_keeps_other_a_rate() -> None:
    source = ShadowCounts()
    for _ in range(2):
        source.add(comparison("$.p", "$.q", "$.r"))
    total = ShadowCounts(max_fields=1)
    total.merge(source)
    assert total.fields == {"$.p": [2, 0], OTHER: [2, 0]}   # q and r both differed in the same 2 pairs
    assert all(f.new_rate <= 1 for f in report(total).fields)
