"""`/api/v1/migrations`: the strangler lifecycle of routes, their status and their history.

    GET  /api/v1/migrations                      every migration with stage, cohort and live counts
    GET  /api/v1/migrations/{route}              one of them
    GET  /api/v1/migrations/{route}/history      its transitions, newest first
    POST /api/v1/migrations/{route}/start        {"to": SERVICE, "cohort": {...}, "beta": {...}}
    POST /api/v1/migrations/{route}/shift        {"percent": N}
    POST /api/v1/migrations/{route}/shadow | promote | retire | rollback
    POST /api/v1/migrations/{route}/guard        {"guard": {...}} | {"freeze": true|false} | {"off": true}

Every transition is one config version (through `routes.changes.commit_change`, so `If-Match` and
the compile check apply) and one `migration_transitions` row in the same transaction. A refused
transition writes nothing and answers problem+json naming the field. The reason comes from the
body's `reason`, else the `Peel-Reason` header.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as HTTPRoute

from facade import transitions
from facade.counts import SIDES
from facade.guard_run import assess, set_guard, step_start, unchanged_since
from gateway.admin.wire import (
    BadRequest,
    actor,
    answer,
    body_object,
    if_match,
    query_int,
    read_json,
    reason_header,
)
from gateway.admin.writes import check_compiles, diff_body
from routes.changes import commit_change
from routes.errors import ConflictError, NotFoundError, RuleError
from routes.guard_spec import GuardPolicy
from routes.migration import Beta, Cohort
from routes.model import Document, Route
from routes.store import Store, TransitionInfo

Edit = Callable[[Document], Document]


def migration_status(route: Route, last: TransitionInfo | None,
                     counts: tuple[int, int, int, int],
                     guard: dict[str, Any] | None = None) -> dict[str, Any]:
    """One migration as `GET /migrations` shows it: where it stands and its traffic since then, and
    where its guard stands (its verdict on the last window, `facade.guard_run.Assessment`)."""
    assert route.migration is not None
    m = route.migration
    return {"route": route.name, "from": route.service, "to": m.to, "stage": m.stage,
            "percent": m.percent, "migration": m.to_dict(),
            "since": None if last is None else {"action": last.action,
                                                "config_version": last.config_version,
                                                "time": last.created_at, "actor": last.actor,
                                                "reason": last.reason},
            "counts": dict(zip(SIDES, counts, strict=True)), "guard": guard}


async def _optional_body(request: Request) -> dict[str, Any]:
    """The JSON object body, or {} when there is none (promote, retire, rollback need none)."""
    if request.headers.get("content-length") in (None, "0") and \
            "chunked" not in request.headers.get("transfer-encoding", ""):
        return {}
    data = await read_json(request)
    if not isinstance(data, dict):
        raise RuleError("body", "must be a JSON object", type(data).__name__)
    return data


class MigrationResource:
    """The handlers of `/api/v1/migrations`, bound to the store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def routes(self) -> list[HTTPRoute]:
        base = "/api/v1/migrations"
        out = [HTTPRoute(base, self.list, methods=["GET"]),
               HTTPRoute(base + "/{route}", self.get, methods=["GET"]),
               HTTPRoute(base + "/{route}/history", self.history, methods=["GET"]),
               HTTPRoute(base + "/{route}/start", self.start, methods=["POST"]),
               HTTPRoute(base + "/{route}/shift", self.shift, methods=["POST"])]
        for action in ("shadow", "promote", "retire", "rollback"):
            out.append(HTTPRoute(f"{base}/{{route}}/{action}", self._simple(action), methods=["POST"]))
        out.append(HTTPRoute(base + "/{route}/guard", self.guard, methods=["POST"]))
        return out

    def _statuses(self, name: str | None, lag: float = 3.0) -> tuple[int, list[dict[str, Any]]]:
        latest = self.store.latest()
        routes = [r for r in latest.document.routes if r.migration is not None
                  and (name is None or r.name == name)]
        if name is not None and not routes:
            if latest.document.route(name) is None:
                raise NotFoundError(f"routes[{name}]", "no such route", name)
            raise NotFoundError(f"routes[{name}].migration", "the route has no migration", name)
        last = self.store.last_transitions()
        out = []
        for route in routes:
            since = last.get(route.name)
            counts = self.store.traffic_since(route.name, since.config_version if since else 0)
            guard = None
            if route.migration is not None and route.migration.guard is not None:
                step_since = step_start(since, route.migration, partial(
                    unchanged_since, self.store, route.name, route.migration, latest.version,
                    latest.created_at.timestamp()))
                guard = assess(self.store, route, step_since, time.time(), lag).to_dict()
            out.append(migration_status(route, since, counts, guard))
        return latest.version, out

    async def list(self, request: Request) -> Response:
        version, items = await run_in_threadpool(self._statuses, None, _lag(request))
        return answer({"version": version, "migrations": items}, version=version)

    async def get(self, request: Request) -> Response:
        version, items = await run_in_threadpool(self._statuses, request.path_params["route"],
                                                 _lag(request))
        return answer({"version": version, "migration": items[0]}, version=version)

    async def history(self, request: Request) -> Response:
        name = request.path_params["route"]
        limit = query_int(request, "limit", 100, minimum=1) or 100
        items, live = await run_in_threadpool(
            lambda: (self.store.transitions(name, limit), self.store.latest_version()))
        if not items and (await run_in_threadpool(self.store.latest)).document.route(name) is None:
            raise NotFoundError(f"routes[{name}]", "no such route", name)
        return answer({"version": live, "route": name, "transitions": [t.to_dict() for t in items]},
                      version=live)

    async def _transition(self, request: Request, action: str, edit: Edit, reason: str) -> Response:
        name = request.path_params["route"]
        expected = if_match(request)
        info, diff = await run_in_threadpool(
            lambda: commit_change(self.store, edit, actor=actor(request), reason=reason,
                                  if_match=expected, check=check_compiles,
                                  transitions=transitions.recorder(action, name)))
        version, items = await run_in_threadpool(self._statuses, name, _lag(request))
        body: dict[str, Any] = {"version": version, "changed": info is not None, "action": action,
                                "migration": items[0], **diff_body(diff)}
        if info is not None:
            body["created"] = info
        return answer(body, version=version)

    async def start(self, request: Request) -> Response:
        name = request.path_params["route"]
        data = body_object(await read_json(request), ("to", "cohort", "beta", "salt", "reason"), ("to",))
        to = data["to"]
        if not isinstance(to, str):
            raise RuleError("to", "must be a service name", to)
        cohort = Cohort.parse(data.get("cohort", {}), "cohort")
        beta = Beta.parse(data["beta"], "beta") if data.get("beta") is not None else None
        salt = data.get("salt")
        if salt is not None and (not isinstance(salt, str) or not salt):
            raise RuleError("salt", "must be a non-empty string", salt)
        reason = _reason(request, data, f"start migrating route {name} to {to}")
        return await self._transition(
            request, "start",
            lambda d: transitions.start(d, name, to, cohort=cohort, beta=beta, salt=salt), reason)

    async def shift(self, request: Request) -> Response:
        name = request.path_params["route"]
        data = body_object(await read_json(request), ("percent", "reason"), ("percent",))
        percent = data["percent"]
        reason = _reason(request, data, f"shift route {name} to {percent}%")
        return await self._transition(request, "shift",
                                      lambda d: transitions.shift(d, name, percent), reason)

    def _simple(self, action: str) -> Callable[[Request], Any]:
        move: Callable[[Document, str], Document] = getattr(transitions, action)

        async def handler(request: Request) -> Response:
            name = request.path_params["route"]
            data = body_object(await _optional_body(request), ("reason",))
            reason = _reason(request, data, f"{action} route {name}")
            return await self._transition(request, action, lambda d: move(d, name), reason)

        handler.__name__ = action
        return handler


    async def guard(self, request: Request) -> Response:
        """Set a migration's guard (`guard`: the document's block), freeze or unfreeze it, or take
        it off. One config version with a `guard` transition in the history (the step's clock
        starts again: the next verdict needs a full window under the new rules)."""
        name = request.path_params["route"]
        data = body_object(await read_json(request), ("guard", "freeze", "off", "reason"))
        off = data.get("off", False)
        freeze = data.get("freeze")
        if not isinstance(off, bool):
            raise RuleError("off", "must be true or false", off)
        if freeze is not None and not isinstance(freeze, bool):
            raise RuleError("freeze", "must be true or false", freeze)
        if off and ("guard" in data or freeze is not None):
            raise RuleError("off", "takes the guard off: give neither guard nor freeze with it", off)
        if not off and "guard" not in data and freeze is None:
            raise RuleError("guard", "is required (or freeze, or off)")
        given = GuardPolicy.parse(data["guard"], "guard") if "guard" in data else None

        def edit(doc: Document) -> Document:
            if off:
                return set_guard(doc, name, None)
            route = doc.route(name)
            current = route.migration.guard if route is not None and route.migration else None
            policy = given if given is not None else current
            if policy is None:
                raise ConflictError(f"routes[{name}].migration.guard", "the migration has no guard "
                                    "to freeze; set one with `peel migrate guard ROUTE`", name)
            return set_guard(doc, name, policy if freeze is None else policy.with_freeze(freeze))

        what = "take the guard off" if off else "freeze the guard" if freeze and given is None else \
            "unfreeze the guard" if freeze is False and given is None else "set the guard"
        reason = _reason(request, data, f"{what} of route {name}")
        return await self._transition(request, "guard", edit, reason)


def _lag(request: Request) -> float:
    """How far behind the guard's window ends: every gateway's samples are in (see leader.py)."""
    settings = getattr(request.app.state, "settings", None)
    return settings.facade.counts_interval + 1.0 if settings is not None else 3.0


def _reason(request: Request, data: dict[str, Any], default: str) -> str:
    reason = data.get("reason")
    if reason is not None:
        if not isinstance(reason, str):
            raise BadRequest("reason", "must be a string", reason)
        if reason.strip():
            return reason.strip()
    return reason_header(request, default)


def migration_routes(store: Store) -> list[HTTPRoute]:
    return MigrationResource(store).routes()
