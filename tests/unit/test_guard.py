"""facade.guard: the policy's shape, and evaluate's decisions on windows of evidence."""

from __future__ import annotations

import random
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from facade.compare import Comparison, Difference
from facade.guard import (
    DEFAULT_STEPS,
    GuardPolicy,
    ShadowStats,
    SideStats,
    Step,
    Verdict,
    WindowStats,
    evaluate,
)
from facade.noise import ShadowCounts, report
from routes.errors import RuleError

POLICY = GuardPolicy()
NOW = 10_000.0
HEALTHY_TO = SideStats(1000, 5, 120.0)
HEALTHY_FROM = SideStats(20_000, 100, 110.0)
CLEAN_SHADOW = ShadowStats(1000, -0.003, 0.004)


def window(stage: str = "canary", percent: float = 5, to: SideStats = HEALTHY_TO,
           from_: SideStats = HEALTHY_FROM, shadow: ShadowStats | None = None,
           step_since: float = 0.0, start: float | None = None) -> WindowStats:
    return WindowStats(stage, round(percent * 100), step_since,
                       NOW - POLICY.window if start is None else start, NOW, to, from_, shadow)


def test_good_stats_advance_by_the_schedule() -> None:
    seen: list[tuple[str, int | float]] = []
    stage, percent = "shadow", 0.0
    for _ in range(10):
        shadow = CLEAN_SHADOW if stage == "shadow" else None
        verdict = evaluate(POLICY, window(stage, percent, shadow=shadow), NOW)
        if verdict.action != "advance":
            break
        assert verdict.rule == "gates-passed"
        stage, percent = verdict.next_stage, verdict.next_percent
        seen.append((stage, percent))
    assert seen == [("canary", 1), ("canary", 5), ("canary", 25), ("canary", 50), ("migrated", 100)]
    assert (verdict.action, verdict.rule) == ("hold", "done")


@pytest.mark.parametrize(("to", "from_"), [
    (SideStats(0, 0, None), SideStats(0, 0, None)),               # no traffic at all
    (SideStats(0, 0, None), HEALTHY_FROM),                         # the canary gets nothing
    (SideStats(199, 0, 100.0), HEALTHY_FROM),                      # one short of min_requests
    (HEALTHY_TO, SideStats(150, 0, 100.0)),
])
def test_too_few_samples_hold_and_say_so(to: SideStats, from_: SideStats) -> None:
    verdict = evaluate(POLICY, window(to=to, from_=from_), NOW)
    assert (verdict.action, verdict.rule) == ("hold", "min-samples")
    assert "inconclusive" in verdict.reason and str(POLICY.min_requests) in verdict.reason
    assert (verdict.next_stage, verdict.next_percent) == ("canary", 5)


@given(st.integers(0, 199), st.integers(0, 10**6), st.sampled_from(["shadow", "canary"]))
def test_never_promote_without_enough_traffic(to_requests: int, from_requests: int, stage: str) -> None:
    w = window(stage, 5 if stage == "canary" else 0, to=SideStats(to_requests, 0, 10.0),
               from_=SideStats(from_requests, 0, 10.0), shadow=CLEAN_SHADOW)
    assert evaluate(POLICY, w, NOW).action == "hold"


def test_the_shadow_step_needs_compared_pairs() -> None:
    for shadow in (None, ShadowStats(50, -0.01, 0.02)):
        verdict = evaluate(POLICY, window("shadow", 0, shadow=shadow), NOW)
        assert (verdict.action, verdict.rule) == ("hold", "min-samples")
        assert "shadow pairs" in verdict.reason


