"""Which request heads count as WebSocket handshakes, and how close codes cross the relay."""

from __future__ import annotations

import pytest

from gateway.dataplane.websocket_rules import downstream_close, upstream_close, websocket_offer
from gateway.http.framing import HeadLimits, check_head

HANDSHAKE = [b"Host: a", b"Connection: Upgrade", b"Upgrade: websocket",
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", b"Sec-WebSocket-Version: 13"]


def offer(fields: list[bytes], line: bytes = b"GET /chat HTTP/1.1") -> bool:
    block = b"\r\n".join([line, *fields]) + b"\r\n\r\n"
    # Limits an operator may raise above what the WebSocket parser reads (128 fields, 8 KiB lines).
    head = check_head(block, HeadLimits(max_headers=200, max_header_bytes=100_000))
    assert head.upgrade_stripped  # only heads that offered an upgrade are asked
    return websocket_offer(block, head)


def without(name: bytes) -> list[bytes]:
    return [f for f in HANDSHAKE if not f.lower().startswith(name.lower() + b":")]


def test_a_complete_handshake_is_an_offer() -> None:
    assert offer(HANDSHAKE)
    assert offer([b"host: a", b"connection: keep-alive, UPGRADE", b"upgrade: WebSocket",
                  b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==", b"sec-websocket-version: 13",
                  b"Sec-WebSocket-Protocol: chat", b"Origin: https://a"])


@pytest.mark.parametrize("fields, line", [
    (HANDSHAKE, b"POST /chat HTTP/1.1"),
    (HANDSHAKE, b"GET /chat HTTP/1.0"),
    ([*HANDSHAKE, b"Content-Length: 3"], b"GET /chat HTTP/1.1"),
    ([*HANDSHAKE, b"Transfer-Encoding: chunked"], b"GET /chat HTTP/1.1"),
    (without(b"Sec-WebSocket-Key"), b"GET /chat HTTP/1.1"),
    ([*without(b"Sec-WebSocket-Key"), b"Sec-WebSocket-Key: short"], b"GET /chat HTTP/1.1"),
    ([*HANDSHAKE, b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="], b"GET /chat HTTP/1.1"),
    ([*without(b"Sec-WebSocket-Version"), b"Sec-WebSocket-Version: 8"], b"GET /chat HTTP/1.1"),
    (without(b"Connection"), b"GET /chat HTTP/1.1"),
    ([*without(b"Connection"), b"Connection: keep-alive"], b"GET /chat HTTP/1.1"),
    ([*HANDSHAKE, b"Connection: close"], b"GET /chat HTTP/1.1"),
    ([*without(b"Upgrade"), b"Upgrade: h2c"], b"GET /chat HTTP/1.1"),
    ([*without(b"Upgrade"), b"Upgrade: websocket, h2c"], b"GET /chat HTTP/1.1"),
    ([*HANDSHAKE, b"Upgrade: websocket"], b"GET /chat HTTP/1.1"),
    ([*HANDSHAKE, b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA"], b"GET /chat HTTP/1.1"),
    ([*HANDSHAKE, *(b"X-N%d: v" % i for i in range(130))], b"GET /chat HTTP/1.1"),
    ([*HANDSHAKE, b"Cookie: " + b"c" * 9000], b"GET /chat HTTP/1.1"),
], ids=["post", "http10", "content-length", "chunked", "no-key", "short-key", "two-keys", "version-8",
        "no-connection", "connection-without-upgrade", "two-connections", "h2c", "two-tokens",
        "two-upgrades", "http2-settings", "too-many-headers", "line-too-long"])
def test_anything_else_is_not_an_offer(fields: list[bytes], line: bytes) -> None:
    assert not offer(fields, line)


@pytest.mark.parametrize("code, reason, expected", [
    (1000, "done", (1000, "done")),
    (1001, "", (1001, "")),
    (1009, "too big", (1009, "too big")),
    (4001, "app", (4001, "app")),
    (1005, "", (None, "")),  # a close frame without a code stays without one
    (1006, "", (1001, "the client went away")),  # the client vanished
    (1015, "", (1001, "the client went away")),
    (2999, "x", (1001, "the client went away")),
])
def test_the_clients_close_as_sent_upstream(code: int, reason: str, expected: tuple[int | None, str]) -> None:
    assert upstream_close(code, reason) == expected


def test_the_upstreams_close_as_sent_to_the_client() -> None:
    assert downstream_close((1000, "bye"), None) == (1000, "bye")
    assert downstream_close((4002, "app"), None) == (4002, "app")
    assert downstream_close((1012, ""), None) == (1012, "")
    assert downstream_close((1005, ""), None) == (1000, "")
    assert downstream_close(None, None) == (1014, "the upstream connection was lost")
    assert downstream_close(None, "keepalive ping timeout") == (1014, "upstream: keepalive ping timeout")
    code, reason = downstream_close(None, "é" * 200)
    assert code == 1014 and len(reason.encode()) <= 123  # a close reason fits in a control frame
