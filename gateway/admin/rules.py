"""`/api/v1/services` and `/api/v1/routes`: read, create, replace and delete one rule at a time.

Bodies are a service or a route exactly as in the declarative document. `PUT` creates or replaces,
`POST` refuses a name that exists (409). The reason for a change comes from the `Peel-Reason` header.
Reading one service adds `live`, the serving processes' view of its endpoints (health, ejection,
latency, load), when there is one. Listing services adds `registered`: the endpoints sidecars
registered (`routes.registry`), each with its identity, expiry and whether it is live.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as HTTPRoute

from gateway.admin.wire import answer, read_json, reason_header
from gateway.admin.writes import commit_edit, write_answer
from routes import changes
from routes.errors import ConflictError, NotFoundError, RuleError
from routes.model import Document, Route, Service
from routes.store import Store


@dataclass(frozen=True, slots=True)
class Kind:
    """What differs between the two rule collections: names, parser, lookup and edits."""

    plural: str
    singular: str
    parse: Callable[[object, str], Service | Route]
    find: Callable[[Document, str], Service | Route | None]
    put: Callable[[Document, Any], Document]
    delete: Callable[[Document, str], Document]
    items: Callable[[Document], tuple[Service, ...] | tuple[Route, ...]]


SERVICES = Kind("services", "service", Service.parse, Document.service, changes.put_service,
                changes.delete_service, lambda d: d.services)
ROUTES = Kind("routes", "route", Route.parse, Document.route, changes.put_route,
              changes.delete_route, lambda d: d.routes)


def _parse_body(kind: Kind, data: Any, name: str | None) -> Service | Route:
    """Parse one rule; the path's name fills a missing `name` and must agree with a given one."""
    if isinstance(data, dict) and name is not None:
        if "name" not in data:
            data = {"name": name, **data}
        elif data["name"] != name:
            raise RuleError("name", f"differs from the name in the URL ({name!r})", data["name"])
    return kind.parse(data, kind.singular)


def _live_service(request: Request, name: str) -> dict[str, Any] | None:
    """What the serving processes know of a service now: its endpoints' health, ejection, latency and
    load (`app.state.live`, a `gateway.telemetry.procstats.LiveView`); None when there is no live view or no
    serving process has the service (not yet loaded, or just deleted).

    Called on the event loop: the live view reads small per-process files and in-memory state.
    """
    live = getattr(request.app.state, "live", None)
    if live is None:
        return None
    found: dict[str, Any] | None = live.service(name)
    return found


class RuleResource:
    """The five handlers of one collection, bound to the store."""

    def __init__(self, store: Store, kind: Kind) -> None:
        self.store = store
        self.kind = kind

    def routes(self) -> list[HTTPRoute]:
        base = f"/api/v1/{self.kind.plural}"
        return [HTTPRoute(base, self.list, methods=["GET"]),
                HTTPRoute(base, self.create, methods=["POST"]),
                HTTPRoute(base + "/{name}", self.get, methods=["GET"]),
                HTTPRoute(base + "/{name}", self.put, methods=["PUT"]),
                HTTPRoute(base + "/{name}", self.delete, methods=["DELETE"])]

    async def list(self, request: Request) -> Response:
        # Built and encoded on a worker thread: for 10,000 routes that is ~30 ms of Python (75 ms
        # before `plain`'s fast paths) the event loop, and the data plane sharing it, would wait for.
        return await run_in_threadpool(self._list)

    def _list(self) -> Response:
        latest = self.store.latest()
        items = [item.to_dict() for item in self.kind.items(latest.document)]
        body: dict[str, Any] = {"version": latest.version, self.kind.plural: items}
        if self.kind is SERVICES:
            # the service registry's endpoints (routes.registry), expired ones not yet pruned too
            now = datetime.now(UTC)
            body["registered"] = [r.to_dict(now) for r in self.store.registrations(now=now, expired=True)]
        return answer(body, version=latest.version)

    async def get(self, request: Request) -> Response:
        name = request.path_params["name"]
        latest = await run_in_threadpool(self.store.latest)
        item = self.kind.find(latest.document, name)
        if item is None:
            raise NotFoundError(f"{self.kind.plural}[{name}]", f"no such {self.kind.singular}", name)
        body: dict[str, Any] = {"version": latest.version, self.kind.singular: item.to_dict()}
        if self.kind is SERVICES:
            live = _live_service(request, name)
            if live is not None:
                body["live"] = live
        return answer(body, version=latest.version)

    async def create(self, request: Request) -> Response:
        item = _parse_body(self.kind, await read_json(request), None)
        kind = self.kind

        def edit(document: Document) -> Document:
            # Checked inside the edit so it holds for the document actually committed.
            if kind.find(document, item.name) is not None:
                raise ConflictError(f"{kind.plural}[{item.name}].name",
                                    f"a {kind.singular} with this name exists; PUT replaces it",
                                    item.name)
            return kind.put(document, item)

        reason = reason_header(request, f"create {kind.singular} {item.name}")
        info, diff, live = await commit_edit(request, self.store, edit, reason)
        return await write_answer(info, diff, live, status=201 if info is not None else 200,
                                  extra={kind.singular: item.to_dict()})

    async def put(self, request: Request) -> Response:
        name = request.path_params["name"]
        item = _parse_body(self.kind, await read_json(request), name)
        reason = reason_header(request, f"set {self.kind.singular} {name}")
        kind = self.kind
        info, diff, live = await commit_edit(request, self.store, lambda d: kind.put(d, item), reason)
        return await write_answer(info, diff, live, extra={kind.singular: item.to_dict()})

    async def delete(self, request: Request) -> Response:
        name = request.path_params["name"]
        reason = reason_header(request, f"delete {self.kind.singular} {name}")
        kind = self.kind
        info, diff, live = await commit_edit(request, self.store, lambda d: kind.delete(d, name), reason)
        return await write_answer(info, diff, live)


def rule_routes(store: Store) -> list[HTTPRoute]:
    return RuleResource(store, SERVICES).routes() + RuleResource(store, ROUTES).routes()