@pytest.mark.parametrize(("to", "from_", "rule"), [
    (SideStats(200, 10, 100.0), SideStats(10_000, 0, 100.0), "error-rate"),      # 5 % 5xx in one window
    (SideStats(10, 10, None), SideStats(10_000, 0, None), "error-rate"),         # all fail: at once
    (SideStats(1000, 5, 420.0), SideStats(20_000, 100, 120.0), "p99-ratio"),     # +300 ms
])
def test_a_worse_to_rolls_back(to: SideStats, from_: SideStats, rule: str) -> None:
    verdict = evaluate(POLICY, window(to=to, from_=from_), NOW)
    assert (verdict.action, verdict.rule) == ("rollback", rule)
    assert (verdict.next_stage, verdict.next_percent) == ("legacy", 0)
    evidence = dict(verdict.evidence)
    assert evidence["to_requests"] == to.requests and evidence["from_errors"] == from_.errors


def test_a_shadow_regression_rolls_back() -> None:
    counts = ShadowCounts()
    for i in range(1000):
        counts.add(_diff("$.price") if i % 10 == 0 else _diff())
        if i % 2 == 0:
            counts.add(_diff(), baseline=True)
    shadow = ShadowStats.of(report(counts))
    verdict = evaluate(POLICY, window("shadow", 0, shadow=shadow), NOW)
    assert (verdict.action, verdict.rule) == ("rollback", "mismatch")


def _diff(*fields: str) -> Comparison:
    return Comparison(tuple(Difference(f, f, "value") for f in fields), len(fields), "json")


@pytest.mark.parametrize(("to", "rule"), [
    (SideStats(200, 4, 100.0), "error-rate"),      # 2 % vs 0.5 %: not surely worse, not surely fine
    (SideStats(1000, 5, None), "min-samples"),     # no latency measured
])
def test_in_between_is_inconclusive(to: SideStats, rule: str) -> None:
    verdict = evaluate(POLICY, window(to=to), NOW)
    assert (verdict.action, verdict.rule) == ("hold", rule)


def test_a_small_latency_difference_under_the_slack_passes() -> None:
    fast = window(to=SideStats(1000, 5, 3.0), from_=SideStats(20_000, 100, 1.0))   # 3x, but 2 ms
    assert evaluate(POLICY, fast, NOW).action == "advance"


def test_the_step_must_run_a_full_window_inside_itself() -> None:
    young = evaluate(POLICY, window(step_since=NOW - 30), NOW)
    assert (young.action, young.rule) == ("hold", "step-time")
    stale = evaluate(POLICY, window(step_since=NOW - POLICY.window, start=NOW - POLICY.window - 60), NOW)
    assert (stale.action, stale.rule) == ("hold", "stale-window")
    # but a trigger acts at once, however young the step
    bad = evaluate(POLICY, window(to=SideStats(50, 50, None), step_since=NOW - 1), NOW)
    assert bad.action == "rollback"


def test_freeze_stops_advancing_but_not_rolling_back() -> None:
    frozen = GuardPolicy(freeze=True)
    verdict = evaluate(frozen, window(), NOW)
    assert (verdict.action, verdict.rule) == ("hold", "frozen")
    assert evaluate(frozen, window(to=SideStats(200, 20, 100.0)), NOW).action == "rollback"


def test_on_failure_hold_keeps_the_step_and_asks_for_a_freeze() -> None:
    policy = GuardPolicy(on_failure="hold")
    verdict = evaluate(policy, window(to=SideStats(200, 20, 100.0)), NOW)
    assert (verdict.action, verdict.rule, verdict.freeze) == ("hold", "error-rate", True)
    assert (verdict.next_stage, verdict.next_percent) == ("canary", 5)


@pytest.mark.parametrize(("stage", "percent", "rule"), [
    ("legacy", 0, "idle"),       # after a rollback the guard does not start again on its own
    ("retired", 100, "done"),
    ("migrated", 100, "done"),
])
def test_ends_of_the_lifecycle_hold(stage: str, percent: float, rule: str) -> None:
    verdict = evaluate(POLICY, window(stage, percent), NOW)
    assert (verdict.action, verdict.rule) == ("hold", rule)


