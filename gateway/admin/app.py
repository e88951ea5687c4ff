"""The admin API: a starlette app over the store, with bearer auth and problem+json errors.

    build_admin_app(store, ready=..., settings=..., live=None, switch_interval=None) -> Starlette

`/metrics` (when `metrics.enabled`) renders the Prometheus text of every serving process of this
gateway from `live` (a `gateway.telemetry.procstats.LiveView`, kept as `app.state.live` for the handlers that
show live state); it needs the bearer token unless `metrics.open`.

Middleware is pure ASGI (no `BaseHTTPMiddleware`, which breaks the contextvars OpenTelemetry
relies on): `SwitchingOften` first where the process also serves traffic, then `ServedWrites`
where the process follows a table (a write answers once it is served, `gateway.admin.served`), then
`ProblemGuard`,
which turns anything unexpected into a 500 problem without a traceback, then `BearerAuth`. Errors
raised on purpose (`RuleError` and its subclasses, starlette's 404/405) are mapped once, here.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute
from starlette.routing import Route as HTTPRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.admin.auth import OPEN_PATHS, BearerAuth, TokenCache
from gateway.admin.certificates import CertificateResource
from gateway.admin.config import ConfigResource
from gateway.admin.control import ControlResource
from gateway.admin.dashboard import OPEN_PATHS as DASHBOARD_PATHS
from gateway.admin.dashboard import dashboard_routes
from gateway.admin.graph import GraphResource
from gateway.admin.matching import MatchResource
from gateway.admin.migrations import migration_routes
from gateway.admin.mtls import mtls_routes
from gateway.admin.rules import rule_routes
from gateway.admin.served import Served, ServedWrites, note_commit
from gateway.admin.shadow import shadow_routes
from gateway.admin.wire import problem_response
from gateway.core import problems
from gateway.core.settings import Settings
from gateway.telemetry.metrics import CONTENT_TYPE, render
from gateway.telemetry.procstats import LiveView
from routes.errors import RuleError, StoreError
from routes.store import Store

log = logging.getLogger("peel.admin")

_HTTP_CODES = {404: "not-found", 405: "method-not-allowed"}


class SwitchingOften:
    """The GIL's switch interval made `interval` while at least one admin request is in flight, and
    put back after the last one: in a process that also serves traffic (one process, no workers;
    `gateway.server.serve.SWITCH_INTERVAL_ADMIN`), a request's work in threads (a commit: 6 ms of
    CPU for a one-route change to a 10,000-route table) otherwise made each callback of the event
    loop wait up to the serving interval (1 ms) for the GIL. One-route changes to a 10,000-route
    table in one process at 1,500 req/s, 3 alternating pairs: each round's p99 over the quiet one,
    median, 2.41 -> 1.99 x for a `PUT`, 3.19 -> 2.70 x for a `peel apply` (bench/README.md). Only
    then: the shorter interval all the time did as much for the changes and raised the quiet p99
    (the access-log writer's batches cut in more often).

    Runs on the event loop only (an ASGI app is called there), so the count needs no lock.
    """

    def __init__(self, app: ASGIApp, *, interval: float) -> None:
        self.app = app
        self.interval = interval
        self.in_flight = 0
        self._saved = sys.getswitchinterval()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.in_flight == 0:
            self._saved = sys.getswitchinterval()
            sys.setswitchinterval(self.interval)
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                sys.setswitchinterval(self._saved)


class ProblemGuard:
    """Answers 500 problem+json for any exception that escaped the app, before the head was sent.

    The traceback goes to the log, never to the client.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("admin API: unexpected error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            body = problems.encode(problems.problem(500, "internal-error",
                                                    "unexpected error; the gateway's log has the details"))
            await send({"type": "http.response.start", "status": 500,
                        "headers": [(b"content-type", problems.CONTENT_TYPE.encode()),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})


async def _rule_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RuleError)
    return problem_response(problems.from_rule_error(exc))


async def _store_error(request: Request, exc: Exception) -> Response:
    log.error("admin API: store unavailable: %s", exc)
    return problem_response(problems.problem(503, "store-unavailable", str(exc)))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http-error")
    detail = exc.detail if exc.status_code != 404 else f"no admin API resource at {request.url.path}"
    return problem_response(problems.problem(exc.status_code, code, detail), exc.headers)


