"""The host a request names: Host header forms and absolute-form targets."""

from __future__ import annotations

import pytest

from gateway.http.hosts import absolute_target, hostname, parse_host


@pytest.mark.parametrize(("header", "host"), [
    (b"shop.example", "shop.example"), (b"Shop.Example:8080", "shop.example"),
    (b"10.0.0.1:80", "10.0.0.1"), (b"[2001:DB8::1]:443", "2001:db8::1"), (b"[::1]", "::1"),
    (b"[broken", "[broken"), (b"", ""), (b"caf\xe9.example", "caf\xe9.example"),
])
def test_hostname(header: bytes, host: str) -> None:
    assert hostname(header) == host


@pytest.mark.parametrize(("target", "parsed"), [
    (b"http://Shop.Example/orders?id=1", ("shop.example", b"/orders")),
    (b"HTTPS://shop.example:8443/a/b", ("shop.example", b"/a/b")),
    (b"http://shop.example", ("shop.example", b"/")),
    (b"/orders", None), (b"*", None), (b"shop.example:443", None), (b"ftp://shop.example/", None),
    (b"http:///no-host", None), (b"http://exa mple/", None),
])
def test_absolute_target(target: bytes, parsed: tuple[str, bytes] | None) -> None:
    assert absolute_target(target) == parsed


@pytest.mark.parametrize(("header", "host"), [
    (b"shop.example", "shop.example"), (b"Shop.Example.", "shop.example"),
    (b"shop.example.:8080", "shop.example"), (b"shop.example:", "shop.example"), (b"", ""),
    (b"10.0.0.1:80", "10.0.0.1"), (b"[2001:DB8::1]:443", "2001:db8::1"), (b"[::1]", "::1"),
    (b"xn--caf-dma.example", "xn--caf-dma.example"), (b"a_b.example", "a_b.example"),
    # not host[:port]
    (b"evil.com:80:90", None), (b"shop.example..", None), (b".shop.example", None), (b"a..b", None),
    (b".", None), (b":80", None), (b"shop:99999x", None), (b"shop:123456", None), (b"[broken", None),
    (b"[::1]x", None), (b"[not-v6]", None), (b"caf\xe9.example", None), (b"a b", None), (b"a/b", None),
    (b"u@shop.example", None),
])
def test_parse_host(header: bytes, host: str | None) -> None:
    assert parse_host(header) == host
    assert hostname(header) == (host if host is not None else header.decode("latin-1").lower())


def test_absolute_target_hosts_are_canonical() -> None:
    assert absolute_target(b"http://Shop.Example./x") == ("shop.example", b"/x")
    assert absolute_target(b"http://[::1]:8080/x") == ("::1", b"/x")
    assert absolute_target(b"http://shop.example..:80/x") is None
