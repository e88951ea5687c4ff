"""Sending clients to https: the redirect listener's app and the HSTS header of the public listener.

`RedirectApp` (`[listeners.redirect]`) answers every request 308 Permanent Redirect to the same
host and target on https: 308 rather than 301 so a client repeats the method and body (a POST stays
a POST). The Location names the public listener's port unless it is 443, so a gateway on
8080/8443 redirects to a port that answers. A Host that is missing or not `host[:port]` gets 400:
a redirect to a host the client did not name is an open redirect. Nothing is proxied on it.

`Hsts` wraps the public listener's app when `hsts_max_age` is set: every response of the app
without its own `Strict-Transport-Security` gets `max-age=N` (RFC 6797; an upstream that sets its
own keeps it). Only on a TLS listener: browsers ignore the header over plain HTTP.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from gateway.core.asgi import TARGET, Message, Receive, Scope, Send
from gateway.http.hosts import absolute_target, parse_host


class RedirectApp:
    """ASGI app of the redirect listener: 308 to `https://<host>[:port]<target>`."""

    def __init__(self, https_port: int) -> None:
        self.suffix = "" if https_port == 443 else f":{https_port}"

    def location(self, host_header: bytes | None, target: bytes) -> str | None:
        """The https URL for a request, or None when its Host is missing or bad."""
        if host_header is None:
            return None
        absolute = absolute_target(target)
        if absolute is not None:
            host = absolute[0]
            # the path and query after the authority (`http://h?q` has an empty path: `/?q`)
            rest = target[target.index(b"://") + 3:]
            cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
            target = rest[cut:]
            if not target.startswith(b"/"):
                target = b"/" + target
        else:
            host = parse_host(host_header)  # type: ignore[assignment]
            if not target.startswith(b"/"):
                target = b"/"  # OPTIONS * (an authority-form target is refused before the app)
        if not host:
            return None
        name = f"[{host}]" if ":" in host else host
        return f"https://{name}{self.suffix}{target.decode('latin-1')}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        host = next((value for name, value in scope["headers"] if name == b"host"), None)
        target = scope.get("extensions", {}).get(TARGET) or scope["raw_path"]
        location = self.location(host, bytes(target))
        if location is None:
            body = b"400 Bad Request: the Host header names no valid host\n"
            headers = [(b"content-type", b"text/plain; charset=utf-8")]
            status = 400
        else:
            body = b""
            headers = [(b"location", location.encode("latin-1"))]
            status = 308
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class Hsts:
    """ASGI wrapper adding `Strict-Transport-Security: max-age=<max_age>` to HTTP responses."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], max_age: int) -> None:
        self.app = app
        self.value = f"max-age={max_age}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        value = self.value

        async def send_with_hsts(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                if not any(name.lower() == b"strict-transport-security" for name, _ in headers):
                    headers.append((b"strict-transport-security", value))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_hsts)
