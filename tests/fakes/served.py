"""Waiting, in a test, until a protocol's requests are answered."""

from __future__ import annotations

import asyncio

from uvicorn.server import ServerState


async def until_served(state: ServerState) -> None:
    """Until no task runs a request. A keep-alive connection's task then waits for its next
    request, outside the server's `tasks` (gateway.edge.protocol), so awaiting the tasks
    themselves would wait for the connection to close."""
    for _ in range(10_000):
        if not state.tasks:
            return
        await asyncio.sleep(0)
    raise AssertionError("a request was still being served")
