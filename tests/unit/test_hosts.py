"""The host a request names: Host header forms and absolute-form targets."""

from __future__ import annotations

import pytest

from gateway.http.hosts import absolute_target, hostname


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