def test_off_schedule_positions_advance_to_the_next_step() -> None:
    assert evaluate(POLICY, window("canary", 3), NOW).next_percent == 5
    assert evaluate(POLICY, window("canary", 0.5), NOW).next_percent == 1
    short = GuardPolicy(steps=(Step.of("canary", 1000), Step.of("migrated")))
    verdict = evaluate(short, window("shadow", 0, shadow=CLEAN_SHADOW), NOW)
    assert (verdict.next_stage, verdict.next_percent) == ("canary", 10)


def _run_schedule(rnd: random.Random, error_rate: float, extra_ms: float) -> list[Verdict]:
    """One short schedule driven by simulated windows: both sides fail at their own rate.

    A window holds 20,000 requests and `to` sees at least 1,000 of them (the shadow copies, or its
    share): at 1,000 a rise of 5 points in the error rate is beyond the bound in every draw, at 200
    only a blatant failure is (see docs/verification.md).
    """
    verdicts: list[Verdict] = []
    stage, percent = "shadow", 0.0
    for _ in range(20):
        share = 0.0 if stage == "shadow" else percent / 100
        to_n = max(1000, int(20_000 * share))
        from_n = 4000
        to_errors = sum(rnd.random() < error_rate for _ in range(to_n))
        from_errors = sum(rnd.random() < 0.01 for _ in range(from_n))
        w = window(stage, percent, SideStats(to_n, to_errors, 100.0 + extra_ms + rnd.uniform(-10, 10)),
                   SideStats(from_n, from_errors, 100.0 + rnd.uniform(-10, 10)),
                   CLEAN_SHADOW if stage == "shadow" else None)
        verdict = evaluate(POLICY, w, NOW)
        verdicts.append(verdict)
        if verdict.action == "rollback" or verdict.rule == "done":
            break
        if verdict.action == "advance":
            stage, percent = verdict.next_stage, float(verdict.next_percent)
    return verdicts


def test_a_healthy_to_is_never_rolled_back_in_20_runs() -> None:
    rnd = random.Random(2026)
    for _ in range(20):
        verdicts = _run_schedule(rnd, 0.01, 0.0)
        assert not any(v.action == "rollback" for v in verdicts), verdicts[-1]
        assert verdicts[-1].rule == "done"


@pytest.mark.parametrize(("error_rate", "extra_ms", "rule"), [(0.01 + 0.05, 0.0, "error-rate"),
                                                             (0.01, 300.0, "p99-ratio")])
def test_a_failing_to_is_rolled_back_within_one_window(error_rate: float, extra_ms: float, rule: str) -> None:
    rnd = random.Random(7)
    for _ in range(5):
        verdicts = _run_schedule(rnd, error_rate, extra_ms)
        assert (verdicts[0].action, verdicts[0].rule) == ("rollback", rule)


# --- the policy's shape ------------------------------------------------------------------------

def test_defaults_and_round_trip() -> None:
    assert GuardPolicy.parse({}, "g") == GuardPolicy()
    assert GuardPolicy().to_dict() == {}
    data = {"steps": ["shadow", 1, 12.5, "migrated"], "window": "2m", "min_requests": 500,
            "max_error_increase": 0.01, "max_p99_ratio": 1.2, "on_failure": "hold", "freeze": True,
            "confidence": 0.99}
    policy = GuardPolicy.parse(data, "g")
    assert policy.steps == (Step.of("shadow"), Step.of("canary", 100), Step.of("canary", 1250),
                            Step.of("migrated"))
    assert policy.window == 120.0
    assert policy.to_dict() == data
    assert GuardPolicy.parse(policy.to_dict(), "g") == policy
    assert policy.z == pytest.approx(2.5758, abs=1e-4)
    assert GuardPolicy().steps == DEFAULT_STEPS


