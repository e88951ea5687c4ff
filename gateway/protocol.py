"""uvicorn's httptools protocol with the two things the data plane needs from the connection.

1. The raw request target: uvicorn parses it into `path`/`raw_path`/`query_string` and drops the
   rest, so an absolute-form target (`GET http://elsewhere/ HTTP/1.1`, the open-proxy probe) looks
   like an origin-form one. The bytes of the request line's target go into
   `scope["extensions"]["peel.target"]`.
2. A `Downstream` handle in `scope["extensions"]["peel.downstream"]`: uvicorn's `send` silently
   does nothing once the client is gone, so a proxy streaming a download would keep pulling from
   the upstream. The handle calls back when the connection is lost (so the upstream exchange is
   cancelled at once) and can abort the connection when a response must be cut short.

Both hooks cost one dict per request; everything else is uvicorn's own code path.
"""

from __future__ import annotations

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


class PeelHttpProtocol(HttpToolsProtocol):
    """The HTTP/1.1 protocol Peel's listeners run (pass the class as uvicorn's `http`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._downstream = Downstream(self)

    def on_headers_complete(self) -> None:
        # on_message_begin made a fresh scope and on_url collected the whole target; the ASGI task
        # is created by the parent below, so the scope is complete before the app sees it.
        scope: Any = self.scope  # uvicorn types extensions as dict[str, dict]; ours hold bytes
        scope["extensions"] = {TARGET: self.url, DOWNSTREAM: self._downstream}
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._downstream._connection_lost()


def downstream_of(scope: Any) -> Downstream | None:
    """The `Downstream` handle of a request scope, None when not served by `PeelHttpProtocol`."""
    extensions = scope.get("extensions")
    if extensions is None:
        return None
    handle = extensions.get(DOWNSTREAM)
    return handle if isinstance(handle, Downstream) else None


__all__ = ["DOWNSTREAM", "TARGET", "Downstream", "PeelHttpProtocol", "downstream_of"]
