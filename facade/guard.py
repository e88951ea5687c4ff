"""The guard: promote a migration step by step on measured evidence, or roll it back. Pure.

    policy = GuardPolicy.parse(route["migration"]["guard"], "routes[0].migration.guard")
    evaluate(policy, window: WindowStats, now) -> Verdict(action, reason, rule, next_stage, next_percent)

The rules are data (`GuardPolicy`), the decision one function, like `facade.decision`. Every check
compares `to` with `from` over the same window, never `to` against an absolute number alone:

| check | trigger (rollback) | gate (needed to advance) |
|---|---|---|
| error rate | the interval of to - from lies above `max_error_increase` | its upper bound is within it |
| p99 latency | to > `max_p99_ratio` x from + `p99_slack_ms` (*) | to <= that bound |
| shadow mismatch | some field's excess over noise surely > `max_mismatch` | every field's within it |

(*) With a latency histogram (`SideStats.latency`), only when more than 1 % of to's requests are
surely slower than that bound (the lower Wilson bound of their share): one stall in a small window
moves a p99 but is no regression; it holds, inconclusive, instead.

Error rates are compared with Newcombe's interval for a difference of proportions (`facade.noise`),
so a trigger fires only on evidence (ten failures out of ten fire at once, one out of ten does not)
and a gate passes only when the sample bounds the difference: too few requests hold, they never
pass silently (Flagger stalls or fails a canary with no traffic, flagger#1035, #883). Between
"surely worse" and "surely fine" the guard holds: inconclusive.

Order: triggers first (they act even on a frozen guard, unless `on_failure: hold`, which holds and
asks for a freeze instead: flagger#1186, a database migration that cannot be rolled back); then the
freeze; then the step must have run one full `window` and the window must lie inside the step;
then the minimum samples and the gates; then the next step of `steps`. At `legacy` the guard
starts nothing (after a rollback it stays there until an operator starts again).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from facade.noise import RouteReport, newcombe, wilson
from routes.guard_spec import DEFAULT_STEPS, DEFAULTS, STAGE_ORDER, GuardPolicy, OnFailure, Step
from routes.migration import format_percent

__all__ = ["DEFAULTS", "DEFAULT_STEPS", "STAGE_ORDER", "Action", "GuardPolicy", "OnFailure", "ShadowStats",
           "SideStats", "Step", "Verdict", "WindowStats", "evaluate"]

Action = Literal["hold", "advance", "rollback"]


@dataclass(frozen=True, slots=True)
class SideStats:
    """One side over the window: requests answered, errors among them (5xx, connect errors,
    timeouts), the p99 latency in milliseconds (None: not measured) and, when measured as a
    histogram, its buckets `(low_ms, high_ms, count)`, which let the p99 trigger count the requests
    surely slower than its bound instead of trusting one high percentile of a small sample."""

    requests: int = 0
    errors: int = 0
    p99_ms: float | None = None
    latency: tuple[tuple[float, float, int], ...] = ()

    def slower_than(self, bound_ms: float) -> int:
        """Requests whose latency was surely above `bound_ms` (their bucket starts at or above it)."""
        return sum(n for low, _, n in self.latency if low >= bound_ms)


@dataclass(frozen=True, slots=True)
class ShadowStats:
    """The shadow comparison over the window: pairs compared, and the excess of old-vs-new over
    old-vs-old differences of the worst field (`facade.noise.RouteReport.excess`)."""

    pairs: int
    excess_low: float
    excess_high: float

    @classmethod
    def of(cls, report: RouteReport) -> ShadowStats:
        return cls(report.pairs, report.excess[0], report.excess[1])


@dataclass(frozen=True, slots=True)
class WindowStats:
    """Where the migration stands and what one window measured.

    `stage`/`share`: the migration now; `step_since`: when it got there; `start`/`end`: the window.
    In the shadow stage `to` counts the shadow copies' answers. All times are seconds on one clock.
    """

    stage: str
    share: int
    step_since: float
    start: float
    end: float
    to: SideStats
    from_: SideStats
    shadow: ShadowStats | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the guard does now: `action`, the `rule` that decided, a `reason` for people, the target
    (`next_stage`, `next_percent`; the current ones for hold), the window's numbers as `evidence`,
    and `freeze` when a trigger fired under `on_failure: hold`."""

    action: Action
    rule: str
    reason: str
    next_stage: str
    next_percent: int | float
    evidence: tuple[tuple[str, float], ...] = ()
    freeze: bool = False


