"""Fallback plumbing for the data plane: what to watch on the `to` side, and replayable bodies.

A request that may fall back has its body read first, up to the migration's `max_body`, so the
same bytes can go to `to` and then, when `to` fails, to `from`. A body over the limit is handed to
`to` as it streams, and that request has no fallback.
"""

from __future__ import annotations

from gateway.core.asgi import Message, Receive
from gateway.upstream.pool import ExchangeAborted
from routes.migration import CompiledMigration


class Watch:
    """How `_forward` treats a failure of the `to` side of a migration.

    `replay`: the request may be answered by `from` (nothing is sent downstream when `to` fails);
    otherwise the failure is only reported back (a retired miss is counted) and answered as is.
    """

    __slots__ = ("on_error", "replay", "statuses")

    def __init__(self, migration: CompiledMigration, replay: bool) -> None:
        self.statuses = migration.statuses
        self.on_error = migration.fallback.on_error
        self.replay = replay


def replay_body(body: bytes) -> Receive:
    """A `receive` that hands over an already-read request body, as often as asked."""

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def prefixed_body(body: bytes, receive: Receive) -> Receive:
    """A `receive` that first hands over what was buffered, then reads on from the downstream."""
    first = True

    async def wrapped() -> Message:
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": body, "more_body": True}
        return await receive()

    return wrapped


async def buffer_body(receive: Receive, limit: int) -> tuple[bytes, bool]:
    """Read the request body up to `limit` bytes: (what was read, whether that is all of it)."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ExchangeAborted("the downstream closed the connection")
        body: bytes = message.get("body", b"")
        parts.append(body)
        size += len(body)
        if not message.get("more_body", False):
            return b"".join(parts), True
        if size > limit:
            return b"".join(parts), False

