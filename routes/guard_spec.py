"""A migration's `guard:` block as a value: the schedule, the window, minimum samples, gates, triggers.

    migration:
      to: orders
      stage: canary
      percent: 5
      guard:                            # every field optional
        steps: [shadow, 1, 5, 25, 50, migrated]
        window: 5m
        min_requests: 200               # per side and window
        min_pairs: 200                  # shadow pairs, in the shadow step
        max_error_increase: 0.02        # to's error rate minus from's
        max_p99_ratio: 1.5              # to's p99 <= 1.5 x from's + p99_slack_ms
        p99_slack_ms: 25
        max_mismatch: 0.03              # a field's old-vs-new minus old-vs-old rate
        confidence: 0.95
        on_failure: rollback            # or hold: keep the step and freeze
        freeze: false

`GuardPolicy.parse` refuses a wrong block with `RuleError` naming the field; `to_dict()` prints the
canonical form, defaults left out, so export then apply changes nothing. What the guard does with a
window is `facade.guard.evaluate`; this module is only the rules as data, so `routes.migration`
can hold them (routes/ imports nothing of facade/).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from statistics import NormalDist
from typing import Any, Literal

from routes.errors import RuleError
from routes.fields import duration, format_duration, integer, mapping, number, sequence, type_name
from routes.migration import FULL_SHARE, format_percent, parse_percent

OnFailure = Literal["rollback", "hold"]
# The stages a guard moves through, in order; `legacy` is where a rollback lands.
STAGE_ORDER = {"legacy": 0, "shadow": 1, "canary": 2, "migrated": 3, "retired": 4}


@dataclass(frozen=True, slots=True, order=True)
class Step:
    """One step of the schedule: `shadow`, `canary` at `share` basis points, or `migrated`."""

    rank: int
    share: int
    stage: str

    @classmethod
    def of(cls, stage: str, share: int = 0) -> Step:
        if stage == "migrated":
            share = FULL_SHARE
        elif stage != "canary":
            share = 0
        return cls(STAGE_ORDER[stage], share, stage)

    def to_value(self) -> str | int | float:
        return format_percent(self.share) if self.stage == "canary" else self.stage


DEFAULT_STEPS = (Step.of("shadow"), Step.of("canary", 100), Step.of("canary", 500), Step.of("canary", 2500),
                 Step.of("canary", 5000), Step.of("migrated"))
DEFAULTS: dict[str, Any] = {"window": 300.0, "min_requests": 200, "min_pairs": 200,
                            "max_error_increase": 0.02, "max_p99_ratio": 1.5, "p99_slack_ms": 25.0,
                            "max_mismatch": 0.03, "confidence": 0.95, "on_failure": "rollback",
                            "freeze": False}


def _steps(value: object, where: str) -> tuple[Step, ...]:
    raw = sequence(value, where)
    if not raw:
        raise RuleError(where, "needs at least one step", raw)
    steps: list[Step] = []
    for i, item in enumerate(raw):
        here = f"{where}[{i}]"
        if item in ("shadow", "migrated"):
            step = Step.of(str(item))
        elif isinstance(item, int | float) and not isinstance(item, bool):
            share = parse_percent(item, here)
            if not 0 < share < FULL_SHARE:
                raise RuleError(here, "a canary step is a percentage above 0 and below 100 "
                                "(write migrated for 100)", item)
            step = Step.of("canary", share)
        else:
            raise RuleError(here, f"must be shadow, a canary percentage or migrated, not {type_name(item)}",
                            item)
        if steps and step <= steps[-1]:
            raise RuleError(here, "steps must rise: shadow, then rising percentages, then migrated", item)
        steps.append(step)
    return tuple(steps)


@dataclass(frozen=True, slots=True)
class GuardPolicy:
    """A migration's guard: the schedule, the window, minimum samples, gates and triggers."""

    steps: tuple[Step, ...] = DEFAULT_STEPS
    window: float = DEFAULTS["window"]
    min_requests: int = DEFAULTS["min_requests"]
    min_pairs: int = DEFAULTS["min_pairs"]
    max_error_increase: float = DEFAULTS["max_error_increase"]
    max_p99_ratio: float = DEFAULTS["max_p99_ratio"]
    p99_slack_ms: float = DEFAULTS["p99_slack_ms"]
    max_mismatch: float = DEFAULTS["max_mismatch"]
    confidence: float = DEFAULTS["confidence"]
    on_failure: OnFailure = "rollback"
    freeze: bool = False

    @property
    def z(self) -> float:
        """The normal quantile of the two-sided `confidence` (0.95 -> 1.96)."""
        return NormalDist().inv_cdf(1 - (1 - self.confidence) / 2)

    @classmethod
    def parse(cls, data: object, where: str) -> GuardPolicy:
        """From the document's shape; refuses with `RuleError` naming the field."""
        m = mapping(data, where, ("steps", *DEFAULTS))
        steps = _steps(m["steps"], f"{where}.steps") if "steps" in m else DEFAULT_STEPS
        on_failure = m.get("on_failure", "rollback")
        if on_failure not in ("rollback", "hold"):
            raise RuleError(f"{where}.on_failure", "must be rollback or hold", on_failure)
        freeze = m.get("freeze", False)
        if not isinstance(freeze, bool):
            raise RuleError(f"{where}.freeze", "must be true or false", freeze)
        return cls(
            steps, duration(m.get("window", DEFAULTS["window"]), f"{where}.window"),
            integer(m.get("min_requests", DEFAULTS["min_requests"]), f"{where}.min_requests", 1, 10**9),
            integer(m.get("min_pairs", DEFAULTS["min_pairs"]), f"{where}.min_pairs", 1, 10**9),
            number(m.get("max_error_increase", DEFAULTS["max_error_increase"]),
                   f"{where}.max_error_increase", 0.0, 1.0),
            number(m.get("max_p99_ratio", DEFAULTS["max_p99_ratio"]), f"{where}.max_p99_ratio", 1.0, 100.0),
            number(m.get("p99_slack_ms", DEFAULTS["p99_slack_ms"]), f"{where}.p99_slack_ms", 0.0, 60_000.0),
            number(m.get("max_mismatch", DEFAULTS["max_mismatch"]), f"{where}.max_mismatch", 0.0, 1.0),
            _confidence(m.get("confidence", DEFAULTS["confidence"]), f"{where}.confidence"),
            "hold" if on_failure == "hold" else "rollback", freeze)

    def to_dict(self) -> dict[str, Any]:
        """The canonical form, defaults left out: `parse(to_dict())` gives the same policy."""
        out: dict[str, Any] = {}
        if self.steps != DEFAULT_STEPS:
            out["steps"] = [s.to_value() for s in self.steps]
        for name, default in DEFAULTS.items():
            value = getattr(self, name)
            if value != default:
                out[name] = format_duration(value) if name == "window" else value
        return out

    def with_freeze(self, freeze: bool) -> GuardPolicy:
        """The same policy, frozen or not (`peel migrate guard ROUTE --freeze`)."""
        return replace(self, freeze=freeze)


def _confidence(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.5 <= value < 1:
        raise RuleError(where, "must be a probability from 0.5 to below 1 (0.95)", value)
    return float(value)
