"""uvicorn's httptools protocol with the two things the data plane needs from the connection.

1. The raw request target: uvicorn parses it into `path`/`raw_path`/`query_string` and drops the
   rest, so an absolute-form target (`GET http://elsewhere/ HTTP/1.1`, the open-proxy probe) looks
   like an origin-form one. The bytes of the request line's target go into
   `scope["extensions"]["peel.target"]`.
2. A `Downstream` handle in `scope["extensions"]["peel.downstream"]`: uvicorn's `send` silently
   does nothing once the client is gone, so a proxy streaming a download would keep pulling from
   the upstream. The handle calls back when the connection is lost (so the upstream exchange is
   cancelled at once) and can abort the connection when a response must be cut short.

3. A `CoalescingWriter` in front of the transport, so a response head and a small body leave in
   one system call instead of two.
4. A head timeout: a connection must deliver a complete request head within the keep-alive
   timeout, whether it is new, idle between requests, or trickling a head byte by byte
   (uvicorn times only the idle case, with a timer per response).

The hooks cost one dict per request; everything else is uvicorn's own code path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

TARGET = "peel.target"
DOWNSTREAM = "peel.downstream"


class Downstream:
    """One downstream connection, as seen by the app.

    `on_lost` is called (once) when the connection closes; the proxy sets it while an upstream
    exchange is running and clears it after. `lost` says whether that already happened.
    """

    __slots__ = ("_protocol", "lost", "on_lost")

    def __init__(self, protocol: PeelHttpProtocol) -> None:
        self._protocol = protocol
        self.on_lost: Callable[[], None] | None = None
        self.lost = False

    def abort(self) -> None:
        """Reset the connection: a response that cannot be completed must not look complete."""
        protocol = self._protocol
        cycle = protocol.cycle
        if cycle is not None:
            # uvicorn would otherwise log "returned without completing response" for a cut we
            # made on purpose.
            cycle.disconnected = True
        if protocol.transport is not None:
            protocol.transport.abort()

    def _connection_lost(self) -> None:
        self.lost = True
        callback, self.on_lost = self.on_lost, None
        if callback is not None:
            callback()


class CoalescingWriter:
    """Stands in for the transport in uvicorn's request cycles: pairs of writes leave as one.

    uvicorn writes a response head and its body separately, each a `send()` system call; for the
    small answers that dominate gateway traffic that is a third of the data plane's CPU. This
    writer holds a write until the next one (then both go out in one call) or until the end of
    the current loop iteration, whichever comes first. Order is always kept; nothing waits
    longer than one iteration.
    """

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is None:
            if len(data) >= _HOLD_BELOW:
                self._transport.write(data)
                return
            self._held = data
            self._loop.call_soon(self.flush)
            return
        self._held = None
        if len(data) < _JOIN_BELOW:
            self._transport.write(held + data)
        else:
            self._transport.writelines((held, data))

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


# A write this large goes out at once (nothing to gain by waiting); two writes whose sum is below
# _JOIN_BELOW are joined (a copy is cheaper than a vectored write for small buffers).
_HOLD_BELOW = 16 * 1024
_JOIN_BELOW = 64 * 1024


class PeelHttpProtocol(HttpToolsProtocol):
    """The HTTP/1.1 protocol Peel's listeners run (pass the class as uvicorn's `http`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._downstream = Downstream(self)
        self._writer: CoalescingWriter | None = None
        # Since when this connection waits for a complete request head; None while a request
        # is being served. See _HeadTimer.
        self.waiting_since: float | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._writer = CoalescingWriter(transport, self.loop)
        self.waiting_since = self.loop.time()
        _HeadTimer.ensure(self.server_state, self.loop, self.timeout_keep_alive)

    def on_headers_complete(self) -> None:
        self.waiting_since = None
        # on_message_begin made a fresh scope and on_url collected the whole target; the ASGI task
        # is created by the parent below, so the scope is complete before the app sees it.
        scope: Any = self.scope  # uvicorn types extensions as dict[str, dict]; ours hold bytes
        scope["extensions"] = {TARGET: self.url, DOWNSTREAM: self._downstream}
        previous = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not previous and cycle is not None:
            cycle.transport = self._writer  # type: ignore[assignment]

    def on_response_complete(self) -> None:
        # uvicorn's own, except that the keep-alive wait is timed by _HeadTimer instead of a
        # call_later per response (which cost more than the rest of this method).
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self.waiting_since = self.loop.time()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._downstream._connection_lost()


class _HeadTimer:
    """Closes connections that wait too long for a complete request head.

    One ticker per server scans its connections a few times a second. It covers uvicorn's
    keep-alive timeout (idle between requests) and what uvicorn lacks: a first request, or a
    head trickled byte by byte (slowloris), must also be complete within the keep-alive timeout,
    because the clock only stops when a whole head has arrived.
    """

    @staticmethod
    def ensure(state: Any, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        if getattr(state, "peel_head_timer", False):
            return
        state.peel_head_timer = True
        interval = max(0.05, min(1.0, timeout / 4))
        loop.call_later(interval, _HeadTimer.tick, state, loop, timeout, interval)

    @staticmethod
    def tick(state: Any, loop: asyncio.AbstractEventLoop, timeout: float, interval: float) -> None:
        connections = state.connections
        if not connections:
            state.peel_head_timer = False  # the next connection starts a new ticker
            return
        deadline = loop.time() - timeout
        for protocol in list(connections):
            since = getattr(protocol, "waiting_since", None)
            if since is not None and since <= deadline and not protocol.transport.is_closing():
                protocol.transport.close()
        loop.call_later(interval, _HeadTimer.tick, state, loop, timeout, interval)


def downstream_of(scope: Any) -> Downstream | None:
    """The `Downstream` handle of a request scope, None when not served by `PeelHttpProtocol`."""
    extensions = scope.get("extensions")
    if extensions is None:
        return None
    handle = extensions.get(DOWNSTREAM)
    return handle if isinstance(handle, Downstream) else None


__all__ = ["DOWNSTREAM", "TARGET", "Downstream", "PeelHttpProtocol", "downstream_of"]
