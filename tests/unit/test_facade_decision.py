"""The facade decision, table-driven: stage x beta user x bucket -> side, fallback, misses."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facade.bucketing import bucket
from facade.decision import Decision, Facts, decide
from routes.migration import Beta, Migration

BETA = Beta(header="X-Beta-User", allow=("alice",), deny=("bob",))
# Two cohort keys on either side of a 50 % share for the salt "orders".
IN = next(f"u{i}" for i in range(1000) if bucket("orders", f"u{i}") < 5000)
OUT = next(f"u{i}" for i in range(1000) if bucket("orders", f"u{i}") >= 5000)


def m(stage: str, share: int = 5000) -> Migration:
    return Migration("orders", stage, share, beta=BETA)


CASES = [
    # stage, key, beta user, expected
    ("legacy", IN, None, Decision("from", "stage")),
    ("legacy", IN, "alice", Decision("from", "stage")),
    ("legacy", IN, "bob", Decision("from", "beta-deny")),
    ("canary", IN, None, Decision("to", "percent", fallback=True)),
    ("canary", OUT, None, Decision("from", "percent")),
    ("canary", OUT, "alice", Decision("to", "beta-allow", fallback=True)),
    ("canary", IN, "bob", Decision("from", "beta-deny")),
    ("canary", OUT, "carol", Decision("from", "percent")),
    ("migrated", OUT, None, Decision("to", "stage", fallback=True)),
    ("migrated", IN, "bob", Decision("from", "beta-deny")),
    ("migrated", IN, "alice", Decision("to", "beta-allow", fallback=True)),
    ("retired", IN, None, Decision("to", "stage", count_misses=True)),
    ("retired", IN, "bob", Decision("to", "stage", count_misses=True)),
]


@pytest.mark.parametrize("stage, key, user, expected", CASES)
def test_decision_table(stage: str, key: str, user: str | None, expected: Decision) -> None:
    assert decide(m(stage), Facts(key, user), "orders") == expected


def test_canary_at_zero_and_hundred_percent() -> None:
    assert decide(m("canary", 0), Facts(IN), "orders").side == "from"
    assert decide(m("canary", 10_000), Facts(OUT), "orders").side == "to"


def test_without_a_beta_rule_a_beta_user_changes_nothing() -> None:
    plain = Migration("orders", "canary", 0)
    assert decide(plain, Facts(IN, "alice"), "orders") == Decision("from", "percent")


def test_the_injected_random_does_not_make_the_canary_flap() -> None:
    values = iter([0.0, 0.99, 0.5])
    sides = {decide(m("canary"), Facts(IN), "orders", lambda: next(values), now=t).side for t in range(3)}
    assert sides == {"to"}


@given(st.lists(st.integers(0, 10_000), min_size=2, max_size=6))
@settings(max_examples=25, deadline=None)
def test_share_for_ten_thousand_users_tracks_percent_and_only_grows(shares: list[int]) -> None:
    users = [f"user-{i}" for i in range(10_000)]
    previous: set[str] = set()
    for share in sorted(shares):
        migration = Migration("orders", "canary", share)
        chosen = {u for u in users if decide(migration, Facts(u), "o").side == "to"}
        assert abs(len(chosen) / 100 - share / 100) <= 1.5
        assert previous <= chosen
        previous = chosen
