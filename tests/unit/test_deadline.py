"""Deadline headers: formats, trust by network, the earliest of several, what goes upstream."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.settings import DeadlineSettings, load_settings
from gateway.policy.deadline import (
    MIN_REMAINING,
    DeadlineRules,
    effective_deadline,
    expired,
    format_grpc_timeout,
    parse_grpc_timeout,
    parse_ms,
)

H = list[tuple[bytes, bytes]]
NOW = 500.0
RULES = DeadlineRules(DeadlineSettings())  # trusts loopback, reads grpc-timeout


# --- formats ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "seconds"), [
    (b"0", 0.0), (b"1", 0.001), (b"250", 0.25), (b"1500", 1.5), (b"007", 0.007),
    (b"999999999999999", 999999999999.999),
])
def test_parse_ms(value: bytes, seconds: float) -> None:
    assert parse_ms(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [
    b"", b"-1", b"+5", b"1.5", b"1e3", b"10ms", b"0x10", b"1_000", b"\xd9\xa1", b"9" * 16, b"1 2",
])
def test_parse_ms_refuses_what_is_not_whole_milliseconds(value: bytes) -> None:
    with pytest.raises(ValueError):
        parse_ms(value)


@pytest.mark.parametrize(("value", "seconds"), [
    (b"1H", 3600.0), (b"2M", 120.0), (b"3S", 3.0), (b"250m", 0.25), (b"1500u", 0.0015),
    (b"1000000n", 0.001), (b"0m", 0.0), (b"99999999S", 99999999.0), (b"00000001m", 0.001),
])
def test_parse_grpc_timeout(value: bytes, seconds: float) -> None:
    assert parse_grpc_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [
    b"", b"S", b"5", b"5s", b"5x", b"123456789m", b"-5S", b"1.5S", b"5 S", b"m5", b"5SS", b"\xffS",
])
def test_parse_grpc_timeout_refuses_malformed_values(value: bytes) -> None:
    with pytest.raises(ValueError, match="grpc-timeout"):
        parse_grpc_timeout(value)


@pytest.mark.parametrize(("seconds", "value"), [
    (0.0, b"0m"), (-3.0, b"0m"), (0.0004, b"0m"), (0.25, b"250m"), (1.9999, b"1999m"),
    (99_999.999, b"99999999m"), (100_000.0, b"100000S"), (99_999_999.5, b"99999999S"),
    (100_000_000.0, b"1666666M"), (6_000_000_000.0, b"1666666H"), (1e20, b"99999999H"),
])
def test_format_grpc_timeout_keeps_eight_digits_and_rounds_down(seconds: float, value: bytes) -> None:
    assert format_grpc_timeout(seconds) == value


@given(ms=st.integers(min_value=0, max_value=99_999_999))
def test_grpc_timeout_round_trips_milliseconds(ms: int) -> None:
    assert format_grpc_timeout(parse_grpc_timeout(b"%dm" % ms)) == b"%dm" % ms


@given(ms=st.integers(min_value=1, max_value=10**15 - 1))
def test_the_peel_header_round_trips_to_the_millisecond(ms: int) -> None:
    assert RULES.outgoing(parse_ms(b"%d" % ms))[0] == (b"peel-timeout-ms", b"%d" % ms)


@given(digits=st.integers(min_value=0, max_value=99_999_999), unit=st.sampled_from(list("HMSmun")))
def test_any_grpc_timeout_formats_back_to_at_most_itself(digits: int, unit: str) -> None:
    seconds = parse_grpc_timeout(b"%d%s" % (digits, unit.encode()))
    again = format_grpc_timeout(seconds)
    assert len(again) <= 9
    back = parse_grpc_timeout(again)
    # never later than the original deadline, and off by less than the unit it was written in
    granularity = {"m": 0.001, "S": 1.0, "M": 60.0, "H": 3600.0}[chr(again[-1])]
    assert back <= seconds * (1 + 1e-12) + 1e-9
    assert seconds - back < granularity + 1e-6 * seconds


# --- reading, by trust -----------------------------------------------------------------------

@pytest.mark.parametrize(("headers", "deadline"), [
    ([], None),
    ([(b"accept", b"*/*")], None),
    ([(b"peel-timeout-ms", b"1500")], NOW + 1.5),
    ([(b"peel-timeout-ms", b"0")], NOW),
    ([(b"grpc-timeout", b"2S")], NOW + 2.0),
    ([(b"peel-timeout-ms", b"1500"), (b"grpc-timeout", b"200m")], NOW + 0.2),
    ([(b"grpc-timeout", b"1M"), (b"peel-timeout-ms", b"30000")], NOW + 30.0),
    ([(b"peel-timeout-ms", b"900"), (b"peel-timeout-ms", b"300")], NOW + 0.3),
])
def test_read_from_a_trusted_client(headers: H, deadline: float | None) -> None:
    got = RULES.read(headers, "127.0.0.1", NOW)
    assert got == (None if deadline is None else pytest.approx(deadline))


@pytest.mark.parametrize("client", ["127.0.0.1", "127.9.9.9", "::1"])
def test_default_settings_trust_loopback(client: str) -> None:
    assert RULES.read([(b"peel-timeout-ms", b"100")], client, NOW) == pytest.approx(NOW + 0.1)


@pytest.mark.parametrize("client", ["10.0.0.1", "192.168.1.5", "2001:db8::1", "not-an-ip", "", None])
def test_untrusted_clients_deadlines_are_ignored(client: str | None) -> None:
    assert RULES.read([(b"peel-timeout-ms", b"1"), (b"grpc-timeout", b"1m")], client, NOW) is None


def test_untrusted_garbage_is_ignored_not_refused() -> None:
    assert RULES.read([(b"peel-timeout-ms", b"soon")], "203.0.113.9", NOW) is None


@pytest.mark.parametrize(("headers", "reason"), [
    ([(b"peel-timeout-ms", b"soon")], "Peel-Timeout-Ms"),
    ([(b"peel-timeout-ms", b"-5")], "Peel-Timeout-Ms"),
    ([(b"peel-timeout-ms", b"100"), (b"grpc-timeout", b"5 seconds")], "grpc-timeout"),
    ([(b"grpc-timeout", b"123456789S")], "grpc-timeout"),
])
def test_malformed_from_a_trusted_client_is_refused_with_a_reason(headers: H, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        RULES.read(headers, "127.0.0.1", NOW)


def test_configured_networks_and_header_name() -> None:
    settings = load_settings(environ={"PEEL_DEADLINES_HEADER": "X-Deadline-Ms",
                                      "PEEL_DEADLINES_TRUSTED_NETWORKS": "10.0.0.0/8,fd00::/8",
                                      "PEEL_DEADLINES_GRPC_TIMEOUT": "false"})
    rules = DeadlineRules(settings.deadlines)
    headers = [(b"x-deadline-ms", b"800"), (b"grpc-timeout", b"1m"), (b"peel-timeout-ms", b"1")]
    assert rules.read(headers, "10.1.2.3", NOW) == pytest.approx(NOW + 0.8)
    assert rules.read(headers, "fd00::7", NOW) == pytest.approx(NOW + 0.8)
    assert rules.read(headers, "127.0.0.1", NOW) is None
    assert rules.read([(b"grpc-timeout", b"bad")], "10.1.2.3", NOW) is None  # not read when off


def test_no_trusted_networks_trusts_nobody() -> None:
    rules = DeadlineRules(DeadlineSettings(trusted_networks=()))
    assert not rules.trusts("127.0.0.1")
    assert rules.read([(b"peel-timeout-ms", b"1")], "127.0.0.1", NOW) is None


def test_trust_verdicts_stay_right_past_the_cache_bound() -> None:
    # The cache and its bound are gateway.core.trust's (tests/unit/test_trust.py).
    rules = DeadlineRules(DeadlineSettings(trusted_networks=("10.0.0.0/8",)))
    for i in range(5000):
        assert rules.trusts(f"10.0.{i // 256}.{i % 256}")
    assert not rules.trusts("11.0.0.1")


# --- stripping and propagating ---------------------------------------------------------------

def test_strip_drops_every_deadline_header_and_keeps_the_rest() -> None:
    headers = [(b"host", b"a"), (b"peel-timeout-ms", b"5"), (b"grpc-timeout", b"1S"), (b"te", b"trailers"),
               (b"peel-timeout-ms", b"7")]
    assert RULES.strip(headers) == [(b"host", b"a"), (b"te", b"trailers")]


def test_strip_without_deadline_headers_returns_the_same_list() -> None:
    headers = [(b"host", b"a"), (b"accept", b"*/*")]
    assert RULES.strip(headers) is headers


def test_strip_leaves_grpc_timeout_alone_when_peel_does_not_read_it() -> None:
    rules = DeadlineRules(DeadlineSettings(grpc_timeout=False))
    headers = [(b"grpc-timeout", b"1S"), (b"peel-timeout-ms", b"5")]
    assert rules.strip(headers) == [(b"grpc-timeout", b"1S")]


@pytest.mark.parametrize(("remaining", "expected"), [
    (1.5, [(b"peel-timeout-ms", b"1500"), (b"grpc-timeout", b"1500m")]),
    (0.0123456, [(b"peel-timeout-ms", b"12"), (b"grpc-timeout", b"12m")]),
    (0.001, [(b"peel-timeout-ms", b"1"), (b"grpc-timeout", b"1m")]),
    (200_000.0, [(b"peel-timeout-ms", b"200000000"), (b"grpc-timeout", b"200000S")]),
])
def test_outgoing_sends_what_is_left_rounded_down(remaining: float, expected: H) -> None:
    assert RULES.outgoing(remaining) == expected


@pytest.mark.parametrize("remaining", [0.0009, 0.0, -2.0])
def test_outgoing_never_sends_a_budget_of_zero(remaining: float) -> None:
    # Less than a millisecond left is an expired deadline (Peel refuses `0` on arrival itself).
    with pytest.raises(ValueError, match="the deadline has passed"):
        RULES.outgoing(remaining)


@pytest.mark.parametrize(("left", "is_expired"), [
    (1.0, False), (0.0011, False), (0.000999, True), (0.0005, True), (0.0, True),
    (-1.0, True),
])
def test_a_deadline_with_less_than_a_millisecond_left_is_expired(left: float, is_expired: bool) -> None:
    assert expired(NOW + left, NOW) is is_expired
    assert MIN_REMAINING == 0.001


def test_outgoing_without_grpc_sends_only_the_peel_header_under_its_configured_name() -> None:
    rules = DeadlineRules(DeadlineSettings(header="X-Deadline-Ms", grpc_timeout=False))
    assert rules.outgoing(0.25) == [(b"x-deadline-ms", b"250")]


def test_a_chain_of_hops_never_extends_the_deadline() -> None:
    """Three gateways in a row, each spending some time: every hop's deadline is no later than the
    first, and the last hop sees what is really left (to the millisecond, rounded down)."""
    now = 0.0
    headers: H = [(b"peel-timeout-ms", b"1000")]
    first = RULES.read(headers, "127.0.0.1", now)
    assert first == pytest.approx(1.0)
    deadline = first
    for spent in (0.1234, 0.2, 0.0567):
        now += spent
        assert deadline is not None
        headers = RULES.strip(headers) + RULES.outgoing(deadline - now)
        deadline = RULES.read(headers, "127.0.0.1", now)
        assert deadline is not None and deadline <= first + 1e-9
    assert deadline == pytest.approx(1.0 - 0.001, abs=0.0031)


@pytest.mark.parametrize(("incoming", "total", "expected"), [
    (None, None, None),
    (None, 5.0, NOW + 5.0),
    (NOW + 1.0, None, NOW + 1.0),
    (NOW + 1.0, 5.0, NOW + 1.0),
    (NOW + 9.0, 5.0, NOW + 5.0),
    (NOW - 1.0, 5.0, NOW - 1.0),  # already expired: stays expired (504 without an attempt)
])
def test_effective_deadline_is_the_earlier(incoming: float | None, total: float | None,
                                           expected: float | None) -> None:
    assert effective_deadline(incoming, total, NOW) == expected
