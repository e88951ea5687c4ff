"""WebSocket rules without I/O: which handshakes are let through, close codes across the relay, limits.

Kept apart from `gateway.dataplane.websocket` so the protocol layer and the listener config can use them
without importing the relay.
"""

from __future__ import annotations

from websockets.http11 import MAX_LINE_LENGTH, MAX_NUM_HEADERS

from gateway.http.framing import NO_BODY, Head

# The largest message relayed either way (bytes, after decompression): the client's larger ones
# are refused by the listener (close 1009), the upstream's end the link (close 1014 downstream).
MAX_MESSAGE = 1024 * 1024
# Each side is pinged this often and cut when its pong is this late (uvicorn's defaults).
PING_INTERVAL = 20.0
PING_TIMEOUT = 20.0

# Close codes that may travel in a close frame (RFC 6455 7.4, IANA registry; 3000-4999 private).
_SENDABLE = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})


def websocket_offer(block: bytes, head: Head) -> bool:
    """Whether a checked request head (`block`, ending CRLF CRLF) is a WebSocket opening handshake.

    Only then does the protocol layer keep its `Upgrade` (RFC 6455 4.2.1): GET, HTTP/1.1, no body,
    exactly one `Connection` naming `upgrade`, one `Upgrade: websocket`, no `HTTP2-Settings`, one
    `Sec-WebSocket-Key` and `Sec-WebSocket-Version: 13`, and within what the WebSocket parser
    reads (header count and line length). Runs only for heads that offered an upgrade.
    """
    if head.method != b"GET" or head.framing != NO_BODY:
        return False
    lines = block[:-4].split(b"\r\n")
    if not lines[0].endswith(b" HTTP/1.1") or len(lines) - 1 > MAX_NUM_HEADERS:
        return False
    seen: dict[bytes, list[bytes]] = {}
    for line in lines:
        if len(line) > MAX_LINE_LENGTH:
            return False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        lowered = name.lower()
        if lowered in _OFFER_FIELDS:
            seen.setdefault(lowered, []).append(value.strip(b" \t"))
    upgrade = seen.get(b"upgrade", [])
    connection = seen.get(b"connection", [])
    key = seen.get(b"sec-websocket-key", [])
    version = seen.get(b"sec-websocket-version", [])
    return (len(upgrade) == 1 and upgrade[0].lower() == b"websocket"
            and len(connection) == 1
            and b"upgrade" in {t.strip(b" \t").lower() for t in connection[0].split(b",")}
            and b"http2-settings" not in seen
            and len(key) == 1 and len(key[0]) == 24
            and version == [b"13"])


_OFFER_FIELDS = frozenset({b"upgrade", b"connection", b"http2-settings", b"sec-websocket-key",
                           b"sec-websocket-version"})


def upstream_close(code: int, reason: str) -> tuple[int | None, str]:
    """The close frame for the upstream when the client's side ended with `code` (ASGI disconnect).

    Codes that may be sent pass with their reason; 1005 (no code) stays without one; 1006 (the
    client vanished) and other unsendable codes become 1001 going away.
    """
    if code in _SENDABLE or 3000 <= code <= 4999:
        return code, reason
    if code == 1005:
        return None, ""
    return 1001, "the client went away"


def downstream_close(received: tuple[int, str] | None, failure: str | None) -> tuple[int, str]:
    """The close frame for the client when the upstream side ended.

    The upstream's own close frame passes (1005, no code, becomes 1000); a link that broke or
    that Peel failed (message too large, invalid UTF-8, no pong) is 1014 bad gateway.
    """
    if received is not None:
        code, reason = received
        if code in _SENDABLE or 3000 <= code <= 4999:
            return code, reason
        if code == 1005:
            return 1000, ""
    reason = f"upstream: {failure}" if failure else "the upstream connection was lost"
    return 1014, reason.encode("utf-8")[:123].decode("utf-8", "ignore")


__all__ = ["MAX_MESSAGE", "PING_INTERVAL", "PING_TIMEOUT", "downstream_close", "upstream_close",
           "websocket_offer"]
