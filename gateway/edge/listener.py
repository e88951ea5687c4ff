"""uvicorn options for Peel's listeners, in one place, and running a server on a bound socket.

Why each option is what it is:

- `http=PeelHttpProtocol` (Peel's own HTTP/1.1 protocol, gateway/edge/protocol.py) and
  `loop="uvloop"`: the data plane's budget needs both.
- `proxy_headers=False`: uvicorn would otherwise trust `X-Forwarded-For` from loopback and rewrite
  the client address; Peel decides whom to trust itself (`proxy.trusted_proxies`).
- `server_header=False`; `date_header=False` on data-plane listeners, where the upstream's Date
  passes through (uvicorn would add a second one).
- `access_log=False`: Peel writes its own access log (`gateway.telemetry.accesslog`), off the loop.
- `lifespan="off"` on the data plane and the redirect listener: the process (`gateway.server.serve`)
  owns start-up and closes the pool itself; the admin app keeps starlette's lifespan.
- TLS through uvicorn's public `ssl_context_factory` only (never `ssl_certfile`): one context per
  listener for its life, with SNI and reloads behind it (`gateway.edge.tls`).
- `http` carries the `[limits]` section (framing limits and the edge timeouts, `docs/edge.md`).
- `timeout_keep_alive` from `server.keepalive_timeout`, `timeout_graceful_shutdown` from
  `server.grace_period` (uvicorn's default is unbounded), backlog 2048, no concurrency limit.
- `ws="websockets-sansio"` on the data plane (`ws="none"` on admin): `PeelHttpProtocol` hands a
  checked WebSocket handshake to it, and `gateway.dataplane.websocket.WebSocketProxy` decides per route.
  Messages up to `MAX_MESSAGE` (a larger one from the client closes it with 1009), a ping every
  `PING_INTERVAL` s with `PING_TIMEOUT` s for the pong (a client that stops reading is cut that
  way), permessage-deflate offered to clients (windows of 4 KiB: ~40 KiB per connection).

This package (gateway/edge/) and `gateway.server.serve` are the only code that touches uvicorn's
internals (its flow control and address helpers, the WebSocket protocol's constructor, the
server's state, `Server.capture_signals`); uvicorn
is pinned to the minor version they were checked against, and `tests/unit/test_uvicorn_internals.py`
names each one with the module that relies on it.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any, Literal, cast

import uvicorn

from gateway.core.settings import Settings
from gateway.dataplane.websocket_rules import MAX_MESSAGE, PING_INTERVAL, PING_TIMEOUT
from gateway.edge.protocol import PeelHttpProtocol

DATA_PLANE = frozenset({"public", "outbound", "inbound"})
LISTENERS = DATA_PLANE | {"admin", "redirect"}


def uvicorn_config(app: Any, settings: Settings, *, listener: str, sock_fd: int | None = None,
                   ssl_context_factory: Any = None, log_level: str | None = None) -> uvicorn.Config:
    """The uvicorn `Config` of one listener.

    `sock_fd` names an already-bound socket the server will be given (`Server.serve(sockets=...)`
    or `make_server`); host and port then come from it, for uvicorn's own messages only.
    Without it, host and port come from `listeners.<listener>.bind`.

    `ssl_context_factory` makes the listener speak TLS: uvicorn calls it once, in `Config.load()`,
    and creates the listening server with the context it returns (`TlsListener.factory`, which
    returns the listener's fixed context; certificates are swapped behind it, `gateway.edge.tls`).
    uvicorn then reports `"scheme": "https"` (`"wss"`) in every scope of the listener.
    """
    if listener not in LISTENERS:
        raise ValueError(f"unknown listener {listener!r}; known: {', '.join(sorted(LISTENERS))}")
    data_plane = listener in DATA_PLANE
    host, port = "127.0.0.1", 0
    if sock_fd is not None:
        with socket.socket(fileno=sock_fd) as sock:
            try:
                address = sock.getsockname()
                host, port = str(address[0]), int(address[1])
            finally:
                sock.detach()  # the fd belongs to the caller
    else:
        bound = getattr(settings.listeners, listener, None)
        if bound is not None:
            host, port = bound.host, bound.port
    lifespan: Literal["off", "auto"] = "auto" if listener == "admin" else "off"
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http=PeelHttpProtocol.configured(settings.limits),
        ws="websockets-sansio" if data_plane else "none",
        ws_max_size=MAX_MESSAGE,
        ws_ping_interval=PING_INTERVAL,
        ws_ping_timeout=PING_TIMEOUT,
        ws_per_message_deflate=True,
        lifespan=lifespan,
        log_level=log_level or settings.server.log_level,
        log_config=None,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        date_header=not data_plane,
        # uvicorn uses both only as delays (call_later / wait_for): fractions of a second work.
        timeout_keep_alive=cast(int, settings.server.keepalive_timeout),
        timeout_graceful_shutdown=cast(int, settings.server.grace_period),
        backlog=2048,
        limit_concurrency=None,
        ssl_context_factory=ssl_context_factory,
    )


class QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its caller (one handler per process)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def make_server(config: uvicorn.Config, *, handle_signals: bool = False) -> uvicorn.Server:
    """A server for `config`; run it on a bound socket with `await server.serve(sockets=[sock])`.

    `peel serve` binds sockets in the master and hands them to workers, and handles signals once
    per process, so by default the server installs no signal handlers: set `should_exit` (drain)
    or `force_exit` to stop it.
    """
    return uvicorn.Server(config) if handle_signals else QuietServer(config)
