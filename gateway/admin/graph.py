"""`GET /api/v1/graph?window=5m` (`peel graph`): the dependency graph that every gateway observed.

Every serving process records one edge per request (`gateway.telemetry.graph`: listener, caller,
the service that answered) and adds its counts to the store every few seconds; this sums the
minutes of the window over every gateway and marks each edge `expected` when the authorization
policy (`allow_from`) of a route that sends to that service names the caller, in the latest config
version. A call that no policy declares is *unexpected*: a dependency nobody wrote down, or a
caller that should not be there (docs/east-west.md).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.admin.matching import TableCache
from gateway.telemetry.graph import MAX_WINDOW, merge, minute, summarise
from routes.errors import RuleError
from routes.fields import duration
from routes.policies import Authorization
from routes.store import Store
from routes.table import RouteTable

DEFAULT_WINDOW = "5m"


def declared_by(table: RouteTable) -> Callable[[str, str], bool]:
    """`declared(identity, service)`: some route that sends to `service` (its own service, or a
    migration's `from` or `to`) has an authorization policy whose `allow_from` lets `identity` in."""
    policies: dict[str, list[Authorization]] = {}
    for route in table.routes:
        authz = route.authorization
        if authz is None or not authz.allow_from:
            continue
        services = {route.service.name}
        if route.migration is not None:
            services |= {route.migration.from_service.name, route.migration.to_service.name}
        for name in services:
            policies.setdefault(name, []).append(authz)

    def declared(identity: str, service: str) -> bool:
        return any(authz.allows(identity) for authz in policies.get(service, ()))

    return declared


class GraphResource:
    """The graph endpoint over `store` (the policies come from the latest config version)."""

    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self.tables = TableCache(store)
        self._lock = threading.Lock()
        self._declared: tuple[int, Callable[[str, str], bool]] | None = None

    def routes(self) -> list[BaseRoute]:
        return [Route("/api/v1/graph", self.graph, methods=["GET"])]

    def summary(self, window: float) -> dict[str, Any]:
        """Blocking: the graph of the last `window` seconds."""
        now = self.clock()
        first = minute(now - window)
        rows = self.store.edges_since(first)
        version, table = self.tables.current()
        with self._lock:
            cached = self._declared
            if cached is None or cached[0] != version:
                cached = self._declared = (version, declared_by(table))
        # the minutes summed reach back to the start of the first one
        covered = max(now - first, 1.0)
        out = summarise(merge(rows), window=covered, declared=cached[1])
        out["window"] = window
        out["config_version"] = version
        return out

    async def graph(self, request: Request) -> Response:
        # a bad window is a RuleError naming `window`: the admin app's handler answers it
        window = duration(request.query_params.get("window", DEFAULT_WINDOW), "window")
        if window > MAX_WINDOW:
            raise RuleError("window", "the graph keeps at most 24h of edges", window)
        return JSONResponse(await run_in_threadpool(self.summary, window))
