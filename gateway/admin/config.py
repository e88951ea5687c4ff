"""`/api/v1/config`: the latest document, the history of config versions, apply, rollback, diff."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as HTTPRoute

from gateway.admin.wire import (
    BadRequest,
    actor,
    answer,
    body_object,
    etag,
    if_match,
    query_int,
    read_json,
)
from gateway.admin.writes import check_compiles, commit_edit, diff_body, write_answer
from routes.changes import rollback_to
from routes.diff import diff
from routes.errors import PreconditionFailed, RuleError
from routes.model import Document, ParseMemo
from routes.patch import DocumentPatch
from routes.store import ConfigVersion, Store

HISTORY_DEFAULT = 50
HISTORY_MAX = 1000


def version_body(cv: ConfigVersion) -> dict[str, Any]:
    """A config version with its document, as `GET /config` and `/config/versions/{n}` answer."""
    return {"version": cv.version, "created_at": cv.created_at, "actor": cv.actor,
            "reason": cv.reason, "summary": cv.summary, "document": cv.document.to_dict()}


class ConfigResource:
    def __init__(self, store: Store) -> None:
        self.store = store
        # An applied document is parsed off the event loop, reusing the routes and services of the
        # last one applied whose data is unchanged (`ParseMemo`): a file applied again with one
        # route changed shares the rest with the stored version, so the diff, the compile check
        # and every watcher's compile take only what changed (bench/README.md, large tables).
        self._memo = ParseMemo()

    def routes(self) -> list[HTTPRoute]:
        base = "/api/v1/config"
        return [HTTPRoute(base, self.latest, methods=["GET"]),
                HTTPRoute(base + "/stored", self.stored, methods=["GET"]),
                HTTPRoute(base + "/versions", self.history, methods=["GET"]),
                HTTPRoute(base + "/versions/{n:int}", self.version, methods=["GET"]),
                HTTPRoute(base + "/apply", self.apply, methods=["POST"]),
                HTTPRoute(base + "/rollback", self.rollback, methods=["POST"]),
                HTTPRoute(base + "/diff", self.diff, methods=["GET"])]

    async def latest(self, request: Request) -> Response:
        # the whole document: built and encoded on a worker thread, as `RuleResource.list`
        def build() -> Response:
            cv = self.store.latest()
            return answer(version_body(cv), version=cv.version)

        return await run_in_threadpool(build)

    async def stored(self, request: Request) -> Response:
        """The latest document's stored text, as stored: what `peel apply` computes its changes
        against (`routes.patch`). Canonical JSON, one line per service and route."""
        version, text = await run_in_threadpool(self.store.latest_text)
        return Response(text, media_type="application/json", headers={"ETag": etag(version)})

    async def history(self, request: Request) -> Response:
        limit = query_int(request, "limit", HISTORY_DEFAULT, minimum=1) or HISTORY_DEFAULT
        if limit > HISTORY_MAX:
            raise BadRequest("limit", f"must be at most {HISTORY_MAX}", limit)
        versions, live = await run_in_threadpool(
            lambda: (self.store.history(limit), self.store.latest_version()))
        return answer({"version": live, "versions": versions}, version=live)

    async def version(self, request: Request) -> Response:
        def build() -> Response:
            cv = self.store.get(request.path_params["n"])
            return answer(version_body(cv), version=self.store.latest_version())

        return await run_in_threadpool(build)

    async def apply(self, request: Request) -> Response:
        """The whole document (`document`), or the changes to the version in `If-Match`
        (`changes`, `routes.patch`: what `peel apply` sends)."""
        body = body_object(await read_json(request), ("document", "changes", "dry_run", "reason"))
        dry_run = body.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise RuleError("dry_run", "must be true or false", dry_run)
        reason = body.get("reason", "apply")
        if not isinstance(reason, str):
            raise RuleError("reason", "must be a string", reason)
        edit: Callable[[Document], Document]
        if "changes" in body:
            if "document" in body:
                raise RuleError("changes", "give the whole document or the changes to a version, "
                                "not both")
            if if_match(request) is None:
                raise BadRequest("If-Match", "is required with changes: the config version they "
                                 "were computed against")
            edit = (await run_in_threadpool(DocumentPatch.parse, body["changes"])).apply
        elif "document" in body:
            document = await run_in_threadpool(partial(Document.parse, body["document"], memo=self._memo))
            edit = lambda _: document  # noqa: E731 - the edit that replaces everything
        else:
            raise RuleError("document", "is required")
        if dry_run:
            expected = if_match(request)

            def preview() -> Response:
                # the diff and its answer built and encoded on the worker thread, as every answer
                # that grows with the change
                current = self.store.latest()
                if expected is not None and expected != current.version:
                    raise PreconditionFailed("If-Match", f"config version {expected} is not the "
                                             f"latest ({current.version})", expected)
                document = edit(current.document)
                check_compiles(document)
                live = current.version
                return answer({"version": live, "dry_run": True, "changed": False,
                               **diff_body(diff(current.document, document))}, version=live)

            return await run_in_threadpool(preview)
        info, change, live = await commit_edit(request, self.store, edit, reason or "apply")
        return await write_answer(info, change, live, extra={"dry_run": False})

    async def rollback(self, request: Request) -> Response:
        body = body_object(await read_json(request), ("version", "reason"), ("version",))
        target = body["version"]
        if not isinstance(target, int) or isinstance(target, bool) or target < 1:
            raise RuleError("version", "must be a config version number (1 or more)", target)
        reason = body.get("reason", f"rollback to {target}")
        if not isinstance(reason, str):
            raise RuleError("reason", "must be a string", reason)
        expected = if_match(request)
        who = actor(request)
        info, change = await run_in_threadpool(
            lambda: rollback_to(self.store, target, who, reason or f"rollback to {target}",
                                if_match=expected, check=check_compiles))
        live = info.version if info is not None else await run_in_threadpool(self.store.latest_version)
        return await write_answer(info, change, live, extra={"rolled_back_to": target})

    async def diff(self, request: Request) -> Response:
        start = query_int(request, "from", None)
        end = query_int(request, "to", None)
        if start is None:
            raise BadRequest("from", "is required (a config version; 0 is the empty document)")

        def load() -> Response:
            live = self.store.latest_version()
            old = self.store.get(start).document if start else Document()
            stop = live if end is None else end
            new = self.store.get(stop).document if stop else Document()
            return answer({"from": start, "to": stop, **diff_body(diff(old, new))}, version=live)

        return await run_in_threadpool(load)