@pytest.mark.parametrize(("data", "field"), [
    ({"steps": []}, "g.steps"),
    ({"steps": [5, 1]}, "g.steps[1]"),
    ({"steps": ["migrated", "shadow"]}, "g.steps[1]"),
    ({"steps": [1, 1]}, "g.steps[1]"),
    ({"steps": [0]}, "g.steps[0]"),
    ({"steps": [100]}, "g.steps[0]"),
    ({"steps": [1.234]}, "g.steps[0]"),
    ({"steps": ["canary"]}, "g.steps[0]"),
    ({"steps": [True]}, "g.steps[0]"),
    ({"window": "0s"}, "g.window"),
    ({"min_requests": 0}, "g.min_requests"),
    ({"max_p99_ratio": 0.5}, "g.max_p99_ratio"),
    ({"max_error_increase": 2}, "g.max_error_increase"),
    ({"confidence": 1}, "g.confidence"),
    ({"on_failure": "panic"}, "g.on_failure"),
    ({"freeze": "yes"}, "g.freeze"),
    ({"thresholds": {}}, "g.thresholds"),
])
def test_bad_policies_are_refused_naming_the_field(data: dict[str, Any], field: str) -> None:
    with pytest.raises(RuleError) as caught:
        GuardPolicy.parse(data, "g")
    assert caught.value.field == field


@given(st.floats(0.0, 0.05), st.floats(0.05, 0.5), st.integers(1000, 10_000))
def test_an_error_rate_worse_beyond_the_bound_rolls_back(base: float, extra: float, n: int) -> None:
    to = SideStats(n, round((base + extra) * n), 100.0)
    from_ = SideStats(10_000, round(base * 10_000), 100.0)
    verdict = evaluate(POLICY, window(to=to, from_=from_), NOW)
    assert (verdict.action, verdict.rule) == ("rollback", "error-rate")


@given(st.floats(0.0, 0.1), st.integers(2000, 10_000), st.floats(50.0, 500.0), st.floats(0.8, 1.2))
def test_a_to_as_good_as_from_advances(rate: float, n: int, p99: float, latency_ratio: float) -> None:
    to = SideStats(n, round(rate * n), p99 * latency_ratio)
    from_ = SideStats(20_000, round(rate * 20_000), p99)
    verdict = evaluate(POLICY, window(to=to, from_=from_), NOW)
    assert (verdict.action, verdict.next_stage, verdict.next_percent) == ("advance", "canary", 25)


def test_the_pure_core_loads_nothing_of_the_gateway() -> None:
    # The data plane calls these with plain values; they must not drag in the pool or the server.
    code = ("import sys, facade.compare, facade.noise, facade.guard; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'gateway'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          check=True)
    assert done.stdout.strip() == "[]"


def test_with_a_histogram_a_stall_or_two_hold_while_a_slow_to_rolls_back() -> None:
    """The p99 trigger on measured histograms: over 1 % of to's requests surely slower than the
    bound rolls back; two stalls in 140 requests move the p99 above it but only hold."""
    policy = GuardPolicy(min_requests=100, max_error_increase=0.05)
    fast = ((20.0, 22.0, 138),)
    from_ = SideStats(140, 0, 22.0, ((20.0, 22.0, 140),))
    stalls = SideStats(140, 0, 220.0, (*fast, (200.0, 220.0, 2)))
    verdict = evaluate(policy, window(to=stalls, from_=from_, step_since=NOW - 1000), NOW)
    assert (verdict.action, verdict.rule) == ("hold", "p99-ratio")
    assert verdict.reason.startswith("inconclusive: to's p99 220 ms is above 58 ms")
    slow = SideStats(140, 0, 330.0, ((300.0, 330.0, 140),))
    verdict = evaluate(policy, window(to=slow, from_=from_, step_since=NOW - 1000), NOW)
    assert (verdict.action, verdict.rule) == ("rollback", "p99-ratio")
    assert "140 of 140 requests (100.0%) slower than 58 ms" in verdict.reason
    few = SideStats(140, 0, 330.0, ((20.0, 22.0, 130), (300.0, 330.0, 10)))  # 7 %
    assert evaluate(policy, window(to=few, from_=from_, step_since=NOW - 1000), NOW).action == "rollback"
