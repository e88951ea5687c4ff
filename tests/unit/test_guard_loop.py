"""The guard as it runs (issue 15, items 7-9): the `guard:` block of a migration, the measurements
(histogram, per-second samples, their sums in the store) and the leader's loop on a real SQLite
store with a clock the test moves: advance, roll back, hold without traffic, freeze."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from facade.guard_run import assess, describe, window_bounds
from facade.window import GuardSamples, SideWindow, bucket_bound, bucket_of
from gateway.server.leader import GuardJob
from routes import store as store_module
from routes.errors import RuleError
from routes.migration import Migration
from routes.model import Document
from routes.store import Store

LAG = 1.0
GUARD = {"steps": [1, 5, "migrated"], "window": "3s", "min_requests": 50, "p99_slack_ms": 5}


def doc(stage: str = "canary", percent: float = 1, guard: dict[str, Any] | None = None) -> Document:
    migration: dict[str, Any] = {"to": "orders", "stage": stage, "percent": percent}
    if guard is not None:
        migration["guard"] = guard
    return Document.parse({
        "services": [{"name": "legacy", "endpoints": ["http://10.0.0.5:8080"]},
                     {"name": "orders", "endpoints": ["http://10.0.0.7:9000"]}],
        "routes": [{"name": "orders", "match": {"path_prefix": "/orders"}, "service": "legacy",
                    "migration": migration}]})


# -- the block in the document ------------------------------------------------------------------

def test_the_guard_block_round_trips_through_the_migration() -> None:
    block = {"steps": ["shadow", 1, 10, "migrated"], "window": "3s", "min_requests": 50,
             "max_error_increase": 0.01, "on_failure": "hold", "freeze": True}
    m = Migration.parse({"to": "orders", "stage": "canary", "percent": 1, "guard": block}, "m")
    assert m.guard is not None and m.guard.window == 3.0 and m.guard.freeze
    assert m.to_dict()["guard"] == block
    assert Migration.parse(m.to_dict(), "m") == m
    empty = Migration.parse({"to": "orders", "guard": {}}, "m")   # every default: kept as {}
    assert empty.to_dict()["guard"] == {} and Migration.parse(empty.to_dict(), "m") == empty
    assert "guard" not in Migration.parse({"to": "orders"}, "m").to_dict()


@pytest.mark.parametrize(("block", "field"), [
    ({"steps": [5, 1]}, "routes[0].migration.guard.steps[1]"),
    ({"window": "soon"}, "routes[0].migration.guard.window"),
    ({"min_requests": 0}, "routes[0].migration.guard.min_requests"),
    ({"on_failure": "panic"}, "routes[0].migration.guard.on_failure"),
    ({"freeze": "yes"}, "routes[0].migration.guard.freeze"),
    ({"max_p99": 2}, "routes[0].migration.guard"),
])
def test_a_wrong_guard_block_is_refused_naming_the_field(block: dict[str, Any], field: str) -> None:
    with pytest.raises(RuleError) as err:
        Migration.parse({"to": "orders", "guard": block}, "routes[0].migration")
    assert err.value.field.startswith(field), err.value.field


# -- the measurements ---------------------------------------------------------------------------

def test_the_histogram_p99_is_within_ten_percent_above_the_true_value() -> None:
    rng = random.Random(7)
    for _ in range(20):
        values = [rng.lognormvariate(3, 1) for _ in range(2000)]
        side = SideWindow()
        for v in values:
            side.add(1, 0, {bucket_of(v): 1})
        true = sorted(values)[int(0.99 * len(values)) - 1]
        p99 = side.p99_ms()
        assert p99 is not None and true <= p99 <= true * 1.1 + 1e-6
    assert SideWindow().p99_ms() is None
    assert bucket_of(0.05) == 0 and bucket_bound(bucket_of(250.0)) >= 250.0


def test_samples_are_taken_once_and_put_back_when_a_write_fails() -> None:
    s = GuardSamples()
    s.add("orders", "to", error=True, seconds=0.010, now=100.2)
    s.add("orders", "to", error=False, seconds=0.012, now=100.9)
    s.add("orders", "from", error=False, seconds=0.005, now=101.0)
    taken = s.take()
    assert taken[("orders", "to", 100)][:2] == (2, 1) and taken[("orders", "from", 101)][:2] == (1, 0)
    assert s.take() == {}
    s.put_back(taken)
    s.add("orders", "to", error=False, seconds=0.010, now=100.5)
    assert s.take()[("orders", "to", 100)][:2] == (3, 1)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(f"sqlite:///{tmp_path / 'peel.db'}")
    s.upgrade()
    return s


def test_the_store_sums_a_window_over_processes_and_prunes_old_slices(store: Store) -> None:
    store.add_guard_samples("a:1", {("orders", "to", 100): (3, 1, {10: 3}),
                                    ("orders", "to", 103): (5, 0, {10: 5})})
    store.add_guard_samples("b:2", {("orders", "to", 100): (2, 0, {11: 2})})
    store.add_guard_samples("a:1", {("orders", "to", 100): (1, 0, {11: 1})})
    rows = store.guard_window("orders", 100, 103)   # [100, 103): slice 103 is outside
    total = SideWindow.of((r, e, h) for side, r, e, h in rows if side == "to")
    assert (total.requests, total.errors, total.histogram) == (6, 1, {10: 3, 11: 3})
    assert store.prune_guard_samples(101) == 2
    assert [r[1] for r in store.guard_window("orders", 0, 200)] == [5]


# -- the loop -------------------------------------------------------------------------------------

class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def traffic(store: Store, start: float, seconds: int, *, to: tuple[int, int, float],
            from_: tuple[int, int, float] = (100, 0, 20.0)) -> None:
    """`seconds` slices from `start`: (requests, errors, latency ms) per side and second."""
    deltas: dict[tuple[str, str, int], tuple[int, int, dict[int, int]]] = {}
    for i in range(seconds):
        for side, (n, errors, ms) in (("to", to), ("from", from_)):
            if n:
                deltas[("orders", side, int(start) + i)] = (n, errors, {bucket_of(ms): n})
    store.add_guard_samples("test:1", deltas)


def setup(store: Store, stage: str = "canary", percent: float = 1,
          guard: dict[str, Any] | None = None) -> tuple[GuardJob, Clock]:
    store.commit(doc(stage, percent, GUARD if guard is None else guard), actor="test", reason="setup")
    clock = Clock(store.latest().created_at.timestamp() + 0.5)
    return GuardJob(store, lag=LAG, clock=clock), clock


def stage_of(store: Store) -> tuple[str, int | float]:
    m = store.latest().document.route("orders").migration  # type: ignore[union-attr]
    assert m is not None
    return m.stage, m.percent


def test_a_healthy_to_advances_one_step_per_full_window(store: Store) -> None:
    job, clock = setup(store)
    t0 = clock.now
    traffic(store, t0 - 10, 40, to=(100, 0, 22.0))
    assert job.turn() == []
    assert job.last["orders"].verdict.rule == "step-time"   # the step has not run a window yet
    clock.now = t0 + 3 + LAG + 1.5
    [(route, action, version)] = job.turn()
    assert (route, action) == ("orders", "shift") and stage_of(store) == ("canary", 5)
    info = store.get(version)
    assert info.actor == "guard" and "gates-passed" in info.reason and "to_requests=" in info.reason
    [t] = store.transitions("orders", 1)
    assert (t.action, t.actor, t.to_stage, t.share) == ("shift", "guard", "canary", 500)


def test_a_failing_to_is_rolled_back_in_its_first_window(store: Store) -> None:
    job, clock = setup(store)
    t0 = clock.now
    traffic(store, t0, 10, to=(100, 5, 22.0), from_=(100, 0, 20.0))   # 5 % 5xx against none
    clock.now = t0 + 3 + LAG + 0.5
    [(_, action, version)] = job.turn()
    assert action == "rollback" and stage_of(store) == ("legacy", 0)
    reason = store.get(version).reason
    assert "rolled back" in reason and "(error-rate)" in reason and "to_errors=15" in reason
    assert job.turn() == [] and "orders" not in job.last   # at legacy the guard starts nothing


def test_a_slow_to_is_rolled_back_on_its_p99(store: Store) -> None:
    job, clock = setup(store)
    t0 = clock.now
    traffic(store, t0, 10, to=(100, 0, 320.0), from_=(100, 0, 20.0))   # +300 ms
    clock.now = t0 + 3 + LAG + 0.5
    [(_, action, version)] = job.turn()
    assert action == "rollback" and "(p99-ratio)" in store.get(version).reason


def test_no_traffic_holds_and_says_so(store: Store) -> None:
    job, clock = setup(store)
    clock.now += 3 + LAG + 2
    assert job.turn() == [] and stage_of(store) == ("canary", 1)
    verdict = job.last["orders"].verdict
    assert (verdict.action, verdict.rule) == ("hold", "min-samples")
    assert "to answered 0 requests in the window, the guard needs 50" in verdict.reason


def test_frozen_holds_but_still_rolls_back(store: Store) -> None:
    job, clock = setup(store, guard={**GUARD, "freeze": True})
    t0 = clock.now
    traffic(store, t0, 4, to=(30, 0, 22.0))
    clock.now = t0 + 3 + LAG + 0.5
    assert job.turn() == [] and job.last["orders"].verdict.rule == "frozen"
    traffic(store, t0 + 4, 4, to=(100, 50, 22.0))
    clock.now = t0 + 7 + LAG + 0.5
    assert [a for _, a, _ in job.turn()] == ["rollback"]


def test_on_failure_hold_freezes_instead_of_rolling_back(store: Store) -> None:
    job, clock = setup(store, guard={**GUARD, "on_failure": "hold"})
    t0 = clock.now
    traffic(store, t0, 10, to=(100, 50, 22.0))
    clock.now = t0 + 3 + LAG + 0.5
    [(_, action, version)] = job.turn()
    assert action == "freeze" and stage_of(store) == ("canary", 1)
    m = store.latest().document.route("orders").migration  # type: ignore[union-attr]
    assert m is not None and m.guard is not None and m.guard.freeze
    assert store.get(version).actor == "guard" and store.transitions("orders", 1)[0].action == "freeze"


def test_a_change_made_meanwhile_wins_over_the_guard(store: Store) -> None:
    job, clock = setup(store)
    t0 = clock.now
    traffic(store, t0, 10, to=(100, 50, 22.0))
    clock.now = t0 + 3 + LAG + 0.5
    latest = store.latest

    def racing() -> Any:   # the operator commits between the guard's read and its write
        version = latest()
        store.latest = latest  # type: ignore[method-assign]
        store.commit(doc("canary", 2, GUARD), actor="alice", reason="by hand")
        return version

    store.latest = racing  # type: ignore[method-assign]
    assert job.turn() == [] and stage_of(store) == ("canary", 2)
    assert [a for _, a, _ in job.turn()] == ["rollback"]   # the next turn judges the new version


def test_the_window_ends_lag_seconds_ago_in_whole_seconds() -> None:
    policy = Migration.parse({"to": "x", "guard": {"window": "3s"}}, "m").guard
    assert policy is not None
    assert window_bounds(policy, 1000.7, 2.0) == (995, 998)


def test_describe_names_the_rule_and_the_numbers(store: Store) -> None:
    _, clock = setup(store)
    route = store.latest().document.route("orders")
    assert route is not None
    traffic(store, clock.now, 5, to=(100, 50, 22.0))
    a = assess(store, route, 0.0, clock.now + 3 + LAG + 0.5, LAG)
    text = describe(a)
    assert text.startswith("guard rolled back route orders (error-rate): to's error rate 150/300")
    assert "from_requests=300" in text and "\n" not in text


def test_twenty_healthy_schedules_make_no_false_rollback(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """20 runs of the loop itself (store, windows, job) over simulated seconds: `to` and `from` draw
    errors (1 %) and latencies from the same distributions; every run reaches `migrated`."""
    policy = {"steps": [1, 5, 25, 50, "migrated"], "window": "3s", "min_requests": 200}
    rng = random.Random(15)

    def second(n: int) -> tuple[int, int, dict[int, int]]:
        hist: dict[int, int] = {}
        for _ in range(n):
            index = bucket_of(rng.lognormvariate(3, 0.5))
            hist[index] = hist.get(index, 0) + 1
        return n, sum(rng.random() < 0.01 for _ in range(n)), hist

    for run in range(20):
        s = Store(f"sqlite:///{tmp_path / f'run{run}.db'}")
        s.upgrade()
        job, clock = setup(s, guard=policy)
        # the store stamps the guard's transitions on the simulated clock too
        monkeypatch.setattr(store_module, "_now", lambda c=clock: datetime.fromtimestamp(c.now, UTC))
        for _ in range(60):
            clock.now += 1
            s.add_guard_samples("sim:1", {("orders", "to", int(clock.now) - 1): second(300),
                                          ("orders", "from", int(clock.now) - 1): second(300)})
            assert all(action != "rollback" for _, action, _ in job.turn()), (run, job.last)
            if stage_of(s)[0] == "migrated":
                break
        assert stage_of(s)[0] == "migrated", (run, job.last["orders"].verdict)
        assert [t.action for t in reversed(s.transitions("orders"))] == ["shift"] * 3 + ["promote"]
        s.close()


def shadowed(store: Store, clock: Clock, pairs: int, differing: bool) -> None:
    """`pairs` shadow comparisons at the clock's time (old-vs-new; `differing`: `$.price` differs)."""
    from facade.compare import Comparison, Difference
    from facade.shadow_counts import ShadowStats as Counts
    from facade.shadow_counts import add_shadow

    counts = Counts(clock=clock)
    diff = (Difference("$.price", "$.price", "value"),) if differing else ()
    for _ in range(pairs):
        counts.compared("orders", store.latest_version(), Comparison(diff, len(diff), "json"),
                        Comparison((), 0, "json"))
    deltas, examples = counts.take()
    add_shadow(store, "test:1", deltas, examples)


@pytest.mark.parametrize(("differing", "outcome"), [(False, ("canary", 50)), (True, ("legacy", 0))])
def test_the_shadow_step_reads_the_shadow_counts(store: Store, differing: bool,
                                                  outcome: tuple[str, int]) -> None:
    """In the shadow step `to` is measured by the copies and the mismatch gate reads the shadow
    counts: clean pairs advance to the first canary step, a field that always differs (never
    old-vs-old) rolls back on `mismatch`."""
    job, clock = setup(store, stage="shadow", percent=0,
                       guard={"steps": ["shadow", 50, "migrated"], "window": "3s", "min_requests": 50,
                              "min_pairs": 50})
    t0 = clock.now
    clock.now += 3 + LAG + 1.5
    assert job.turn() == [] and job.last["orders"].verdict.reason.startswith("inconclusive: to answered 0")
    traffic(store, t0, 6, to=(100, 0, 22.0))
    shadowed(store, clock, 200, differing)
    actions = job.turn()
    assert stage_of(store) == outcome, job.last["orders"].verdict
    if differing:
        assert [a for _, a, _ in actions] == ["rollback"]
        assert "(mismatch)" in store.get(actions[0][2]).reason
