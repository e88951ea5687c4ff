"""bench/run.py's A/B rounds: peel and the baseline change places every other round, and the
comparison's paired ratio is the median of each round's own ratio."""

from __future__ import annotations

import pytest

from bench.run import BASE, TARGETS, paired_ratio, round_order


def test_peel_and_the_baseline_change_places_every_other_round() -> None:
    targets = (*TARGETS, BASE)
    assert round_order(targets, 0) == ("direct", "nginx", "peel", BASE)
    assert round_order(targets, 1) == ("direct", "nginx", BASE, "peel")
    assert round_order(targets, 2) == targets
    firsts = [next(t for t in round_order(targets, rnd) if t in ("peel", BASE)) for rnd in range(6)]
    assert firsts.count("peel") == firsts.count(BASE) == 3


def test_without_a_baseline_the_order_never_changes() -> None:
    assert all(round_order(TARGETS, rnd) == TARGETS for rnd in range(4))


def test_the_paired_ratio_cancels_a_drift_the_medians_keep() -> None:
    # the machine slows down round after round; peel costs 5 % less than the baseline in each
    before = [60.0, 70.0, 80.0, 90.0]
    now = [b * 0.95 for b in [66.0, 62.0, 90.0, 78.0]]
    assert paired_ratio([b * 0.95 for b in before], before) == pytest.approx(0.95)
    # rounds out of step: the median of the rounds' ratios, not the ratio of the medians
    ratios = sorted(a / b for a, b in zip(now, before, strict=True))
    assert paired_ratio(now, before) == pytest.approx((ratios[1] + ratios[2]) / 2)
    with pytest.raises(ValueError):
        paired_ratio([1.0], [1.0, 2.0])