def _position(steps: Sequence[Step], here: Step) -> int:
    """The index of the last step at or below `here` (-1: before the first)."""
    index = -1
    for i, step in enumerate(steps):
        if step <= here:
            index = i
    return index


def _evidence(w: WindowStats, z: float) -> tuple[tuple[str, float], ...]:
    out: list[tuple[str, float]] = [
        ("to_requests", w.to.requests), ("to_errors", w.to.errors),
        ("from_requests", w.from_.requests), ("from_errors", w.from_.errors)]
    if w.to.requests and w.from_.requests:
        low, high = newcombe(w.to.errors, w.to.requests, w.from_.errors, w.from_.requests, z)
        out += [("error_increase_low", round(low, 6)), ("error_increase_high", round(high, 6))]
    if w.to.p99_ms is not None:
        out.append(("to_p99_ms", w.to.p99_ms))
    if w.from_.p99_ms is not None:
        out.append(("from_p99_ms", w.from_.p99_ms))
    if w.shadow is not None:
        out += [("shadow_pairs", w.shadow.pairs), ("mismatch_excess_low", round(w.shadow.excess_low, 6)),
                ("mismatch_excess_high", round(w.shadow.excess_high, 6))]
    return tuple(out)


def _triggers(policy: GuardPolicy, w: WindowStats, z: float) -> tuple[str, str] | None:
    """The first rollback trigger that fires: (rule, reason), or None."""
    if w.to.requests and w.from_.requests:
        low, _ = newcombe(w.to.errors, w.to.requests, w.from_.errors, w.from_.requests, z)
        if low > policy.max_error_increase:
            return ("error-rate", f"to's error rate {w.to.errors}/{w.to.requests} exceeds from's "
                    f"{w.from_.errors}/{w.from_.requests} by at least {low:.2%} "
                    f"(limit {policy.max_error_increase:.2%})")
    if (w.to.p99_ms is not None and w.from_.p99_ms is not None and w.to.requests >= policy.min_requests
            and w.from_.requests >= policy.min_requests):
        bound = policy.max_p99_ratio * w.from_.p99_ms + policy.p99_slack_ms
        if w.to.latency:
            # to's p99 is surely above the bound when more than 1 % of its requests surely are:
            # a stall or two in a small window is not a regression
            slow = w.to.slower_than(bound)
            low, _ = wilson(slow, w.to.requests, z)
            if low > 0.01:
                return ("p99-ratio", f"to's p99 {w.to.p99_ms:g} ms is above {policy.max_p99_ratio:g} x "
                        f"from's {w.from_.p99_ms:g} ms + {policy.p99_slack_ms:g} ms: {slow} of "
                        f"{w.to.requests} requests ({slow / w.to.requests:.1%}) slower than "
                        f"{bound:g} ms, at least {low:.1%}")
        elif w.to.p99_ms > bound:
            return ("p99-ratio", f"to's p99 {w.to.p99_ms:g} ms is above {policy.max_p99_ratio:g} x from's "
                    f"{w.from_.p99_ms:g} ms + {policy.p99_slack_ms:g} ms")
    if w.shadow is not None and w.shadow.pairs and w.shadow.excess_low > policy.max_mismatch:
        return ("mismatch", f"a field differs old-vs-new more than old-vs-old by at least "
                f"{w.shadow.excess_low:.2%} over {w.shadow.pairs} pairs (limit {policy.max_mismatch:.2%})")
    return None