async def _metrics(request: Request) -> Response:
    live: LiveView | None = request.app.state.live
    if live is None:  # nothing serves here: the admin process's own metrics only
        body = await run_in_threadpool(render, [])
    else:
        # The own process's counters are copied here, on the loop that writes them; the files of
        # the other processes are read and everything rendered in a thread.
        body = await run_in_threadpool(live.render, live.local_snapshot())
    return Response(body, media_type=CONTENT_TYPE)


@asynccontextmanager
async def _warm_up(app: Starlette) -> AsyncIterator[None]:
    """At start, what the first write would otherwise pay: its first `run_in_threadpool` imports
    anyio's asyncio backend and starts the worker thread, about 150 ms (measured) that the requests
    of a process serving traffic too would wait behind."""
    await run_in_threadpool(_nothing)
    yield


def _nothing() -> None:
    return None


@functools.cache
def _openapi_body() -> bytes:
    """The OpenAPI document as served, built and encoded on its first request. Imported here: the
    schemas are about 0.25 MiB of dicts that a serving process carries only once someone reads them."""
    from gateway.admin.openapi import openapi_document
    return bytes(JSONResponse(openapi_document()).body)


def build_admin_app(store: Store, *, ready: Callable[[], bool], settings: Settings,
                    token_cache_seconds: float = 5.0, live: LiveView | None = None,
                    switch_interval: float | None = None, served: Served | None = None) -> Starlette:
    """The admin API over `store`. `ready()` answers `/readyz` (a table is loaded, not draining,
    and with several workers at least one of them alive).

    `settings` are the process's static settings (kept on `app.state` for handlers that need them).
    `live` is the merged live state of the gateway's serving processes (`app.state.live`; None: not
    known here, `/metrics` then has only the admin process's own). `switch_interval`: the GIL's
    switch interval while a request is in flight (`SwitchingOften`; None: left alone). `served`:
    whether the gateway serves a version (`Runtime.served`); a write then answers once the version
    it committed is served (`ServedWrites`; None: at once).
    """

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        if ready():
            return JSONResponse({"status": "ready"})
        return problem_response(problems.problem(503, "not-ready", "no route table is loaded yet, "
                                                 "the gateway is draining, or no worker process "
                                                 "is running"))

    routes: list[BaseRoute] = [
        HTTPRoute("/healthz", healthz, methods=["GET"]),
        HTTPRoute("/readyz", readyz, methods=["GET"]),
        *rule_routes(store),
        *ConfigResource(store).routes(),
        *MatchResource(store).routes(),
        *migration_routes(store),
        *shadow_routes(store),
        *CertificateResource(store, settings).routes(),
        *ControlResource(store, settings, serving=ready).routes(),
        *mtls_routes(),
        *GraphResource(store).routes(),
        *dashboard_routes(),
    ]

    async def openapi(request: Request) -> Response:
        return Response(_openapi_body(), media_type="application/json")

    routes.append(HTTPRoute("/openapi.json", openapi, methods=["GET"]))
    open_paths = OPEN_PATHS | DASHBOARD_PATHS  # the page and its script: no data (dashboard.py)
    if settings.metrics.enabled:
        routes.append(HTTPRoute("/metrics", _metrics, methods=["GET"]))
        if settings.metrics.open:
            open_paths = open_paths | {"/metrics"}
    tokens = TokenCache(store.grant, ttl=token_cache_seconds)
    middleware = [Middleware(ProblemGuard), Middleware(BearerAuth, tokens=tokens, open_paths=open_paths)]
    if served is not None:  # outside the guard: the answer is held whatever it is
        store.on_commit(note_commit)
        middleware.insert(0, Middleware(ServedWrites, served=served))
    if switch_interval is not None:  # outermost: the token lookup's thread too
        middleware.insert(0, Middleware(SwitchingOften, interval=switch_interval))
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={RuleError: _rule_error, StoreError: _store_error, HTTPException: _http_error},
        lifespan=_warm_up,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.live = live
    return app
