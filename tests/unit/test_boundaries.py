"""Edges an audit of the suite found untested: the canary bucket at exactly the share, truncated or
empty beta MACs, and Content-Length values too long to count.

The bucket oracle here is written from the algorithm in `facade.bucketing`'s docstring with other
code than the module's (struct, one hashing call over the joined bytes), so a change of byte
order, separator, digest slice, modulus or comparison in the module makes these tests fail.
"""

from __future__ import annotations

import hashlib
import struct

import pytest

from facade.beta import BetaTrust, sign, verify
from facade.bucketing import in_share
from facade.decision import Decision, Facts, decide
from gateway.http.framing import LENGTH, HeadLimits, Refusal, check_head
from routes.migration import Migration

SALT = "orders"
SECRET = "s" * 32


def oracle_bucket(salt: str, key: str) -> int:
    """The documented bucket: the first 8 bytes of SHA-256(salt + NUL + key), big-endian, mod 10,000."""
    (first8,) = struct.unpack(">Q", hashlib.sha256(f"{salt}\x00{key}".encode()).digest()[:8])
    return int(first8 % 10_000)


def keys_with_buckets(wanted: int) -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []
    i = 0
    while len(found) < wanted:
        key = f"user-{i}"
        found.append((key, oracle_bucket(SALT, key)))
        i += 1
    return found


@pytest.mark.parametrize("key_bucket", keys_with_buckets(40), ids=lambda kb: f"{kb[0]}@{kb[1]}")
def test_a_user_whose_bucket_equals_the_share_stays_on_from(key_bucket: tuple[str, int]) -> None:
    key, b = key_bucket
    # bucket < share: in the canary; bucket == share: not yet (raising the share by 1 adds it)
    assert not in_share(SALT, key, b)
    assert in_share(SALT, key, b + 1)
    if b:
        assert not in_share(SALT, key, b - 1)
    canary = Migration(SALT, "canary", b)
    assert decide(canary, Facts(key), SALT) == Decision("from", "percent")
    assert decide(Migration(SALT, "canary", b + 1), Facts(key), SALT).side == "to"


def test_the_share_counts_exactly_the_buckets_below_it() -> None:
    keys = keys_with_buckets(2000)
    for share in (1, 250, 2500, 5000, 9999):
        expected = {key for key, b in keys if b < share}
        assert {key for key, _ in keys if in_share(SALT, key, share)} == expected


def test_the_oracle_is_not_trivially_the_same_for_every_salt() -> None:
    # guards the oracle itself: a constant or salt-blind oracle would make the tests above vacuous
    assert len({oracle_bucket(SALT, k) for k, _ in keys_with_buckets(50)}) > 45
    assert [oracle_bucket("a", f"u{i}") for i in range(50)] != [oracle_bucket("b", f"u{i}")
                                                                for i in range(50)]


@pytest.mark.parametrize("mangle", [
    pytest.param(lambda v: v.rsplit(".", 1)[0] + ".", id="empty-mac"),
    pytest.param(lambda v: v.rsplit(".", 1)[0], id="no-mac-field"),
    pytest.param(lambda v: v[:-1], id="last-character-cut"),
    pytest.param(lambda v: v[: v.rindex(".") + 1 + 22], id="half-the-mac"),
    pytest.param(lambda v: v[: v.rindex(".") + 2], id="one-character-mac"),
    pytest.param(lambda v: v + "=", id="padded-mac"),
    pytest.param(lambda v: v + "A", id="mac-with-an-extra-character"),
])
def test_a_truncated_or_empty_mac_is_refused(mangle: object) -> None:
    assert callable(mangle)
    value = sign(SECRET, "alice", 2_000)
    assert verify(SECRET.encode(), value, 0) == "alice"  # the untouched value passes
    bad = mangle(value)
    assert bad != value
    assert verify(SECRET.encode(), bad, 0) is None
    # and from an untrusted network the value then names nobody (it is stripped)
    assert BetaTrust((), SECRET).user(bad, "203.0.113.9", 0) is None


def head(length: bytes) -> bytes:
    return b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: " + length + b"\r\n\r\n"


@pytest.mark.parametrize("max_body", [0, 1000])
@pytest.mark.parametrize("length", [b"1" * 19, b"9" * 19, b"0" * 19, b"1" * 40, b"99999999999999999999"])
def test_a_content_length_over_18_digits_is_refused_400(length: bytes, max_body: int) -> None:
    # Refused as a framing error whatever the body limit (0: none): the value is never converted,
    # so a huge number cannot overflow what the body reader counts in.
    limits = HeadLimits(max_request_line=100, max_header_bytes=300, max_headers=5, max_body=max_body)
    with pytest.raises(Refusal) as info:
        check_head(head(length), limits)
    assert (info.value.status, info.value.code) == (400, "bad-content-length")


def test_18_digits_are_still_a_length() -> None:
    unlimited = HeadLimits(max_request_line=100, max_header_bytes=300, max_headers=5, max_body=0)
    checked = check_head(head(b"9" * 18), unlimited)
    assert (checked.framing, checked.length) == (LENGTH, 10**18 - 1)
    limited = HeadLimits(max_request_line=100, max_header_bytes=300, max_headers=5, max_body=1000)
    with pytest.raises(Refusal) as info:
        check_head(head(b"9" * 18), limited)
    assert (info.value.status, info.value.code) == (413, "body-too-large")
