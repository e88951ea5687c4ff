"""Trusted networks: membership by address, the verdict cache and its bound, empty lists."""

from __future__ import annotations

import pytest

from gateway.core.trust import CACHE_SIZE, TrustedNetworks


@pytest.mark.parametrize(("client", "inside"), [
    ("10.9.9.9", True), ("10.0.0.0", True), ("11.0.0.1", False), ("192.168.1.7", True),
    ("192.168.2.7", False), ("2001:db8::5", True), ("2001:db9::5", False), ("::1", False),
    ("not-an-ip", False), ("", False), (None, False),
])
def test_membership(client: str | None, inside: bool) -> None:
    trusted = TrustedNetworks(["10.0.0.0/8", "192.168.1.0/24", "2001:db8::/32"])
    assert trusted.contains(client) is inside
    assert trusted.contains(client) is inside  # the cached verdict is the same


def test_host_bits_in_a_network_are_ignored() -> None:
    # Settings validate with strict=False too: "10.1.2.3/8" means 10.0.0.0/8.
    assert TrustedNetworks(["10.1.2.3/8"]).contains("10.200.0.1")


def test_a_single_address_is_a_network() -> None:
    trusted = TrustedNetworks(["127.0.0.1", "::1"])
    assert trusted.contains("127.0.0.1") and trusted.contains("::1")
    assert not trusted.contains("127.0.0.2")


def test_empty_contains_nobody_and_is_false() -> None:
    trusted = TrustedNetworks([])
    assert not trusted
    assert not trusted.contains("127.0.0.1")
    assert not trusted.contains(None)
    assert TrustedNetworks(["10.0.0.0/8"])


def test_a_malformed_network_is_refused_at_construction() -> None:
    with pytest.raises(ValueError):
        TrustedNetworks(["10.0.0.0/33"])


def test_verdicts_are_cached_and_the_cache_is_bounded() -> None:
    trusted = TrustedNetworks(["10.0.0.0/8"], cache_size=100)
    for i in range(250):
        assert trusted.contains(f"10.0.{i // 256}.{i % 256}")
        assert trusted.cached() <= 100
    assert not trusted.contains("11.0.0.1")
    assert trusted.contains("10.0.0.1")  # verdicts stay right after the cache was cleared
    assert 0 < trusted.cached() <= 100


def test_default_bound() -> None:
    trusted = TrustedNetworks(["10.0.0.0/8"])
    for i in range(CACHE_SIZE + 10):
        trusted.contains(f"10.1.{i // 256}.{i % 256}")
    assert trusted.cached() <= CACHE_SIZE


def test_repr_names_the_networks() -> None:
    assert repr(TrustedNetworks(["10.1.2.3/8"])) == "TrustedNetworks(['10.0.0.0/8'])"
