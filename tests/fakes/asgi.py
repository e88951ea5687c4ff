"""Drive a raw ASGI app in-process: one HTTP request in, every message it sends recorded.

    response = await asgi_request(app, "GET", "/orders/1", headers={"X-User-Id": "u7"})
    response.status, response.header("x-request-id"), response.body, response.messages

Unlike `httpx.ASGITransport` nothing is buffered on the way: `messages` holds each
`http.response.body` as the app sent it, and `times` when it was sent (loop time), so streaming
and timing are visible. The request body may come in pieces (`body=[b"a", b"b"]`); after the
last one `receive` waits until the response is complete, then says `http.disconnect`, as a server
does. The scope carries a `peel.downstream` handle as Peel's edge protocol gives it: a response the
app resets through it sets `aborted`; `disconnect_after` (seconds) makes the client go away.
An app that raises is recorded in `error`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from gateway.core.asgi import DOWNSTREAM, Downstream, Message

ASGIApp = Any  # (scope, receive, send) -> Awaitable[None]


@dataclass
class AsgiResponse:
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    error: BaseException | None = None
    aborted: bool = False  # the app reset the downstream connection

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages if m["type"] == "http.response.body")

    @property
    def complete(self) -> bool:
        """The app sent the last body message (`more_body` false)."""
        return any(m["type"] == "http.response.body" and not m.get("more_body", False)
                   for m in self.messages)

    @property
    def chunks(self) -> list[bytes]:
        """The non-empty body pieces, as the app sent them."""
        return [m["body"] for m in self.messages if m["type"] == "http.response.body" and m.get("body")]

    def header(self, name: str) -> str | None:
        key = name.lower().encode("latin-1")
        values = [v.decode("latin-1") for n, v in self.headers if n == key]
        return ", ".join(values) if values else None

    def json(self) -> Any:
        import json
        return json.loads(self.body)


def http_scope(method: str, path: str, *, query: bytes = b"", headers: dict[str, str] | None = None,
               host: str | None = "gw.test", client: str = "127.0.0.1") -> dict[str, Any]:
    raw_headers = [(b"host", host.encode())] if host is not None else []
    raw_headers += [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in (headers or {}).items()]
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
            "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query,
            "root_path": "", "headers": raw_headers, "client": (client, 50000),
            "server": ("127.0.0.1", 8080), "extensions": {}}


async def asgi_request(app: ASGIApp, method: str, path: str, *, headers: dict[str, str] | None = None,
                       body: bytes | list[bytes] | None = None, query: bytes = b"",
                       host: str | None = "gw.test", client: str = "127.0.0.1",
                       disconnect_after: float | None = None) -> AsgiResponse:
    """Send one request through `app`; see the module docstring."""
    pieces = [body] if isinstance(body, bytes) else list(body or [])
    scope = http_scope(method, path, query=query, headers=headers, host=host, client=client)
    if pieces:
        if isinstance(body, bytes):
            scope["headers"].append((b"content-length", b"%d" % len(body)))
        else:
            scope["headers"].append((b"transfer-encoding", b"chunked"))
    response = AsgiResponse()
    def reset() -> None:
        response.aborted = True

    downstream = Downstream(reset)
    scope["extensions"][DOWNSTREAM] = downstream
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    if disconnect_after is not None:
        def gone() -> None:
            done.set()
            downstream.connection_lost()
        loop.call_later(disconnect_after, gone)

    async def receive() -> Message:
        if pieces:
            piece = pieces.pop(0)
            return {"type": "http.request", "body": piece, "more_body": bool(pieces)}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        response.messages.append(message)
        response.times.append(loop.time())
        if message["type"] == "http.response.start":
            response.status = message["status"]
            response.headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            done.set()

    try:
        await app(scope, receive, send)
    except Exception as exc:  # a cut response: the server would reset the connection
        response.error = exc
    finally:
        done.set()
    return response


__all__ = ["AsgiResponse", "asgi_request", "http_scope"]
