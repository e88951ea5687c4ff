"""Sticky bucketing: stable, evenly spread, and monotonic as the share rises."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from facade.bucketing import BUCKETS, bucket, in_share


def test_bucket_is_the_documented_hash() -> None:
    digest = hashlib.sha256(b"orders\0user-42").digest()
    assert bucket("orders", "user-42") == int.from_bytes(digest[:8], "big") % 10_000


def test_the_salt_reshuffles_users() -> None:
    users = [f"user-{i}" for i in range(200)]
    assert [bucket("a", u) for u in users] != [bucket("b", u) for u in users]


@given(st.integers(min_value=0, max_value=BUCKETS))
@settings(max_examples=40, deadline=None)
def test_share_of_10000_users_is_within_one_and_a_half_points(share: int) -> None:
    users = [f"user-{i}" for i in range(10_000)]
    got = sum(in_share("orders", u, share) for u in users) / len(users) * 100
    assert abs(got - share / 100) <= 1.5


@given(st.text(min_size=1, max_size=40), st.integers(0, BUCKETS), st.integers(0, BUCKETS))
def test_raising_the_share_only_moves_users_to_the_new_service(key: str, a: int, b: int) -> None:
    low, high = sorted((a, b))
    if in_share("orders", key, low):
        assert in_share("orders", key, high)


def test_edges() -> None:
    assert not any(in_share("s", str(i), 0) for i in range(1000))
    assert all(in_share("s", str(i), BUCKETS) for i in range(1000))
