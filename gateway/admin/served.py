"""A write answers once this process serves what it committed.

    store.on_commit(note_commit)                           # build_admin_app does it
    Middleware(ServedWrites, served=runtime.served, timeout=SERVED_TIMEOUT)

Without it, the admin API answered a write as soon as the version was stored, and each serving
process loaded it at its next poll (`server.poll_interval`, 0.25 s): a script, or an operator
pasting the README's steps, that sent a request right after `peel routes set` still got the old
route. Now the process that owns the admin API wakes its watcher on each commit (and, as the master
of several workers, sends each worker `SIGUSR1`, which wakes theirs: `gateway.server.serve`), and
this middleware holds the answer's head until `served` says the gateway serves the version the
request committed: that process's table and, with workers, every live worker's
(`gateway.server.served_tables`). So when the client reads the answer, every process of this
gateway serves the change; other gateways sharing a PostgreSQL store hear of it by `NOTIFY`
(docs/fleet.md).

The versions a request committed are collected in a context variable that the request's own
worker threads see (`run_in_threadpool` copies the context), so a commit made by the leader's jobs
or by another request is never waited for here. A table that takes longer than `timeout` to load (a
first apply of a very large document) does not hold the answer longer: it is sent, and the log says
which version was still loading.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("peel.admin")

# How long a write's answer waits for the gateway to serve the version it committed: a one-route
# change to a 10,000-route table loads in about 10 ms, a first whole apply of it in about a second.
SERVED_TIMEOUT = 2.0
# Methods that never change rules: not watched (a commit cannot come from them).
READS = frozenset({"GET", "HEAD", "OPTIONS"})

# the versions committed by the admin request being handled (None outside one)
_COMMITTED: ContextVar[list[int] | None] = ContextVar("peel_admin_committed", default=None)

Served = Callable[[int, float], Awaitable[bool]]


def note_commit(version: int) -> None:
    """A `Store.on_commit` observer: remember `version` for the admin request that committed it."""
    made = _COMMITTED.get()
    if made is not None:
        made.append(version)


class ServedWrites:
    """Pure ASGI middleware: a request that committed config versions gets its answer's head once
    `served(version, timeout)` says the latest of them is served here, or `timeout` has passed."""

    def __init__(self, app: ASGIApp, *, served: Served, timeout: float | None = None) -> None:
        self.app = app
        self.served = served
        self.timeout = SERVED_TIMEOUT if timeout is None else timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in READS:
            await self.app(scope, receive, send)
            return
        made: list[int] = []
        token = _COMMITTED.set(made)

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start" and made:
                version = max(made)
                if not await self.served(version, self.timeout):
                    log.warning("answering %s %s before this gateway serves config version %d "
                                "(still loading after %g s)", scope["method"], scope["path"],
                                version, self.timeout)
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            _COMMITTED.reset(token)