def _gates(policy: GuardPolicy, w: WindowStats, z: float) -> tuple[str, str] | None:
    """The first gate that does not pass yet: (rule, reason), or None when all pass."""
    for side, stats in (("to", w.to), ("from", w.from_)):
        if stats.requests < policy.min_requests:
            return ("min-samples", f"inconclusive: {side} answered {stats.requests} requests in the "
                    f"window, the guard needs {policy.min_requests}")
    if w.stage == "shadow" and (w.shadow is None or w.shadow.pairs < policy.min_pairs):
        pairs = 0 if w.shadow is None else w.shadow.pairs
        return ("min-samples", f"inconclusive: {pairs} shadow pairs compared, the guard needs "
                f"{policy.min_pairs}")
    _, high = newcombe(w.to.errors, w.to.requests, w.from_.errors, w.from_.requests, z)
    if high > policy.max_error_increase:
        return ("error-rate", f"inconclusive: to's error rate may exceed from's by up to {high:.2%} "
                f"(limit {policy.max_error_increase:.2%}); more traffic will tell")
    if w.to.p99_ms is None or w.from_.p99_ms is None:
        return ("min-samples", "inconclusive: p99 latency not measured on both sides")
    bound = policy.max_p99_ratio * w.from_.p99_ms + policy.p99_slack_ms
    if w.to.p99_ms > bound:
        return ("p99-ratio", f"inconclusive: to's p99 {w.to.p99_ms:g} ms is above {bound:g} ms "
                f"({policy.max_p99_ratio:g} x from's + {policy.p99_slack_ms:g} ms) but not surely: "
                f"{w.to.slower_than(bound)} of {w.to.requests} requests were")
    if w.shadow is not None and w.shadow.pairs and w.shadow.excess_high > policy.max_mismatch:
        return ("mismatch", f"inconclusive: a field may differ old-vs-new more than old-vs-old by up to "
                f"{w.shadow.excess_high:.2%} (limit {policy.max_mismatch:.2%})")
    return None


def evaluate(policy: GuardPolicy, window: WindowStats, now: float) -> Verdict:
    """The guard's verdict on one window (see the module's docstring for the order of the rules)."""
    w = window
    z = policy.z
    evidence = _evidence(w, z)
    percent = format_percent(w.share)

    def hold(rule: str, reason: str, freeze: bool = False) -> Verdict:
        return Verdict("hold", rule, reason, w.stage, percent, evidence, freeze)

    if w.stage not in STAGE_ORDER:
        return hold("idle", f"the guard does not act on stage {w.stage}")
    if w.stage == "legacy":
        return hold("idle", "at legacy: the guard starts nothing on its own (start the schedule by hand)")
    if w.stage == "retired":
        return hold("done", "retired: nothing left to guard")
    fired = _triggers(policy, w, z)
    if fired is not None:
        rule, reason = fired
        if policy.on_failure == "hold":
            return hold(rule, f"{reason}; on_failure: hold keeps this step and freezes the guard", True)
        return Verdict("rollback", rule, reason, "legacy", 0, evidence)
    if policy.freeze:
        return hold("frozen", "frozen: the guard neither advances nor, without a trigger, rolls back")
    steps = policy.steps
    here = _position(steps, Step.of(w.stage, w.share))
    if here == len(steps) - 1:
        return hold("done", f"the schedule is complete at {w.stage}")
    if now - w.step_since < policy.window:
        return hold("step-time", f"the step has run {now - w.step_since:.0f} s of the "
                    f"{policy.window:g} s window")
    if w.start < w.step_since:
        return hold("stale-window", "the window began before the current step: waiting for a window "
                    "inside it")
    blocked = _gates(policy, w, z)
    if blocked is not None:
        return hold(*blocked)
    nxt = steps[here + 1]
    return Verdict("advance", "gates-passed", f"the window passed every gate: {w.stage} "
                   f"{percent} -> {nxt.stage} {format_percent(nxt.share)}", nxt.stage,
                   format_percent(nxt.share), evidence)
